package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/test/loopback"
)

// ownIPv4 is a non-loopback IPv4 address of this host, or "" when it has
// none.
func ownIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
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

// freeWildcardPort is freePort for a listener on every address (0.0.0.0,
// [::], ":port"): a port outside the ephemeral range that [::] could bind
// a moment ago. A port freed from the ephemeral range can be drawn by any
// process's connect as its local port before the proxy binds it ("bind:
// address already in use"), and a wildcard bind clashes with that
// connection's port on every local address.
func freeWildcardPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := freePort(t)
		if ln, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", port)); err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no port outside the ephemeral range is free on every address")
	return 0
}

// loopEnds connects one app to listener and checks what a server that
// loops back to tnsguard must come to: the app is reset within (never
// served by its own dial), the loop dies out (no session left, few made),
// and the listener says why.
func loopEnds(t *testing.T, h *harness, listener string, within time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", h.addr(listener))
	if err == nil {
		defer c.Close()
		start := time.Now()
		// The reset may come before the write: the write then takes its
		// error, and the read finds a plain end of stream.
		if _, werr := c.Write([]byte("hello")); werr != nil {
			if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
				t.Errorf("the app's write: %v, want a reset", werr)
			}
		} else if _, err := readErr(c, within+time.Second); !errors.Is(err, syscall.ECONNRESET) || time.Since(start) > within {
			t.Errorf("the app got %v after %v, want a reset within %v", err, time.Since(start).Round(time.Millisecond), within)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err) // reset before connect returned: the same end, sooner
	}
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	if n := sumCounters(t, h.m.SessionsTotal); n > 20 {
		t.Errorf("one app connection made %v sessions: the listener dials itself in a loop", n)
	}
	if n := sumCounters(t, h.m.SessionsRejected); n == 0 {
		t.Errorf("no rejection counted (tnsguard_sessions_rejected_total{reason=\"self_dial\"})")
	}
}

// sumGauges is the sum of a gauge vector's series.
func sumGauges(g *prometheus.GaugeVec) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { g.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var pb dto.Metric
		m.Write(&pb)
		sum += pb.GetGauge().GetValue()
	}
	return sum
}

// A wildcard listener whose server is this host's own (non-loopback)
// address on the listener's port dials itself, and so does one whose
// server's name resolves to this host (a database name pointed at the
// proxy's host to move apps over to it): one app connection set off a
// loop that ran on by itself until the fds ran out (2,967 live sessions
// after 300 ms, thousands of log lines a second), as a localhost server
// did before check refused it. check cannot see it (the address, or a
// name resolving to it, is this host's only where tnsguard runs), so the
// running proxy must.
func TestServerAtTheHostsOwnAddressDoesNotLoop(t *testing.T) {
	h, _ := proxyAtItsOwnAddress(t)
	loopEnds(t, h, "l", time.Second) // at once: the listener's own session sees its dial come back
}

// The listener resets a connection that is one of tnsguard's own dials
// coming back round a loop, and counts nothing for it: the dialing session
// counts the loop, once for its app. Until 2026-11-30 the listener counted
// it too, so one app connection into a loop was 2 self_dial rejections with
// two warnings (8 for 3 apps with the real binary; through a followed
// REDIRECT too, TestRedirectBackToTnsguardEndsAtOnce), and a name with one
// address that is the proxy counted one for a session that the name's next
// address then served: TnsguardAppsRejected fired with every app served.
// Here the test is the dialer: its dial is noted before it connects.
func TestListenerCountsNothingForItsOwnDial(t *testing.T) {
	h := startProxy(t, `
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "127.0.0.1:1"
`)
	dst := netip.MustParseAddrPort(h.addr("l"))
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	d := &h.p.selfDials
	d.mu.Lock()
	d.ageLocked()
	d.cur[dialKey{local, dst}] = &selfDial{chain: []string{"l"}}
	d.n.Add(1)
	d.mu.Unlock()
	c, err := (&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local)}).Dial("tcp", dst.String())
	if err == nil {
		c.Write([]byte("hello"))
		if _, err = readErr(c, 3*time.Second); err == nil {
			t.Error("the dial was served")
		}
		c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	if v := counter(h.m.SessionsRejected, "l", "self_dial"); v != 0 {
		t.Errorf("rejected{reason=self_dial} = %v for tnsguard's own dial, want 0: its dialer counts the loop", v)
	}
	if v := sumCounters(t, h.m.SessionsTotal); v != 0 {
		t.Errorf("tnsguard_sessions_total = %v for tnsguard's own dial, want 0", v)
	}
}

// proxyAtItsOwnAddress is a proxy whose listener "l" (a wildcard) has one
// server, "b"'s: this host's own non-loopback IPv4 address on the
// listener's port, which it returns (the test is skipped without one).
func proxyAtItsOwnAddress(t *testing.T) (*harness, string) {
	t.Helper()
	ip := ownIPv4()
	if ip == "" {
		t.Skip("no non-loopback IPv4 address on this host")
	}
	port := freePort(t)
	h := startProxy(t, fmt.Sprintf(`
[[listener]]
name = "l"
listen = "0.0.0.0:%d"
backend = "b"
[[backend]]
name = "b"
connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "%s:%d"
`, port, ip, port))
	return h, fmt.Sprintf("%s:%d", ip, port)
}

// Two listeners whose backends are each other: a loop through both. The
// session whose dial comes back to a listener it came through ends, and
// that listener resets the dial.
func TestLoopThroughTwoListenersEnds(t *testing.T) {
	a, b := freePort(t), freePort(t)
	h := startProxy(t, fmt.Sprintf(`
[[listener]]
name = "a"
listen = "127.0.0.1:%d"
backend = "to-b"
[[listener]]
name = "b"
listen = "127.0.0.1:%d"
backend = "to-a"
[[backend]]
name = "to-b"
connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "127.0.0.1:%d"
[[backend]]
name = "to-a"
connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "127.0.0.1:%d"
`, a, b, b, a))
	loopEnds(t, h, "a", time.Second)
}

// A listener whose backend is another listener of the same tnsguard is a
// chain, not a loop: its dials are accepted (only a listener's own
// sessions' dials are refused by it).
func TestListenerChainIsServed(t *testing.T) {
	db := newBackend(t, echo)
	front := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // outside the ephemeral range: bound by startProxy below
	h := startProxy(t, fmt.Sprintf(`
[[listener]]
name = "front"
listen = %q
backend = "db"
[[listener]]
name = "local"
listen = "127.0.0.1:0"
backend = "via-front"
[[backend]]
name = "db"
  [[backend.server]]
  address = %q
[[backend]]
name = "via-front"
  [[backend.server]]
  address = %q
`, front, db.addr(), front))
	c, err := net.Dial("tcp", h.addr("local"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := exchange(c.(*net.TCPConn), []byte("chained"), 2*time.Second); err != nil || string(got) != "chained" {
		t.Fatalf("through the chain: %q, %v", got, err)
	}
	if n := counter(h.m.SessionsRejected, "front", "self_dial"); n != 0 {
		t.Fatalf("%v of the chain's dials refused as self dials", n)
	}
}

// A note of a dial that came back to its own listener (a loop) is kept 5
// to 10 s (selfDials), for that dial's accept to find. It was kept with no
// end: only a later self dial made the notes old (add), so once the loop
// was fixed (a reload) none came, and the note stayed. An app on this
// host whose connection has that dial's 4-tuple (its ephemeral port comes
// round again, minutes or hours later) was then reset as a self dial, with
// a warning naming a loop long gone; a backend dial from that local port
// that failed before its first byte (cameBack) ended its session instead
// of re-dialing. The same socket pair stands for the later connection here.
func TestSelfDialNotesEnd(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := selfDials{keep: 200 * time.Millisecond}
	d.listening([]listenAddr{{addrPortOf(ln.Addr()), "l", nil}})
	dialed, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	accepted, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	if loop, _ := d.add(dialed, nil, "l"); loop == nil {
		t.Fatal("a dial of listener l by its own session is not a loop")
	}
	d.markBack(accepted, []string{"l", "l"})
	if _, loop := d.ours(accepted, "l"); !loop {
		t.Fatal("the dial's accept is not found ours")
	}
	time.Sleep(3 * d.keep) // no other self dial meanwhile: the loop is fixed
	if chain, loop := d.ours(accepted, "l"); loop || chain != nil {
		t.Errorf("%v after the dial, a connection with its 4-tuple is still taken for it (chain %v, loop %v)", 3*d.keep, chain, loop)
	}
	if back, _ := d.cameBack(dialed); back != nil {
		t.Errorf("%v after the dial, a dial from its local address still came back (%v)", 3*d.keep, back)
	}
	if n := d.n.Load(); n != 0 {
		t.Errorf("%d notes counted with none kept: every same-host accept takes the lock", n)
	}
}

// Linux gives one local port to connections to different destinations at
// once (its 4-tuples differ). A note of a dial that came back is of that
// dial: a session's backend connection from the same local port to a
// server elsewhere, failing before its first byte (a database that resets
// it), was taken for the loop's (cameBack, which looked the note up by
// the local address alone) and ended its session as a self dial instead
// of re-dialing; markBack likewise marked whichever dial had the app's
// address.
func TestSelfDialNoteIsOfItsDestination(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	db, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var d selfDials
	d.listening([]listenAddr{{addrPortOf(ln.Addr()), "l", nil}})
	shared := portSharingDialer()
	c, err := shared.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	looped := c.(*net.TCPConn)
	accepted, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	shared.LocalAddr = looped.LocalAddr()
	c, err = shared.Dial("tcp", db.Addr().String()) // the same local port, to the database
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	toDB := c.(*net.TCPConn)

	if loop, _ := d.add(looped, nil, "l"); loop == nil {
		t.Fatal("a dial of listener l by its own session is not a loop")
	}
	d.markBack(accepted, []string{"l", "l"})
	if back, _ := d.cameBack(looped); back == nil {
		t.Fatal("the dial that came back is not known to have")
	}
	if back, _ := d.cameBack(toDB); back != nil {
		t.Errorf("a dial from %v to the database %v is taken for the loop's dial to %v (%v)", toDB.LocalAddr(), toDB.RemoteAddr(), looped.RemoteAddr(), back)
	}
}

// Two of the proxy's dials from one local port to two of its listeners
// (Linux shares a local port between 4-tuples that differ) are two notes:
// the second overwrote the first, whose accept was then not found ours, so
// a loop through the two listeners went unnoticed at that accept, and the
// first dial, never marked back, was re-dialed when the loop ended it.
func TestSelfDialNotesOfOneLocalPortToTwoListeners(t *testing.T) {
	var lns [2]*net.TCPListener
	var ls []listenAddr
	for i := range lns {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns[i] = ln
		ls = append(ls, listenAddr{addrPortOf(ln.Addr()), fmt.Sprintf("l%d", i+1), nil})
	}
	var d selfDials
	d.listening(ls)
	shared := portSharingDialer()
	var dialed, accepted [2]*net.TCPConn
	for i, ln := range lns {
		c, err := shared.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dialed[i] = c.(*net.TCPConn)
		shared.LocalAddr = dialed[i].LocalAddr() // the next dial shares the port
		if accepted[i], err = ln.AcceptTCP(); err != nil {
			t.Fatal(err)
		}
		defer accepted[i].Close()
	}
	// A session of l1 dials l2; a session of some app of l2 (chain l2) dials l1.
	if loop, _ := d.add(dialed[1], []string{"l1"}, "l1"); loop != nil {
		t.Fatalf("l1 -> l2 is a loop: %v", loop)
	}
	if loop, _ := d.add(dialed[0], []string{"l2"}, "l2"); loop != nil {
		t.Fatalf("l2 -> l1 is a loop: %v", loop)
	}
	if chain, _ := d.ours(accepted[1], "l2"); len(chain) != 1 || chain[0] != "l1" {
		t.Errorf("l2's accept of l1's dial from %v: chain %v, want [l1]", dialed[1].LocalAddr(), chain)
	}
	if chain, _ := d.ours(accepted[0], "l1"); len(chain) != 1 || chain[0] != "l2" {
		t.Errorf("l1's accept of l2's dial from %v: chain %v, want [l2]", dialed[0].LocalAddr(), chain)
	}
	d.markBack(accepted[1], []string{"l1", "l2", "l1"})
	if back, _ := d.cameBack(dialed[1]); back == nil {
		t.Error("the dial marked back is not known to have come back: its session re-dials")
	}
	if n := d.n.Load(); n != 2 {
		t.Errorf("%d notes counted, want 2", n)
	}
}

// portSharingDialer dials from 127.0.0.1 with SO_REUSEADDR, bound before
// connect: its dials may share one local port, as Linux lets connections
// to different destinations do (a bind by connect would not show it).
func portSharingDialer() net.Dialer {
	return net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		return nil
	}, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
}

// A server at this host's own address on a wildcard listener's port is the
// proxy itself: its health check fails, so the server is down and /readyz
// 503, and the checks set off no session. Until 2026-11-30 the check's
// connect to its own listener passed: the server was up and the proxy
// ready (a load balancer kept sending apps) while every session looped back
// and ended, and each check was itself an app of the listener, whose
// session dialed itself: two self_dial rejections, a client reset counted
// in tnsguard_resets_total and three warnings every interval, with no app
// connected.
func TestHealthCheckOfTheHostsOwnAddressFails(t *testing.T) {
	ip := ownIPv4()
	if ip == "" {
		t.Skip("no non-loopback IPv4 address on this host")
	}
	port := freePort(t)
	h := startProxy(t, fmt.Sprintf(`
[[listener]]
name = "l"
listen = "[::]:%d"
backend = "b"
[[backend]]
name = "b"
  [backend.health]
  interval = "50ms"
  timeout  = "40ms"
  rise     = 1
  fall     = 1
  [[backend.server]]
  address = "%s:%d"
`, port, ip, port))
	time.Sleep(500 * time.Millisecond) // ten checks
	if v := testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", fmt.Sprintf("%s:%d", ip, port))); v != 0 {
		t.Errorf("tnsguard_backend_up = %v for a server that is the proxy itself, want 0", v)
	}
	if ready, _ := h.p.Ready(); ready {
		t.Errorf("ready, with no server but the proxy itself")
	}
	if n := sumCounters(t, h.m.SessionsTotal); n != 0 {
		t.Errorf("%v sessions with no app connected: the health checks were served as apps", n)
	}
	if n := sumCounters(t, h.m.SessionsRejected); n != 0 {
		t.Errorf("%v connections rejected with no app connected: the health checks' sessions dialed themselves", n)
	}
}

// tnsguard's own dials to itself are no apps: none of them may be counted
// as an app's session or reset. Seen with a name of the proxy's address
// and a database's that is down: the accept of a self-dial can come before
// the dial is noted (selfdial.go), and the session it makes waits for its
// "app" to send its opening; the dialer then resets it, and that reset
// counted resets{side="client",phase="connect",cause="rst"} and
// sessions{outcome="reset"}, with a "session reset" warning each: 7 for 4
// apps in the lab.
func TestSelfDialIsNoAppReset(t *testing.T) {
	h, self := proxyAtItsOwnAddress(t)
	for range 300 { // each app's session dials itself once: the race is in about one of twenty
		c, err := net.Dial("tcp", h.addr("l"))
		if err != nil {
			continue
		}
		c.Write([]byte("hello"))
		readErr(c, 2*time.Second)
		c.Close()
	}
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	var resets float64
	for _, phase := range []string{"connect", "opening"} {
		for _, srv := range []string{"none", self} {
			resets += counter(h.m.Resets, "l", "b", srv, "client", phase, "rst")
		}
	}
	if resets != 0 {
		t.Errorf("resets{side=client,cause=rst} = %v: tnsguard's own dials counted as apps reset", resets)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "reset"); v != 0 {
		t.Errorf("sessions{outcome=reset} = %v: tnsguard's own dials counted as app sessions", v)
	}
}

// The same race where the opening waits for the app's CONNECT (a listener
// that routes by service): the dialer's reset reaches the app's direction,
// which ends the session as a self-dial (selfDialReset), and wakes the
// routing, after which the opening asks again whether its app is one of
// the proxy's dials (open) and ends it as a self-dial once more: 2
// rejections for one connection. The session's app is tnsguard's own dial,
// so it counts none since 2026-11-30: the dialer counts the loop, once for
// its app (TestListenerCountsNothingForItsOwnDial). Under load (-race, two CPU burners)
// TestSelfDialIsNoAppReset's sessions did the same 22 times in 30 runs,
// also where such a session had dialed itself before the reset came (its
// dial's loop, then the reset). Here the test is the dialer: it
// notes its connection as the proxy's own dial is noted, after the
// listener's accept, then resets it.
func TestSelfDialResetDuringTheOpeningCountsOnce(t *testing.T) {
	h := startProxy(t, `
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
services = ["SALES"]
routes = { "SALES" = "b", "*" = "b" }
[[backend]]
name = "b"
connect_timeout = "1s"
connect_budget = "5s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "127.0.0.1:1"
`)
	c, err := net.Dial("tcp", h.addr("l"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 2*time.Second, "the session", func() bool { return sumGauges(h.m.SessionsActive) == 1 })
	tc := c.(*net.TCPConn)
	if loop, _ := h.p.selfDials.add(tc, nil, "l"); loop == nil {
		t.Fatal("the test's dial is not noted as a loop")
	}
	tc.SetLinger(0)
	tc.Close()
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	time.Sleep(100 * time.Millisecond) // the other path, if it counts too
	if v := counter(h.m.SessionsRejected, "l", "self_dial"); v != 0 {
		t.Errorf("rejected{reason=self_dial} = %v for the session of tnsguard's own dial, want 0 (the dialer counts)", v)
	}
	if v := sumCounters(t, h.m.SessionsTotal); v != 0 {
		t.Errorf("tnsguard_sessions_total = %v for the session of tnsguard's own dial, want 0", v)
	}
	for _, phase := range []string{"connect", "opening"} {
		if v := counter(h.m.Resets, "l", "b", "none", "client", phase, "rst"); v != 0 {
			t.Errorf("resets{side=client,phase=%s,cause=rst} = %v: the self-dial counted as an app's reset", phase, v)
		}
	}

	// A real app's reset at the same point is the app's reset, once.
	app, err := net.Dial("tcp", h.addr("l"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the app's session", func() bool { return sumGauges(h.m.SessionsActive) == 1 })
	app.(*net.TCPConn).SetLinger(0)
	app.Close()
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	time.Sleep(100 * time.Millisecond)
	var resets float64
	for _, phase := range []string{"connect", "opening"} {
		resets += counter(h.m.Resets, "l", "b", "none", "client", phase, "rst")
	}
	if resets != 1 {
		t.Errorf("resets{side=client,cause=rst} = %v after an app's reset in the opening, want 1", resets)
	}
	if v := counter(h.m.SessionsRejected, "l", "self_dial"); v != 0 {
		t.Errorf("rejected{reason=self_dial} = %v after an app's reset, want 0 still", v)
	}
}

// A dial of the proxy's own listener can be reset before connect returns:
// the listener accepts it before its dialer has noted it, so that accept's
// session takes it for an app, dials itself, finds the loop and resets it.
// The dialer took that reset for the server's: it re-dialed after each
// backoff (each re-dial another such session counted as an app's), and
// with checks off marked the server down and opened its circuit, though a
// loop is no verdict on the server. Apps connecting one after the other,
// as a pool refills, set that off: 30 of them with the real binary on two
// cores gave 8 re-dials, tnsguard_backend_up 0 and an open circuit, and
// apps reset up to 600 ms late. Now such a reset ends the session as the
// loop it is, at once. Each race still counts one self_dial too many: the
// accept's session counted the loop for the dial, which its dialer cannot
// tell from an app's.
func TestLoopDialResetBeforeConnectIsNoServerFailure(t *testing.T) {
	h, server := proxyAtItsOwnAddress(t)
	const apps = 100
	for range apps {
		c, err := net.Dial("tcp", h.addr("l"))
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			continue
		}
		c.Write([]byte("hello"))
		readErr(c, 5*time.Second)
		c.Close()
	}
	waitFor(t, 5*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	if n := sumCounters(t, h.m.Redials); n != 0 {
		t.Errorf("%v re-dials for %d apps into a loop, want none: a loop ends its session at once", n, apps)
	}
	if v := testutil.ToFloat64(h.m.BreakerState.WithLabelValues("b", server)); v != metrics.BreakerClosed {
		t.Errorf("the server's breaker is %v after a loop, want closed: a loop is no verdict on the server", v)
	}
	if v := testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", server)); v != 1 {
		t.Errorf("tnsguard_backend_up = %v after a loop with checks off, want 1: a loop is no verdict on the server", v)
	}
	if n := counter(h.m.SessionsRejected, "l", "self_dial"); n < apps {
		t.Errorf("%v self_dial rejections for %d apps, want one for each at least", n, apps)
	}
}

// sock_diag's exact lookup of a connection that does not exist answers
// with the listening socket on its port (seen on Linux 6.18): taken for the
// accepted side of a loop, it made every dial that this host's NAT sends to
// a database a loop again (TestLabServerBehindTheHostsOwnNATIsNoLoop in
// test/lab). A connection's two ends are found, and a dial whose other end
// is a listener's accepted socket is one that reached this host.
func TestSockDiagTellsAConnectionFromAListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !acceptedHere(local, remote) {
		t.Errorf("a dial to a listener of this host (not yet accepted): its other end not found")
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Skipf("no sock_diag here: %v", err)
	}
	defer unix.Close(fd)
	none := netip.AddrPortFrom(local.Addr(), 1) // no connection from there
	if found, _, err := tcpSocketAt(fd, remote, none); err != nil || found {
		t.Errorf("a connection from %v to the listener %v that does not exist: found %v, %v; want not found", none, remote, found, err)
	}
}

// A dial that what it reached reset at once (a server behind this host's
// NAT at its connection limit) has no socket left when the kernel is
// asked: with the listener on its port answering, sock_diag works and no
// socket here holds the dial's other end, so it is no loop. Until
// 2026-12-01 a dial whose own socket was gone was "sock_diag cannot tell",
// a loop: the app ended as a self_dial, its next server untried.
func TestSockDiagOfADialResetAtOnceIsNoLoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.(*net.TCPConn).SetLinger(0)
	a.Close() // a reset: no socket here holds the dial's other end now
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial: %v, want the reset", err)
	}
	if acceptedHere(addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())) {
		t.Errorf("a dial reset by what it reached, no socket left at either end: taken for a loop")
	}
}

// The proxy notes its dials to a server's address only while this host's
// NAT has lately sent a connection to that address to a listener
// (arrived): one redirected app does not make every dial to that server
// take a lock for good. Quiet for natQuiet, the route goes, and so does
// the noting; a dial to another address is never noted.
func TestSelfDialNotesThroughTheHostsNATGoQuiet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	server := addrPortOf(ln.Addr())
	dial := func() *net.TCPConn {
		t.Helper()
		c, err := net.Dial("tcp", server.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.TCPConn)
	}
	var d selfDials
	noted := func() int64 { return d.n.Load() }
	if d.add(dial(), nil, "orders"); noted() != 0 {
		t.Fatalf("%d dials noted with no NAT route seen, want 0", noted())
	}
	r := &natRoute{orig: server, to: netip.MustParseAddrPort("127.0.0.1:1522")}
	r.seen.Store(time.Now().UnixNano())
	other := &natRoute{orig: netip.MustParseAddrPort("192.0.2.9:1521"), to: r.to}
	other.seen.Store(time.Now().UnixNano())
	d.nat.Store(&[]*natRoute{other})
	if d.add(dial(), nil, "orders"); noted() != 0 {
		t.Fatalf("%d dials noted with a NAT route of another address, want 0", noted())
	}
	d.nat.Store(&[]*natRoute{r})
	if d.add(dial(), nil, "orders"); noted() != 1 {
		t.Fatalf("%d dials noted with a NAT route of the server's address seen now, want 1", noted())
	}
	r.seen.Store(time.Now().Add(-natQuiet - time.Second).UnixNano())
	if d.add(dial(), nil, "orders"); noted() != 1 {
		t.Errorf("%d dials noted, want the one before the route went quiet", noted())
	}
	if d.nat.Load() != nil {
		t.Errorf("NAT routes kept after %v quiet, want none: each dial would scan them", natQuiet)
	}
}

// A health check of a server's address is dialed as the proxy's own
// (ownListener names a listener) when this host's NAT lately sent that
// address to the listener at the route's address, whatever that listener
// is called now (a reload renames it: the route outlives the name), and by
// the route the NAT took last: after its rule moved the server's port
// from one listener to another, the one it sends checks to now, not the
// one it sent them to until then, which goes quiet a minute later.
func TestSelfDialCheckOfANATedServerNamesTheListenerItReachesNow(t *testing.T) {
	server := netip.MustParseAddrPort("192.0.2.7:1521")
	orders := netip.MustParseAddrPort("127.0.0.1:1522")
	sales := netip.MustParseAddrPort("127.0.0.1:1523")
	route := func(to netip.AddrPort, ago time.Duration) *natRoute {
		r := &natRoute{orig: server, to: to}
		r.seen.Store(time.Now().Add(-ago).UnixNano())
		return r
	}
	var d selfDials
	d.listening([]listenAddr{{netip.MustParseAddrPort("0.0.0.0:1522"), "orders", []string{"orders"}}})
	d.nat.Store(&[]*natRoute{route(orders, 0)})
	if l := d.ownListener("orders")(server); l != "orders" {
		t.Fatalf("check of %v, which the NAT sends to listener orders: ownListener %q, want \"orders\"", server, l)
	}
	// Reloaded: the listener at 1522 is called sales now, as its backend.
	d.listening([]listenAddr{{netip.MustParseAddrPort("0.0.0.0:1522"), "sales", []string{"sales"}}})
	if l := d.ownListener("sales")(server); l != "sales" {
		t.Errorf("after a rename, check of %v, which the NAT still sends to the listener at %v: ownListener %q, want \"sales\"", server, orders, l)
	}
	// Two listeners; the rule sent the server's port to orders until 10 s
	// ago, and to sales since.
	d.listening([]listenAddr{
		{netip.MustParseAddrPort("0.0.0.0:1522"), "orders", []string{"orders"}},
		{netip.MustParseAddrPort("0.0.0.0:1523"), "sales", []string{"sales"}},
	})
	d.nat.Store(&[]*natRoute{route(orders, 10*time.Second), route(sales, 0)})
	if l := d.ownListener("sales")(server); l != "sales" {
		t.Errorf("check of %v, which the NAT sends to sales now: ownListener %q, want \"sales\"", server, l)
	}
	if l := d.ownListener("orders")(server); l != "" {
		t.Errorf("check of %v, which the NAT no longer sends to orders: ownListener %q, want \"\"", server, l)
	}
}

// A health check that this host's NAT sends to a listener keeps the NAT
// route it took (arrived), and a check that finds no route is dialed as an
// app's would be, passes, and sets off a loop. Checks at an interval longer
// than natQuiet found the route gone every time, and so passed every time:
// the server up, /readyz 200, a self_dial per check. The route is kept for
// twice the longest interval of the proxy's checks.
func TestSelfDialNATRouteOutlivesTheLongestCheckInterval(t *testing.T) {
	server := netip.MustParseAddrPort("192.0.2.7:1521")
	var d selfDials
	d.listening([]listenAddr{{netip.MustParseAddrPort("0.0.0.0:1522"), "orders", []string{"orders"}}})
	r := &natRoute{orig: server, to: netip.MustParseAddrPort("127.0.0.1:1522")}
	d.checking(2 * time.Minute)
	// The last check, which the NAT sent to the listener, 2 minutes ago.
	r.seen.Store(time.Now().Add(-2*time.Minute + time.Second).UnixNano())
	d.nat.Store(&[]*natRoute{r})
	if l := d.ownListener("orders")(server); l != "orders" {
		t.Errorf("checks every 2m, the last sent to listener orders by the NAT %v ago: ownListener %q, want \"orders\" (its check dialed as the proxy's own)",
			time.Since(time.Unix(0, r.seen.Load())).Round(time.Second), l)
	}
	d.checking(5 * time.Second)
	if l := d.ownListener("orders")(server); l != "" {
		t.Errorf("checks every 5s, the route quiet for %v: ownListener %q, want \"\"", natQuiet, l)
	}
}
