package probe

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// Seen in the lab by a review (firewall timeout 600s, a target resetting
// every connection 10s after connect): two resets at the same time after
// connect (10s) after different idle times (10s and 7s) are the target's,
// not a 7s path timeout. The first such reset ended the run as a path
// timeout of 6.5s, exit 0.
func TestResetsAtAFixedAgeAreTheTargets(t *testing.T) {
	s := time.Second
	sr := &search{max: time.Minute, alive: []time.Duration{s, 2 * s, 3 * s, 4 * s, 6 * s}, closes: []closing{
		{idle: 10 * s, life: 10 * s, reset: true},
		{idle: 7 * s, life: 10 * s, reset: true},
	}}
	lo, hi := sr.bounds()
	if hi != 0 || sr.closedAfter() != 10*s {
		t.Errorf("lo %v hi %v closedAfter %v failure %q done %v; want no death (hi 0) and closedAfter 10s",
			lo, hi, sr.closedAfter(), sr.failure(), sr.done())
	}
}

// End to end on loopback (no middlebox at all): a target that resets every
// connection 10s after accept is told from a middlebox by the resets coming
// at a fixed time after connect. It was reported as a middlebox idle
// timeout in 2 of 3 runs.
func TestRunTargetResetsAfter10s(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 10*time.Second, true)
	var progress bytes.Buffer
	res, err := Run(context.Background(), Options{Target: tg.addr(), Max: 30 * time.Second, Progress: &progress})
	if !errors.Is(err, ErrClosedByTarget) || res.Found {
		t.Errorf("err = %v, found %v (idle timeout %v, %s); want ErrClosedByTarget and no timeout\n%s",
			err, res.Found, res.IdleTimeout, res.Failure, progress.String())
	}
	tg.waitAllClosed(t)
}

// With no middlebox and -max 5s, the ladder needs 5 connections (the waiter
// for max, and 1s, 2s, 3s, 4s). Connections that arrived in another order
// than they were dialed were planned no rung and closed at once, then
// re-dialed: the service saw 12 to 363 connections (each a connect and a
// close with no data, which a listener may log) for 5 checks.
func TestRunOpensFewConnections(t *testing.T) {
	tg := startTarget(t, 0, false)
	var progress bytes.Buffer
	res, err := Run(context.Background(), Options{Target: tg.addr(), Max: 5 * time.Second, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	tg.waitAllClosed(t)
	_, accepted, _ := tg.stats()
	if accepted > defaultParallel+1 {
		t.Errorf("%d connections opened for %d checks (want at most %d)\n%s", accepted, res.Checks, defaultParallel+1, progress.String())
	}
}
