package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A middlebox that forgot an idle session resets it on the first bytes
// after the pause: that death is counted in the idle phase (not active),
// and the link logs, once, the keepalive that would have prevented it.
func TestIdleDeathAdvice(t *testing.T) {
	// The "database" answers the first message, then, like a load balancer
	// that forgot the flow, resets on the next bytes after a pause.
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		io.ReadFull(c, buf)
		resetConn(c)
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "idle = \"11s\"", "idle = \"1s\"", 1)
	h, logs := startProxyLog(t, cfg)
	for i := 0; i < 2; i++ {
		c := h.dial("l")
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1300 * time.Millisecond) // longer than the backend keepalive idle (1s)
		c.Write([]byte("y"))
		if err, _ := readErr(c, 2*time.Second); err == nil {
			t.Fatal("no reset")
		}
	}
	waitFor(t, time.Second, "idle-phase resets", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 2
	})
	advice := logs.lines("sessions on this link die while idle")
	if len(advice) != 1 {
		t.Fatalf("%d advice lines, want exactly 1 (at most once an hour):\n%s", len(advice), strings.Join(advice, "\n"))
	}
	for _, want := range []string{"path_idle_timeout=1s", "table=\"[backend.keepalive] of backend b\""} {
		if !strings.Contains(advice[0], want) {
			t.Errorf("advice lacks %s: %s", want, advice[0])
		}
	}
}

// The same death after a pause shorter than keepalive idle: a load balancer
// that forgets flows sooner than the keepalive refreshes them resets the
// first bytes after the pause. The pause lost the flow, so the end is
// idle, with the pause as its idle time, as when such a middlebox drops
// the bytes (phaseNow); until the fix a reset counted idle only after a
// pause of keepalive idle, so the advice never came for the keepalive
// idle that was too long.
func TestResetAfterAPauseShorterThanKeepaliveIsIdle(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		io.ReadFull(c, buf)
		resetConn(c)
	})
	h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // backend keepalive idle 11s
	c := h.dial("l")
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	c.Write([]byte("y"))
	if err, _ := readErr(c, 2*time.Second); err == nil {
		t.Fatal("no reset")
	}
	waitFor(t, time.Second, "an idle-phase reset", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
	})
	waitFor(t, 2*time.Second, "the keepalive advice, shortest_idle_at_death=2s", func() bool {
		advice := logs.lines("sessions on this link die while idle")
		return len(advice) == 1 && strings.Contains(advice[0], "shortest_idle_at_death=2s")
	})
}
