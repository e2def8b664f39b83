package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tnsguard/tnsguard/keepalive"
)

// chaosStream is a deterministic byte stream (splitmix64 of the position,
// little-endian, a word per 8 bytes).
type chaosStream struct {
	seed uint64
	pos  uint64
}

// fill writes a word at a time: under -race, a store per byte made the
// readers' check cost about 300 ns a byte on a loaded 2-core machine, so
// that a few MB still to be checked outlasted the test's prompt.
func (s *chaosStream) fill(b []byte) {
	for i := 0; i < len(b); {
		p := s.pos + uint64(i)
		z := s.seed + (p/8)*0x9e3779b97f4a7c15
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		if p%8 == 0 && len(b)-i >= 8 {
			binary.LittleEndian.PutUint64(b[i:], z)
			i += 8
			continue
		}
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], z)
		i += copy(b[i:], w[p%8:])
	}
	s.pos += uint64(len(b))
}

type chaosSide struct {
	name string
	c    *net.TCPConn
	wgen chaosStream
	sent atomic.Int64
	wcl  bool // CloseWrite done
	werr atomic.Value

	rgen       chaosStream
	got        atomic.Int64
	rerr       error
	corrupt    error
	rdone      chan struct{}
	rEndAt     time.Time
	stateAtEnd uint8
}

func (sd *chaosSide) writeErr() error {
	if v := sd.werr.Load(); v != nil {
		return v.(error)
	}
	return nil
}

func (sd *chaosSide) reader(rng *rand.Rand) {
	defer close(sd.rdone)
	buf := make([]byte, 64<<10)
	exp := make([]byte, 64<<10)
	for {
		b := buf
		if rng.IntN(4) == 0 {
			b = buf[:1+rng.IntN(700)]
		}
		n, err := sd.c.Read(b)
		if n > 0 {
			sd.rgen.fill(exp[:n])
			if !bytes.Equal(b[:n], exp[:n]) && sd.corrupt == nil {
				i := 0
				for b[i] == exp[i] {
					i++
				}
				sd.corrupt = fmt.Errorf("%s: byte %d differs", sd.name, sd.got.Load()+int64(i))
			}
			sd.got.Add(int64(n))
		}
		if err != nil {
			sd.rerr, sd.rEndAt = err, time.Now()
			if info, ierr := keepalive.ReadInfo(sd.c); ierr == nil {
				sd.stateAtEnd = info.State
			}
			return
		}
	}
}

// waitEnd waits for sd's reader to end, for up to prompt after the last
// byte it read: on a loaded machine under -race a reader with megabytes
// still to take may take them for longer than prompt, while an end of
// stream or a reset held by tnsguard (all bytes read, no end) shows as a
// reader that reads nothing more. Empty when it ended; else what sd and
// the session looked like.
func (sd *chaosSide) waitEnd(s *session, peer *chaosSide, prompt time.Duration) string {
	begin := time.Now()
	last, at := sd.got.Load(), begin
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-sd.rdone:
			return ""
		case <-tick.C:
		}
		if g := sd.got.Load(); g != last {
			last, at = g, time.Now()
		} else if time.Since(at) > prompt {
			break
		}
	}
	s.mu.Lock()
	ourFIN := s.ourFIN
	s.mu.Unlock()
	return fmt.Sprintf("%s read nothing for %v, %d/%d bytes, waiting since the session's %v; tnsguard read the ends of app, backend at %v, %v, half-closed them %v, directions left %d",
		sd.name, prompt, last, peer.sent.Load(), begin.Sub(s.start), time.Duration(s.peerFIN[0].Load()), time.Duration(s.peerFIN[1].Load()), ourFIN, s.legs.Load())
}

func (sd *chaosSide) write(n int) error {
	if sd.wcl || sd.writeErr() != nil {
		return nil
	}
	buf := make([]byte, min(n, 256<<10))
	for n > 0 {
		k := min(n, len(buf))
		sd.wgen.fill(buf[:k])
		w, err := sd.c.Write(buf[:k])
		sd.sent.Add(int64(w))
		if err != nil {
			sd.werr.Store(err)
			return err
		}
		n -= k
	}
	return nil
}

func chaosSize(rng *rand.Rand) int {
	switch r := rng.IntN(100); {
	case r < 50:
		return 1 + rng.IntN(100)
	case r < 80:
		return 1 + rng.IntN(64<<10)
	case r < 95:
		return 64<<10 + rng.IntN(512<<10)
	default:
		return 1<<20 + rng.IntN(3<<20)
	}
}

// both runs fa and fb at the same instant.
func both(fa, fb func()) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, f := range []func(){fa, fb} {
		if f == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); <-start; f() }()
	}
	close(start)
	wg.Wait()
}

type chaosBackend struct {
	mu    sync.Mutex
	conns map[uint64]chan *net.TCPConn
}

func (cb *chaosBackend) ch(id uint64) chan *net.TCPConn {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	c, ok := cb.conns[id]
	if !ok {
		c = make(chan *net.TCPConn, 1)
		cb.conns[id] = c
	}
	return c
}

func (cb *chaosBackend) serve(c *net.TCPConn) {
	var id [8]byte
	if _, err := io.ReadFull(c, id[:]); err != nil {
		c.Close()
		return
	}
	if _, err := c.Write([]byte{'K'}); err != nil {
		c.Close()
		return
	}
	cb.ch(binary.BigEndian.Uint64(id[:])) <- c
}

type chaosResult struct {
	kind        int
	resetBy     string
	sess        *session
	err         error
	resetLat    time.Duration
	note        string
	dormantSeen int
	bothFIN     bool
}

// chaosSession: kind 0 clean, 1 app resets, 2 backend resets, 3 both reset.
func chaosSession(h *harness, cb *chaosBackend, id uint64, rng *rand.Rand, idle time.Duration) (res chaosResult) {
	kind := rng.IntN(6)
	if kind == 3 && rng.IntN(2) == 0 {
		kind = rng.IntN(3)
	}
	res.kind = kind
	cc, err := net.Dial("tcp", h.addr("l"))
	if err != nil {
		res.err = err
		return
	}
	app := &chaosSide{name: "app", c: cc.(*net.TCPConn), rdone: make(chan struct{})}
	var idb [8]byte
	binary.BigEndian.PutUint64(idb[:], id)
	app.c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := app.c.Write(idb[:]); err != nil {
		res.err = err
		app.c.Close()
		return
	}
	var k [1]byte
	if _, err := io.ReadFull(app.c, k[:]); err != nil {
		res.err = fmt.Errorf("session %d: opening: %v", id, err)
		app.c.Close()
		return
	}
	var bc *net.TCPConn
	select {
	case bc = <-cb.ch(id):
	case <-time.After(10 * time.Second):
		res.err = fmt.Errorf("session %d: no backend conn", id)
		app.c.Close()
		return
	}
	bc.SetDeadline(time.Now().Add(60 * time.Second))
	be := &chaosSide{name: "backend", c: bc, rdone: make(chan struct{})}
	defer app.c.Close()
	defer be.c.Close()
	for _, s := range h.p.liveSessions() {
		if s.in.client.String() == app.c.LocalAddr().String() {
			res.sess = s
		}
	}
	if res.sess == nil {
		res.err = fmt.Errorf("session %d: not found live", id)
		return
	}
	s1, s2 := rng.Uint64(), rng.Uint64()
	app.wgen, be.rgen = chaosStream{seed: s1}, chaosStream{seed: s1}
	be.wgen, app.rgen = chaosStream{seed: s2}, chaosStream{seed: s2}
	go app.reader(rand.New(rand.NewPCG(rng.Uint64(), 1)))
	go be.reader(rand.New(rand.NewPCG(rng.Uint64(), 2)))

	var resetter, other *chaosSide
	switch kind {
	case 1, 4:
		resetter, other = app, be
	case 2, 5:
		resetter, other = be, app
	}
	if resetter != nil {
		res.resetBy = resetter.name
	}
	canHalf := func(sd *chaosSide) bool {
		return kind == 0 || ((kind == 1 || kind == 2 || kind >= 4) && sd == other)
	}
	pick := func() *chaosSide {
		if rng.IntN(2) == 0 {
			return app
		}
		return be
	}
	nap := func(r *rand.Rand) time.Duration {
		switch r.IntN(4) {
		case 0:
			return 0
		case 1:
			return time.Duration(r.IntN(2000)) * time.Microsecond
		default:
			return idle + time.Duration(r.IntN(int(4*idle)))
		}
	}
	steps := 1 + rng.IntN(8)
	for range steps {
		switch r := rng.IntN(10); {
		case r < 2: // one side sends
			sd := pick()
			sd.write(chaosSize(rng))
		case r < 3: // a burst of small messages (a busy session: the lot carries it)
			na, nb := 64+rng.IntN(300), rng.IntN(300)
			la, lb := 1+rng.IntN(60), 1+rng.IntN(60)
			both(func() {
				for range na {
					app.write(la)
				}
			}, func() {
				for range nb {
					be.write(lb)
				}
			})
		case r < 6: // both send at once
			na, nb := chaosSize(rng), chaosSize(rng)
			both(func() { app.write(na) }, func() { be.write(nb) })
		case r < 9: // idle: the session goes dormant
			time.Sleep(nap(rng))
			if res.sess.isDormant() {
				res.dormantSeen++
			}
		default: // a half-close
			sd := pick()
			if canHalf(sd) && !sd.wcl {
				if rng.IntN(2) == 0 { // while the other sends
					o := app
					if sd == app {
						o = be
					}
					n := chaosSize(rng)
					both(func() { sd.c.CloseWrite(); sd.wcl = true }, func() { o.write(n) })
				} else {
					sd.c.CloseWrite()
					sd.wcl = true
				}
			}
		}
	}
	// Often: idle long enough for dormancy right before the end.
	if rng.IntN(2) == 0 {
		time.Sleep(idle + time.Duration(rng.IntN(int(3*idle))))
	}
	const prompt = 5 * time.Second
	switch kind {
	case 0:
		order := rng.IntN(3)
		closeA := func() {
			if !app.wcl {
				app.c.CloseWrite()
				app.wcl = true
			}
		}
		closeB := func() {
			if !be.wcl {
				be.c.CloseWrite()
				be.wcl = true
			}
		}
		switch order {
		case 0:
			both(closeA, closeB)
		case 1:
			closeA()
			time.Sleep(nap(rng))
			closeB()
		default:
			closeB()
			time.Sleep(nap(rng))
			closeA()
		}
		for _, p := range [][2]*chaosSide{{app, be}, {be, app}} {
			if why := p[0].waitEnd(res.sess, p[1], 20*time.Second); why != "" {
				res.err = fmt.Errorf("session %d clean: %s reader did not end: %s", id, p[0].name, why)
				return
			}
		}
		for _, p := range [][2]*chaosSide{{app, be}, {be, app}} {
			sd, peer := p[0], p[1]
			if sd.corrupt != nil {
				res.err = fmt.Errorf("session %d clean: %v", id, sd.corrupt)
				return
			}
			if sd.rerr != io.EOF || sd.got.Load() != peer.sent.Load() || peer.writeErr() != nil {
				res.err = fmt.Errorf("session %d clean: %s read %d/%d then %v; peer write err %v", id, sd.name, sd.got.Load(), peer.sent.Load(), sd.rerr, peer.writeErr())
				return
			}
		}
		if rng.IntN(2) == 0 {
			app.c.Close()
			time.Sleep(nap(rng))
			be.c.Close()
		} else {
			be.c.Close()
			time.Sleep(nap(rng))
			app.c.Close()
		}
	case 1, 2:
		var t0 time.Time
		probe := !other.wcl && rng.IntN(2) == 0
		if !other.wcl && rng.IntN(2) == 0 { // the reset races the other's bytes
			n := chaosSize(rng)
			both(func() { t0 = time.Now(); resetConn(resetter.c) }, func() { other.write(n) })
		} else {
			t0 = time.Now()
			resetConn(resetter.c)
		}
		probeDone := make(chan struct{})
		if !probe {
			close(probeDone)
		}
		if probe {
			prng := rand.New(rand.NewPCG(rng.Uint64(), 3))
			go func() {
				defer close(probeDone)
				for {
					select {
					case <-other.rdone:
						return
					case <-time.After(10 * time.Millisecond):
					}
					if other.write(1+prng.IntN(100)) != nil || other.writeErr() != nil {
						return
					}
				}
			}()
		}
		if why := other.waitEnd(res.sess, resetter, prompt); why != "" {
			res.err = fmt.Errorf("session %d: %s reset, %s saw no end: %s (its writes: %v)", id, resetter.name, other.name, why, other.writeErr())
			return
		}
		<-probeDone // its write error, if it took the reset
		res.resetLat = other.rEndAt.Sub(t0)
		if res.resetLat > 500*time.Millisecond {
			res.note = fmt.Sprintf("session %d %s: %s reset, %s saw %v after %v (other half-closed %v, probe %v, its writes %v)", id, app.c.LocalAddr(), resetter.name, other.name, other.rerr, res.resetLat, other.wcl, probe, other.writeErr())
		}
		if other.corrupt != nil {
			res.err = fmt.Errorf("session %d: %v", id, other.corrupt)
			return
		}
		we := other.writeErr()
		if !errors.Is(other.rerr, syscall.ECONNRESET) && !(other.rerr == io.EOF && errors.Is(we, syscall.ECONNRESET)) {
			res.err = fmt.Errorf("session %d: %s reset; %s read %d/%d then %v (its writes: %v; its TCP state then %d, half-closed %v, probe %v), want ECONNRESET", id, resetter.name, other.name, other.got.Load(), resetter.sent.Load(), other.rerr, we, other.stateAtEnd, other.wcl, probe)
			return
		}
		if other.got.Load() > resetter.sent.Load() {
			res.err = fmt.Errorf("session %d: %s got more than sent", id, other.name)
		}
	case 3:
		both(func() { resetConn(app.c) }, func() { resetConn(be.c) })
	case 4, 5:
		resetter.c.CloseWrite()
		resetter.wcl = true
		if why := other.waitEnd(res.sess, resetter, prompt); why != "" {
			res.err = fmt.Errorf("session %d: %s half-closed, %s saw no end: %s", id, resetter.name, other.name, why)
			return
		}
		if other.rerr != io.EOF || other.got.Load() != resetter.sent.Load() || other.corrupt != nil {
			res.err = fmt.Errorf("session %d: %s half-closed, %s read %d/%d then %v (%v), want all then EOF", id, resetter.name, other.name, other.got.Load(), resetter.sent.Load(), other.rerr, other.corrupt)
			return
		}
		time.Sleep(nap(rng))
		if res.sess.isDormant() {
			res.dormantSeen++
		}
		if !other.wcl && rng.IntN(2) == 0 {
			n := chaosSize(rng)
			both(func() { resetConn(resetter.c) }, func() { other.write(n) })
		} else {
			resetConn(resetter.c)
		}
		if other.wcl {
			res.bothFIN = true // the session may have ended ok before the reset
			break
		}
		// The other side's writes must fail soon: the reset reached it.
		deadline := time.Now().Add(prompt)
		for other.writeErr() == nil && time.Now().Before(deadline) {
			other.write(1 + rng.IntN(50))
			time.Sleep(10 * time.Millisecond)
		}
		if we := other.writeErr(); !errors.Is(we, syscall.ECONNRESET) && !errors.Is(we, syscall.EPIPE) {
			res.err = fmt.Errorf("session %d: %s half-closed then reset; %s's writes: %v, want ECONNRESET or EPIPE within %v", id, resetter.name, other.name, we, prompt)
		}
	}
	return
}

// TestChaos: concurrent sessions doing random things on both legs, with
// dormancy in between. TNSGUARD_CHAOS_SEED replays a run.
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TNSGUARD_CHAOS_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	workers, per := 24, 6
	if v := os.Getenv("TNSGUARD_CHAOS_WORKERS"); v != "" {
		workers, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("TNSGUARD_CHAOS_PER"); v != "" {
		per, _ = strconv.Atoi(v)
	}
	t.Logf("seed %d (TNSGUARD_CHAOS_SEED) GOMAXPROCS %d", seed, runtime.GOMAXPROCS(0))
	top := rand.New(rand.NewPCG(seed, 99))
	cb := &chaosBackend{conns: map[uint64]chan *net.TCPConn{}}
	be := newBackend(t, cb.serve)
	// The opening is not this test's business: on a loaded machine under
	// -race the process's timers and wake-ups are late by hundreds of ms
	// (logged below), and the shared config's connect_timeout of 500 ms ran
	// out for every attempt within connect_budget (dials, and writes of
	// the opening to a connection just made, whose deadline had passed):
	// the app was reset in the opening.
	cfg := oneBackendConfig(be.addr())
	const short = "connect_timeout = \"500ms\"\nconnect_budget = \"3s\""
	if !strings.Contains(cfg, short) {
		t.Fatal("oneBackendConfig's connect_timeout and connect_budget changed: update this test")
	}
	h := startProxy(t, strings.Replace(cfg, short, "connect_timeout = \"3s\"\nconnect_budget = \"10s\"", 1))
	idle := time.Duration(2+top.IntN(10)) * time.Millisecond
	parkSoon(t, h, idle)
	busy := top.IntN(2) == 0
	if v := os.Getenv("TNSGUARD_CHAOS_BUSY"); v != "" {
		busy = v == "1"
	}
	if busy {
		h.p.lotMinBusy.Store(0)
	}
	t.Logf("park after %v, busy lot %v", idle, busy)
	runtime.GC()
	baseG := runtime.NumGoroutine()
	baseFD := openFDs(t)

	// How late the process's timers fire: on a loaded machine, this is
	// what tnsguard's deadlines (its 100 ms idle deadline, connect_timeout)
	// and the test's own waits are late by too.
	lateDone, lateStop := make(chan struct{}), make(chan struct{})
	var late []time.Duration
	go func() {
		defer close(lateDone)
		for {
			t0 := time.Now()
			select {
			case <-lateStop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			late = append(late, time.Since(t0)-10*time.Millisecond)
		}
	}()

	var mu sync.Mutex
	var results []chaosResult
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for i := range per {
				r := chaosSession(h, cb, uint64(w*1000+i+1), rng, idle)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(lateStop)
	<-lateDone
	slices.Sort(late)
	if n := len(late); n > 0 {
		t.Logf("timers late by: median %v, p99 %v, max %v (%d samples)", late[n/2], late[n*99/100], late[n-1], n)
	}
	waitFor(t, 15*time.Second, "sessions ended", func() bool { return len(h.p.liveSessions()) == 0 })
	// What the sessions kept of their openings for a replay is let go
	// with them, whichever way they ended (the budget's count, replay.go).
	waitFor(t, 5*time.Second, "the kept openings let go", func() bool { return h.p.replayHeld.Load() == 0 })
	var kinds [6]int
	dormantSeen := 0
	wantEitherOrOK := 0
	var maxLat time.Duration
	var wantOK, wantCli, wantBk, wantEither int
	failed := 0
	for _, r := range results {
		if r.err != nil {
			failed++
			if failed <= 20 {
				t.Error(r.err)
				if r.sess != nil {
					e := r.sess.end
					t.Errorf("   the proxy ended %s as %s side %s phase %s: %v", r.sess.in.client, e.outcome, e.side, e.phase, e.err)
				}
			}
			continue
		}
		kinds[r.kind]++
		dormantSeen += r.dormantSeen
		if r.note != "" {
			t.Log(r.note)
		}
		maxLat = max(maxLat, r.resetLat)
		s := r.sess
		end := s.end
		switch r.kind {
		case 0:
			wantOK++
			if end.outcome != "ok" {
				t.Errorf("clean session %s ended %s side %s: %v", s.in.client, end.outcome, end.side, end.err)
			}
		case 1, 2, 4, 5:
			if r.bothFIN {
				wantEitherOrOK++
				continue
			}
			want := SideClient
			if r.kind == 2 || r.kind == 5 {
				want = SideBackend
				wantBk++
			} else {
				wantCli++
			}
			if end.outcome != "reset" || end.side != want || Cause(end.err) != "rst" {
				t.Errorf("kind %d session %s reset by %s ended %s side %s cause %s: %v", r.kind, s.in.client, r.resetBy, end.outcome, end.side, Cause(end.err), end.err)
			}
		case 3:
			wantEither++
			if end.outcome != "reset" {
				t.Errorf("double-reset session %s ended %s: %v", s.in.client, end.outcome, end.err)
			}
		}
	}
	t.Logf("kinds %v, failed %d, max reset latency %v, dormant seen %d", kinds, failed, maxLat, dormantSeen)
	ok := counter(h.m.SessionsTotal, "l", "b", "other", "ok")
	var cli, bk, other float64
	for _, sm := range h.samples(t, "tnsguard_resets_total") {
		switch {
		case sm.labels["side"] == "client":
			cli += sm.value
		case sm.labels["side"] == "backend":
			bk += sm.value
		default:
			other += sm.value
		}
	}
	if failed == 0 {
		if ok < float64(wantOK) || ok > float64(wantOK+wantEitherOrOK) || cli < float64(wantCli) || bk < float64(wantBk) || cli+bk+ok != float64(wantOK+wantCli+wantBk+wantEither+wantEitherOrOK) || other != 0 {
			t.Errorf("metrics: ok %v (want %d), client resets %v (want %d+), backend %v (want %d+), total resets want %d, other %v", ok, wantOK, cli, wantCli, bk, wantBk, wantCli+wantBk+wantEither, other)
		}
	}
	if a := testutil.ToFloat64(h.m.SessionsActive.WithLabelValues("l", "b")); a != 0 {
		t.Errorf("sessions_active = %v", a)
	}
	if parked(h) != 0 {
		t.Errorf("%d pumps still parked", parked(h))
	}
	waitFor(t, 10*time.Second, "goroutines back", func() bool { return runtime.NumGoroutine() <= baseG+2 })
	waitFor(t, 10*time.Second, "fds back", func() bool { runtime.GC(); return openFDs(t) <= baseFD+2 })
}

// An app reset while the backend streams: the backend -> app direction's
// write takes the app's ECONNRESET, so the app -> backend direction reads a
// plain 0. If abort has begun closing the legs by then, that direction's
// end of stream must not be passed on as a FIN: the database must see the
// app's reset as a reset (README: "the database leg is reset, RST").
func TestAppResetWhileBackendStreams(t *testing.T) {
	type end struct{ rerr, werr error }
	ends := make(chan end, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		var b [5]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		c.Write(b[:]) // established
		werrc := make(chan error, 1)
		go func() {
			chunk := make([]byte, 32<<10)
			for {
				if _, err := c.Write(chunk); err != nil {
					werrc <- err
					return
				}
			}
		}()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, rerr := io.Copy(io.Discard, c)
		if rerr == nil {
			rerr = io.EOF
		}
		ends <- end{rerr, <-werrc}
	})
	pathModes(t, func(t *testing.T, h *harness, dormant bool) {
		const trials = 60
		eofs := 0
		for i := range trials {
			c := h.dial("l")
			echoed(t, c, "hello")
			go io.Copy(io.Discard, c)
			time.Sleep(time.Duration(i%5) * time.Millisecond)
			resetConn(c)
			e := <-ends
			// A reader that finds 0 after its writer took ECONNRESET saw
			// the reset; a FIN first leaves the socket in CLOSE_WAIT,
			// where the RST that follows gives the writer EPIPE.
			if !errors.Is(e.rerr, syscall.ECONNRESET) && !errors.Is(e.werr, syscall.ECONNRESET) {
				eofs++
				t.Logf("trial %d: the backend read %v (its writes then: %v), want ECONNRESET", i, e.rerr, e.werr)
			}
			waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
		}
		if eofs > 0 {
			t.Errorf("%d of %d trials: the backend saw a clean EOF (FIN) before the app's reset", eofs, trials)
		}
	}, oneBackendConfig(be.addr()))
}

// A database that ends a session with a last message and a reset (it
// closes with the app's bytes unread, so its kernel resets: an upload it
// refuses, say, while the app still sends) is reset at the app too, but
// after that message, as it would be without tnsguard: the app's kernel
// keeps the bytes that came before a reset, and the app reads why it was
// cut. The app's direction, writing its upload, took the reset first and
// ended the session at once: the message, still in the backend socket or
// on its way to the app, was thrown away with it (6 of 20 trials through
// the binary, 0 of 20 directly).
func TestDatabaseLastMessageBeforeItsResetReachesTheApp(t *testing.T) {
	const last = "ERROR: upload refused, closing\n"
	be := newBackend(t, func(c *net.TCPConn) {
		var b [5]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		c.Write(b[:]) // established
		io.CopyN(io.Discard, c, 1<<20)
		c.Write([]byte(last))
		c.Close() // the upload goes on arriving: the kernel resets
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	const trials = 20
	lost := 0
	for i := range trials {
		c := h.dial("l")
		echoed(t, c, "hello")
		go sendUntilItFails(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if string(got) != last {
			lost++
			t.Logf("trial %d: the app read %q, then %v", i, got, err)
		}
		c.Close()
		waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	}
	if lost > 0 {
		t.Errorf("%d of %d trials: the app never got the database's last message before its reset", lost, trials)
	}
}

// The same in the opening: an app uploading past replay_bytes before the
// database's first answer (no re-dial is possible), and a database that
// refuses the upload with an error, its first answer, and resets
// (SO_LINGER 0) with the upload still coming. The app reads that error
// before ECONNRESET, as it would directly (40 of 40). The app's direction,
// writing the upload, took the reset first and ended the session at once,
// before the opening had passed the answer on (18-19 of 40 trials lost it).
func TestDatabaseFirstAnswerBeforeItsResetReachesAnUploadingApp(t *testing.T) {
	const answer = "ERROR: upload refused, closing\n"
	be := newBackend(t, func(c *net.TCPConn) {
		io.CopyN(io.Discard, c, 256<<10) // well past replay_bytes
		c.Write([]byte(answer))
		c.SetLinger(0)
		c.Close()
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), `connect_timeout = "500ms"`, `connect_timeout = "500ms"
replay_bytes = 1024`, 1)
	h := startProxy(t, cfg)
	const trials = 40
	lost := 0
	for i := range trials {
		c := h.dial("l")
		werr := make(chan error, 1)
		go func() { werr <- sendUntilItFails(c) }()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if we := <-werr; err == nil {
			err = we // the writer took the reset: the read found a plain 0
		}
		if string(got) != answer || !errors.Is(err, syscall.ECONNRESET) {
			lost++
			t.Logf("trial %d: the app read %q, then %v", i, got, err)
		}
		c.Close()
		waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	}
	if lost > 0 {
		t.Errorf("%d of %d trials: the app never got the database's first answer before its reset", lost, trials)
	}
}

// The same the other way: an app that sends its last message and closes
// with the database's bytes unread (its kernel resets) is reset at the
// database after that message, as without tnsguard, where the database
// reads it before ECONNRESET. The database's direction, writing to the app,
// took the reset first and ended the session: the message was thrown away
// (1-3 of 20 trials, 0 of 20 directly).
func TestAppLastMessageBeforeItsResetReachesTheDatabase(t *testing.T) {
	const last = "LOGOFF\n"
	got := make(chan []byte, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		var b [5]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		c.Write(b[:]) // established
		go sendUntilItFails(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, _ := io.ReadAll(c)
		got <- rest
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	const trials = 40
	lost := 0
	for i := range trials {
		c := h.dial("l")
		echoed(t, c, "hello")
		io.ReadFull(c, make([]byte, 1<<20))
		c.Write([]byte(last))
		c.Close() // the database's stream unread: the kernel resets
		if r := <-got; string(r) != last {
			lost++
			t.Logf("trial %d: the database read %q", i, r)
		}
		waitFor(t, 2*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	}
	if lost > 0 {
		t.Errorf("%d of %d trials: the database never got the app's last message before its reset", lost, trials)
	}
}

// sendUntilItFails writes 64 KiB at a time to c until a write fails (the
// peer's reset): a side still sending when the other ends.
func sendUntilItFails(c net.Conn) error {
	chunk := make([]byte, 64<<10)
	for {
		if _, err := c.Write(chunk); err != nil {
			return err
		}
	}
}
