package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// pipeFDs counts the test process's open pipes.
func pipeFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n
}

// Bulk is spliced through pipes (to another host) or copied through a
// 1 MiB buffer (to this one), and an idle session holds neither: a pool
// that moved bulk and then sits idle for hours must not keep a pipe pair
// (two fds) or a buffer per session, nor keep them for bulk that no longer
// comes.
// Past copyBuffers buffers mapped at once (a cap of 2 here), bulk to this
// host splices: slow readers of large results cannot make the proxy map
// 1 MiB each without bound.
func TestBulkPipesGoBackWhenIdle(t *testing.T) {
	t.Run("spliced", func(t *testing.T) { testBulkGoesBackWhenIdle(t, true, 0) })
	t.Run("copied", func(t *testing.T) { testBulkGoesBackWhenIdle(t, false, 0) })
	t.Run("copied, past the cap on buffers", func(t *testing.T) { testBulkGoesBackWhenIdle(t, false, 2) })
}

// testBulkGoesBackWhenIdle: maxMapped, when not 0, caps the copy buffers.
func testBulkGoesBackWhenIdle(t *testing.T, splice bool, maxMapped int64) {
	be := newBackend(t, echoNoAlloc) // no splice of its own: every pipe here is the proxy's
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.pool.spliceLocal.Store(splice)
	if maxMapped > 0 {
		h.p.pool.maxMapped.Store(maxMapped)
	}
	base := pipeFDs(t)
	var peak atomic.Int64 // the most buffers mapped at once
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			if n := h.p.pool.mapped.Load(); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()

	const sessions, size = 8, 8 << 20
	big := make([]byte, size)
	for i := range big {
		big[i] = byte(i * 13)
	}
	conns := make([]*net.TCPConn, sessions)
	for i := range conns {
		conns[i] = h.dial("l")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*sessions)
	for _, c := range conns {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := c.Write(big)
			errs <- err
		}()
		go func() {
			defer wg.Done()
			got := make([]byte, size)
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if string(got) != string(big) {
				errs <- errors.New("bulk arrived changed")
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-stopped
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	h.p.pool.mu.Lock()
	taken := h.p.pool.taken
	h.p.pool.mu.Unlock()
	if taken == 0 {
		t.Fatal("64 MiB each way went through without a pipe or buffer: bulk was neither spliced nor copied in bulk")
	}
	if maxMapped > 0 {
		if n := pipeFDs(t); peak.Load() > maxMapped || n <= base {
			t.Fatalf("16 directions in bulk to this host mapped up to %d buffers at once and hold %d pipe ends; want at most %d buffers, the rest spliced", peak.Load(), n-base, maxMapped)
		}
		waitFor(t, 5*time.Second, "the proxy's pipes closed and buffers unmapped while its sessions sit idle", func() bool {
			return pipeFDs(t) <= base && h.p.pool.mapped.Load() == 0
		})
	} else if splice {
		waitFor(t, 5*time.Second, "the proxy's pipes closed while its sessions sit idle", func() bool { return pipeFDs(t) <= base })
	} else {
		if n, bufs := pipeFDs(t), h.p.pool.mapped.Load(); n > base || bufs == 0 {
			t.Fatalf("bulk to this host holds %d pipes and %d buffers, want no pipe (it copies) and its buffers", n-base, bufs)
		}
		waitFor(t, 5*time.Second, "the proxy's buffers unmapped while its sessions sit idle", func() bool { return h.p.pool.mapped.Load() == 0 })
	}
	if n := len(h.p.liveSessions()); n != sessions {
		t.Fatalf("%d sessions live, want %d", n, sessions)
	}
	for i, c := range conns { // and they still work
		echoed(t, c, "after bulk "+string(rune('a'+i)))
	}
}

// A reset on either leg in the middle of bulk, either way, reaches the
// other leg as a reset and is counted on the leg that failed.
func TestResetMidBulk(t *testing.T) {
	// Each backend greets first, so that the session is established (an
	// upload before the backend's first byte is the opening's: replay_bytes).
	// Each reports how its connection ended (nil: EOF).
	beErr := make(chan error, 1)
	stream := func(c *net.TCPConn) { // the backend sends until it fails
		chunk := make([]byte, 64<<10)
		chunk[0] = '!'
		for {
			if _, err := c.Write(chunk); err != nil {
				beErr <- err
				return
			}
		}
	}
	sink := func(c *net.TCPConn) { // reads without splicing
		c.Write([]byte("!"))
		_, err := io.Copy(io.Discard, struct{ io.Reader }{c})
		beErr <- err
	}
	type resetCase struct {
		name   string
		upload bool // the app sends the bulk (else the backend does)
		failer Side // the leg that resets
		splice bool // spliced, as to another host (copied to this one)
	}
	var cases []resetCase
	for _, splice := range []bool{false, true} {
		suffix := map[bool]string{false: "", true: ", spliced"}[splice]
		cases = append(cases,
			resetCase{"download, backend resets" + suffix, false, SideBackend, splice},
			resetCase{"download, app resets" + suffix, false, SideClient, splice},
			resetCase{"upload, backend resets" + suffix, true, SideBackend, splice},
			resetCase{"upload, app resets" + suffix, true, SideClient, splice},
		)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for len(beErr) > 0 {
				<-beErr
			}
			fn := stream
			if tc.upload {
				fn = sink
			}
			be := newBackend(t, fn)
			h := startProxy(t, oneBackendConfig(be.addr()))
			h.p.pool.spliceLocal.Store(tc.splice)
			c := h.dial("l")
			greeting := make([]byte, 1)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, greeting); err != nil || greeting[0] != '!' {
				t.Fatalf("greeting: %q, %v", greeting, err)
			}
			c.SetReadDeadline(time.Time{})
			appErr := make(chan error, 1)
			moved := make(chan struct{})
			go func() {
				var err error
				var once sync.Once
				total := 0
				buf := make([]byte, 64<<10)
				for err == nil {
					var n int
					if tc.upload {
						n, err = c.Write(buf)
					} else {
						n, err = c.Read(buf)
					}
					if total += n; total >= 4<<20 {
						once.Do(func() { close(moved) })
					}
				}
				appErr <- err
			}()
			select {
			case <-moved:
			case <-time.After(10 * time.Second):
				t.Fatal("4 MiB did not get through")
			}
			waitFor(t, 2*time.Second, "the backend connection", func() bool { return len(be.accepted()) == 1 })
			beConn := be.accepted()[0]
			if tc.failer == SideBackend {
				resetConn(beConn)
				if err := endOf(t, appErr, 5*time.Second, "the app's connection"); !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("app saw %v, want ECONNRESET", err)
				}
			} else {
				resetConn(c)
				<-appErr
				if err := endOf(t, beErr, 5*time.Second, "the backend's connection"); !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
					t.Fatalf("backend saw %v, want a reset", err)
				}
			}
			waitFor(t, 5*time.Second, "the reset counted", func() bool {
				for _, s := range h.samples(t, "tnsguard_resets_total") {
					if s.value > 0 {
						if s.labels["side"] != string(tc.failer) || s.labels["cause"] != "rst" || s.labels["phase"] != "active" {
							t.Fatalf("reset counted as %v, want side %s, phase active, cause rst", s.labels, tc.failer)
						}
						return true
					}
				}
				return false
			})
		})
	}
}

// A bulk stream keeps its pipe from one wake to the next: taking a pipe
// (and copying the wake's first chunk through the buffer) on every wake
// cost two system calls and a lock each time. The backend pauses after
// each 256 KiB, so the proxy empties the socket and waits 256 times. On a
// loaded machine a burst can arrive in pieces, and a wake that reads less
// than a chunk ends the bulk (and its pipe): CI saw 14 takes. Taking one per
// wake would be 256.
func TestBulkKeepsItsPipe(t *testing.T) {
	t.Run("spliced", func(t *testing.T) { testBulkKeepsItsPipe(t, true) })
	t.Run("copied", func(t *testing.T) { testBulkKeepsItsPipe(t, false) })
}

func testBulkKeepsItsPipe(t *testing.T, splice bool) {
	const size = 64 << 20
	be := newBackend(t, func(c *net.TCPConn) {
		chunk := make([]byte, 256<<10)
		chunk[0] = '!'
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
		c.CloseWrite()
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.pool.spliceLocal.Store(splice)
	c := h.dial("l")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, struct{ io.Reader }{c})
	if err != nil || n != size {
		t.Fatalf("got %d bytes, %v; want %d", n, err, size)
	}
	h.p.pool.mu.Lock()
	taken := h.p.pool.taken
	h.p.pool.mu.Unlock()
	if taken == 0 || taken > 32 {
		t.Fatalf("the stream took a pipe or buffer %d times for 64 MiB in 256 bursts, want 1 (at most 32)", taken)
	}
}

// A session that goes quiet after bulk gives its pipe back when it parks,
// parkAfter after the last byte: it held it up to twice that, because the
// idle deadline is set once per parkAfter and the first one after the bulk
// found bytes moved.
func TestIdleAfterBulkGivesThePipeBack(t *testing.T) {
	t.Run("spliced", func(t *testing.T) { testIdleAfterBulkGivesThePipeBack(t, true) })
	t.Run("copied", func(t *testing.T) { testIdleAfterBulkGivesThePipeBack(t, false) })
}

func testIdleAfterBulkGivesThePipeBack(t *testing.T, splice bool) {
	const size = 4 << 20
	idle := make(chan struct{})
	be := newBackend(t, func(c *net.TCPConn) {
		big := make([]byte, size)
		big[0] = '!'
		c.Write(big)
		<-idle // then idle, the connection kept
	})
	defer close(idle)
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.pool.spliceLocal.Store(splice)
	c := h.dial("l")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	done := time.Now()
	kept := func() int {
		h.p.pool.mu.Lock()
		defer h.p.pool.mu.Unlock()
		if splice {
			return len(h.p.pool.pipes)
		}
		return len(h.p.pool.bufs)
	}
	for kept() == 0 && time.Since(done) < 2*time.Second {
		time.Sleep(time.Millisecond)
	}
	if held := time.Since(done); held > parkAfter*8/5 {
		t.Errorf("the idle session held its pipe %v after its last byte, want about parkAfter (%v)", held, parkAfter)
	}
}
