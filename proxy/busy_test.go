package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

// Busy sessions of small messages are carried by the lot (idle.go): while
// lotMinBusy sessions are busy at once, after hotAfter messages in a row a
// pump hands its socket to the lot at the next EAGAIN, the session goes
// dormant, and the lot moves each message on the bare fds. These tests make
// the idle park delay an hour, so only the busy path can get a session
// there, and (but for the last) count any busy session as enough.

// scriptBackend answers one-byte commands: 'p' with "ok", 'B' with bulk
// (bigReply bytes), 'q' with "last message" and a close, 'r' with "last
// message" and a reset.
const bigReply = 4 << 20

func scriptBackend(t *testing.T) *backendServer {
	big := bytes.Repeat([]byte("0123456789abcdef"), bigReply/16)
	return newBackend(t, func(c *net.TCPConn) {
		b := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			switch b[0] {
			case 'p':
				c.Write([]byte("ok"))
			case 'B':
				c.Write(big)
			case 'q', 'r':
				c.Write([]byte("last message"))
				if b[0] == 'r' {
					resetConn(c)
				} else {
					c.Close()
				}
				return
			}
		}
	})
}

// busySession dials through a proxy whose pumps never park for idleness,
// and makes n round trips back to back.
func busySession(t *testing.T, h *harness, n int) *net.TCPConn {
	t.Helper()
	h.p.parking.setAfter(time.Hour)
	h.p.lotMinBusy.Store(0)
	c := h.dial("l")
	pings(t, c, n)
	return c
}

func pings(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	b := make([]byte, 2)
	for i := range n {
		if _, err := c.Write([]byte("p")); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
			t.Fatalf("round trip %d: %q, %v", i, b, err)
		}
	}
}

// A session busy with small messages goes dormant without a pause, and the
// lot carries every message on from then on: none lost, every byte
// counted.
func TestBusySessionMovesToTheLot(t *testing.T) {
	h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
	c := busySession(t, h, 2*hotAfter+10)
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the busy session dormant", s.isDormant)
	pings(t, c, 500)
	if !s.isDormant() {
		t.Fatal("the session woke up: the lot should carry a busy session's small messages")
	}
	if n := h.p.parking.count(); n != 2 {
		t.Fatalf("%d directions in the lot, want 2", n)
	}
	n := float64(2*hotAfter + 10 + 500)
	waitFor(t, time.Second, "the bytes counted", func() bool {
		return counter(h.m.Bytes, "l", "b", "to_backend") == n && counter(h.m.Bytes, "l", "b", "to_client") == 2*n
	})
}

// A message and the end of its stream that arrive together reach the app
// together on a session the lot carries. The lot reads once per wake and
// stops after a short read; the end is not lost because the edge-triggered
// entry reports it (EPOLLRDHUP) with the edge. Were it lost, nothing would
// pass the end on: the idle deadline is an hour here.
func TestBusySessionLastMessageAndEnd(t *testing.T) {
	lastMessageAndEnd(t, func(t *testing.T, h *harness) *net.TCPConn {
		c := busySession(t, h, hotAfter+10)
		waitFor(t, 2*time.Second, "the busy session dormant", sessionOf(t, h.p, c).isDormant)
		return c
	})
}

// lastMessageAndEnd asks scriptBackend, on 20 sessions that open gives,
// for its last message and then its end (close, or reset), and wants the
// end at the app at once after the message.
func lastMessageAndEnd(t *testing.T, open func(*testing.T, *harness) *net.TCPConn) {
	for _, end := range []string{"close", "reset"} {
		t.Run(end, func(t *testing.T) {
			h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
			var worst time.Duration
			for range 20 {
				c := open(t, h)
				cmd, want := "q", error(io.EOF)
				if end == "reset" {
					cmd, want = "r", syscall.ECONNRESET
				}
				c.Write([]byte(cmd))
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, len("last message"))); err != nil {
					t.Fatal(err)
				}
				took, err := readErr(c, 2*time.Second)
				if !errors.Is(err, want) {
					t.Fatalf("after the last message the app saw %v (after %v), want %v", err, took, want)
				}
				worst = max(worst, took)
				c.Close()
			}
			if worst > 60*time.Millisecond { // a lost end would come at the idle deadline, or never
				t.Errorf("the end reached the app up to %v after the last message, want at once", worst)
			}
			t.Logf("worst: %v", worst)
		})
	}
}

// Bulk on a session the lot carries wakes it (a full read needs its
// goroutine and splice), arrives whole, and the session goes back to the
// lot once small messages follow again.
func TestBusySessionBulkAndBack(t *testing.T) {
	h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
	c := busySession(t, h, hotAfter+10)
	s := sessionOf(t, h.p, c)
	for round := range 3 {
		waitFor(t, 2*time.Second, fmt.Sprintf("round %d: the busy session dormant", round), s.isDormant)
		c.Write([]byte("B"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, bigReply)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("round %d: bulk: %v", round, err)
		}
		sameBytes(t, "bulk", got, bytes.Repeat([]byte("0123456789abcdef"), bigReply/16))
		if s.isDormant() {
			t.Fatalf("round %d: still dormant after 4 MiB: bulk should have woken the session", round)
		}
		pings(t, c, hotAfter+10)
	}
}

// A session that wakes keeps its sockets' keepalive. net.FileConn, which
// makes the conns again, turns on Go's default keepalive (15 s, 15 s, 9)
// on the socket: the configured values were lost at every wake, which busy
// sessions go through at each bulk reply.
func TestWokenSessionKeepsItsKeepalive(t *testing.T) {
	h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
	c := busySession(t, h, hotAfter+10)
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the busy session dormant", s.isDormant)
	c.Write([]byte("B")) // bulk wakes it
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, bigReply)); err != nil {
		t.Fatal(err)
	}
	appLeg := keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second}
	dbLeg := keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second}
	legSettings(t, s, appLeg, dbLeg) // awake
	pings(t, c, hotAfter+10)
	waitFor(t, 2*time.Second, "the busy session dormant again", s.isDormant)
	legSettings(t, s, appLeg, dbLeg)
}

// A lone busy session keeps its goroutines: at 1 connection they answer
// faster than the lot. Once lotMinBusy sessions are busy at once (as
// housekeeping counts them, every parkAfter), busy sessions move to the lot.
func TestLoneBusySessionKeepsItsGoroutines(t *testing.T) {
	h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
	h.p.parking.setAfter(time.Hour)
	c := h.dial("l")
	s := sessionOf(t, h.p, c)
	for start := time.Now(); time.Since(start) < time.Second; { // housekeeping counts ten times
		pings(t, c, hotAfter)
	}
	if s.isDormant() {
		t.Fatal("a lone busy session went to the lot")
	}
	var conns []*net.TCPConn
	for range lotMinBusy {
		conns = append(conns, h.dial("l"))
	}
	waitFor(t, 5*time.Second, "busy sessions dormant once enough are busy", func() bool {
		for _, c := range conns {
			pings(t, c, 4) // all of them within parkAfter, on a loaded machine too
		}
		return sessionOf(t, h.p, conns[0]).isDormant()
	})
}
