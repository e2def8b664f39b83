//go:build !race

// The race detector allocates on its own and slows everything down: these
// benchmarks and the allocation guard are meaningful without it only.

package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Benchmarks of the data path through a real proxy on loopback. The app
// and the echo backend live in this process too, but neither allocates per
// message, so allocs/op is the proxy's. Typical use:
//
//	go test -run '^$' -bench . -benchmem ./proxy/
//	go test -run '^$' -bench RoundTrip -cpuprofile /tmp/cpu.out ./proxy/

type benchProxy struct {
	h  *harness
	be *backendServer
}

// startBenchProxy runs a proxy in front of echoNoAlloc, logging nothing;
// it works for benchmarks as well as tests.
func startBenchProxy(tb testing.TB) *benchProxy {
	tb.Helper()
	be := newBackend(tb, echoNoAlloc)
	return &benchProxy{h: startProxyWith(tb, oneBackendConfig(be.addr()), hclog.NewNullLogger()), be: be}
}

// roundTrips sends n messages of len(msg) bytes and reads each echo.
func roundTrips(tb testing.TB, c *net.TCPConn, msg, buf []byte, n int) {
	for range n {
		if _, err := c.Write(msg); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkRoundTrip64 is the small-message figure: one connection,
// back-to-back 64-byte round trips (two chunks through the proxy each).
func BenchmarkRoundTrip64(b *testing.B) {
	bp := startBenchProxy(b)
	c := bp.h.dial("l")
	msg, buf := make([]byte, 64), make([]byte, 64)
	roundTrips(b, c, msg, buf, 100) // established, buffers pooled
	b.ReportAllocs()
	b.ResetTimer()
	roundTrips(b, c, msg, buf, b.N)
}

// BenchmarkSession is the new-connections figure: connect, one 64-byte
// round trip, close, waiting for the proxy to have recorded the end.
func BenchmarkSession(b *testing.B) {
	bp := startBenchProxy(b)
	msg, buf := make([]byte, 64), make([]byte, 64)
	addr := bp.h.p.Addr("l").(*net.TCPAddr)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.DialTCP("tcp", nil, addr)
		if err != nil {
			b.Fatal(err)
		}
		roundTrips(b, c, msg, buf, 1)
		c.Close()
	}
	b.StopTimer()
	waitFor(b, 5*time.Second, "every session ended", func() bool { return len(bp.h.p.liveSessions()) == 0 })
}

// BenchmarkBulk moves 1 MiB writes app -> backend -> app.
func BenchmarkBulk(b *testing.B) {
	bp := startBenchProxy(b)
	c := bp.h.dial("l")
	const size = 1 << 20
	msg := make([]byte, size)
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		_, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, buf)
		errc <- err
	}()
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// TestNoAllocationsPerChunk guards the steady state of the data path: a
// round trip through an established session (two chunks: app -> backend
// and backend -> app) allocates nothing.
func TestNoAllocationsPerChunk(t *testing.T) {
	if testing.Short() {
		t.Skip("timing-sensitive allocation count")
	}
	bp := startBenchProxy(t)
	c := bp.h.dial("l")
	msg, buf := make([]byte, 64), make([]byte, 64)
	roundTrips(t, c, msg, buf, 100)
	if got := testing.AllocsPerRun(2000, func() { roundTrips(t, c, msg, buf, 1) }); got != 0 {
		t.Fatalf("%v allocations per round trip through an established session, want 0", got)
	}
	big := make([]byte, 1<<20)
	const runs = 50
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		_, err := io.CopyBuffer(io.Discard, io.LimitReader(c, (runs+1)*int64(len(big))), buf)
		done <- err
	}()
	if got := testing.AllocsPerRun(runs, func() { // runs+1 calls: one warm-up
		if _, err := c.Write(big); err != nil {
			t.Error(err)
		}
	}); got != 0 {
		t.Fatalf("%v allocations per MiB of bulk through an established session, want 0", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A parked, dormant session: each message after a pause is moved by
	// the lot (idle.go, dormant.go), which must not allocate either.
	c.Close()
	waitFor(t, 2*time.Second, "first session ended", func() bool { return len(bp.h.p.liveSessions()) == 0 })
	lot := bp.h.p.parking
	lot.setAfter(2 * time.Millisecond)
	c2 := bp.h.dial("l")
	roundTrips(t, c2, msg, buf, 10)
	waitFor(t, time.Second, "parked", func() bool { return lot.count() == 2 })
	s := sessionOf(t, bp.h.p, c2)
	waitFor(t, time.Second, "dormant", s.isDormant) // the lot moves messages on the bare fds
	roundTrips(t, c2, msg, buf, 1)
	if got := testing.AllocsPerRun(50, func() {
		time.Sleep(5 * time.Millisecond)
		roundTrips(t, c2, msg, buf, 1)
	}); got != 0 {
		t.Fatalf("%v allocations per round trip through a parked session, want 0", got)
	}
	if n := lot.count(); n != 2 {
		t.Fatalf("%d directions parked after the pauses, want 2 (the lot moved the messages)", n)
	}
	if !s.isDormant() {
		t.Fatal("the session woke up: the lot should move small messages on a dormant session's bare fds")
	}
}

// BenchmarkRoundTripAfterPause is a 64-byte round trip after a 5 ms pause,
// on a session whose directions park after 1 ms (parked) or not (awake): the
// price of waking parked directions (idle.go). rt-ns/op is the wall time of
// the round trips alone, cpu-ns/op the process's CPU time during them
// (getrusage); ns/op includes the pauses.
func BenchmarkRoundTripAfterPause(b *testing.B) {
	for _, park := range []bool{false, true} {
		name := "awake"
		if park {
			name = "parked"
		}
		b.Run(name, func(b *testing.B) {
			bp := startBenchProxy(b)
			lot := bp.h.p.parking
			lot.setAfter(time.Hour)
			if park {
				lot.setAfter(time.Millisecond)
			}
			c := bp.h.dial("l")
			msg, buf := make([]byte, 64), make([]byte, 64)
			roundTrips(b, c, msg, buf, 10)
			var cpu, wall time.Duration
			for range b.N {
				time.Sleep(5 * time.Millisecond)
				for i := 0; park && lot.count() != 2; i++ {
					if i > 1000 {
						b.Fatalf("%d directions parked after the pause, want 2", lot.count())
					}
					time.Sleep(100 * time.Microsecond)
				}
				c0, t0 := cpuTime(), time.Now()
				roundTrips(b, c, msg, buf, 1)
				wall += time.Since(t0)
				cpu += cpuTime() - c0
			}
			b.ReportMetric(float64(wall.Nanoseconds())/float64(b.N), "rt-ns/op")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkRoundTrip64CPU is BenchmarkRoundTrip64 with the same cpu-ns/op
// figure as BenchmarkRoundTripFromParked.
func BenchmarkRoundTrip64CPU(b *testing.B) {
	bp := startBenchProxy(b)
	c := bp.h.dial("l")
	msg, buf := make([]byte, 64), make([]byte, 64)
	roundTrips(b, c, msg, buf, 100)
	b.ResetTimer()
	before, t0 := cpuTime(), time.Now()
	roundTrips(b, c, msg, buf, b.N)
	b.ReportMetric(float64(time.Since(t0).Nanoseconds())/float64(b.N), "rt-ns/op")
	b.ReportMetric(float64((cpuTime()-before).Nanoseconds())/float64(b.N), "cpu-ns/op")
}
