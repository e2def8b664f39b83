package admin

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
)

// getWithHost asks url with the Host header host, on a connection of its
// own, as a browser does once a hostile site's name resolves to the
// admin listener's address.
func getWithHost(t *testing.T, url, host string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %s): %v", url, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// DNS rebinding: a page from rebind.example, whose name then resolves to
// 127.0.0.1, read /api/resets (client addresses, service names),
// /api/links and /metrics (database servers) through the browser of anyone
// on the proxy's host: the admin listener answered whatever the Host. Over
// loopback, a Host that is a name other than localhost (or *.localhost, or
// this host's name) gets 421 and no data; an address, localhost, and any
// name over another address of the host (Prometheus asking tg1:9521) are
// answered as before.
func TestRebindingHostIsRefusedOverLoopback(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0"}, prometheus.NewRegistry(), s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.Close() })
	port := adm.Addr().(*net.TCPAddr).Port
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for _, path := range []string{"/api/resets", "/api/links", "/metrics", "/status", "/", "/readyz", "/healthz"} {
		for _, host := range []string{fmt.Sprintf("rebind.example:%d", port), "rebind.example", "REBIND.example.:80", "localhost.rebind.example"} {
			code, body := getWithHost(t, base+path, host)
			if code != http.StatusMisdirectedRequest {
				t.Errorf("GET %s with Host %q over loopback: %d, want 421", path, host, code)
			}
			if strings.Contains(body, "{") || strings.Contains(body, "tnsguard_") || strings.Contains(body, "<") {
				t.Errorf("GET %s with Host %q: the 421 carries data: %.80q", path, host, body)
			}
		}
	}
	hostname, _ := os.Hostname()
	for _, host := range []string{fmt.Sprintf("127.0.0.1:%d", port), "127.0.0.1", fmt.Sprintf("localhost:%d", port),
		"LocalHost.", fmt.Sprintf("tnsguard.localhost:%d", port), "[::1]:9521", "[fe80::1%25eth0]:9521", "10.1.2.3", hostname} {
		if code, _ := getWithHost(t, base+"/api/links", host); code != http.StatusOK {
			t.Errorf("GET /api/links with Host %q over loopback: %d, want 200", host, code)
		}
	}

	// Another address of the host: Prometheus names it as it likes.
	var other net.IP
	ifs, _ := net.InterfaceAddrs()
	for _, a := range ifs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			other = n.IP
			break
		}
	}
	if other == nil {
		t.Log("no non-loopback IPv4 address: the other-address half is skipped")
		return
	}
	all, err := Start(config.Admin{Listen: "0.0.0.0:0"}, prometheus.NewRegistry(), s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { all.Close() })
	allPort := all.Addr().(*net.TCPAddr).Port
	if code, _ := getWithHost(t, fmt.Sprintf("http://%s:%d/metrics", other, allPort), "tg1.example:9521"); code != http.StatusOK {
		t.Errorf("GET /metrics with Host tg1.example over %s: %d, want 200", other, code)
	}
	// The same listener over loopback (a browser on this host) is checked.
	if code, _ := getWithHost(t, fmt.Sprintf("http://127.0.0.1:%d/api/resets", allPort), "rebind.example"); code != http.StatusMisdirectedRequest {
		t.Errorf("admin on 0.0.0.0, GET /api/resets with Host rebind.example over loopback: %d, want 421", code)
	}
}

// One client in admin.allow (by default anyone who reaches the port) that
// opened 20,000 connections and left them idle after a request held every
// fd of the process (the proxy's accepts and health checks failed with
// "too many open files") and 400 MB: the admin listener had bounded waits
// but no bound on connections. Now the oldest beyond maxConns is closed,
// and a monitor that connects after the flood is answered.
func TestManyIdleConnectionsHoldFewFDs(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0"}, prometheus.NewRegistry(), s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.Close() })
	addr := adm.Addr().String()
	const n = 600
	before := openFDs()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") // then idle
		} // else silent
	}
	time.Sleep(300 * time.Millisecond)
	// Each of ours is one fd here; the server's side of each still open is
	// another.
	held := openFDs() - before - n
	if held > maxConns+20 {
		t.Errorf("%d connections held open by one client: the admin server holds %d fds, want at most about %d", n, held, maxConns)
	}
	if code, _ := getWithHost(t, "http://"+addr+"/healthz", "127.0.0.1"); code != http.StatusOK {
		t.Errorf("GET /healthz after the flood: %d, want 200", code)
	}
}

// A name this host's /etc/hosts gives a loopback address is this host's
// own (Debian's "127.0.1.1 db1.example.com db1", an operator's alias): no
// DNS answer can make it a hostile site's, so it is answered over
// loopback; a name the file gives another address is not. The file is
// read again when it changes.
func TestHostsFileLoopbackNamesAreAnswered(t *testing.T) {
	path := t.TempDir() + "/hosts"
	if err := os.WriteFile(path, []byte("127.0.0.1\tlocalhost\n127.0.1.1 DB1.example.com. db1 # the host\n::1 ip6-localhost\n10.0.0.5 other.example\n# 127.0.0.1 commented.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hostsFile{path: path}
	for name, want := range map[string]bool{"db1.example.com": true, "db1": true, "ip6-localhost": true,
		"other.example": false, "commented.example": false, "rebind.example": false} {
		if got := h.loopbackName(name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	if got := hostName("DB1.Example.com.:9521"); got != "db1.example.com" || !h.loopbackName(got) {
		t.Errorf("Host DB1.Example.com.:9521 is %q, loopback %v", got, h.loopbackName(got))
	}
	if err := os.WriteFile(path, []byte("127.0.0.1 localhost tnsguard-admin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !h.loopbackName("tnsguard-admin") || h.loopbackName("db1") {
		t.Error("the hosts file was not read again after it changed")
	}
}
