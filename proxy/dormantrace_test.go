package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// duplexStream is the bytes one side of a duplex session sends: chunk i of
// side up (app) or down (database), its size and its bytes, from the
// session's seed; both ends compute it, so each can check what it receives.
type duplexStream struct {
	r    *rand.Rand
	bulk bool // every chunk a full buffer and more: each revives the session
}

func newDuplexStream(seed uint64, up bool) *duplexStream {
	k := uint64(1)
	if up {
		k = 2
	}
	return &duplexStream{r: rand.New(rand.NewPCG(seed, k)), bulk: seed&1 == 1}
}

// chunk is the next chunk: mostly small messages (the lot moves them on
// the bare fds), sometimes bulk (a revive).
func (d *duplexStream) chunk() []byte {
	var n int
	switch d.r.IntN(20) {
	case 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19:
		n = 1 + d.r.IntN(120)
		if d.bulk {
			n = chunkSize + 1 + d.r.IntN(200)
		}
	case 0:
		n = 16<<10 + d.r.IntN(80<<10)
	case 1, 2, 3:
		n = 200 + d.r.IntN(4000)
	default:
		n = 1 + d.r.IntN(120)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(d.r.Uint32())
	}
	return b
}

// duplexStall is how long a duplex stream may make no progress. A bound
// on each read and write, not on the whole run: under -race on a loaded
// 2-core machine "revived every time" takes 30 s or more instead of 3 s
// (60 s seen with other tests' load), and a stream that stops for good (a
// lost wake) still fails here.
const duplexStall = 20 * time.Second

// duplexRun sends cycles chunks of s on c, each at start + i*period (plus
// a jitter of up to jitter), so that both ends of a session write at the
// same instant after each pause; then half-closes.
func duplexRun(c *net.TCPConn, s *duplexStream, start time.Time, cycles int, period, jitter time.Duration, jr *rand.Rand) error {
	for i := range cycles {
		at := start.Add(time.Duration(i) * period)
		if jitter > 0 {
			at = at.Add(time.Duration(jr.Int64N(int64(jitter))))
		}
		time.Sleep(time.Until(at))
		c.SetWriteDeadline(time.Now().Add(duplexStall))
		if _, err := c.Write(s.chunk()); err != nil {
			return fmt.Errorf("write %d: %w", i, err)
		}
	}
	return c.CloseWrite()
}

// duplexCheck reads c until EOF and checks it against cycles chunks of s,
// as it reads (a reader that fell behind would let the user timeout end
// the session on a zero window).
func duplexCheck(c *net.TCPConn, s *duplexStream, cycles int) error {
	buf := make([]byte, 64<<10)
	total := 0
	for i := range cycles {
		want := s.chunk()
		for off := 0; off < len(want); {
			c.SetReadDeadline(time.Now().Add(duplexStall))
			n, err := c.Read(buf[:min(len(buf), len(want)-off)])
			for k := range n {
				if buf[k] != want[off+k] {
					return fmt.Errorf("byte %d (chunk %d) differs", total+off+k, i)
				}
			}
			off += n
			if err != nil {
				return fmt.Errorf("read after %d bytes (chunk %d of %d): %w", total+off, i, cycles, err)
			}
		}
		total += len(want)
	}
	c.SetReadDeadline(time.Now().Add(duplexStall))
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		return fmt.Errorf("after all %d bytes: %d more, %v; want EOF", total, n, err)
	}
	return nil
}

// duplexBackend: the app's first 8 bytes are the seed, the next 8 the
// start (UnixNano), then 4 the cycles, 4 the period (µs), 4 the jitter
// (µs); it answers one byte, then writes its stream on the same schedule
// as the app and checks the app's.
func duplexBackend(errs chan<- error, handlers *sync.WaitGroup) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		handlers.Add(1)
		defer handlers.Done()
		defer c.Close()
		var hdr [28]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			errs <- err
			return
		}
		seed := binary.BigEndian.Uint64(hdr[0:])
		start := time.Unix(0, int64(binary.BigEndian.Uint64(hdr[8:])))
		cycles := int(binary.BigEndian.Uint32(hdr[16:]))
		period := time.Duration(binary.BigEndian.Uint32(hdr[20:])) * time.Microsecond
		jitter := time.Duration(binary.BigEndian.Uint32(hdr[24:])) * time.Microsecond
		if _, err := c.Write([]byte{1}); err != nil {
			errs <- err
			return
		}
		done := make(chan error, 1)
		go func() {
			done <- duplexRun(c, newDuplexStream(seed, false), start, cycles, period, jitter, rand.New(rand.NewPCG(seed, 9)))
		}()
		if err := duplexCheck(c, newDuplexStream(seed, true), cycles); err != nil {
			errs <- fmt.Errorf("database: app's stream: %w", err)
		}
		if err := <-done; err != nil {
			errs <- fmt.Errorf("database: %w", err)
		}
	}
}

// Both legs of dormant sessions speak at the same instant after each
// pause (and, with a jitter, right around the moment the session parks),
// thousands of times, in small messages the lot moves on the bare fds and
// in bulk that revives the session: every byte arrives, in order, both
// ways, and the session ends clean with nothing left behind.
func TestDormantSessionBothLegsAtOnce(t *testing.T) {
	sessions, cycles := 12, 300
	if v := os.Getenv("TNSGUARD_DUPLEX_CYCLES"); v != "" {
		cycles, _ = strconv.Atoi(v)
	}
	for _, tc := range []struct {
		name           string
		period, jitter time.Duration
		bulk           bool
	}{
		{"same instant", 4 * time.Millisecond, 0, false},
		{"around the park", 3 * time.Millisecond, 2 * time.Millisecond, false},
		{"revived every time", 4 * time.Millisecond, 2 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := make(chan error, 4*sessions)
			var handlers sync.WaitGroup
			be := newBackend(t, duplexBackend(errs, &handlers))
			h := startProxy(t, stressConfig(t, be.addr()))
			parkSoon(t, h, time.Millisecond)
			runtime.GC()
			baseG := runtime.NumGoroutine()
			baseFD := openFDs(t)
			start := time.Now().Add(200 * time.Millisecond)
			stop := make(chan struct{})
			var dormant, woke int
			sampled := make(chan struct{})
			go func() { // how often the sessions slept and woke, sampled
				defer close(sampled)
				was := map[*session]bool{}
				for {
					select {
					case <-stop:
						return
					case <-time.After(500 * time.Microsecond):
					}
					for _, s := range h.p.liveSessions() {
						d := s.isDormant()
						if d && !was[s] {
							dormant++
						} else if !d && was[s] {
							woke++
						}
						was[s] = d
					}
				}
			}()
			var wg sync.WaitGroup
			for i := range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					seed := (uint64(time.Now().UnixNano()) + uint64(i)) &^ 1
					if tc.bulk {
						seed |= 1
					}
					cc, err := net.Dial("tcp", h.addr("l"))
					if err != nil {
						errs <- err
						return
					}
					c := cc.(*net.TCPConn)
					defer c.Close()
					c.SetDeadline(time.Now().Add(duplexStall)) // the opening; duplexRun and duplexCheck move it on
					var hdr [28]byte
					binary.BigEndian.PutUint64(hdr[0:], seed)
					binary.BigEndian.PutUint64(hdr[8:], uint64(start.UnixNano()))
					binary.BigEndian.PutUint32(hdr[16:], uint32(cycles))
					binary.BigEndian.PutUint32(hdr[20:], uint32(tc.period/time.Microsecond))
					binary.BigEndian.PutUint32(hdr[24:], uint32(tc.jitter/time.Microsecond))
					if _, err := c.Write(hdr[:]); err != nil {
						errs <- err
						return
					}
					var one [1]byte
					if _, err := io.ReadFull(c, one[:]); err != nil {
						errs <- fmt.Errorf("session %d: answer: %w", i, err)
						return
					}
					done := make(chan error, 1)
					go func() {
						done <- duplexRun(c, newDuplexStream(seed, true), start, cycles, tc.period, tc.jitter, rand.New(rand.NewPCG(seed, 7)))
					}()
					if err := duplexCheck(c, newDuplexStream(seed, false), cycles); err != nil {
						errs <- fmt.Errorf("session %d: app: database's stream: %w", i, err)
					}
					if err := <-done; err != nil {
						errs <- fmt.Errorf("session %d: app: %w", i, err)
					}
				}()
			}
			wg.Wait()
			close(stop)
			<-sampled
			t.Logf("seen going dormant %d times, waking %d times", dormant, woke)
			if dormant == 0 { // sampled: under load the sampler sees fewer of them
				t.Errorf("no session was seen dormant: the test checked the running pumps only")
			}
			waitFor(t, 10*time.Second, "sessions ended", func() bool { return len(h.p.liveSessions()) == 0 })
			handlers.Wait() // the database's side has read and sent everything
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if ok := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); ok != float64(sessions) {
				t.Errorf("sessions ok = %v, want %d", ok, sessions)
			}
			if parked(h) != 0 {
				t.Errorf("%d pumps still parked", parked(h))
			}
			waitFor(t, 10*time.Second, "goroutines back", func() bool { return runtime.NumGoroutine() <= baseG+2 })
			waitFor(t, 10*time.Second, "fds back", func() bool { runtime.GC(); return openFDs(t) <= baseFD+2 })
		})
	}
}

// helloThenHold echoes the app's "hello" and leaves the connection to the
// test.
func helloThenHold(c *net.TCPConn) {
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err == nil {
		c.Write(b)
	}
}

// atOnce runs a and b at the same instant.
func atOnce(a, b func()) {
	var ready, wg sync.WaitGroup
	ready.Add(1)
	wg.Add(2)
	for _, f := range []func(){a, b} {
		go func() {
			defer wg.Done()
			ready.Wait()
			f()
		}()
	}
	ready.Done()
	wg.Wait()
}

// Ends that reach both legs of a dormant session at the same instant, or
// an end on one leg with bytes on the other: every byte sent before an end
// is delivered, each peer sees the end it should, the session is counted
// once, and nothing is left parked.
func TestDormantSessionEndsOnBothLegs(t *testing.T) {
	rounds := 15
	if v := os.Getenv("TNSGUARD_DUPLEX_ROUNDS"); v != "" {
		rounds, _ = strconv.Atoi(v)
	}
	readAll := func(c *net.TCPConn) (string, error) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		return string(b), err
	}
	type result struct{ ok, appRst, beRst float64 }
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, app, db *net.TCPConn)
		want result
	}{
		{"FIN both", func(t *testing.T, app, db *net.TCPConn) {
			atOnce(func() { app.CloseWrite() }, func() { db.CloseWrite() })
			if got, err := readAll(app); got != "" || err != nil {
				t.Errorf("app read %q, %v; want EOF", got, err)
			}
			if got, err := readAll(db); got != "" || err != nil {
				t.Errorf("database read %q, %v; want EOF", got, err)
			}
		}, result{ok: 1}},
		{"app FIN, database data", func(t *testing.T, app, db *net.TCPConn) {
			atOnce(func() { app.CloseWrite() }, func() { db.Write([]byte("late answer")) })
			if got, err := readAll(db); got != "" || err != nil {
				t.Errorf("database read %q, %v; want EOF", got, err)
			}
			db.CloseWrite()
			if got, err := readAll(app); got != "late answer" || err != nil {
				t.Errorf("app read %q, %v; want the answer and EOF", got, err)
			}
		}, result{ok: 1}},
		{"database FIN, app data", func(t *testing.T, app, db *net.TCPConn) {
			atOnce(func() { db.CloseWrite() }, func() { app.Write([]byte("late request")) })
			if got, err := readAll(app); got != "" || err != nil {
				t.Errorf("app read %q, %v; want EOF", got, err)
			}
			app.CloseWrite()
			if got, err := readAll(db); got != "late request" || err != nil {
				t.Errorf("database read %q, %v; want the request and EOF", got, err)
			}
		}, result{ok: 1}},
		{"RST both", func(t *testing.T, app, db *net.TCPConn) {
			atOnce(func() { resetConn(app) }, func() { resetConn(db) })
		}, result{}},
		{"app RST, database data", func(t *testing.T, app, db *net.TCPConn) {
			var werr error
			atOnce(func() { resetConn(app) }, func() { _, werr = db.Write([]byte("late answer")) })
			if got, err := readAll(db); err == nil && werr == nil {
				t.Errorf("database read %q, EOF; want a reset", got)
			}
		}, result{appRst: 1}},
		{"database RST, app data", func(t *testing.T, app, db *net.TCPConn) {
			var werr error
			atOnce(func() { resetConn(db) }, func() { _, werr = app.Write([]byte("late request")) })
			// The app's write may take the reset, and its read then finds
			// a plain 0.
			if got, err := readAll(app); err == nil && werr == nil {
				t.Errorf("app read %q, EOF; want a reset", got)
			}
		}, result{beRst: 1}},
		{"app FIN, database RST", func(t *testing.T, app, db *net.TCPConn) {
			atOnce(func() { app.CloseWrite() }, func() { resetConn(db) })
			if got, err := readAll(app); err == nil {
				t.Errorf("app read %q, EOF; want a reset", got)
			}
		}, result{beRst: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t, helloThenHold)
			h := startProxy(t, oneBackendConfig(be.addr()))
			parkSoon(t, h, 20*time.Millisecond)
			runtime.GC()
			baseFD := openFDs(t)
			for r := range rounds {
				c := h.dial("l")
				echoed(t, c, "hello")
				s := sessionOf(t, h.p, c)
				waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
				db := be.accepted()[r]
				tc.run(t, c, db)
				waitFor(t, 5*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
				c.Close()
				db.Close()
				if t.Failed() {
					t.Fatalf("round %d", r)
				}
			}
			var got result
			got.ok = counter(h.m.SessionsTotal, "l", "b", "other", "ok")
			for _, sm := range h.samples(t, "tnsguard_resets_total") {
				if sm.labels["cause"] == "rst" && sm.labels["side"] == "client" {
					got.appRst += sm.value
				} else if sm.labels["cause"] == "rst" && sm.labels["side"] == "backend" {
					got.beRst += sm.value
				} else if sm.value > 0 {
					t.Errorf("reset counted as %v: %v", sm.labels, sm.value)
				}
			}
			want := tc.want
			want.ok *= float64(rounds)
			want.appRst *= float64(rounds)
			want.beRst *= float64(rounds)
			if tc.name == "RST both" {
				// Either reset may be seen first.
				if got.ok != 0 || got.appRst+got.beRst != float64(rounds) {
					t.Errorf("counted %+v; want %d resets", got, rounds)
				}
			} else if got != want {
				t.Errorf("counted %+v; want %+v", got, want)
			}
			if parked(h) != 0 {
				t.Errorf("%d pumps still parked", parked(h))
			}
			waitFor(t, 5*time.Second, "fds back", func() bool { runtime.GC(); return openFDs(t) <= baseFD+2 })
		})
	}
}

// Breaks from both sides of a dormant session at the same instant, each
// with bytes before and after it, and then a FIN: each peer gets the other's
// urgent byte at its place, every byte, and the end.
func TestDormantSessionUrgentBothWays(t *testing.T) {
	rounds := 10
	dbs := make(chan *net.TCPConn, rounds)
	be := newBackend(t, func(c *net.TCPConn) {
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err == nil {
			c.Write(b)
		}
		dbs <- c
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	parkSoon(t, h, 20*time.Millisecond)
	for r := range rounds {
		c := h.dial("l")
		echoed(t, c, "hello")
		db := <-dbs
		s := sessionOf(t, h.p, c)
		waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
		send := func(conn *net.TCPConn, b byte) {
			conn.Write([]byte("before"))
			sendOOB(t, conn, b)
			conn.Write([]byte("after"))
			conn.CloseWrite()
		}
		atOnce(func() { send(c, 'a') }, func() { send(db, 'd') })
		for _, x := range []struct {
			who  string
			conn *net.TCPConn
			b    byte
		}{{"database", db, 'a'}, {"app", c, 'd'}} {
			rd := &urgentReader{c: x.conn}
			rd.readUntil(5*time.Second, func(*urgentReader) bool { return false }) // until the end
			if string(rd.stream) != "beforeafter" || len(rd.urgent) != 1 || rd.urgent[0].b != x.b || rd.urgent[0].at != len("before") {
				t.Fatalf("round %d: the %s got %q with urgent data %+v; want \"beforeafter\" with %q after \"before\", then the end", r, x.who, rd.stream, rd.urgent, x.b)
			}
		}
		waitFor(t, 5*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
		c.Close()
		db.Close()
	}
	if ok := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); ok != float64(rounds) {
		t.Errorf("sessions ok = %v, want %d", ok, rounds)
	}
}
