package probe

import (
	"math"
	"testing"
	"time"
)

// simResult is what a simulated run found and what it cost.
type simResult struct {
	lo, hi  time.Duration
	elapsed time.Duration
	checks  int
	opened  int
	maxOpen int
	failure Failure
}

// simulate runs the search against a path that forgets connections idle
// longer than tau, in simulated time, with the engine's rules: plan after
// every event, close connections the plan has no use for, open new ones for
// the fresh targets. Checks that find a connection alive answer at once and
// refresh it; a dead one is known verdict later (0 for a reset, the
// keepalive probes' time for a drop). The target closes connections
// closeAfter after connect (0: never).
func simulate(t *testing.T, tau, verdict, maxIdle, closeAfter time.Duration, parallel int) simResult {
	t.Helper()
	type conn struct {
		born, refreshed time.Time
		target          time.Duration
		checking        bool
		idle            time.Duration
		verdictAt       time.Time
	}
	start := time.Unix(1e9, 0)
	now := start
	s := &search{max: maxIdle}
	fail := FailureDrop
	if verdict == 0 {
		fail = FailureReset
	}
	res := simResult{opened: 1}
	conns := []*conn{{born: now, refreshed: now}}
	for step := 0; !s.done(); step++ {
		if step > 10000 {
			t.Fatalf("tau %v: no answer after %d steps", tau, step)
		}
		var pending []time.Duration
		var idle []*conn
		var slots []slot
		for _, c := range conns {
			if c.checking {
				pending = append(pending, c.idle)
				continue
			}
			idle = append(idle, c)
			sl := slot{idle: now.Sub(c.refreshed)}
			if closed := s.closedAfter(); closed > 0 {
				sl.reach = c.born.Add(closed).Sub(c.refreshed)
			}
			slots = append(slots, sl)
		}
		targets, fresh := s.plan(pending, slots, parallel-len(conns))
		var next []*conn
		for _, c := range conns {
			if c.checking {
				next = append(next, c)
			}
		}
		for i, c := range idle {
			if targets[i] > 0 {
				c.target = targets[i]
				next = append(next, c)
			}
		}
		for _, x := range fresh {
			next = append(next, &conn{born: now, refreshed: now, target: x})
			res.opened++
		}
		conns = next
		res.maxOpen = max(res.maxOpen, len(conns))
		if len(conns) == 0 {
			t.Fatalf("tau %v: nothing planned and not done (lo, hi = %v)", tau, fmtBounds(s))
		}
		// The earliest event: a check falling due, a verdict, or the
		// target closing a connection.
		var at time.Time
		var who *conn
		closing := false
		for _, c := range conns {
			e := c.refreshed.Add(c.target)
			if c.checking {
				e = c.verdictAt
			}
			if who == nil || e.Before(at) {
				at, who, closing = e, c, false
			}
			if closeAfter > 0 && !c.checking {
				if e := c.born.Add(closeAfter); e.Before(at) {
					at, who, closing = e, c, true
				}
			}
		}
		now = at
		drop := func() {
			var rest []*conn
			for _, c := range conns {
				if c != who {
					rest = append(rest, c)
				}
			}
			conns = rest
		}
		switch {
		case closing:
			s.addClose(now.Sub(who.refreshed), now.Sub(who.born), false)
			drop()
		case who.checking:
			s.addDead(who.idle, fail)
			drop()
		default:
			res.checks++
			who.idle = now.Sub(who.refreshed)
			if who.idle <= tau {
				s.addAlive(who.idle)
				who.refreshed = now
			} else {
				who.checking = true
				who.verdictAt = now.Add(verdict)
			}
		}
	}
	res.lo, res.hi = s.bounds()
	res.elapsed = now.Sub(start)
	res.failure = s.failure()
	return res
}

func fmtBounds(s *search) []time.Duration {
	lo, hi := s.bounds()
	return []time.Duration{lo, hi}
}

// TestSearchFindsTimeoutsQuickly runs the search over timeouts from 1 min to
// 2 h (and the lab's few seconds): every bracket must hold the timeout within
// the resolution, and the time taken stays a small multiple of the timeout.
// The figures logged are the basis of the README's "about 2-3 times the
// timeout" (go test -run TestSearchFindsTimeoutsQuickly -v ./probe/).
func TestSearchFindsTimeoutsQuickly(t *testing.T) {
	const parallel = defaultParallel
	for _, verdict := range []time.Duration{0, 3 * time.Second} {
		var sum, worst float64
		n := 0
		for i := 0; i <= 60; i++ {
			tau := time.Duration(float64(time.Minute) * math.Pow(120, float64(i)/60)).Round(time.Second)
			r := simulate(t, tau, verdict, 3*time.Hour, 0, parallel)
			if r.lo > tau || r.hi <= tau || r.hi-r.lo > resolution(r.lo) {
				t.Errorf("timeout %v: bracket (%v, %v] does not hold it within %v", tau, r.lo, r.hi, resolution(r.lo))
			}
			if r.failure != FailureReset && verdict == 0 || r.failure != FailureDrop && verdict > 0 {
				t.Errorf("timeout %v: failure %q", tau, r.failure)
			}
			if r.maxOpen > parallel {
				t.Errorf("timeout %v: %d connections open at once, want at most %d", tau, r.maxOpen, parallel)
			}
			x := r.elapsed.Seconds() / tau.Seconds()
			sum += x
			worst = max(worst, x)
			n++
		}
		mean := sum / float64(n)
		t.Logf("verdict after %v: time taken / timeout: mean %.2f, worst %.2f", verdict, mean, worst)
		if mean > 3 || worst > 4.5 {
			t.Errorf("search too slow: mean %.2f, worst %.2f times the timeout (want <= 3, 4.5)", mean, worst)
		}
	}
	for _, tau := range []time.Duration{3 * time.Second, 4 * time.Second, 4500 * time.Millisecond, 5 * time.Second} {
		r := simulate(t, tau, 3*time.Second, 2*time.Hour, 0, parallel)
		t.Logf("lab-size timeout %v: (%v, %v] in %v, %d checks, %d connections", tau, r.lo, r.hi, r.elapsed, r.checks, r.opened)
		if r.lo > tau || r.hi <= tau || r.hi-r.lo > time.Second {
			t.Errorf("timeout %v: bracket (%v, %v]", tau, r.lo, r.hi)
		}
	}
}

// TestSearchNoTimeoutEndsAtMax: a path that never forgets is checked up to
// max and the run ends about then, not a ladder cycle later.
func TestSearchNoTimeoutEndsAtMax(t *testing.T) {
	for _, maxIdle := range []time.Duration{3 * time.Second, 10 * time.Minute, 2 * time.Hour} {
		r := simulate(t, 1000*time.Hour, 3*time.Second, maxIdle, 0, defaultParallel)
		if r.hi != 0 || r.lo != maxIdle || r.failure != FailureNone {
			t.Errorf("max %v: got lo %v hi %v failure %q, want lo = max, no death", maxIdle, r.lo, r.hi, r.failure)
		}
		if r.elapsed > maxIdle+time.Second {
			t.Errorf("max %v: took %v", maxIdle, r.elapsed)
		}
	}
}

// TestSearchTargetCloses: a target that closes idle connections after 60s
// limits the search to below that; a shorter middlebox timeout is still found.
func TestSearchTargetCloses(t *testing.T) {
	r := simulate(t, 1000*time.Hour, 3*time.Second, 2*time.Hour, 60*time.Second, defaultParallel)
	if r.hi != 0 || r.lo < 55*time.Second || r.lo > 60*time.Second {
		t.Errorf("never-forgetting path behind a target closing at 60s: lo %v hi %v, want lo up to 60s (the FIN crossed the path then)", r.lo, r.hi)
	}
	if r.elapsed > 3*time.Minute {
		t.Errorf("took %v", r.elapsed)
	}
	r = simulate(t, 20*time.Second, 3*time.Second, 2*time.Hour, 60*time.Second, defaultParallel)
	if r.lo > 20*time.Second || r.hi <= 20*time.Second || r.hi-r.lo > time.Second {
		t.Errorf("20s timeout, target closing at 60s: bracket (%v, %v]", r.lo, r.hi)
	}
}

// TestSearchTimeoutBelowShortestCheck: a path that forgets a flow in under a
// second, or resets the first packet after the handshake, kills every check,
// and the engine starts a check a few ms after its idle time is due, so the
// shortest death is just above 1s. The search must end there, not send
// connection after connection to 1s again: until this test the lab's 1 s
// reset firewall kept `tnsguard probe -max 30s` running for over ten minutes,
// one new connection a second, each left open at the server.
func TestSearchTimeoutBelowShortestCheck(t *testing.T) {
	for _, late := range []time.Duration{time.Millisecond, 4 * time.Millisecond, 100 * time.Millisecond} {
		s := &search{max: 30 * time.Second}
		s.addDead(ladderStart+late, FailureReset)
		if !s.done() {
			targets, fresh := s.plan(nil, []slot{{idle: 0}}, defaultParallel-1)
			t.Errorf("death after idle %v, none survived %v: search not done; it plans %v and new connections for %v", ladderStart+late, ladderStart, targets, fresh)
		}
	}
	// A survival of 1s still lets a later death narrow the bracket as usual.
	s := &search{max: 30 * time.Second}
	s.addAlive(ladderStart)
	s.addDead(2*ladderStart+4*time.Millisecond, FailureReset)
	if s.done() {
		t.Errorf("survived 1s, died after 2.004s: done already, want the bracket narrowed to 1s")
	}
}

func TestSearchBoundsTrustDeaths(t *testing.T) {
	s := &search{max: time.Hour}
	s.addAlive(4 * time.Second)
	s.addAlive(8 * time.Second) // contradicted by the death at 6s below
	s.addDead(6*time.Second, FailureReset)
	s.addDead(11*time.Second, FailureDrop)
	lo, hi := s.bounds()
	if lo != 4*time.Second || hi != 6*time.Second {
		t.Errorf("bounds = %v, %v; want 4s, 6s", lo, hi)
	}
	if s.failure() != FailureReset {
		t.Errorf("failure = %q, want the one of the shortest death (reset)", s.failure())
	}
	if s.contradictions() != 1 {
		t.Errorf("contradictions = %d, want 1", s.contradictions())
	}
}

// Connections that end by themselves: FINs are the target; resets are the
// path's idle timeout unless the idle times say they are the target's.
func TestSearchClassifiesCloses(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		name        string
		alive       []time.Duration
		closes      []closing
		lo, hi      time.Duration
		closedAfter time.Duration
	}{
		{"FIN: target, and alive until then", []time.Duration{s, 2 * s}, []closing{{idle: 2500 * time.Millisecond, life: 2500 * time.Millisecond}},
			2500 * time.Millisecond, 0, 2500 * time.Millisecond},
		{"reset at a fixed idle: middlebox", []time.Duration{s, 2 * s}, []closing{{idle: 4 * s, life: 4 * s, reset: true}, {idle: 4 * s, life: 6 * s, reset: true}},
			2 * s, 4 * s, 0},
		{"reset after a longer survival: target", []time.Duration{s, 2 * s}, []closing{{idle: 1500 * time.Millisecond, life: 2500 * time.Millisecond, reset: true}},
			2 * s, 0, 2500 * time.Millisecond},
		{"unchecked connection reset: waits for evidence", []time.Duration{s, 2 * s},
			[]closing{{idle: 4 * s, life: 4 * s, reset: true}},
			2 * s, 0, 0},
		{"unchecked connections reset after the same idle, different lives: middlebox", []time.Duration{s, 2 * s},
			[]closing{{idle: 4 * s, life: 4 * s, reset: true}, {idle: 4 * s, life: 7 * s, reset: true}},
			2 * s, 4 * s, 0},
		{"unchecked connection reset when the target resets them: target", []time.Duration{s, 2 * s},
			[]closing{{idle: 1500 * time.Millisecond, life: 2500 * time.Millisecond, reset: true}, {idle: 2500 * time.Millisecond, life: 2500 * time.Millisecond, reset: true}},
			2500 * time.Millisecond, 0, 2500 * time.Millisecond},
	} {
		sr := &search{max: time.Hour, alive: c.alive, closes: c.closes}
		lo, hi := sr.bounds()
		if lo != c.lo || hi != c.hi || sr.closedAfter() != c.closedAfter {
			t.Errorf("%s: lo %v hi %v closedAfter %v; want %v %v %v", c.name, lo, hi, sr.closedAfter(), c.lo, c.hi, c.closedAfter)
		}
	}
}

func TestResolution(t *testing.T) {
	for _, c := range []struct{ lo, want time.Duration }{
		{0, time.Second},
		{5 * time.Second, time.Second},
		{50 * time.Second, time.Second},
		{100 * time.Second, 2 * time.Second},
		{time.Hour, 72 * time.Second},
	} {
		if got := resolution(c.lo); got != c.want {
			t.Errorf("resolution(%v) = %v, want %v", c.lo, got, c.want)
		}
	}
}

// A keepalive probe sent at the very age at which the target resets its
// connections is answered by that reset: it is the target's, not a death of
// the path. TestRunTargetResetsAfter10s failed now and then on this (CI,
// 2026-11-30): a connection reused for the 8s rung from its 2s check sent
// its probe at 10s, when the target reset every connection, and the probe
// reported an idle timeout between 7s and 8s. A reset that answers a probe
// at another age is a death.
func TestSearchProbeResetAtTheTargetsAge(t *testing.T) {
	s := time.Second
	fixedAge := []closing{{idle: 6 * s, life: 10 * s, reset: true}, {idle: 3 * s, life: 10 * s, reset: true}}
	for _, c := range []struct {
		name        string
		closes      []closing
		probe       closing
		hi          time.Duration
		closedAfter time.Duration
	}{
		{"at the target's age: the target's", fixedAge, closing{idle: 8 * s, life: 10 * s}, 0, 10 * s},
		{"at another age: a death", fixedAge, closing{idle: 8 * s, life: 14 * s}, 8 * s, 10 * s},
		{"no target resets seen: a death", nil, closing{idle: 8 * s, life: 10 * s}, 8 * s, 0},
	} {
		sr := &search{max: time.Hour, alive: []time.Duration{s, 2 * s, 4 * s}, closes: c.closes}
		sr.addProbeReset(c.probe.idle, c.probe.life)
		if _, hi := sr.bounds(); hi != c.hi || sr.closedAfter() != c.closedAfter {
			t.Errorf("%s: hi %v closedAfter %v; want %v %v", c.name, hi, sr.closedAfter(), c.hi, c.closedAfter)
		}
	}
}
