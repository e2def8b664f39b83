package proxy

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
// test must know the port of before the config is written.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
		c.Write([]byte("hello"))
		if err, took := readErr(c, within+time.Second); !errors.Is(err, syscall.ECONNRESET) || took > within {
			t.Errorf("the app got %v after %v, want a reset within %v", err, took.Round(time.Millisecond), within)
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
	loopEnds(t, h, "l", time.Second) // at once: the listener's own session sees its dial come back
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := ln.Addr().String()
	ln.Close()
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
