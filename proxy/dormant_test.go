package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

// A dormant session has let go of its conns but not of its sockets: the
// keepalive and user timeout set on both legs are still there, the link
// still reports the backend socket's RTT, and small messages with pauses
// are passed on by the lot on the bare fds without waking it. A burst that
// needs a goroutine wakes it; it sleeps again once both directions park.
func TestDormantSessionKeepsItsSockets(t *testing.T) {
	h, be, c := parkedSession(t, echoNoAlloc)
	s := sessionOf(t, h.p, c)
	legSettings(t, s,
		keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second},
		keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})
	if st := linkOf(t, h.p, be.addr()); st.SessionsActive != 1 || st.RTTSeconds == nil || *st.RTTSeconds <= 0 {
		t.Fatalf("link of a dormant session: %d sessions, RTT %v; want 1 and the socket's RTT", st.SessionsActive, st.RTTSeconds)
	}

	for i := range 3 {
		time.Sleep(60 * time.Millisecond) // past the park delay: the lot moves it
		echoed(t, c, "ping"+string(rune('0'+i)))
		if !s.isDormant() {
			t.Fatalf("message %d woke the session: small messages should pass on the bare fds", i)
		}
	}

	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte(i*13 + 1)
	}
	go c.Write(big)
	got := make([]byte, len(big))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("bulk through a dormant session: %v", err)
	}
	sameBytes(t, "bulk through a dormant session", got, big)
	waitFor(t, 2*time.Second, "dormant again after the burst", s.isDormant)
	echoed(t, c, "after")
	if n := counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") + counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "rst"); n != 0 {
		t.Fatalf("%v resets counted", n)
	}
}

// The idle timeout ends a dormant session like any other: the app gets an
// RST at once and the backend's connection is closed.
func TestDormantSessionIdleTimeout(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h := startProxy(t, withListenerKeys(oneBackendConfig(be.addr()), `idle_timeout = "1s"`))
	parkSoon(t, h, 30*time.Millisecond)
	c := h.dial("l")
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
	took, err := readErr(c, 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read %v after %v, want ECONNRESET at the idle timeout", err, took)
	}
	if _, berr := readErr(be.accepted()[0], 2*time.Second); errors.Is(berr, os.ErrDeadlineExceeded) {
		t.Fatal("the backend connection was left open")
	}
	waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	if parked(h) != 0 {
		t.Fatalf("%d pumps still parked", parked(h))
	}
}

// A dormant session that must wake while the process is out of fds (a
// revive needs three more for a moment) wakes on the proxy's reserve
// (fdreserve.go): other apps' sessions ran the fds out, and its app's query
// and the database's answer still pass, within a second, while the shortage
// lasts. The reserve is whole again after, and the session never waited.
func TestDormantSessionWakesOnTheReserveOutOfFDs(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	const n = 3
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = h.dial("l")
		echoed(t, conns[i], "hello")
		s := sessionOf(t, h.p, conns[i])
		waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
	}
	dropSplicePipes()

	var hoard fdHoard
	defer hoard.free()
	hoard.grab(t)
	big := make([]byte, 1<<20) // a full buffer: the lot must revive the session
	for i := range big {
		big[i] = byte(i*31 + 7)
	}
	// Each revive gives the reserve back, so the next session wakes on it
	// too.
	for i, c := range conns {
		start := time.Now()
		go c.Write(big)
		got := make([]byte, len(big))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("session %d: bulk out of fds: %v", i, err)
		}
		sameBytes(t, "bulk out of fds", got, big)
		if took := time.Since(start); took > time.Second {
			t.Errorf("session %d: the bulk took %v out of fds", i, took)
		}
		if n := h.p.reserve.held(); n != reviveFDs {
			t.Fatalf("session %d: the reserve holds %d fds after the revive, want %d", i, n, reviveFDs)
		}
		hoard.grab(t) // any fd another open freed meanwhile
	}
	if strings.Contains(logs.String(), "out of file descriptors") {
		t.Errorf("a session waited for fds with the reserve whole:\n%s", logs.String())
	}
	hoard.free()
	for _, c := range conns {
		echoed(t, c, "after")
	}
}

// A dormant session that must wake while the process is out of fds and
// its reserve is spent waits for fds instead of failing, and says so in
// the log: the bulk sent meanwhile arrives intact once fds are free again.
func TestDormantSessionRevivesOutOfFDs(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	c := h.dial("l")
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the session dormant", s.isDormant)

	dropSplicePipes() // or the revive below could get one of their fds

	var hoard fdHoard
	defer hoard.free()
	hoard.grabWithReserve(t, h.p)
	big := make([]byte, 1<<20) // a full buffer: the lot must revive the session
	for i := range big {
		big[i] = byte(i*31 + 7)
	}
	go c.Write(big)
	waitFor(t, 2*time.Second, "the wait for fds logged", func() bool {
		hoard.grab(t)
		return strings.Contains(logs.String(), "out of file descriptors")
	})
	hoard.free()
	got := make([]byte, len(big))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("bulk after fds ran out: %v", err)
	}
	sameBytes(t, "bulk after fds ran out", got, big)
}

// A dormant session that cannot revive for want of fds (its reserve spent)
// for longer than reviveRetryFor ends with a reset, counted as tnsguard's
// doing (cause proxy), not as the app's or database's failure (cause
// error). Both legs are reset: the app's bytes that woke it were dropped,
// and a FIN would tell the database the app had finished.
func TestReviveOutOfFDsTooLongIsCountedAsTnsguards(t *testing.T) {
	dbEnd := make(chan error, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				dbEnd <- err
				return
			}
			c.Write(buf[:n])
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	c := h.dial("l")
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
	dropSplicePipes()
	var hoard fdHoard
	defer hoard.free()
	hoard.grabWithReserve(t, h.p)
	go c.Write(make([]byte, 1<<20)) // bulk: the lot must revive
	for end := time.Now().Add(reviveRetryFor + 2*time.Second); time.Now().Before(end) && len(h.p.liveSessions()) > 0; {
		hoard.grab(t)
		time.Sleep(10 * time.Millisecond)
	}
	hoard.free()
	waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	resets := h.p.Resets(0)
	if len(resets) != 1 || resets[0].Cause != "proxy" {
		t.Errorf("resets %+v, want one with cause proxy", resets)
	}
	if err := endOf(t, dbEnd, 2*time.Second, "the database leg"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the database saw %v, want ECONNRESET", err)
	}
}

// Sessions falling asleep and waking all the time (park delay 1 ms, pauses
// around it) while the drain timeout closes them: every app connection is
// closed, none is kept open by a session that went dormant as it was being
// closed, and Shutdown returns.
func TestDormancyRacesDrain(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, time.Millisecond)
	const n = 40
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = h.dial("l")
		echoed(t, conns[i], "x")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				time.Sleep(time.Duration((i+k)%4) * 500 * time.Microsecond)
				c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(buf[:1+(i+k)%64]); err != nil {
					return
				}
				if _, err := io.ReadFull(c, buf[:1+(i+k)%64]); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	defer func() { close(stop); wg.Wait() }()
	shutdownClosesAll(t, h, 50*time.Millisecond, conns)
}
