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

	"golang.org/x/sys/unix"
)

// pathModes runs f with sessions that go dormant on the lot after 30 ms
// idle, and with sessions that keep their goroutines.
func pathModes(t *testing.T, f func(t *testing.T, h *harness, dormant bool), toml string) {
	for _, mode := range []string{"dormant", "goroutines"} {
		t.Run(mode, func(t *testing.T) {
			h := startProxy(t, toml)
			if mode == "dormant" {
				parkSoon(t, h, 30*time.Millisecond)
			} else {
				parkSoon(t, h, time.Hour)
			}
			f(t, h, mode == "dormant")
		})
	}
}

// A backend reset that arrives as the app sends a message: the write of
// that message to the backend socket takes the reset, and the backend ->
// app direction then reads a plain 0. That was passed on as a FIN, so the
// app saw a clean EOF (in 1-4 of 60 trials on either path) instead of the
// reset the contract promises.
func TestBackendResetWhileAppSends(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	pathModes(t, func(t *testing.T, h *harness, dormant bool) {
		const trials = 40
		eofs := 0
		for i := range trials {
			c := h.dial("l")
			echoed(t, c, "hello")
			if s := sessionOf(t, h.p, c); dormant {
				waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
			} else {
				time.Sleep(5 * time.Millisecond)
			}
			conns := be.accepted()
			resetConn(conns[len(conns)-1])
			// The proxy may have reset the app's leg already: then this
			// write takes the reset.
			_, err := c.Write([]byte("ping"))
			if err == nil {
				_, err = readErr(c, 2*time.Second)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Logf("trial %d: app saw %v, want ECONNRESET", i, err)
				if errors.Is(err, io.EOF) {
					eofs++
				}
			}
			c.Close()
			waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
		}
		if eofs > 0 {
			t.Errorf("%d of %d trials: the app saw a clean EOF instead of the backend's reset", eofs, trials)
		}
	}, oneBackendConfig(be.addr()))
}

// The same with the interleaving forced: the test holds the session's lock
// while the lot, woken by the app's message, waits for it, until the
// backend's reset has reached the proxy's socket. The lot's write then
// always takes the reset. It threw the error away: the app got a FIN in
// about half the trials, and otherwise the goroutine's second write found
// only EPIPE, so the session's error said "broken pipe" (and a keepalive
// timeout taken this way was counted as a reset, not a timeout).
func TestLotWriteTakesTheReset(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 30*time.Millisecond)
	const trials = 20
	for i := range trials {
		c := h.dial("l")
		echoed(t, c, "hello")
		s := sessionOf(t, h.p, c)
		waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
		s.mu.Lock()
		c.Write([]byte("ping"))           // the lot wakes for it, and waits for s.mu inside wake
		time.Sleep(20 * time.Millisecond) // it is there
		conns := be.accepted()
		resetConn(conns[len(conns)-1])
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			info, err := unix.GetsockoptTCPInfo(s.raw[1], unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil || info.State == unix.BPF_TCP_CLOSE { // the reset arrived
				break
			}
		}
		s.mu.Unlock()
		if _, err := readErr(c, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("trial %d: app saw %v, want ECONNRESET", i, err)
		}
		c.Close()
		waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	}
	if got := counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "rst"); got != trials {
		t.Errorf("resets{backend,active,rst} = %v, want %d", got, trials)
	}
	if n := len(logs.lines("broken pipe")); n > 0 || !strings.Contains(logs.String(), "connection reset by peer") {
		t.Errorf("%d sessions ended with EPIPE, the error of a second write: the lot's write threw the reset away", n)
	}
}

// After one side half-closes, the other direction goes on; a reset of the
// half-closed side must still end the session at once, reset the app (when
// the backend failed), and be counted. Nothing read the half-closed socket
// any more, so the session lasted until the other direction's next write,
// and ended as "ok".
func TestResetAfterHalfClose(t *testing.T) {
	t.Run("app", func(t *testing.T) {
		release := make(chan struct{})
		// The backend answers, and once the app half-closed it works on the
		// last request, silent, until the test ends.
		be := newBackend(t, func(c *net.TCPConn) {
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					c.Write(buf[:n])
				}
				if err != nil {
					<-release
					return
				}
			}
		})
		t.Cleanup(func() { close(release) }) // before the backend's cleanup, which waits for its handlers
		pathModes(t, func(t *testing.T, h *harness, dormant bool) {
			c := h.dial("l")
			echoed(t, c, "hello")
			if s := sessionOf(t, h.p, c); dormant {
				waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
			}
			before := counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "rst")
			c.CloseWrite()
			time.Sleep(100 * time.Millisecond) // the half-close is passed on
			resetConn(c)
			waitFor(t, time.Second, "the session ended by the app's reset", func() bool { return len(h.p.liveSessions()) == 0 })
			if v := counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "rst"); v != before+1 {
				t.Errorf("resets{client,active,rst} went from %v to %v, want one more", before, v)
			}
		}, oneBackendConfig(be.addr()))
	})

	t.Run("backend", func(t *testing.T) {
		be := newBackend(t, func(c *net.TCPConn) {
			b := make([]byte, 5)
			io.ReadFull(c, b)
			c.Write(b)
			time.Sleep(100 * time.Millisecond)
			c.CloseWrite()
			time.Sleep(100 * time.Millisecond)
			resetConn(c)
		})
		pathModes(t, func(t *testing.T, h *harness, dormant bool) {
			before := counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "rst")
			c := h.dial("l")
			echoed(t, c, "hello")
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("read %v, want the backend's half-close", err)
			}
			// The app stays silent: the backend's reset reaches it as one.
			// After a FIN a read only ever says EOF, so the app's next write
			// is where it shows (the kernel reports it as EPIPE).
			waitFor(t, time.Second, "the session ended", func() bool { return len(h.p.liveSessions()) == 0 })
			time.Sleep(10 * time.Millisecond) // the reset crosses loopback
			if _, err := c.Write([]byte("more")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("after the half-close and the reset, the app's write got %v, want its leg reset", err)
			}
			if v := counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "rst"); v != before+1 {
				t.Errorf("resets{backend,active,rst} went from %v to %v, want one more", before, v)
			}
		}, oneBackendConfig(be.addr()))
	})
}

// Both sides half-close at about the same time, then close once they have
// read the other's FIN: an ordinary end, recorded as ok. The check that
// tells a reset whose error a write took from a FIN (endOfStream) reads
// ourFIN, then the socket's state; when the other direction half-closes
// this leg in between and the peer closes, the state is CLOSE and the
// ordinary end is taken for a reset: the app gets an RST and a reset is
// counted (0.2-3% of such sessions, found by a review).
func TestBothSidesHalfCloseAtOnce(t *testing.T) {
	for _, mode := range []string{"dormant", "goroutines"} {
		t.Run(mode, func(t *testing.T) {
			be := newBackend(t, func(c *net.TCPConn) {
				defer c.Close()
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
				c.Write(b)
				time.Sleep(60 * time.Millisecond)
				c.CloseWrite()
				io.Copy(io.Discard, c)
			})
			h := startProxy(t, oneBackendConfig(be.addr()))
			if mode == "dormant" {
				parkSoon(t, h, 20*time.Millisecond)
			} else {
				parkSoon(t, h, time.Hour)
			}
			const trials, par = 600, 30
			var wg sync.WaitGroup
			var mu sync.Mutex
			var appErrs []error
			sem := make(chan struct{}, par)
			for range trials {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					cc, err := net.Dial("tcp", h.addr("l"))
					if err != nil {
						t.Error(err)
						return
					}
					c := cc.(*net.TCPConn)
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					c.Write([]byte("x"))
					b := make([]byte, 1)
					if _, err := io.ReadFull(c, b); err != nil {
						t.Error(err)
						return
					}
					time.Sleep(60 * time.Millisecond)
					c.CloseWrite()
					if _, err := io.ReadAll(c); err != nil {
						mu.Lock()
						appErrs = append(appErrs, err)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			waitFor(t, 5*time.Second, "sessions ended", func() bool { return len(h.p.liveSessions()) == 0 })
			ok := counter(h.m.SessionsTotal, "l", "b", "other", "ok")
			reset := counter(h.m.SessionsTotal, "l", "b", "other", "reset")
			cli := counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "rst")
			bk := counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "rst")
			t.Logf("ok %v, reset %v (client rst %v, backend rst %v); app read errors: %d %v", ok, reset, cli, bk, len(appErrs), appErrs[:min(len(appErrs), 3)])
			if reset != 0 || len(appErrs) != 0 {
				t.Errorf("%v of %d ordinary ends (a FIN each way) counted as resets; %d apps got an error instead of EOF", reset, trials, len(appErrs))
			}
		})
	}
}

// An app that resets its connection, idle or not, has its database leg
// reset too, not closed with a FIN: a FIN would tell the database that the
// app finished sending (a protocol that ends an upload at the end of
// stream would take a cut-off upload for a whole one). A clean close by the
// app still reaches the database as a FIN.
func TestAppResetResetsTheDatabaseLeg(t *testing.T) {
	ends := make(chan error, 4)
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				ends <- err
				c.Close()
				return
			}
			c.Write(buf[:n])
		}
	})
	pathModes(t, func(t *testing.T, h *harness, dormant bool) {
		for _, reset := range []bool{true, false} {
			c := h.dial("l")
			echoed(t, c, "hello")
			if s := sessionOf(t, h.p, c); dormant {
				waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
			}
			if reset {
				resetConn(c)
			} else {
				c.Close()
			}
			err := endOf(t, ends, 5*time.Second, "the database leg")
			if reset && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("app reset: the database saw %v, want ECONNRESET", err)
			}
			if !reset && err != nil {
				t.Errorf("app closed: the database saw %v, want EOF", err)
			}
			waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
		}
	}, oneBackendConfig(be.addr()))
}

// The same during the opening: the app's bytes went to the database, which
// has not answered yet, when the app resets. The opening closed the
// database's connection itself (to stop waiting for its first byte), with
// a FIN, before the session's end could reset it.
func TestAppResetDuringOpeningResetsTheDatabaseLeg(t *testing.T) {
	got := make(chan struct{}, 1)
	ends := make(chan error, 1)
	be := newBackend(t, func(c *net.TCPConn) { // reads, never answers
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				ends <- err
				c.Close()
				return
			}
			select {
			case got <- struct{}{}:
			default:
			}
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the database got nothing")
	}
	resetConn(c)
	if err := endOf(t, ends, 5*time.Second, "the database leg"); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app reset during the opening: the database saw %v, want ECONNRESET", err)
	}
}

// Which ends of the app's leg reset the database's leg: the app's
// failures, as the pumps and the opening report them, and not a clean
// close or tnsguard's own ends.
func TestAppBrokeTellsTheAppsFailures(t *testing.T) {
	read := func(e syscall.Errno) error { return os.NewSyscallError("read", e) }
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{read(syscall.ECONNRESET), true},
		{os.NewSyscallError("splice", syscall.ECONNRESET), true},
		{read(syscall.ETIMEDOUT), true},
		{read(syscall.EHOSTUNREACH), true},
		{read(syscall.EIO), true},
		{nil, false},
		{io.EOF, false},
		{ErrIdleTimeout, false},
		{ErrDrained, false},
		{net.ErrClosed, false},
		{ErrBadOpening, false},
		{errAppLeft, false},
		{errAppGaveUp, false},
	} {
		if got := appBroke(tc.err); got != tc.want {
			t.Errorf("appBroke(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
