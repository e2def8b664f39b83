package proxy

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func testTrim(burst int, quiet, gap time.Duration) (*memTrim, *atomic.Int32) {
	var n atomic.Int32
	m := newMemTrim(hclog.NewNullLogger())
	m.burst, m.quiet, m.gap = burst, quiet, gap
	m.free = func() { n.Add(1) }
	return m, &n
}

// A burst of sessions going dormant is followed by one trim once the proxy
// is quiet; a small one, or a proxy that keeps sessions coming, gets none;
// trims are at least gap apart; stop cancels a pending one.
func TestMemTrimAfterBurst(t *testing.T) {
	t.Run("burst then quiet", func(t *testing.T) {
		m, n := testTrim(100, 30*time.Millisecond, time.Hour)
		for range 150 {
			m.noteDormant()
		}
		waitFor(t, time.Second, "a trim", func() bool { return n.Load() == 1 })
		time.Sleep(100 * time.Millisecond)
		if n.Load() != 1 {
			t.Fatalf("%d trims for one burst", n.Load())
		}
	})
	t.Run("small burst", func(t *testing.T) {
		m, n := testTrim(100, 10*time.Millisecond, time.Hour)
		for range 99 {
			m.noteDormant()
		}
		time.Sleep(100 * time.Millisecond)
		if n.Load() != 0 {
			t.Fatal("trimmed after fewer sessions than a burst")
		}
	})
	t.Run("never quiet", func(t *testing.T) {
		const quiet = 60 * time.Millisecond
		m, n := testTrim(10, quiet, time.Hour)
		m.gap = 0 // a stall of this goroutine (below) may earn a trim; the next quiet earns another
		var earned int32
		last := time.Now()
		until := last.Add(300 * time.Millisecond)
		for time.Now().Before(until) {
			m.noteDormant()
			now := time.Now()
			gap := now.Sub(last)
			last = now
			if got := n.Load(); got > earned {
				// A trim since the previous note: right only if this
				// goroutine's sleep took the whole quiet (a loaded
				// machine), so that the proxy was quiet meanwhile.
				if gap < quiet {
					t.Fatalf("trimmed while sessions kept going dormant (%v apart)", gap)
				}
				earned = got
			}
			time.Sleep(5 * time.Millisecond)
		}
		waitFor(t, time.Second, "the trim once quiet", func() bool { return n.Load() == earned+1 })
	})
	t.Run("gap", func(t *testing.T) {
		m, n := testTrim(10, 10*time.Millisecond, 300*time.Millisecond)
		for range 10 {
			m.noteDormant()
		}
		waitFor(t, time.Second, "the first trim", func() bool { return n.Load() == 1 })
		first := time.Now()
		for range 10 {
			m.noteDormant()
		}
		waitFor(t, 2*time.Second, "the second trim", func() bool { return n.Load() == 2 })
		if d := time.Since(first); d < 250*time.Millisecond {
			t.Fatalf("second trim %v after the first, want the gap", d)
		}
	})
	t.Run("stop", func(t *testing.T) {
		m, n := testTrim(10, 50*time.Millisecond, time.Hour)
		for range 10 {
			m.noteDormant()
		}
		m.stop()
		time.Sleep(150 * time.Millisecond)
		if n.Load() != 0 {
			t.Fatal("trimmed after stop")
		}
	})
}

// Sessions that go dormant through the proxy are what counts: a burst of
// them, then quiet, gives one trim.
func TestDormantSessionsTrim(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 20*time.Millisecond)
	trims := countTrims(h)
	for range 10 {
		c := h.dial("l")
		echoed(t, c, "x")
		defer c.Close()
	}
	waitFor(t, 3*time.Second, "a trim after 10 sessions went dormant", func() bool { return trims.Load() == 1 })
}

// Busy sessions that go dormant (busy_test.go) are not a burst of sessions
// gone quiet: they give no trim, which would force a collection every 10 s
// under steady load.
func TestBusySessionsDoNotTrim(t *testing.T) {
	h := startProxy(t, oneBackendConfig(scriptBackend(t).addr()))
	trims := countTrims(h)
	for range 10 {
		c := busySession(t, h, hotAfter+10)
		waitFor(t, 2*time.Second, "the busy session dormant", sessionOf(t, h.p, c).isDormant)
		defer c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	if n := trims.Load(); n != 0 {
		t.Fatalf("%d trims after 10 busy sessions went dormant, want 0", n)
	}
}

// countTrims makes h's trim count its runs instead of freeing memory, after
// a burst of 8 dormant sessions and 50 ms of quiet.
func countTrims(h *harness) *atomic.Int32 {
	var trims atomic.Int32
	tr := h.p.parking.trim
	tr.mu.Lock()
	tr.burst, tr.quiet, tr.free = 8, 50*time.Millisecond, func() { trims.Add(1) }
	tr.mu.Unlock()
	return &trims
}
