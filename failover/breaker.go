package failover

import (
	"sync"
	"time"

	"github.com/tnsguard/tnsguard/metrics"
)

// breaker is one server's circuit: after `failures` consecutive failures it
// opens for openFor, then lets a single session try (half-open). A failed
// trial re-opens it for twice as long, up to maxOpenFor; a success closes it.
// A trial that has not reported within trialFor (the backend's
// connect_budget: an app that connected and sent nothing gets no verdict) is
// given to the next session, so one silent app cannot keep a server out.
type breaker struct {
	threshold         int
	baseOpen, maxOpen time.Duration
	trialFor          time.Duration

	mu        sync.Mutex
	state     int
	failures  int
	openFor   time.Duration
	openUntil time.Time
	trial     bool
	trialEnd  time.Time // when a trial without a verdict is given up
	trials    Trial     // half-open trials handed out; the last one's number is the trial out
	changes   uint64    // how many times the circuit has opened or closed (epoch)
}

// epoch is the number of times the circuit has opened or closed so far: a
// dial that reads it before it starts can tell later (successSince,
// failureSince) whether the circuit opened or closed while it was in flight.
func (b *breaker) epoch() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changes
}

// successSince is success for a dial that began at epoch e. A dial begun
// before the circuit last opened (an accept queue that takes a SYN it had
// dropped, late) does not end the open period or a half-open trial: it
// says no more of the server than the failures that opened it, and closing
// at once sent new sessions back to a server that fails most of them. The
// trial, a last-resort dial made while open, or the health check decide.
// Nor does one begun before the circuit last closed reset the count of
// failures since (staleLocked). stale reports such a success.
func (b *breaker) successSince(e uint64) (closed, stale bool) {
	if b.threshold == 0 {
		return false, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.staleLocked(e) {
		return false, true
	}
	// Under the same lock as the check: a failure that opens the circuit
	// in between would otherwise be undone by this stale success.
	return b.successLocked(), false
}

// Trial numbers a half-open trial, so that only the session that holds it
// can give it up (abandon): a session that dialed while the circuit was
// still closed and ends later without a verdict would otherwise let a
// second session dial beside the trial. 0 is a dial that took no trial.
type Trial uint64

func newBreaker(threshold int, openFor, maxOpen, trialFor time.Duration) *breaker {
	return &breaker{threshold: threshold, baseOpen: openFor, maxOpen: maxOpen, openFor: openFor, trialFor: trialFor}
}

// trialTaken reports whether a half-open trial is out and still within its
// time. The caller holds mu.
func (b *breaker) trialTaken(now time.Time) bool {
	return b.trial && now.Before(b.trialEnd)
}

// allow reports whether a session may dial now. In the half-open state only
// the first caller gets true, until it reports back.
func (b *breaker) allow(now time.Time) (ok bool, changed bool) {
	ok, changed, _ = b.allowTrial(now)
	return ok, changed
}

// allowTrial is allow, with the number of the half-open trial it handed
// out (0: none).
func (b *breaker) allowTrial(now time.Time) (ok bool, changed bool, trial Trial) {
	if b.threshold == 0 {
		return true, false, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case metrics.BreakerOpen:
		if now.Before(b.openUntil) {
			return false, false, 0
		}
		b.trials++
		b.state, b.trial, b.trialEnd = metrics.BreakerHalfOpen, true, now.Add(b.trialFor)
		return true, true, b.trials
	case metrics.BreakerHalfOpen:
		if b.trialTaken(now) {
			return false, false, 0
		}
		b.trials++
		b.trial, b.trialEnd = true, now.Add(b.trialFor)
		return true, false, b.trials
	}
	return true, false, 0
}

// usable is allow without taking the half-open trial.
func (b *breaker) usable(now time.Time) bool {
	if b.threshold == 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case metrics.BreakerOpen:
		return !now.Before(b.openUntil)
	case metrics.BreakerHalfOpen:
		return !b.trialTaken(now)
	}
	return true
}

// success closes the circuit; it reports whether the state changed.
func (b *breaker) success() bool {
	if b.threshold == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.successLocked()
}

// successLocked is success; the caller holds mu.
func (b *breaker) successLocked() bool {
	changed := b.state != metrics.BreakerClosed
	b.state, b.failures, b.openFor, b.trial = metrics.BreakerClosed, 0, b.baseOpen, false
	if changed {
		b.changes++
	}
	return changed
}

// failure counts one failure; it reports whether the circuit opened and for
// how long.
func (b *breaker) failure(now time.Time) (opened bool, openFor time.Duration) {
	opened, openFor, _ = b.failureSince(now, anyEpoch)
	return opened, openFor
}

// staleLocked tells whether a verdict of a dial begun at epoch e comes
// from before the circuit last opened or closed: it decides nothing. The
// caller holds mu.
func (b *breaker) staleLocked(e uint64) bool {
	return e != anyEpoch && e != b.changes
}

// anyEpoch is the epoch of a verdict that is not a plan's dial: it counts
// whenever it comes.
const anyEpoch = ^uint64(0)

// failureSince is failure for a dial that began at epoch e. A dial begun
// before the circuit last opened does not decide a half-open trial: its
// failure, coming in while the trial is out (a hung listener fails its
// sessions only at the end of connect_budget, long after the circuit
// opened), re-opened the circuit for twice as long, and the trial's
// success, if the server had come back, then no longer closed it. Nor does
// it, or the failure of a dial begun before the circuit last closed (a
// last resort made while it was open), count toward opening it again: once
// the trial closed it, the late failures of the dials of the outage (a full
// accept queue: each waits out connect_timeout) re-opened the circuit of a
// server that had just come back, and new sessions went elsewhere for
// open_for. stale reports such a failure.
func (b *breaker) failureSince(now time.Time, e uint64) (opened bool, openFor time.Duration, stale bool) {
	if b.threshold == 0 {
		return false, 0, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.staleLocked(e) {
		return false, 0, true
	}
	switch b.state {
	case metrics.BreakerHalfOpen:
		b.openFor = doubled(b.openFor, b.maxOpen)
	case metrics.BreakerClosed:
		b.failures++
		if b.failures < b.threshold {
			return false, 0, false
		}
	case metrics.BreakerOpen:
		return false, 0, false
	}
	b.state, b.trial, b.openUntil = metrics.BreakerOpen, false, now.Add(b.openFor)
	b.changes++
	return true, b.openFor, false
}

// current is the state the breaker acts on at now: an open circuit whose
// open period is over lets the next session try, so it is half-open even
// before a session comes to take the trial (a standby that no session
// dials, a quiet night).
func (b *breaker) current(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == metrics.BreakerOpen && !now.Before(b.openUntil) {
		return metrics.BreakerHalfOpen
	}
	return b.state
}

// expire ends an open period early (the health check saw the server come
// back): the next session gets the half-open trial. It reports whether the
// circuit was open.
func (b *breaker) expire(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != metrics.BreakerOpen || !now.Before(b.openUntil) {
		return false
	}
	b.openUntil = now
	return true
}

// abandon releases half-open trial t, which ended without a verdict. Any
// other dial's end without a verdict leaves the trial out.
func (b *breaker) abandon(t Trial) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == metrics.BreakerHalfOpen && t != 0 && t == b.trials {
		b.trial = false
	}
}
