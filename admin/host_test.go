package admin

import (
	"bufio"
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
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
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

	// This host's own other address, asked from this host (a browser
	// there, a hostile name rebound to the host's LAN address): checked
	// as over loopback. It was not (review of c0aa0f6).
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
	all := startAdmin(t, s, config.Admin{Listen: "0.0.0.0:0"})
	allPort := all.Addr().(*net.TCPAddr).Port
	if code, _ := getWithHost(t, fmt.Sprintf("http://%s:%d/api/resets", other, allPort), "rebind.example"); code != http.StatusMisdirectedRequest {
		t.Errorf("admin on 0.0.0.0, GET /api/resets with Host rebind.example from this host over %s: %d, want 421", other, code)
	}
	if code, _ := getWithHost(t, fmt.Sprintf("http://%s:%d/metrics", other, allPort), fmt.Sprintf("%s:%d", other, allPort)); code != http.StatusOK {
		t.Errorf("GET /metrics with Host %s over %s: %d, want 200", other, other, code)
	}
	// The same listener over loopback (a browser on this host) is checked.
	if code, _ := getWithHost(t, fmt.Sprintf("http://127.0.0.1:%d/api/resets", allPort), "rebind.example"); code != http.StatusMisdirectedRequest {
		t.Errorf("admin on 0.0.0.0, GET /api/resets with Host rebind.example over loopback: %d, want 421", code)
	}
}

// Which requests are checked: those from this host (over loopback, or
// from the listener's own address to itself); one from another host
// (Prometheus asking tg1.example:9521, the kubelet) is not, whatever its
// Host, since this host cannot tell the names it is known by there.
func TestRebindingHostChecksRequestsFromThisHostOnly(t *testing.T) {
	lan := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 9521}
	lo := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 9521}
	for _, c := range []struct {
		local  net.Addr
		remote string
		host   string
		want   bool
	}{
		{lan, "198.51.100.7:40000", "tg1.example:9521", false}, // another host
		{lan, "192.0.2.2:40000", "tg1.example:9521", true},     // this host, over its LAN address
		{lan, "127.0.0.1:40000", "rebind.example", true},
		{lan, "[::ffff:192.0.2.2]:40000", "rebind.example", true},
		{lan, "192.0.2.2:40000", "192.0.2.2:9521", false},
		{lo, "127.0.0.1:40000", "rebind.example", true},
		{lo, "127.0.0.1:40000", "localhost:9521", false},
		{lo, "127.0.0.1:40000", "db1", false}, // the hostname
	} {
		if got := rebindingHost(c.host, c.local, c.remote, "db1"); got != c.want {
			t.Errorf("Host %s from %s to %s: refused %v, want %v", c.host, c.remote, c.local, got, c.want)
		}
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
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
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

// A name this host's /etc/hosts lists (Debian's "127.0.1.1
// db1.example.com db1", an operator's alias) is answered from this host:
// no DNS answer can make it a hostile site's. The file is read again when
// it changes.
func TestHostsFileNamesAreAnswered(t *testing.T) {
	path := t.TempDir() + "/hosts"
	if err := os.WriteFile(path, []byte("127.0.0.1\tlocalhost\n127.0.1.1 DB1.example.com. db1 # the host\n::1 ip6-localhost\n10.0.0.5 other.example\n# 127.0.0.1 commented.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &hostsFile{path: path}
	for name, want := range map[string]bool{"db1.example.com": true, "db1": true, "ip6-localhost": true,
		"other.example": true, "commented.example": false, "rebind.example": false} {
		if got := h.lists(name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	if got := hostName("DB1.Example.com.:9521"); got != "db1.example.com" || !h.lists(got) {
		t.Errorf("Host DB1.Example.com.:9521 is %q, listed %v", got, h.lists(got))
	}
	if err := os.WriteFile(path, []byte("127.0.0.1 localhost tnsguard-admin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !h.lists("tnsguard-admin") || h.lists("db1") {
		t.Error("the hosts file was not read again after it changed")
	}
}

// slowCollector makes a scrape take d (a registry with thousands of
// series, or a scrape waiting its turn behind the status page's answers
// at the heavy gate).
type slowCollector struct{ d time.Duration }

func (c slowCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- prometheus.NewDesc("slow_collector", "slow", nil, nil)
}

func (c slowCollector) Collect(ch chan<- prometheus.Metric) {
	time.Sleep(c.d)
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("slow_collector", "slow", nil, nil), prometheus.GaugeValue, 1)
}

// The bound on admin connections closed the oldest whatever it was doing:
// a scrape being answered (or waiting at the heavy gate) when maxConns
// newer connections came (one client opening connections and holding
// them, a monitoring script leaking them) was cut, and Prometheus counted
// a failed scrape (up 0); one client flooding the port at 10,000
// connections a second failed a fifth of the scrapes and of the kubelet's
// probes. Connections that are idle or have sent nothing are closed
// first: an answer under way is not cut while there is one.
func TestConnectionBoundSparesAnswersUnderWay(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	reg := prometheus.NewRegistry()
	reg.MustRegister(slowCollector{d: 500 * time.Millisecond})
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0"}, reg, s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.Close() })
	addr := adm.Addr().String()
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		cl := &http.Client{Timeout: 5 * time.Second}
		resp, err := cl.Get("http://" + addr + "/metrics")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{resp.StatusCode, string(b), err}
	}()
	time.Sleep(100 * time.Millisecond) // the scrape is being answered
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 2*maxConns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") // then idle
		} // else silent
	}
	r := <-done
	if r.err != nil || r.code != http.StatusOK || !strings.Contains(r.body, "slow_collector 1") {
		t.Fatalf("a scrape under way when %d connections came: status %d, error %v, %d bytes: it was cut", 2*maxConns, r.code, r.err, len(r.body))
	}
}

// A monitor's connection counted as answered only once the server had read
// its whole request head, and the bound closed the oldest of the others: a
// request that had come but was not read yet (its goroutine had not run,
// or its head came in two segments) was cut with a reset when maxConns
// newer connections came first. One client opening 14,000 connections a
// second to the admin port, and holding them or not, failed about 1 in 8
// of the kubelet's /healthz probes and of the scrapes. A connection that
// has sent something now outlives those that have sent nothing (silent
// since their connect, or idle since their answer). Here each monitor has
// sent part of its head when 2*maxConns connections come, half silent,
// half idle after a request; then it sends the rest, and is answered.
func TestConnectionBoundSparesRequestsNotYetRead(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
	addr := adm.Addr().String()
	const monitors = 4
	var mons []net.Conn
	for i := 0; i < monitors; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n") // the blank line comes later
		mons = append(mons, c)
	}
	closed := make(chan struct{}, 2*maxConns) // a flood connection the server closed
	for i := 0; i < 2*maxConns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 0 {
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") // then idle
		} // else silent
		go func() {
			io.Copy(io.Discard, c) // until the server closes it (or the test does)
			closed <- struct{}{}
		}()
	}
	// Every flood connection accepted: maxConns of the 2*maxConns+monitors
	// connections closed (the monitors' first, before the fix).
	deadline := time.After(30 * time.Second)
	for n := 0; n < maxConns; n++ {
		select {
		case <-closed:
		case <-deadline:
			t.Fatalf("%d of %d flood connections closed by the server within 30 s, want %d", n, 2*maxConns, maxConns)
		}
	}
	cut := 0
	for i, c := range mons {
		io.WriteString(c, "\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("monitor %d, whose request had come in part when %d connections came: %v", i, 2*maxConns, err)
			cut++
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("monitor %d: status %d, want 200", i, resp.StatusCode)
		}
	}
	if cut > 0 {
		t.Errorf("%d of %d monitors cut: the bound closed connections with a request under way while silent and idle ones were open", cut, monitors)
	}
}

// waitNoneAnswered waits until adm has n connections open and none is
// being answered: the hooks of answers already written have run (a
// client reads its answer before the server's StateIdle hook).
func waitNoneAnswered(t *testing.T, adm *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		adm.open.mu.Lock()
		open, answered := len(adm.open.conns), 0
		for _, x := range adm.open.conns {
			if x.active {
				answered++
			}
		}
		adm.open.mu.Unlock()
		if open == n && answered == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, %d being answered, after 20 s; want %d, 0", open, answered, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A keep-alive connection idle since its answer (a scraper's between two
// scrapes, or a flood's) has sent nothing of its next request: beyond the
// bound it goes before a monitor whose request is under way. Counted as
// having spoken (a read returned bytes once, before its answer), it ranked
// with the requests not yet read, and the bound cut the oldest of those,
// the monitor's, instead.
func TestConnectionBoundClosesIdleBeforeRequests(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
	addr := adm.Addr().String()
	var mons []net.Conn
	for i := 0; i < maxConns-1; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n") // the blank line comes later
		mons = append(mons, c)
	}
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	waitNoneAnswered(t, adm, maxConns)
	extra, err := net.Dial("tcp", addr) // one beyond the bound
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	for i, c := range mons {
		io.WriteString(c, "\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("monitor %d, whose request was under way: %v", i, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("monitor %d: status %d, want 200", i, resp.StatusCode)
		}
	}
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("the connection idle since its answer, when one came beyond the bound: %v, want it closed", err)
	}
}

// unreadBytes is how many bytes wait in the socket of the admin
// connection whose client is at addr (-1 while it is not accepted yet).
func unreadBytes(adm *Server, addr string) int {
	adm.open.mu.Lock()
	defer adm.open.mu.Unlock()
	for _, x := range adm.open.conns {
		if x.c.RemoteAddr().String() == addr {
			return queued(x.c.(*headerConn).Conn)
		}
	}
	return -1
}

// A PROXY header alone is no request: connections that each send one and
// hold (a flood, 2,000 a second) count as silent, oldest first. When they
// counted as having sent something, the new monitor's connection, silent
// for the moment between its accept and its request, was the one closed
// beyond the bound: a fifth of the probes and scrapes failed in a soak of
// the real binary, none when such connections counted as silent.
func TestConnectionBoundClosesAPROXYHeaderAloneBeforeANewMonitor(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
	addr := adm.Addr().String()
	closed := make(chan string, maxConns+1)
	watch := func(c net.Conn, who string) {
		go func() {
			io.Copy(io.Discard, c) // until the server closes it (or the test does)
			closed <- who
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < maxConns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "PROXY TCP4 10.0.0.7 10.0.0.1 5555 9521\r\n")
		for unreadBytes(adm, c.LocalAddr().String()) != 0 { // the server has read the header
			if time.Now().After(deadline) {
				t.Fatalf("the PROXY header of connection %d not read within 30 s", i)
			}
			time.Sleep(time.Millisecond)
		}
		watch(c, "a connection that sent a PROXY header alone")
	}
	// The monitor's request comes after its accept, and the flood's next
	// connection before it: each accept finds the bound passed and closes
	// one connection (not itself).
	mon, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	watch(mon, "the monitor")
	next, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	watch(next, "the flood's next connection")
	for range 2 {
		select {
		case who := <-closed:
			if who == "the monitor" {
				t.Fatalf("beyond the bound the server closed the monitor's connection, silent until its request, rather than one of %d that had sent a PROXY header alone", maxConns)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("two connections beyond the bound, and not two closed within 30 s")
		}
	}
}

// Beyond the bound, every connection not answered before the first silent
// one had its socket asked whether bytes waited (an ioctl), on every new
// connection: a flood whose requests came faster than they were read cost
// about 54 ioctls per connection closed, under the lock that every
// connection's state hook takes, and a fifth more CPU per connection
// (124 µs against 87 µs on two busy cores). A socket found with its
// request waiting is marked heard and not asked again.
func TestConnectionBoundAsksAWaitingSocketOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var o openConns
	var waiting []*headerConn
	accept := func(request string) *headerConn {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		io.WriteString(c, request)
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return &headerConn{Conn: s}
	}
	for i := 0; i < maxConns-1; i++ {
		hc := accept("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") // not read yet
		waiting = append(waiting, hc)
		o.add(hc, maxConns)
	}
	// Silent connections beyond the bound: each closes the one before it,
	// after the waiting ones were looked at.
	deadline := time.Now().Add(20 * time.Second)
	for _, hc := range waiting {
		for queued(hc.Conn) == 0 { // the request is in the server's socket
			if time.Now().After(deadline) {
				t.Fatal("a request not in the server's socket within 20 s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	o.add(accept(""), maxConns)
	if old := o.add(accept(""), maxConns); old == nil {
		t.Fatalf("%d connections open, want one closed", maxConns+1)
	}
	asked := 0
	for _, hc := range waiting {
		if !hc.heard.Load() {
			asked++
		}
	}
	if asked > 0 {
		t.Errorf("%d of %d connections whose request waits are asked again on each new connection", asked, len(waiting))
	}
}

// `tnsguard healthcheck -admin :9521` (the form of admin.listen = ":9521",
// which the flag takes) asks http://:9521/readyz: Go's client dials this
// host and sends Host ":9521", which no browser sends (a page's URL always
// has a host). It got 421, and the Docker HEALTHCHECK said unhealthy. A
// Host of a port only, or an IPv4 address in a short form (curl
// http://127.1:9521/ sends it as written; a browser turns it into
// 127.0.0.1 and refuses a name whose last label is a number), names no
// site and is answered.
func TestHostWithoutANameIsAnswered(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm := startAdmin(t, s, config.Admin{Listen: "127.0.0.1:0"})
	port := adm.Addr().(*net.TCPAddr).Port
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://:%d/healthz", port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET http://:%d/healthz (as healthcheck -admin :%d asks): %d, want 200", port, port, resp.StatusCode)
	}
	for _, host := range []string{fmt.Sprintf(":%d", port), "127.1", fmt.Sprintf("127.0.1:%d", port), "2130706433", "0x7f000001"} {
		if code, _ := getWithHost(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", port), host); code != http.StatusOK {
			t.Errorf("GET /healthz with Host %q over loopback: %d, want 200", host, code)
		}
	}
	for _, host := range []string{"1.example", "example.1x"} {
		if code, _ := getWithHost(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", port), host); code != http.StatusMisdirectedRequest {
			t.Errorf("GET /healthz with Host %q over loopback: %d, want 421", host, code)
		}
	}
}
