package failover

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/metrics"
)

// The breaker takes the time as an argument, so its whole life is walked
// here on a made-up clock, without sleeping.
func TestBreakerLifecycle(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	b := newBreaker(3, 10*time.Second, 35*time.Second, 5*time.Second)

	// Two failures, a success, two failures: not consecutive, still closed.
	for _, f := range []bool{true, true, false, true, true} {
		if f {
			if opened, _ := b.failure(t0); opened {
				t.Fatal("opened before 3 consecutive failures")
			}
		} else if b.success() {
			t.Fatal("success on a closed breaker reported a change")
		}
	}
	if b.current(t0) != metrics.BreakerClosed {
		t.Fatalf("state %d, want closed", b.current(t0))
	}
	opened, openFor := b.failure(t0)
	if !opened || openFor != 10*time.Second || b.current(t0) != metrics.BreakerOpen {
		t.Fatalf("third consecutive failure: opened=%v open_for=%v state=%d; want open for 10s", opened, openFor, b.current(t0))
	}

	// Open: nobody may dial until open_for has passed.
	for _, at := range []time.Duration{0, 5 * time.Second, 10*time.Second - time.Nanosecond} {
		if ok, _ := b.allow(t0.Add(at)); ok || b.usable(t0.Add(at)) {
			t.Fatalf("open breaker allowed a dial %v after opening", at)
		}
	}
	// What it shows (the gauge, the status page) turns half-open when the
	// open period ends, before any session takes the trial.
	if st := b.current(t0.Add(10*time.Second - time.Nanosecond)); st != metrics.BreakerOpen {
		t.Fatalf("state %d just before open_for ends, want open", st)
	}
	if st := b.current(t0.Add(10 * time.Second)); st != metrics.BreakerHalfOpen {
		t.Fatalf("state %d once open_for has passed, want half-open", st)
	}
	// Failures reported while open (sessions that dialed before it opened)
	// neither extend nor re-open it.
	if opened, _ := b.failure(t0.Add(time.Second)); opened {
		t.Fatal("a failure while open re-opened the breaker")
	}

	// Half-open: exactly one session gets the trial.
	t1 := t0.Add(10 * time.Second)
	if !b.usable(t1) {
		t.Fatal("not usable after open_for")
	}
	ok, changed, trial := b.allowTrial(t1)
	if !ok || !changed || trial == 0 || b.current(t0) != metrics.BreakerHalfOpen {
		t.Fatalf("after open_for: allow=%v changed=%v trial=%d state=%d; want the trial and half-open", ok, changed, trial, b.current(t0))
	}
	if ok, _ := b.allow(t1); ok || b.usable(t1) {
		t.Fatal("a second session got a trial while one is in flight")
	}
	// A session that dialed before the circuit opened ends without a
	// verdict: the trial stays out.
	b.abandon(0)
	b.abandon(trial - 1)
	if ok, _ := b.allow(t1); ok || b.usable(t1) {
		t.Fatal("another dial's end without a verdict gave up the trial: a second session got one")
	}
	// The trial's session left without a verdict: the next one may try.
	b.abandon(trial)
	if ok, changed := b.allow(t1); !ok || changed {
		t.Fatalf("after an abandoned trial: allow=%v changed=%v; want a new trial, no state change", ok, changed)
	}
	// A trial that neither reports nor leaves (an app that connected and
	// sends nothing: the backend owes it no answer) is given up after the
	// trial time (connect_budget), and the next session tries.
	if ok, _ := b.allow(t1.Add(5*time.Second - time.Nanosecond)); ok || b.usable(t1.Add(5*time.Second-time.Nanosecond)) {
		t.Fatal("a second trial within the first one's time")
	}
	t1 = t1.Add(5 * time.Second)
	if !b.usable(t1) {
		t.Fatal("not usable once the silent trial's time is over")
	}
	if ok, changed := b.allow(t1); !ok || changed || b.current(t0) != metrics.BreakerHalfOpen {
		t.Fatalf("after a silent trial's time: allow=%v changed=%v state=%d; want a new trial, still half-open", ok, changed, b.current(t0))
	}
	if ok, _ := b.allow(t1); ok {
		t.Fatal("the new trial is not exclusive")
	}

	// Failed trials double open_for up to max_open_for: 20s, then 35s (cap).
	at := t1
	for i, want := range []time.Duration{20 * time.Second, 35 * time.Second, 35 * time.Second} {
		opened, openFor := b.failure(at)
		if !opened || openFor != want {
			t.Fatalf("failed trial %d: opened=%v open_for=%v, want %v", i+1, opened, openFor, want)
		}
		if ok, _ := b.allow(at.Add(want - time.Millisecond)); ok {
			t.Fatalf("failed trial %d: allowed before %v", i+1, want)
		}
		at = at.Add(want)
		if ok, changed := b.allow(at); !ok || !changed {
			t.Fatalf("failed trial %d: no trial after %v", i+1, want)
		}
	}

	// A successful trial closes it and resets open_for and the count.
	if !b.success() || b.current(t0) != metrics.BreakerClosed {
		t.Fatal("successful trial did not close the breaker")
	}
	b.failure(at)
	b.failure(at)
	if opened, openFor := b.failure(at); !opened || openFor != 10*time.Second {
		t.Fatalf("after closing: opened=%v open_for=%v; want 3 failures to open for the base 10s again", opened, openFor)
	}
}

// failures = 0 turns the breaker off.
func TestBreakerOff(t *testing.T) {
	b := newBreaker(0, time.Second, time.Second, time.Second)
	now := time.Now()
	for range 100 {
		if opened, _ := b.failure(now); opened {
			t.Fatal("a breaker with failures = 0 opened")
		}
	}
	if ok, _ := b.allow(now); !ok || !b.usable(now) || b.current(now) != metrics.BreakerClosed {
		t.Fatal("a breaker with failures = 0 refused a dial")
	}
}

// A health check that sees the server come back ends the open period: the
// next session gets the trial at once.
func TestBreakerExpire(t *testing.T) {
	t0 := time.Now()
	b := newBreaker(1, time.Minute, time.Hour, 5*time.Second)
	if b.expire(t0) {
		t.Fatal("expire on a closed breaker reported a change")
	}
	b.failure(t0)
	if ok, _ := b.allow(t0.Add(time.Second)); ok {
		t.Fatal("allowed while open")
	}
	if !b.expire(t0.Add(time.Second)) {
		t.Fatal("expire on an open breaker reported nothing")
	}
	if ok, changed := b.allow(t0.Add(time.Second)); !ok || !changed || b.current(t0) != metrics.BreakerHalfOpen {
		t.Fatal("no half-open trial right after expire")
	}
	// A failed trial still doubles open_for.
	if _, openFor := b.failure(t0.Add(time.Second)); openFor != 2*time.Minute {
		t.Fatalf("failed trial after expire: open_for %v, want 2m", openFor)
	}
}

// A session whose dial began before its server's circuit opened, and that
// the server then took (a listener whose accept queue is full takes a few
// of the SYNs it dropped, late), is no sign that the server is back: the
// open period must hold. Its success closed the circuit at once, so the
// next new sessions dialed the server again, and the breaker flapped open
// and closed every accept (42 openings in 20 s at 300 sessions/s through
// the binary, with 10-25% of the sessions waiting connect_timeout there).
// A dial made while the circuit was open (its half-open trial, or a last
// resort when every circuit is open) still closes it.
func TestStaleSuccessDoesNotCloseAnOpenCircuit(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 2
open_for = "1h"
max_open_for = "1h"
[backend.health]
check = "off"
`+servers(`address = "a:1"`, `address = "b:1";priority = 1`))
	a := b.Servers[0]
	ctx := context.Background()
	plans := dialing(t, b, a, 3) // three sessions dial a:1 while its circuit is closed
	a.Failed(errors.New("dial tcp a:1: i/o timeout"))
	a.Failed(errors.New("dial tcp a:1: i/o timeout"))
	if a.BreakerState() != metrics.BreakerOpen {
		t.Fatalf("state %d after 2 failures, want open", a.BreakerState())
	}
	plans[2].Succeeded(a) // the third dial, accepted late
	if a.BreakerState() != metrics.BreakerOpen {
		t.Fatalf("a dial begun before the circuit opened closed it (state %d): new sessions dial the server again", a.BreakerState())
	}
	if first := firstOf(b); first != "b:1" {
		t.Fatalf("new sessions go to %s first, want b:1 while a:1's circuit is open", first)
	}

	// Every circuit open: the last-resort dial's success closes a:1's.
	b.Servers[1].Failed(errors.New("refused"))
	b.Servers[1].Failed(errors.New("refused"))
	p := b.NewPlan(time.Now())
	if s, _ := p.Next(ctx); s != a {
		t.Fatalf("got %v, want a:1 as a last resort", s)
	}
	p.Succeeded(a)
	if a.BreakerState() != metrics.BreakerClosed {
		t.Fatalf("state %d after a last-resort dial made while open succeeded, want closed", a.BreakerState())
	}
}

// A hung listener fails its sessions only at the end of connect_budget, so
// the failures of sessions that dialed it before its circuit opened come
// in after the open period, while the half-open trial is out. They must
// not decide the trial: one re-opened the circuit for twice as long (the
// binary, 5 s budget, 3 s open_for: open for 6 s 3 ms after the trial was
// handed out), and the trial's success then counted for nothing.
func TestStaleFailureDoesNotDecideTheTrial(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 1
open_for = "10ms"
max_open_for = "1h"
[backend.health]
check = "off"
`+servers(`address = "a:1"`, `address = "b:1";priority = 1`))
	a := b.Servers[0]
	plans := dialing(t, b, a, 2) // two sessions dial a:1 while its circuit is closed
	plans[0].Failed(a, errors.New("backend reset before its first byte"))
	time.Sleep(20 * time.Millisecond) // open_for is over
	trial := trialOf(t, b, a)
	plans[1].Failed(a, errors.New("budget: no answer")) // dialed before the circuit opened
	if st := a.BreakerState(); st != metrics.BreakerHalfOpen {
		t.Fatalf("state %d after a failure of a dial begun before the circuit opened, want half-open (the trial is out)", st)
	}
	trial.Succeeded(a)
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after the trial succeeded, want closed", st)
	}
}

// Failures of dials begun before the circuit last opened, or before it
// last closed, come in after it closed when they take long to fail (a
// listener whose accept queue is full: the dials wait out connect_timeout;
// a hung listener: connect_budget). They must not count toward opening it
// again: `failures` of them re-opened the circuit of a server that had just
// passed its trial, and new sessions went to the standby for open_for, or
// twice as long after the next failed trial.
func TestStaleFailureDoesNotReopenAClosedCircuit(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 2
open_for = "1h"
max_open_for = "1h"
[backend.health]
check = "tcp"
interval = "1h"
`+servers(`address = "a:1"`, `address = "b:1";priority = 1`))
	a := b.Servers[0]
	a.checked.Store(true)        // past the first check, which saw a:1 down
	plans := dialing(t, b, a, 4) // four sessions dial a:1 while its circuit is closed
	plans[0].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[1].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if st := a.BreakerState(); st != metrics.BreakerOpen {
		t.Fatalf("state %d after 2 failures, want open", st)
	}
	// The health check sees a:1 back, which ends the open period (a
	// wall-clock open_for of 10 ms was over before the check above on a
	// loaded machine: "state 2 after 2 failures, want open").
	a.setUp(true)
	trial := trialOf(t, b, a)
	trial.Succeeded(a)
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after the trial succeeded, want closed", st)
	}
	// The two other dials, begun before the circuit opened, time out now.
	plans[2].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[3].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after 2 failures of dials begun before the circuit opened, want closed (the trial said the server is back)", st)
	}
	if first := firstOf(b); first != "a:1" {
		t.Fatalf("new sessions go to %s first, want a:1", first)
	}
	// Failures of dials begun since it closed count, from the first.
	fresh := dialing(t, b, a, 2)
	fresh[0].Failed(a, errors.New("refused"))
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after 1 failure, want closed", st)
	}
	fresh[1].Failed(a, errors.New("refused"))
	if st := a.BreakerState(); st != metrics.BreakerOpen {
		t.Fatalf("state %d after 2 failures of dials begun since the circuit closed, want open", st)
	}
}

// The same for dials made while the circuit was open (every circuit open:
// the last resort) that fail after another one's success closed it.
func TestStaleLastResortFailureDoesNotReopenAClosedCircuit(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 2
open_for = "1h"
max_open_for = "1h"
[backend.health]
check = "off"
`+servers(`address = "a:1"`))
	a := b.Servers[0]
	ctx := context.Background()
	a.Failed(errors.New("refused"))
	a.Failed(errors.New("refused"))
	if st := a.BreakerState(); st != metrics.BreakerOpen {
		t.Fatalf("state %d after 2 failures, want open", st)
	}
	var plans []*Plan
	for range 3 { // the only circuit is open: each session dials it as a last resort
		p := b.NewPlan(time.Now())
		if s, _ := p.Next(ctx); s != a {
			t.Fatalf("got %v, want a:1 as a last resort", s)
		}
		plans = append(plans, p)
	}
	plans[0].Succeeded(a)
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after a last-resort dial succeeded, want closed", st)
	}
	plans[1].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[2].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if st := a.BreakerState(); st != metrics.BreakerClosed {
		t.Fatalf("state %d after 2 failures of dials begun before the circuit closed, want closed", st)
	}
}

// With health checks off a failed dial marks the server down and puts it
// after the others for open_for. A dial begun before the circuit last
// opened or closed, failing late, must not do that either: after the trial
// passed, the outage's late failures kept new sessions off the server that
// was back for open_for (tnsguard_backend_up 0), the circuit closed.
func TestStaleFailureDoesNotShunAServerWithChecksOff(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 2
open_for = "50ms"
max_open_for = "1h"
[backend.health]
check = "off"
`+servers(`address = "a:1"`, `address = "b:1";priority = 1`))
	a := b.Servers[0]
	plans := dialing(t, b, a, 4)
	plans[0].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[1].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	time.Sleep(60 * time.Millisecond) // open_for is over, and a:1 no longer goes last
	trial := trialOf(t, b, a)
	trial.Succeeded(a)
	plans[2].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[3].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if !a.Up() || a.BreakerState() != metrics.BreakerClosed {
		t.Fatalf("up %v, state %d after late failures of dials begun before the circuit opened; want up and closed", a.Up(), a.BreakerState())
	}
	if first := firstOf(b); first != "a:1" {
		t.Fatalf("new sessions go to %s first, want a:1, whose trial passed", first)
	}
	// A failure of a dial begun since counts as before.
	dialing(t, b, a, 1)[0].Failed(a, errors.New("refused"))
	if a.Up() || firstOf(b) != "b:1" {
		t.Fatalf("up %v, first %s after a failure of a dial begun since the circuit closed; want down, b:1 first", a.Up(), firstOf(b))
	}
}

// With checks off, up is the last dial's result, and a dial begun before
// the circuit last opened or closed is not that (above): a late success
// of one (an accept queue that takes a dropped SYN late) must not mark up
// the server whose circuit the outage just opened either. It did, while
// the late failures that follow it no longer mark it down again (they
// did until 2026-11-30): tnsguard_backend_up 1, "up" on the status page
// and /readyz 200 with the only server's circuit open, until the trial.
func TestStaleSuccessDoesNotMarkUpAServerWithChecksOff(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 2
open_for = "1h"
max_open_for = "1h"
[backend.health]
check = "off"
`+servers(`address = "a:1"`))
	a := b.Servers[0]
	plans := dialing(t, b, a, 4)
	plans[0].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	plans[1].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if a.Up() || a.BreakerState() != metrics.BreakerOpen {
		t.Fatalf("up %v, state %d after the outage's failures; want down and open", a.Up(), a.BreakerState())
	}
	plans[2].Succeeded(a) // accepted late: began before the circuit opened
	plans[3].Failed(a, errors.New("dial tcp a:1: i/o timeout"))
	if a.Up() || a.BreakerState() != metrics.BreakerOpen {
		t.Fatalf("up %v, state %d after the late answer and failure of dials begun before the circuit opened; want down and open", a.Up(), a.BreakerState())
	}
	// A success of a dial begun since (the trial's, once open_for is
	// over; here a last resort, the only server's circuit open) counts.
	dialing(t, b, a, 1)[0].Succeeded(a)
	if !a.Up() || a.BreakerState() != metrics.BreakerClosed {
		t.Fatalf("up %v, state %d after a success of a dial begun since the circuit opened; want up and closed", a.Up(), a.BreakerState())
	}
}

// trialOf is a plan of b whose first choice is srv's half-open trial.
func trialOf(t *testing.T, b *Backend, srv *Server) *Plan {
	t.Helper()
	trial := b.NewPlan(time.Now())
	if s, _ := trial.Next(context.Background()); s != srv || trial.Trial() == 0 {
		t.Fatalf("got %v, trial %d; want %s's half-open trial", s, trial.Trial(), srv.Address)
	}
	return trial
}

// dialing is n plans of b whose first choice is srv: sessions dialing it.
func dialing(t *testing.T, b *Backend, srv *Server, n int) []*Plan {
	t.Helper()
	var plans []*Plan
	for range n {
		p := b.NewPlan(time.Now())
		if s, _ := p.Next(context.Background()); s != srv {
			t.Fatalf("got %v, want %s", s, srv.Address)
		}
		plans = append(plans, p)
	}
	return plans
}
