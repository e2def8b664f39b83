package failover

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// Servers given by a name that resolves to several addresses (a RAC SCAN
// name, a DNS round robin, a headless Kubernetes service). The name is
// resolved by a lookup the test controls (the backend's lookup hook); the
// addresses are real loopback sockets: 127.0.0.1 and 127.0.0.2 on one port.

// silentAt is a port on 127.0.0.1 whose dials hang until their timeout
// (loopback.Blackhole).
func silentAt(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(loopback.Blackhole(t))
	n, _ := strconv.Atoi(port)
	return n
}

// freePort is a port nothing listens on at the moment, for a listener the
// test must know the port of before the config is written (loopback.Port:
// outside the ephemeral range, where another test's connect cannot take it
// first).
func freePort(t *testing.T) int {
	t.Helper()
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// acceptAt listens on ip:port and accepts (and holds) every connection
// until the test ends.
func acceptAt(t *testing.T, ip string, port int) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		t.Skipf("no second loopback address here: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
}

// nameBackend is backend "b" with one server, "db.example:port", whose
// name resolves to what addrs returns at each lookup.
func nameBackend(t *testing.T, keys string, port int, addrs func() []string) *Backend {
	t.Helper()
	return nameBackendResolved(t, keys, port, func(_ context.Context, host string) ([]netip.Addr, error) {
		if host != "db.example" {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		var out []netip.Addr
		for _, a := range addrs() {
			out = append(out, netip.MustParseAddr(a))
		}
		return out, nil
	})
}

// nameBackendResolved is nameBackend with the name resolved by lookup.
func nameBackendResolved(t *testing.T, keys string, port int, lookup func(context.Context, string) ([]netip.Addr, error)) *Backend {
	t.Helper()
	b := testBackend(t, keys+servers(fmt.Sprintf(`address = "db.example:%d"`, port)))
	b.lookup = lookup
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	t.Cleanup(func() { cancel(); b.Stop() })
	return b
}

func remoteIP(c net.Conn) string {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
}

// A name whose first address is silent: the session gets the second
// within connect_timeout of its own (until 2026-11-29 Go's dialer split
// connect_timeout between the addresses, with a 2 s floor for the first:
// with connect_timeout under 2 s the second address was never dialed and
// every session failed; at 3 s every session waited 2 s), and the next
// session does not wait for the silent one again.
func TestNameWithSilentFirstAddress(t *testing.T) {
	port := silentAt(t)
	acceptAt(t, "127.0.0.2", port)
	b := nameBackend(t, `connect_timeout = "500ms"
connect_budget = "5s"
`, port, func() []string { return []string{"127.0.0.1", "127.0.0.2"} })
	for i := range 2 {
		start := time.Now()
		c, err := b.NewPlan(start).Dial(context.Background(), b.Servers[0])
		if err != nil {
			t.Fatalf("session %d: %v (the second address accepts)", i, err)
		}
		took := time.Since(start)
		c.Close()
		if ip := remoteIP(c); ip != "127.0.0.2" {
			t.Fatalf("session %d reached %s", i, ip)
		}
		if i == 0 && took > time.Second {
			t.Fatalf("first session took %v, want about connect_timeout (500ms)", took)
		}
		if i == 1 && took > 200*time.Millisecond {
			t.Fatalf("second session took %v: it waited for the silent address again", took)
		}
	}
}

// A re-dial of the session (its connection reset before the first byte, a
// REFUSE) goes to the name's next address, not to the same one again:
// until 2026-11-29 every re-dial of a SCAN name whose first node's listener
// reset reached that node, and the session failed at connect_budget.
func TestNameRedialReachesTheNextAddress(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.1", port)
	acceptAt(t, "127.0.0.2", port)
	b := nameBackend(t, "", port, func() []string { return []string{"127.0.0.1", "127.0.0.2"} })
	plan := b.NewPlan(time.Now())
	var got []string
	for range 3 {
		c, err := plan.Dial(context.Background(), b.Servers[0])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, remoteIP(c))
		c.Close()
	}
	if got[0] != "127.0.0.1" || got[1] != "127.0.0.2" {
		t.Fatalf("one session's dials reached %v, want 127.0.0.1 then 127.0.0.2", got)
	}
	// Another session starts at the name's first address again.
	c, err := b.NewPlan(time.Now()).Dial(context.Background(), b.Servers[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := remoteIP(c); ip != "127.0.0.1" {
		t.Fatalf("a new session reached %s, want the name's first address", ip)
	}
}

// The health check of a name passes when any of its addresses answers
// within health.timeout: until 2026-11-29 one silent address first took
// the whole timeout (Go's 2 s floor per address), so with the default
// timeout = "2s" the server was down for good (backend_up 0, /readyz 503)
// while sessions got through.
func TestHealthCheckOfNameWithSilentFirstAddress(t *testing.T) {
	port := silentAt(t)
	acceptAt(t, "127.0.0.2", port)
	b := nameBackend(t, `[backend.health]
check = "tcp"
timeout = "300ms"
`, port, func() []string { return []string{"127.0.0.1", "127.0.0.2"} })
	for i := range 2 {
		if err := b.Servers[0].check(context.Background()); err != nil {
			t.Fatalf("check %d: %v (the second address accepts)", i, err)
		}
	}
}

// A name is resolved at every dial and check: a redeploy that moves it is
// followed without a reload.
func TestNameFollowsANewAddress(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.2", port)
	var mu sync.Mutex
	now := "127.0.0.1" // nothing listens there
	b := nameBackend(t, `[backend.health]
check = "tcp"
timeout = "300ms"
`, port, func() []string { mu.Lock(); defer mu.Unlock(); return []string{now} })
	if err := b.Servers[0].check(context.Background()); err == nil {
		t.Fatal("check passed with nothing listening at the name's address")
	}
	mu.Lock()
	now = "127.0.0.2"
	mu.Unlock()
	if err := b.Servers[0].check(context.Background()); err != nil {
		t.Fatalf("check after the move: %v", err)
	}
	c, err := b.NewPlan(time.Now()).Dial(context.Background(), b.Servers[0])
	if err != nil {
		t.Fatalf("dial after the move: %v", err)
	}
	c.Close()
}

// A server without a host (":1521") is this host, as Go's dialer took it
// before names were resolved by tnsguard itself.
func TestServerWithoutHostIsThisHost(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b := testBackend(t, servers(fmt.Sprintf(`address = ":%d"`, ln.Addr().(*net.TCPAddr).Port)))
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	defer func() { cancel(); b.Stop() }()
	c, err := b.NewPlan(time.Now()).Dial(context.Background(), b.Servers[0])
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// A server at an IP address (or a name of one address) is one address: the
// breaker and the checks speak for it, and its failed dial logs no
// "server address failed" (addrFailed). Its next check that reached it
// logged "server address answers again" all the same, of an address no
// line had said failed, at every recovery of every IP-literal server with
// health checks: the lines a name of several addresses gets, with no
// such name in the config.
func TestSingleAddressLogsNoAddressRecovery(t *testing.T) {
	// Down: refused. Outside the ephemeral range: a check's dial of a freed
	// port of that range can pick it as its own and connect to itself.
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var buf bytes.Buffer
	b := testBackendLogged(t, `[backend.health]
check = "tcp"
timeout = "300ms"
`+servers(fmt.Sprintf("address = %q", addr)), hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}))
	s := b.Servers[0]
	if err := s.check(context.Background()); err == nil {
		t.Fatal("a check of a closed port passed")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skip(err) // the port was taken meanwhile
	}
	defer ln.Close()
	if err := s.check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "server address") {
		t.Errorf("a server of one address logged of its address:\n%s", buf.String())
	}
}

// connect_budget may equal connect_timeout (check allows it: "no re-dial
// past one timeout"), and a session's dial starts after its accept, so
// the budget, not connect_timeout, ends the dial of a silent first
// address. That end was no verdict on the address (the budget's, not the
// address's), so with checks off no one ever marked it: every session
// dialed it first again and failed at connect_budget, for good, while the
// name's second address answered. Until 2026-11-29 Go's dialer gave each
// address part of the time (half of 4 s each here), and sessions got
// through.
func TestNameWithSilentFirstAddressWithinOneTimeout(t *testing.T) {
	port := silentAt(t)
	acceptAt(t, "127.0.0.2", port)
	b := nameBackend(t, `connect_timeout = "4s"
connect_budget = "4s"
[backend.health]
check = "off"
`, port, func() []string { return []string{"127.0.0.1", "127.0.0.2"} })
	var reached []string
	for range 3 {
		began := time.Now()
		time.Sleep(5 * time.Millisecond) // the accept, reading the app's opening
		c, err := b.NewPlan(began).Dial(context.Background(), b.Servers[0])
		if err != nil {
			reached = append(reached, "failed")
			continue
		}
		reached = append(reached, remoteIP(c))
		c.Close()
	}
	if reached[1] != "127.0.0.2" || reached[2] != "127.0.0.2" {
		t.Fatalf("three sessions: %v; after the first, want the address that answers", reached)
	}
}

// check accepts any port strconv.Atoi reads, "+1521" too, and Go's dialer
// dials it, as sessions did. The health check (and a name's dials) took
// the port as 0 (ParseUint says no to the sign) and dialed port 0: the
// server was down for good, /readyz 503, while sessions got through.
func TestServerPortWithSignIsChecked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b := testBackend(t, `[backend.health]
check = "tcp"
timeout = "300ms"
`+servers(fmt.Sprintf(`address = "127.0.0.1:+%d"`, ln.Addr().(*net.TCPAddr).Port)))
	if err := b.Servers[0].check(context.Background()); err != nil {
		t.Fatalf("the check of a listening server: %v", err)
	}
}

// A name whose DNS server does not answer: the dial fails at
// connect_timeout, and the connect-time metric says timeout, as the app's
// ORA-12170 does (a dashboard split by result must not show a resolver
// outage as an unknown fault). The DNS server is a real UDP socket on
// loopback that holds every query until the test ends, then answers
// SERVFAIL (Go's lookup goes on after the dial gave up on it, until its
// own timeout of 5 s a try).
func TestNameWhoseResolverIsSilentTimesOut(t *testing.T) {
	dns, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type query struct {
		from net.Addr
		msg  []byte
	}
	var mu sync.Mutex
	var held []query
	released := false
	servfail := func(q query) {
		q.msg[2] |= 0x80             // a response
		q.msg[3] = q.msg[3]&0xf0 | 2 // SERVFAIL
		dns.WriteTo(q.msg, q.from)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			buf := make([]byte, 512)
			n, from, err := dns.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 12 {
				continue
			}
			q := query{from, buf[:n]}
			mu.Lock()
			if released {
				servfail(q)
			} else {
				held = append(held, q)
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		released = true
		for _, q := range held {
			servfail(q)
		}
		mu.Unlock()
		time.Sleep(200 * time.Millisecond) // the lookups' retries, answered at once
		dns.Close()
		<-done
	})
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dns.LocalAddr().String())
	}}
	b := nameBackendResolved(t, `connect_timeout = "300ms"
connect_budget = "300ms"
`, 1521, func(ctx context.Context, host string) ([]netip.Addr, error) {
		return resolver.LookupNetIP(ctx, "ip", host)
	})
	srv := b.Servers[0]
	start := time.Now()
	c, err := b.NewPlan(start).Dial(context.Background(), srv)
	if err == nil {
		c.Close()
		t.Fatal("dialed a name no DNS server answers for")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the dial took %v, connect_timeout 300ms", took)
	}
	var m dto.Metric
	for _, result := range []string{"timeout", "error"} {
		m.Reset()
		b.metrics.ConnectDuration.WithLabelValues("b", srv.Address, result).(prometheus.Histogram).Write(&m)
		if n, want := m.GetHistogram().GetSampleCount(), map[string]uint64{"timeout": 1}[result]; n != want {
			t.Errorf("tnsguard_backend_connect_duration_seconds{result=%q} counted %d dials, want %d (error: %v)", result, n, want, err)
		}
	}
}

// A name of which one address is tnsguard itself (a database's name moved
// to the proxy on one address family first, AAAA before A, or a round
// robin that holds the proxy's host): a session whose dial came back to
// the proxy (the proxy's selfDials saw it and calls Looped) dials the
// name's next address at once, and later sessions dial that one first.
// Until 2026-11-30 the session ended at the loop, with no re-dial, and so
// did every later one: the database at the other address was never
// dialed.
func TestNameWithAnAddressThatIsTheProxy(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.1", port) // stands for the proxy's listener
	acceptAt(t, "127.0.0.2", port) // the database
	b := nameBackend(t, `connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  check = "off"
`, port, func() []string { return []string{"127.0.0.1", "127.0.0.2"} })
	srv := b.Servers[0]
	plan := b.NewPlan(time.Now())
	c, err := plan.Dial(context.Background(), srv)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := remoteIP(c); ip != "127.0.0.1" {
		t.Fatalf("the first dial reached %s, want the first address", ip)
	}
	if !plan.Looped(srv) {
		t.Fatal("Looped: false for a name with an address the session has not reached")
	}
	start := time.Now()
	next, err := plan.Next(context.Background())
	if err != nil || next != srv || time.Since(start) > 20*time.Millisecond {
		t.Fatalf("after Looped, Next gave %v, %v after %v; want the same server at once", next, err, time.Since(start))
	}
	c, err = plan.Dial(context.Background(), srv)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := remoteIP(c); ip != "127.0.0.2" {
		t.Fatalf("the re-dial reached %s, want the database's address", ip)
	}
	c, err = b.NewPlan(time.Now()).Dial(context.Background(), srv)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if ip := remoteIP(c); ip != "127.0.0.2" {
		t.Errorf("the next session reached %s first, want the database's address", ip)
	}
	// A name whose only address is the proxy: the session ends, as at a
	// server that is the proxy's own address.
	only := nameBackend(t, `connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  check = "off"
`, port, func() []string { return []string{"127.0.0.1"} })
	plan = only.NewPlan(time.Now())
	if c, err = plan.Dial(context.Background(), only.Servers[0]); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if plan.Looped(only.Servers[0]) {
		t.Error("Looped: true for a name whose every address led back")
	}
}

// A health check does not dial an address that is the proxy's own
// listener for this backend (OwnListener): one such address of a name
// fails (and goes after the others for sessions) while the database at
// another keeps the server up; a server with no other address is down.
// Until 2026-11-30 the check's connect to the proxy passed: the server was
// up and /readyz 200 with no database behind it, and each check was an
// app of that listener, whose session dialed itself.
func TestHealthCheckOfAnAddressThatIsTheProxy(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.1", port) // stands for the proxy's listener
	acceptAt(t, "127.0.0.2", port) // the database
	for _, tc := range []struct {
		addrs []string
		up    bool
	}{
		{[]string{"127.0.0.1", "127.0.0.2"}, true},
		{[]string{"127.0.0.1"}, false},
	} {
		b := testBackend(t, `  [backend.health]
  interval = "50ms"
  timeout = "40ms"
  rise = 1
  fall = 1
`+servers(fmt.Sprintf(`address = "db.example:%d"`, port)))
		b.lookup = func(context.Context, string) ([]netip.Addr, error) {
			var out []netip.Addr
			for _, a := range tc.addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out, nil
		}
		b.OwnListener = func(dst netip.AddrPort) string {
			if dst == netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)) {
				return "l"
			}
			return ""
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.Start(ctx)
		time.Sleep(300 * time.Millisecond)
		srv := b.Servers[0]
		if srv.Up() != tc.up {
			t.Errorf("%v: up = %v, want %v", tc.addrs, srv.Up(), tc.up)
		}
		if tc.up {
			c, err := b.NewPlan(time.Now()).Dial(ctx, srv)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if ip := remoteIP(c); ip != "127.0.0.2" {
				t.Errorf("a session reached %s first, want the database's address (the check failed the proxy's)", ip)
			}
		}
		cancel()
		b.Stop()
	}
}

// A name whose addresses change over time (a cloud load balancer's name,
// a headless service across rollouts, a database endpoint after
// failovers) keeps only what it needs of the addresses that failed: those
// that left the name and failed longer ago than they go last
// (Server.badFor) are forgotten. Until 2026-11-30 each address whose dial
// failed stayed in Server.addrBad until a dial of it succeeded, so every
// address that failed and then left the name stayed for the process's
// life (or until a reload): a map that grew with the name's changes, by
// time rather than by load.
func TestNameForgetsFailedAddressesThatLeftIt(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.1", port)
	var mu sync.Mutex
	gone := "127.0.1.1" // nothing listens there: refused at once
	b := nameBackend(t, `[backend.health]
check = "off"
[backend.breaker]
open_for = "50ms"
`, port, func() []string { mu.Lock(); defer mu.Unlock(); return []string{gone, "127.0.0.1"} })
	s := b.Servers[0]
	const rotations = 40
	for i := range rotations {
		mu.Lock()
		gone = fmt.Sprintf("127.0.1.%d", i+1)
		mu.Unlock()
		c, err := b.NewPlan(time.Now()).Dial(context.Background(), s)
		if err != nil {
			t.Fatalf("dial %d: %v (127.0.0.1 accepts)", i, err)
		}
		c.Close()
	}
	time.Sleep(100 * time.Millisecond) // past badFor (open_for, checks off)
	c, err := b.NewPlan(time.Now()).Dial(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.addrMu.Lock()
	n := len(s.addrBad)
	s.addrMu.Unlock()
	if n > 2 {
		t.Fatalf("the server remembers %d failed addresses after %d changes of its name's answer; "+
			"want at most the 2 it resolves to now", n, rotations)
	}
}

// A name of which one address is tnsguard itself while the database at the
// other refuses (down, restarting): a re-dial that comes back to the proxy
// again (the database's address refused within the same dial) is not
// re-queued at once; the session dials the name again at its plan's next
// round, after the pause, and reaches the database once it is back within
// connect_budget. Until this test Looped counted only the addresses the
// session had reached, which a refusing one never is: each re-dial came
// back and was re-queued at once, for all of connect_budget. Measured with
// the binary (a listener on 0.0.0.0:1521, a name of its own address and a
// refusing one, connect_budget 3s): one app made 1241 connections to its
// own listener (tnsguard_sessions_rejected_total{reason="self_dial"}) and
// 2,700 log lines ("server address failed" and "answers again" in turn).
func TestNameWithAnAddressThatIsTheProxyAndOneThatRefuses(t *testing.T) {
	port := freePort(t)
	acceptAt(t, "127.0.0.1", port) // stands for the proxy's listener
	// 127.0.0.2 on that port: nothing listens yet, the dial is refused.
	var log bytes.Buffer // written by the test's own dials only (checks off)
	b := testBackendLogged(t, `connect_timeout = "1s"
connect_budget = "2s"
backoff = "100ms"
backoff_max = "200ms"
  [backend.health]
  check = "off"
`+servers(fmt.Sprintf(`address = "db.example:%d"`, port)), hclog.New(&hclog.LoggerOptions{Output: &log, Level: hclog.Info}))
	b.lookup = func(context.Context, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	t.Cleanup(func() { cancel(); b.Stop() })
	back := time.AfterFunc(time.Second, func() { acceptAt(t, "127.0.0.2", port) }) // the database is back
	defer back.Stop()
	plan := b.NewPlan(time.Now())
	selfDials := 0
	for {
		next, err := plan.Next(context.Background())
		if err != nil {
			t.Fatalf("no session after %d dials of the proxy's own address: %v", selfDials, err)
		}
		c, err := plan.Dial(context.Background(), next)
		if next != b.Servers[0] {
			t.Fatalf("Next gave %v", next)
		}
		if err != nil {
			continue
		}
		c.Close()
		if remoteIP(c) == "127.0.0.2" {
			break // the database
		}
		selfDials++
		if !plan.Looped(next) {
			t.Fatalf("Looped: false after %d dials of the proxy's own address, for a name whose other address refused", selfDials)
		}
	}
	// One dial per round over 1 s of 100-200 ms pauses, not one per
	// refused dial.
	if selfDials > 12 {
		t.Errorf("%d dials of the proxy's own address before the database was back 1 s later: the session re-dialed itself at once", selfDials)
	}
	// Each address named once as failed, the database's once as back: a
	// connection to the proxy itself is no sign that its address answers
	// again (until then each round logged both lines, thousands a minute).
	if n, m := strings.Count(log.String(), "server address failed"), strings.Count(log.String(), "answers again"); n > 2 || m > 1 {
		t.Errorf("%d \"server address failed\" and %d \"answers again\" lines for one session:\n%s", n, m, log.String())
	}
}

// A reload that changes the backend (here connect_budget) rebuilds it. A
// name's address that failed still goes last for the sessions after the
// reload, as without one (the server's health state goes on over a
// reload: Inherit). The rebuilt server knew no failed address: the first
// session after every such reload waited connect_timeout on the silent
// address again (with health checks on, every session until the first
// check had timed out on it).
func TestReloadKeepsANamesFailedAddressLast(t *testing.T) {
	port := silentAt(t)
	acceptAt(t, "127.0.0.2", port)
	keys := `connect_timeout = "500ms"
connect_budget = "5s"
[backend.health]
check = "off"
`
	addrs := func() []string { return []string{"127.0.0.1", "127.0.0.2"} }
	dial := func(b *Backend) time.Duration {
		t.Helper()
		start := time.Now()
		c, err := b.NewPlan(start).Dial(context.Background(), b.Servers[0])
		if err != nil {
			t.Fatalf("dial: %v (the second address accepts)", err)
		}
		c.Close()
		return time.Since(start)
	}
	old := nameBackend(t, keys, port, addrs)
	dial(old) // finds the first address silent
	if took := dial(old); took > 200*time.Millisecond {
		t.Fatalf("the second session took %v before the reload: the silent address was not put last", took)
	}
	nb := testBackend(t, strings.Replace(keys, `connect_budget = "5s"`, `connect_budget = "6s"`, 1)+servers(fmt.Sprintf(`address = "db.example:%d"`, port)))
	nb.lookup = old.lookup
	old.Stop()
	nb.Inherit(old)
	ctx, cancel := context.WithCancel(context.Background())
	nb.Start(ctx)
	t.Cleanup(func() { cancel(); nb.Stop() })
	if took := dial(nb); took > 200*time.Millisecond {
		t.Fatalf("the first session after the reload took %v: it waited connect_timeout on the address known silent", took)
	}
}
