package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// watching is how many sources the stall watch holds: in its maps, and in
// the kernel's epoll set (its fdinfo's tfd lines).
func (w *stallWatch) watching(t *testing.T) (entries, kernel int) {
	t.Helper()
	w.mu.Lock()
	entries = len(w.byPump)
	if len(w.byID) != entries {
		t.Errorf("the stall watch holds %d entries by id, %d by pump", len(w.byID), entries)
	}
	w.mu.Unlock()
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", w.epfd))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(info), "\n") {
		if strings.HasPrefix(l, "tfd:") {
			kernel++
		}
	}
	return entries, kernel
}

// resultSetBackend answers each byte 'b' with blob, 'r' with a result set
// the app does not read (fillTowards) then a reset (its time on reset),
// and echoes anything else.
func resultSetBackend(t *testing.T, blob []byte, reset chan<- time.Time) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		b := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			switch b[0] {
			case 'b':
				if _, err := c.Write(blob); err != nil {
					return
				}
			case 'r':
				fillTowards(t, c)
				resetConn(c)
				reset <- time.Now()
				return
			default:
				c.Write(b)
			}
		}
	}
}

// A direction that waited for room, then drained, and whose session went
// dormant at once (before housekeeping's next tick): the watch must let go
// of its source in the kernel's epoll set too. Its conn is closed while a
// duplicate of the socket stays open (dormant.go), so the registration on
// (socket, fd number) outlives the close; when the session revives with the
// same fd number for that socket (the lowest free, as in a quiet proxy), the
// next stall's EPOLL_CTL_ADD fails with EEXIST and its source is not watched:
// the database's reset reaches the app only at checkStalled's look, once a
// second.
func TestStallWatchLetsGoOfDormantSessions(t *testing.T) {
	blob := bytes.Repeat([]byte("result-set "), 512<<10) // 5.5 MiB: more than every buffer on the way
	reset := make(chan time.Time, 1)
	be := newBackend(t, resultSetBackend(t, blob, reset))
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	if h.p.stalls == nil {
		t.Fatal("no stall watch (epoll unavailable?)")
	}
	c := h.dial("l")
	c.SetReadBuffer(64 << 10) // no autotuning: the blob stalls every time
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the session dormant", s.isDormant)

	got := make([]byte, len(blob))
	for round := range 4 {
		c.Write([]byte("b"))
		// The app does not read yet: the direction waits for room.
		waitFor(t, 5*time.Second, fmt.Sprintf("round %d: the waiting direction's source watched", round), func() bool {
			n, _ := h.p.stalls.watching(t)
			return n == 1
		})
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Time{})
		waitFor(t, 2*time.Second, "the session dormant again", s.isDormant)
		time.Sleep(3 * parkAfter) // housekeeping's ticks: the wait has ended
		if n, k := h.p.stalls.watching(t); n != 0 || k != 0 {
			t.Errorf("round %d: after the wait ended and the session went dormant: the watch holds %d entries, its epoll set %d sockets; want 0 and 0", round, n, k)
		}
	}

	// The database sends a result set the app does not read, then resets.
	c.Write([]byte("r"))
	srv := be.addr()
	waitFor(t, 8*time.Second, "the backend's reset reached the app's leg", func() bool {
		return counter(h.m.Resets, "l", "b", srv, "backend", "active", "rst") == 1
	})
	if took := time.Since(<-reset); took > 400*time.Millisecond {
		t.Errorf("the backend's reset reached the app's leg %v after it was sent, want under 400ms", took)
	}
	if _, err := readErr(c, 5*time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app saw %v, want ECONNRESET", err)
	}
}

// Many sessions whose directions wait for room and then drain, some ending
// while watched, some going dormant: the watch holds nothing afterwards, in
// its maps or in the kernel's epoll set. Every byte and the backend's FIN
// reach each app: a FIN on a watched source is not an end of the session.
func TestStallWatchHoldsNothingAfterManyStalls(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	be := newBackend(t, func(c *net.TCPConn) {
		b := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				c.CloseWrite() // as the app did
				return
			}
			if _, err := c.Write(blob); err != nil {
				return
			}
			if b[0] == 'f' {
				c.CloseWrite() // a FIN behind the blob, while the app does not read
				io.Copy(io.Discard, c)
				return
			}
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	const sessions = 12
	var wg, done sync.WaitGroup
	errc := make(chan error, sessions)
	closeAll := make(chan struct{})
	for i := range sessions {
		wg.Add(1)
		done.Add(1)
		go func() {
			defer wg.Done()
			c := h.dial("l")
			c.SetReadBuffer(64 << 10) // no autotuning: the blob stalls every time
			defer c.Close()
			finished := sync.OnceFunc(done.Done)
			defer finished()
			defer func() { finished(); <-closeAll }() // open (dormant or half-closed) until every session is done
			got := make([]byte, len(blob))
			for round := range 3 {
				cmd := "b"
				if round == 2 && i%2 == 0 {
					cmd = "f"
				}
				c.Write([]byte(cmd))
				time.Sleep(stallWatchAfter + 3*parkAfter) // the app does not read: watched
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				if _, err := io.ReadFull(c, got); err != nil {
					errc <- fmt.Errorf("session %d round %d: %w", i, round, err)
					return
				}
				if !bytes.Equal(got, blob) {
					errc <- fmt.Errorf("session %d round %d: bytes differ", i, round)
					return
				}
				if cmd == "f" {
					if n, err := c.Read(got[:1]); n != 0 || err != io.EOF {
						errc <- fmt.Errorf("session %d: after the blob %d bytes, %v; want the backend's FIN (EOF)", i, n, err)
					}
					return
				}
				time.Sleep(200 * time.Millisecond) // dormant meanwhile
			}
		}()
	}
	done.Wait()
	waitFor(t, 2*time.Second, "every open session dormant", func() bool {
		for _, s := range h.p.liveSessions() {
			if !s.isDormant() && s.legs.Load() == 2 {
				return false
			}
		}
		return true
	})
	time.Sleep(3 * parkAfter)
	if n, k := h.p.stalls.watching(t); n != 0 || k != 0 {
		t.Errorf("with %d sessions open whose waits ended: the watch holds %d entries, its epoll set %d sockets; want 0 and 0", len(h.p.liveSessions()), n, k)
	}
	close(closeAll)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	waitFor(t, 5*time.Second, "sessions ended", func() bool { return len(h.p.liveSessions()) == 0 })
	time.Sleep(3 * parkAfter)
	if n, k := h.p.stalls.watching(t); n != 0 || k != 0 {
		t.Errorf("after %d sessions stalled and ended: the watch holds %d entries, its epoll set %d sockets; want 0 and 0", sessions, n, k)
	}
	if v := sumCounters(t, h.m.Resets); v != 0 {
		t.Errorf("%v resets counted", v)
	}
}
