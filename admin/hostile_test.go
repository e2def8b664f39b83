package admin

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// hostileServices are SERVICE_NAMEs an app (anyone who reaches a listener)
// may send: markup with handlers the page's policy would let run (it
// allows inline script), quotes, control characters, and a bidi override
// that shows "\u202eSELAS" as SALES.
var hostileServices = []string{
	`<img src=x onerror="window.__pwned=1">`,
	`<svg onload="window.__pwned=2"></svg><script>window.__pwned=3</script>`,
	`x' onmouseover='window.__pwned=4`,
	"ctl\x1b[31m\x07",
	"\u202eSELAS",
	strings.Repeat("LONG_SERVICE_", 10), // shown cut to 128 bytes
}

// The status page, in headless Chromium, shows the service names apps
// sent as text: none runs, none adds an element, none is shown reordered
// as another name.
func TestStatusPageShowsHostileServicesAsText(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	st := startStack(t, ordersConfig(l.Addr()))
	addr := st.p.Addr("orders").String()
	for _, svc := range hostileServices {
		pkt, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME="` + svc + `")))`)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(pkt)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, tns.HeaderLen)); err != nil {
			t.Fatalf("no ACCEPT: %v", err)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // the app resets: one event with its service
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(st.p.Resets(0)) < len(hostileServices) {
		if time.Now().After(deadline) {
			t.Fatalf("%d resets recorded, want %d", len(st.p.Resets(0)), len(hostileServices))
		}
		time.Sleep(20 * time.Millisecond)
	}

	b := startBrowser(t, 1280, 720)
	b.open(st.url + "/status")
	var page struct {
		Loaded   string `json:"loaded"`
		Pwned    int    `json:"pwned"`
		Elements int    `json:"elements"`
	}
	state := `return {loaded: document.body.dataset.loaded || "0", pwned: window.__pwned || 0,
  elements: document.querySelectorAll('#resets img, #resets svg, #resets script, [onmouseover]').length};`
	loading := time.Now().Add(10 * time.Second) // from now: the resets' deadline paid for Chromium's start too (4 s on a busy machine)
	for b.eval(state, &page); page.Loaded == "0"; b.eval(state, &page) {
		if time.Now().After(loading) {
			t.Fatal("page never loaded")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // an image's error event may come after the render
	b.eval(state, &page)
	if page.Pwned != 0 {
		t.Errorf("a service name ran script in the status page (window.__pwned = %d)", page.Pwned)
	}
	if page.Elements != 0 {
		t.Errorf("service names added %d elements to the resets table", page.Elements)
	}
	var overflow int
	b.eval(`return document.documentElement.scrollWidth - document.documentElement.clientWidth;`, &overflow)
	if overflow > 0 {
		t.Errorf("a long service name makes the page %d px wider than the window: it scrolls sideways", overflow)
	}
	var shown []string
	b.eval(`return [...document.querySelectorAll('#resets tbody tr')].map(tr => tr.children[2].textContent);`, &shown)
	if len(shown) != len(hostileServices) {
		t.Fatalf("resets table shows %d rows, want %d: %q", len(shown), len(hostileServices), shown)
	}
	for _, s := range shown {
		if strings.ContainsAny(s, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069") {
			t.Errorf("service shown as %q: a bidi control reorders it on screen", s)
		}
		if strings.ContainsRune(s, 0x1b) {
			t.Errorf("service shown as %q, with an ESC", s)
		}
	}
}
