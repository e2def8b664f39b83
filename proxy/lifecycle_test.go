package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// lifecycleBackend answers by the app's first byte: 'S' never answers (the
// session waits for its first byte), 'E' echoes, 'H' echoes, then streams a
// byte every 20 ms (the app half-closes: one direction goes on).
func lifecycleBackend(c *net.TCPConn) {
	buf := make([]byte, 32<<10)
	n, err := c.Read(buf)
	if err != nil || n == 0 {
		return
	}
	switch buf[0] {
	case 'S':
		io.Copy(io.Discard, c)
	case 'E':
		c.Write(buf[:n])
		echoNoAlloc(c)
	case 'H':
		c.Write(buf[:n])
		go io.Copy(io.Discard, c)
		for {
			time.Sleep(20 * time.Millisecond)
			if _, err := c.Write([]byte{'.'}); err != nil {
				return
			}
		}
	}
}

// checkBooks checks that every count a session holds went back: the
// listener's admissions (max_sessions, per source), sessions_active, the
// parking lot, the links' live sessions.
func checkBooks(t *testing.T, h *harness) {
	t.Helper()
	h.p.mu.Lock()
	ls := h.p.listeners
	h.p.mu.Unlock()
	for name, l := range ls {
		if n := l.active.Load(); n != 0 {
			t.Errorf("listener %s: %d sessions still admitted", name, n)
		}
		l.srcMu.Lock()
		if len(l.perSource) != 0 {
			t.Errorf("listener %s: per-source counts left: %v", name, l.perSource)
		}
		l.srcMu.Unlock()
	}
	for _, sm := range h.samples(t, "tnsguard_sessions_active") {
		if sm.value != 0 {
			t.Errorf("sessions_active %v = %v", sm.labels, sm.value)
		}
	}
	if n := parked(h); n != 0 {
		t.Errorf("%d pumps still parked", n)
	}
	h.p.linksMu.Lock()
	for k, lk := range h.p.links {
		lk.mu.Lock()
		if len(lk.live) != 0 {
			t.Errorf("link %v: %d live sessions", k, len(lk.live))
		}
		lk.mu.Unlock()
	}
	h.p.linksMu.Unlock()
}

// A drain timeout that cuts sessions in every phase of their life (waiting
// for the first answer, past replay_bytes before it, silent openings,
// dormant, half-closed) ends them all, and leaves nothing behind: no fd,
// no goroutine, no admission, no gauge, no parked pump.
func TestDrainInEveryPhaseLeavesNothing(t *testing.T) {
	runtime.GC()
	baseG := runtime.NumGoroutine()
	baseFD := openFDs(t)

	be := newBackend(t, lifecycleBackend)
	cfg := strings.Replace(oneBackendConfig(be.addr()), `backoff = "50ms"`, "backoff = \"50ms\"\nreplay_bytes = 1024", 1)
	cfg = strings.Replace(cfg, `connect_budget = "3s"`, `connect_budget = "30s"`, 1)
	h := startProxy(t, cfg)
	parkSoon(t, h, 5*time.Millisecond)
	var conns []*net.TCPConn
	dial := func() *net.TCPConn {
		c, err := net.Dial("tcp", h.addr("l"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c.(*net.TCPConn))
		return c.(*net.TCPConn)
	}
	for range 10 {
		dial().Write([]byte("S waits for its first byte"))
		dial().Write(append([]byte("S"), make([]byte, 4096)...)) // past replay_bytes
		dial()                                                   // says nothing
		c := dial()
		echoed(t, c, "E dormant")
		c = dial()
		echoed(t, c, "H half")
		c.CloseWrite()
	}
	waitFor(t, 5*time.Second, "sessions", func() bool { return len(h.p.liveSessions()) == len(conns) })
	time.Sleep(200 * time.Millisecond)
	dormant := 0
	for _, s := range h.p.liveSessions() {
		if s.isDormant() {
			dormant++
		}
	}
	t.Logf("%d sessions, %d dormant, %d pumps parked", len(conns), dormant, parked(h))
	shutdownClosesAll(t, h, 100*time.Millisecond, conns)
	checkBooks(t, h)
	if a := testutil.ToFloat64(h.m.SessionsActive.WithLabelValues("l", "b")); a != 0 {
		t.Errorf("sessions_active = %v", a)
	}
	for _, c := range conns {
		c.Close()
	}
	be.close()
	waitFor(t, 10*time.Second, "goroutines back", func() bool { return runtime.NumGoroutine() <= baseG+2 })
	waitFor(t, 10*time.Second, "fds back", func() bool { runtime.GC(); return openFDs(t) <= baseFD+2 })
}

// A session whose directions park while the process is out of fds cannot
// go dormant (the dup of its sockets fails, or only the first one works):
// it stays parked on its conns, passes traffic, goes dormant once fds are
// free, and leaves no fd behind when it ends.
func TestSleepOutOfFDsLeavesNothing(t *testing.T) {
	for _, spare := range []int{0, 1} {
		t.Run(map[int]string{0: "no fd", 1: "one fd"}[spare], func(t *testing.T) {
			dropSplicePipes()
			be := newBackend(t, echoNoAlloc)
			h := startProxy(t, oneBackendConfig(be.addr()))
			parkSoon(t, h, 30*time.Millisecond)
			c := h.dial("l")
			echoed(t, c, "hello")
			s := sessionOf(t, h.p, c)
			waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
			big := make([]byte, 1<<20)
			go c.Write(big) // wakes it: bulk
			got := make([]byte, len(big))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "parked", func() bool { return parked(h) == 2 })
			waitFor(t, 2*time.Second, "dormant again", s.isDormant)
			base := openFDs(t)

			// Wake it again with a bulk, and take every fd while it runs:
			// once the bulk is over its directions park, and the session
			// tries to sleep with no fd (or one) to dup into. The app
			// writes and reads until the fds are taken, so that the bulk
			// neither ends nor stops while the hoard fills, and the
			// directions park later than at 30 ms meanwhile: a session whose
			// two sources are both silent for that long sleeps, with the fds
			// still to be had, and cannot wake once the hoard has them. (An
			// app that wrote a fixed 16 MiB, which the sockets' buffers
			// took whole, and read it only once the hoard was full did that
			// once in CI: its writes were over, and the echo server, slowed
			// by the load, left the backend's socket empty for over 30 ms.
			// A probe of that under load saw the session sleep with nothing
			// to read from or unsent to the backend, and 2.8 and 4.1 MB of
			// echo in the proxy's send queue to the app, which was not
			// reading.)
			// The last chunk the app sends is 0xff bytes.
			parkSoon(t, h, 500*time.Millisecond)
			var hoard fdHoard
			defer hoard.free()
			const chunk = 64 << 10
			taken := make(chan struct{})
			go func() {
				zeros := make([]byte, chunk)
				for {
					select {
					case <-taken:
						c.Write(bytes.Repeat([]byte{0xff}, chunk))
						return
					default:
					}
					if _, err := c.Write(zeros); err != nil {
						return
					}
				}
			}()
			read := make(chan error, 1)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			go func() {
				buf := make([]byte, chunk)
				var n int
				for {
					m, err := c.Read(buf)
					n += m
					if m > 0 && n%chunk == 0 && buf[m-1] == 0xff {
						read <- nil // the echo of the last chunk, whole
						return
					}
					if err != nil {
						read <- err
						return
					}
				}
			}()
			waitFor(t, 2*time.Second, "awake", func() bool { return !s.isDormant() })
			hoard.grab(t)
			hoard.release(spare)
			close(taken)
			parkSoon(t, h, 30*time.Millisecond)
			if err := <-read; err != nil {
				hoard.free()
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Time{})
			waitFor(t, 2*time.Second, "parked out of fds", func() bool { return parked(h) == 2 })
			for i := range 5 {
				time.Sleep(60 * time.Millisecond)
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if err := roundTrip(c, []byte{'a' + byte(i)}); err != nil {
					hoard.free()
					t.Fatalf("round trip %d out of fds: %v", i, err)
				}
			}
			dormantWhileOut := s.isDormant()
			hoard.free()
			t.Logf("dormant while out of fds: %v", dormantWhileOut)
			echoed(t, c, "after")
			waitFor(t, 2*time.Second, "dormant once fds are free", s.isDormant)
			waitFor(t, 2*time.Second, "fds back", func() bool { return openFDs(t) <= base })
			c.Close()
			waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
			checkBooks(t, h)
		})
	}
}

// Openings that end every way at once (apps that reset, half-close or
// leave at random moments; servers that reset, close, stay silent, answer
// late or at once; re-dials between two of them; routing by service):
// every session ends, and its admission, per-source count, gauge, link
// entry, fds and goroutines go back.
func TestOpeningsEndingEveryWayLeaveNothing(t *testing.T) {
	runtime.GC()
	baseG := runtime.NumGoroutine()
	baseFD := openFDs(t)
	var n atomic.Int64
	server := func(c *net.TCPConn) {
		defer c.Close()
		k := n.Add(1) % 5
		buf := make([]byte, 4096)
		switch k {
		case 0:
			c.SetLinger(0)
			return
		case 1:
			c.Read(buf)
			return
		case 3:
			io.Copy(io.Discard, c)
			return
		case 4:
			time.Sleep(30 * time.Millisecond)
		}
		for {
			m, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:m]); err != nil {
				return
			}
		}
	}
	b1, b2 := newBackend(t, server), newBackend(t, server)
	h := startProxy(t, hostileConfig("", b1.addr(), b2.addr()))
	parkSoon(t, h, 2*time.Millisecond)
	connect := goodConnect(t, "SALES")
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for range 25 {
				listener := []string{"l", "routed"}[rng.IntN(2)]
				c, err := net.Dial("tcp", h.addr(listener))
				if err != nil {
					continue
				}
				tc := c.(*net.TCPConn)
				tc.SetDeadline(time.Now().Add(3 * time.Second))
				switch rng.IntN(5) {
				case 0: // leaves without a word
				case 1:
					tc.Write(connect)
					time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
					tc.SetLinger(0)
				case 2:
					tc.Write(connect)
					tc.CloseWrite()
					io.Copy(io.Discard, tc)
				case 3:
					tc.Write(connect)
					buf := make([]byte, 4096)
					if _, err := tc.Read(buf); err == nil {
						time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
						tc.Write(buf[:10])
						tc.Read(buf)
					}
				case 4:
					tc.Write(connect[:5])
					time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
					tc.SetLinger(0)
				}
				tc.Close()
			}
		}()
	}
	wg.Wait()
	// A connection the app has already closed may still wait in the
	// accept queue of a loaded machine, and become a session after the
	// others ended: wait until no session lives and the gauge says none.
	waitFor(t, 10*time.Second, "every session ended", func() bool {
		if len(h.p.liveSessions()) != 0 {
			return false
		}
		for _, sm := range h.samples(t, "tnsguard_sessions_active") {
			if sm.value != 0 {
				return false
			}
		}
		return true
	})
	checkBooks(t, h)
	h.p.Shutdown(0, time.Second)
	b1.close()
	b2.close()
	waitFor(t, 10*time.Second, "goroutines back", func() bool { return runtime.NumGoroutine() <= baseG+2 })
	waitFor(t, 10*time.Second, "fds back", func() bool { runtime.GC(); return openFDs(t) <= baseFD+2 })
}
