package admin

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	_ "github.com/sijms/go-ora/v2"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// switchover is a backend after a Data Guard switchover: the old primary's
// listener runs and refuses SALES (ORA-12514), the standby offers it (its
// own REFUSE, ORA-12526, tells go-ora which server answered). The old
// primary accepts once SetServices gives it SALES back.
type switchover struct {
	st           *stack
	old, standby *tnstest.Listener
}

func startSwitchover(t *testing.T) *switchover {
	t.Helper()
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	st := startStack(t, fmt.Sprintf(`
[[listener]]
name = "orders"
listen = "127.0.0.1:0"
backend = "orders"
[[backend]]
name = "orders"
connect_timeout = "1s"
connect_budget = "3s"
retry_on = ["connect", "reset", "refuse"]
refuse_errors = [12514]
  [backend.breaker]
  open_for = "1h"
  max_open_for = "1h"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
  [[backend.server]]
  address = %q
  priority = 1
`, old.Addr(), standby.Addr()))
	return &switchover{st: st, old: old, standby: standby}
}

// goOraSales opens a go-ora session for SALES and wants the standby's
// answer: the old primary's ORA-12514 was held back.
func (s *switchover) goOraSales(t *testing.T) {
	t.Helper()
	db, err := sql.Open("oracle", "oracle://scott:tiger@"+s.st.p.Addr("orders").String()+"/SALES")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err == nil || !strings.Contains(err.Error(), "ORA-12526") {
		t.Fatalf("go-ora for SALES: %v; want the standby's ORA-12526", err)
	}
}

// switchBack gives SALES back to the old primary and takes the standby
// away; a CONNECT for SALES then dials the standby (dialed first for it),
// goes on to the old primary, and is served there.
func (s *switchover) switchBack(t *testing.T) {
	t.Helper()
	s.old.SetServices("OTHER", "SALES")
	s.standby.Close()
	c, err := net.Dial("tcp", s.st.p.Addr("orders").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	connect, err := tns.BuildConnect("(DESCRIPTION=(ADDRESS=(PROTOCOL=tcp)(HOST=db)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app)(HOST=h)(USER=u))))")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if pkt, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || pkt.Type != tns.TypeAccept {
		t.Fatalf("after the switch back, a CONNECT for SALES: %v, %v; want the old primary's ACCEPT", pkt.Type, err)
	}
}

// refusedIn is the refused_services of server's row in an /api/links
// answer; ok is false when the row or the field is missing.
func refusedIn(links []map[string]any, server string) (list []any, ok bool) {
	for _, l := range links {
		if l["server"] == server {
			list, ok = l["refused_services"].([]any)
			return list, ok
		}
	}
	return nil, false
}

// GET /api/links shows the services a server refused lately: after a
// switchover the old primary's row names SALES (in the lower case it is
// compared in), until when its new sessions dial that server last, how
// many refusals and which code; the standby's row has an empty list. Once
// the old primary serves SALES again the entry is gone. Until 2026-12-01
// nothing an operator looks at showed this memory: sessions avoided a
// server, or waited for their CONNECT, and only one log line per server
// and service said why.
func TestLinksAPIShowsServiceRefusals(t *testing.T) {
	s := startSwitchover(t)
	began := time.Now()
	s.goOraSales(t)
	var links struct {
		Links []map[string]any `json:"links"`
	}
	getJSON(t, s.st.url+"/api/links", &links)
	list, ok := refusedIn(links.Links, s.old.Addr())
	if !ok || len(list) != 1 {
		t.Fatalf("the old primary's row after it refused SALES: refused_services %v (present %v); want SALES listed; rows: %v", list, ok, links.Links)
	}
	r, _ := list[0].(map[string]any)
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(r["until"]))
	if err != nil {
		t.Fatalf("until %v: %v", r["until"], err)
	}
	if r["service"] != "sales" || r["error"] != "ORA-12514" || r["refusals"] != 1.0 || r["for_seconds"] != 3600.0 ||
		until.Before(began.Add(time.Hour)) || until.After(time.Now().Add(time.Hour)) {
		t.Errorf("the old primary's refusal: %v; want sales, ORA-12514, 1 refusal, for 3600 s, until an hour after it (%s)", r, began.Add(time.Hour).Format(time.RFC3339))
	}
	if list, ok := refusedIn(links.Links, s.standby.Addr()); !ok || len(list) != 0 {
		t.Errorf("the standby's row: refused_services %v (present %v); want an empty list", list, ok)
	}

	s.switchBack(t)
	getJSON(t, s.st.url+"/api/links", &links)
	if list, ok := refusedIn(links.Links, s.old.Addr()); !ok || len(list) != 0 {
		t.Errorf("the old primary served SALES, yet its row lists %v (present %v)", list, ok)
	}
}

// The status page, open in headless Chromium, shows on its own refresh
// which service the old primary refused and until when (the proxy's time,
// as every time on the page), and drops it when the old primary serves the
// service again.
func TestStatusPageShowsServiceRefusalsInChromium(t *testing.T) {
	s := startSwitchover(t)
	b := startBrowser(t, 1280, 720)
	b.open(s.st.url + "/status")
	type cell struct {
		Loaded  string `json:"loaded"`
		Count   string `json:"count"`
		Text    string `json:"text"`
		Service string `json:"service"`
		Until   string `json:"until"`
		Title   string `json:"title"`
		Standby string `json:"standby"`
	}
	script := `const tr = document.querySelector('tr[data-link="orders|orders|` + s.old.Addr() + `"]');
const sb = document.querySelector('tr[data-link="orders|orders|` + s.standby.Addr() + `"] td.refused');
if (!tr) return {loaded: document.body.dataset.loaded || "0"};
const td = tr.querySelector('td.refused');
const r = td && td.querySelector('[data-service]');
return {loaded: document.body.dataset.loaded || "0", count: td ? td.dataset.count : "", text: td ? td.textContent : "",
  service: r ? r.dataset.service : "", until: r ? r.dataset.until : "", title: r ? r.title : "", standby: sb ? sb.textContent : ""};`
	var c cell
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			c = cell{}
			b.eval(script, &c)
			if cond() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page never showed %s: %+v", what, c)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("the old primary's row", func() bool { return c.Loaded != "0" && c.Count != "" })
	if c.Count != "0" || c.Text != "none" {
		t.Fatalf("before any refusal the old primary's row shows %+v", c)
	}

	s.goOraSales(t)
	wait("the refusal", func() bool { return c.Service != "" })
	var links struct {
		Links []map[string]any `json:"links"`
	}
	getJSON(t, s.st.url+"/api/links", &links)
	list, _ := refusedIn(links.Links, s.old.Addr())
	if len(list) != 1 {
		t.Fatalf("/api/links lists %v as the old primary's refusals, want one", list)
	}
	r, _ := list[0].(map[string]any)
	until, err := time.Parse(time.RFC3339Nano, fmt.Sprint(r["until"])) // in the proxy's time zone
	if err != nil {
		t.Fatalf("until %v: %v", r["until"], err)
	}
	want := until.Format("15:04:05") // the proxy's time zone; an hour ahead may be tomorrow
	if until.Format("2006-01-02") != time.Now().Format("2006-01-02") {
		want = until.Format("2006-01-02 15:04:05")
	}
	if c.Service != "sales" || c.Until != want || c.Text != "sales until "+want || c.Count != "1" {
		t.Errorf("the old primary's row shows %+v; want sales until %s", c, want)
	}
	for _, w := range []string{"ORA-12514", "1 refusal", "60.0 min"} {
		if !strings.Contains(c.Title, w) {
			t.Errorf("hovering the refusal says %q, lacks %q", c.Title, w)
		}
	}
	if c.Standby != "none" {
		t.Errorf("the standby's row shows refused services %q, want none", c.Standby)
	}

	s.switchBack(t)
	wait("the refusal gone", func() bool { return c.Count == "0" })
	if c.Text != "none" {
		t.Errorf("after the old primary served SALES its row shows %+v", c)
	}
}
