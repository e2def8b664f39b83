package failover

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tnsguard/tnsguard/metrics"
)

// gateWriter holds back the line containing word until released (a stderr
// that is slow for a moment).
type gateWriter struct {
	word    string
	reached chan struct{}
	release chan struct{}
}

func (w *gateWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(w.word)) {
		close(w.reached)
		<-w.release
	}
	return len(p), nil
}

// tnsguard_breaker_state must end as the breaker's state. A session whose
// dial was in flight when the circuit opened and that then succeeds closes
// the circuit; the opener's gauge write came after its (slow) warning, so
// it landed last, and the gauge said open for a closed circuit until the
// next change (an "open breaker" alert that never cleared).
func TestBreakerGaugeEndsAtTheLastState(t *testing.T) {
	w := &gateWriter{word: "circuit opened", reached: make(chan struct{}), release: make(chan struct{})}
	log := hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Warn}) // log.level = "warn"
	b := oneStrikeBackend(t, "off", log)
	b.reporting.Store(true) // as after Start, without its goroutines
	s := b.Servers[0]
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Failed(errors.New("refused")) // opens; its warning is slow
	}()
	<-w.reached
	s.Succeeded() // the in-flight session: closes the circuit
	close(w.release)
	<-done
	gauge := testutil.ToFloat64(b.metrics.BreakerState.WithLabelValues("b", "a:1"))
	if int(gauge) != s.BreakerState() {
		t.Fatalf("tnsguard_breaker_state = %v, breaker state %d (closed=%d open=%d)", gauge, s.BreakerState(), metrics.BreakerClosed, metrics.BreakerOpen)
	}
	up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1"))
	if (up == 1) != s.Up() {
		t.Errorf("tnsguard_backend_up = %v, server up %v", up, s.Up())
	}
}

// With checks off, tnsguard_backend_up must end as the server's up state
// after a failure (slow "server down" warning) and a success that crosses it.
func TestBackendUpGaugeEndsAtTheLastDial(t *testing.T) {
	w := &gateWriter{word: "server down", reached: make(chan struct{}), release: make(chan struct{})}
	log := hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Warn})
	b := testBackendLogged(t, `[backend.health]
check = "off"
`+servers(`address = "a:1"`), log)
	b.reporting.Store(true)
	s := b.Servers[0]
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Failed(errors.New("refused"))
	}()
	<-w.reached
	s.Succeeded()
	close(w.release)
	<-done
	up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1"))
	if (up == 1) != s.Up() {
		t.Fatalf("tnsguard_backend_up = %v, server up %v", up, s.Up())
	}
}

// An open circuit shows as half-open once its open period is over, though
// no session has come to take the trial: a standby that sessions only try
// when the primary fails showed "open" for as long as none did (review).
// At the end of open_for, and at once when a health check sees the server
// come back (which ends the open period early).
func TestBreakerGaugeTurnsHalfOpenWithoutASession(t *testing.T) {
	t.Run("open_for passes", func(t *testing.T) {
		b := testBackendLogged(t, `[backend.breaker]
failures = 1
open_for = "100ms"
[backend.health]
check = "off"
`+servers(`address = "a:1"`), hclog.NewNullLogger())
		b.reporting.Store(true)
		s := b.Servers[0]
		gauge := func() float64 { return testutil.ToFloat64(b.metrics.BreakerState.WithLabelValues("b", "a:1")) }
		s.Failed(errors.New("refused"))
		if g := gauge(); g != metrics.BreakerOpen {
			t.Fatalf("breaker_state = %v after the failure, want open", g)
		}
		deadline := time.Now().Add(2 * time.Second)
		for gauge() != metrics.BreakerHalfOpen {
			if time.Now().After(deadline) {
				t.Fatalf("breaker_state = %v 2 s after open_for (100ms) ended, want half-open", gauge())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	t.Run("the health check sees it back", func(t *testing.T) {
		b := oneStrikeBackend(t, "tcp", hclog.NewNullLogger())
		b.reporting.Store(true)
		s := b.Servers[0]
		s.checked.Store(true) // past the first check
		s.setUp(false)
		s.Failed(errors.New("refused"))
		s.setUp(true)
		if g := testutil.ToFloat64(b.metrics.BreakerState.WithLabelValues("b", "a:1")); g != metrics.BreakerHalfOpen {
			t.Fatalf("breaker_state = %v right after the check saw the server back, want half-open", g)
		}
	})
}

// With checks off every session's success marks its server up: once it is
// up, with its circuit closed, that must not write the gauges again: two
// label lookups per session, which showed in a callgrind profile of
// sessions that connect, ask once and close (README, "Setting a session
// up"). A value only this test writes shows whether a success wrote it.
func TestSuccessOfAnUpServerWritesNoGauge(t *testing.T) {
	b := testBackend(t, `[backend.health]
check = "off"
`+servers(`address = "a:1"`))
	b.reporting.Store(true) // as Start does, without its goroutines
	s := b.Servers[0]
	s.publish()
	if up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1")); up != 1 {
		t.Fatalf("tnsguard_backend_up = %v at the start with checks off, want 1", up)
	}
	const mark = 7
	b.metrics.BackendUp.WithLabelValues("b", "a:1").Set(mark)
	for range 3 {
		s.Succeeded()
	}
	if up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1")); up != mark {
		t.Errorf("successes of a server that was up wrote tnsguard_backend_up again (%v)", up)
	}
	s.Failed(errors.New("refused")) // a change is still published
	if up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1")); up != 0 {
		t.Errorf("tnsguard_backend_up = %v after a failed dial with checks off, want 0", up)
	}
	s.Succeeded()
	if up := testutil.ToFloat64(b.metrics.BackendUp.WithLabelValues("b", "a:1")); up != 1 {
		t.Errorf("tnsguard_backend_up = %v after the next success, want 1", up)
	}
}
