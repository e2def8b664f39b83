package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	ka "github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/probe"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// Issue 8: `tnsguard probe` measures the firewall's idle timeout. Behind a conntrack
// firewall that forgets idle flows after 4 s, dropping or resetting their next packet,
// the probe (run from the app namespace against the echo server in db) must find 4 s
// within 1 s and name the failure mode; then tnsguard, configured with the keepalive
// the probe recommends, must keep sessions alive through 3x that timeout.
// About 35 s (both modes run in parallel).
func TestLabProbe(t *testing.T) {
	t.Parallel()
	netlab.Require(t)
	const timeout = 4 * time.Second
	for _, tc := range []struct {
		stale netlab.Stale
		want  probe.Failure
	}{
		{netlab.StaleDrop, probe.FailureDrop},
		{netlab.StaleReset, probe.FailureReset},
	} {
		t.Run(tc.stale.String(), func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, netlab.Config{EstablishedTimeout: timeout, Stale: tc.stale})
			echo := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))

			var progress syncBuffer
			start := time.Now()
			res, err := probe.Run(context.Background(), probe.Options{
				Target:   lab.DBAddr(dbPort),
				Max:      30 * time.Second,
				Progress: &progress,
				Dial: func(ctx context.Context, addr string) (*net.TCPConn, error) {
					return netlab.Dial(ctx, lab.App, addr)
				},
			})
			t.Logf("probe progress:\n%s", progress.String())
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			t.Logf("%s firewall, conntrack timeout %v: probe found %v (survived %v, died after %v), failure %s, rtt %v, recommended %+v; %d checks on %d connections in %v",
				tc.stale, lab.Timeout, res.IdleTimeout, res.LongestAlive, res.ShortestDead, res.Failure, res.RTT,
				res.Recommended, res.Checks, res.Connections, time.Since(start).Round(time.Millisecond))
			if !res.Found {
				t.Fatalf("no idle timeout found up to %v behind a %v firewall", res.Max, lab.Timeout)
			}
			if d := res.IdleTimeout - lab.Timeout; d < -time.Second || d > time.Second {
				t.Errorf("idle timeout %v, want %v within 1s", res.IdleTimeout, lab.Timeout)
			}
			// The firewall's timer is exact: the bracket must hold it, give or
			// take how late the probe notes a connection's start (after its
			// dial returns, the handshake's ACK being what conntrack timed) on
			// a loaded machine.
			if res.LongestAlive > lab.Timeout+50*time.Millisecond || res.ShortestDead < lab.Timeout-250*time.Millisecond {
				t.Errorf("bracket (%v, %v] does not hold the firewall's %v", res.LongestAlive, res.ShortestDead, lab.Timeout)
			}
			if res.Failure != tc.want {
				t.Errorf("failure %q, want %q", res.Failure, tc.want)
			}
			if res.Contradictions != 0 {
				t.Errorf("%d contradicting checks", res.Contradictions)
			}
			if res.RTT <= 0 || res.RTT > 50*time.Millisecond {
				t.Errorf("rtt %v", res.RTT)
			}
			if p := res.Recommended.PathIdleTimeout; p < lab.Timeout-time.Second || p > lab.Timeout {
				t.Errorf("recommended path_idle_timeout %v, want %v rounded down, within 1s", p, lab.Timeout)
			}
			checkEchoSawNoBytes(t, echo, res.Connections)

			t.Run("recommended keepalive keeps sessions alive", func(t *testing.T) {
				requireBuiltGuard(t)
				rec := res.Recommended
				// The advice is what the config derives from the measured
				// timeout, and its first two probes fall inside the real one.
				want := ka.FromPathIdle(rec.PathIdleTimeout)
				if rec.Idle != want.Idle || rec.Interval != want.Interval || rec.Count != want.Count || rec.UserTimeout != want.UserTimeout {
					t.Errorf("recommended %+v, but path_idle_timeout %v derives %+v", rec, rec.PathIdleTimeout, want)
				}
				if rec.Idle+rec.Interval >= lab.Timeout {
					t.Errorf("recommended idle %v + interval %v: not inside the firewall's %v", rec.Idle, rec.Interval, lab.Timeout)
				}
				// path_idle_timeout alone, as the README says is enough.
				db := keepalive{PathIdleTimeout: rec.PathIdleTimeout.String()}
				startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: db})
				sessions := dialN(t, lab.App, guardAddr, 5)
				idle := 3 * lab.Timeout
				time.Sleep(idle)
				errs := roundTripAll(sessions, 3*time.Second)
				t.Logf("with [backend.keepalive] %+v: %d/5 sessions through tnsguard answered after %v idle %v", db, countOK(errs), idle, describe(errs))
				for i, err := range errs {
					if err != nil {
						t.Errorf("session %d through tnsguard with the recommended keepalive: round trip after %v idle: %v", i, idle, err)
					}
				}
			})
		})
	}
}

// checkEchoSawNoBytes reads the echo server's events: it must have accepted the
// probe's connections and been sent nothing on any of them (a "data" event
// is the first read of a connection that got bytes; in drop mode no close
// is seen, so the closes' counts alone could not tell).
func checkEchoSawNoBytes(t *testing.T, echo *netlab.Proc, connections int) {
	t.Helper()
	accepted, closed := 0, 0
	for more := true; more; {
		var ev netlab.Event
		select {
		case ev, more = <-echo.Events:
		case <-time.After(500 * time.Millisecond):
			more = false
		}
		switch ev.Event {
		case "accept":
			accepted++
		case "data":
			t.Errorf("the service got %d bytes on a probe connection; it must get none", ev.Bytes)
		case "close":
			closed++
			if ev.Bytes != 0 {
				t.Errorf("the service got %d bytes on a probe connection; it must get none", ev.Bytes)
			}
		}
	}
	t.Logf("echo server: %d connections accepted, %d seen closed (the rest died in the firewall, their FIN or RST lost there)", accepted, closed)
	if accepted != connections {
		t.Errorf("echo server accepted %d connections, the probe says it opened %d", accepted, connections)
	}
}

// requireBuiltGuard skips, loudly, when cmd/tnsguard does not build (yet); with
// TNSGUARD_LAB_BIN set that binary is used as is.
func requireBuiltGuard(t *testing.T) {
	t.Helper()
	if os.Getenv("TNSGUARD_LAB_BIN") != "" {
		return
	}
	cmd := exec.Command("go", "build", "-o", os.DevNull, "./cmd/tnsguard")
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("\n*****\nTNSGUARD PROXY PART NOT RUN: ./cmd/tnsguard does not build: %v\n%s*****", err, out)
	}
	tnsguardBin.Path(t)
}

// syncBuffer is a bytes.Buffer safe to write from the probe while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A path that forgets a flow within a second (or resets the first packet after the
// handshake, which the probe cannot tell from that) kills every check the probe makes,
// each a few ms past its 1 s idle. The probe must still end, say so, and not leave a
// trail of connections at the server: until this test it went on past -max, one new
// connection a second (each left open at the server in reset mode, since the firewall's
// RST reaches only the client), for as long as it was let run. About 10 s.
func TestLabProbeTimeoutUnderASecond(t *testing.T) {
	t.Parallel()
	netlab.Require(t)
	for _, tc := range []struct {
		stale netlab.Stale
		want  probe.Failure
	}{
		{netlab.StaleDrop, probe.FailureDrop},
		{netlab.StaleReset, probe.FailureReset},
	} {
		t.Run(tc.stale.String(), func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, netlab.Config{EstablishedTimeout: time.Second, Stale: tc.stale})
			echo := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
			const maxIdle = 20 * time.Second
			var progress syncBuffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*maxIdle)
			defer cancel()
			start := time.Now()
			res, err := probe.Run(ctx, probe.Options{
				Target:   lab.DBAddr(dbPort),
				Max:      maxIdle,
				Progress: &progress,
				Dial: func(ctx context.Context, addr string) (*net.TCPConn, error) {
					return netlab.Dial(ctx, lab.App, addr)
				},
			})
			took := time.Since(start)
			t.Logf("probe progress:\n%s", progress.String())
			if err != nil {
				t.Fatalf("probe after %v: %v (%d checks on %d connections)", took.Round(time.Millisecond), err, res.Checks, res.Connections)
			}
			t.Logf("%s firewall, conntrack timeout %v: found %v (survived %v, died after %v), failure %s; %d checks on %d connections in %v",
				tc.stale, lab.Timeout, res.IdleTimeout, res.LongestAlive, res.ShortestDead, res.Failure, res.Checks, res.Connections, took.Round(time.Millisecond))
			if took > 10*time.Second {
				t.Errorf("took %v; every check dies at the first rung, so a few seconds are enough", took.Round(time.Millisecond))
			}
			if !res.Found || res.ShortestDead > 2*time.Second || res.LongestAlive >= time.Second {
				t.Errorf("found %v, bracket (%v, %v]; want a timeout found under 2s", res.Found, res.LongestAlive, res.ShortestDead)
			}
			if res.Failure != tc.want {
				t.Errorf("failure %q, want %q", res.Failure, tc.want)
			}
			if res.Connections > 2*defaultProbeParallel {
				t.Errorf("opened %d connections to find it", res.Connections)
			}
			checkEchoSawNoBytes(t, echo, res.Connections)
		})
	}
}

// defaultProbeParallel is tnsguard probe's default -parallel.
const defaultProbeParallel = 5

// The README has you probe tnsguard's own listener for a middlebox between the
// application and tnsguard, and put the result under [listener.keepalive]. That
// listener sends TCP keepalive itself (idle 60s by default) on the probe's silent
// connections, and those probes refresh the firewall: behind a firewall that forgets
// after longer than that, the probe found "no idle timeout" and recommended max/3 as
// "enough over this path". Pasted in place of the keepalive that had kept the path
// alive, it let the firewall cut every app session. Scaled down here: a 5 s firewall,
// the listener's keepalive at 2 s, -max 15s (idle 5s was recommended). The
// recommendation, reloaded into [listener.keepalive], must keep sessions alive
// through 3x the firewall's timeout. About 35 s.
func TestLabProbeTnsguardListenerWithItsOwnKeepalive(t *testing.T) {
	t.Parallel()
	netlab.Require(t)
	requireBuiltGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 5 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	listen := lab.DBAddr(1522) // tnsguard runs in db, beyond the firewall from the app
	l := link{Name: "orders", Listen: listen, Servers: []string{fmt.Sprintf("127.0.0.1:%d", dbPort)},
		App: keepalive{Idle: "2s", Interval: "1s", Count: 3}, DB: dbKeepalive}
	g := lab.StartTnsguard(t, tnsguardBin.Path(t), lab.DB, adminAddr, guardConfig(l))

	var progress syncBuffer
	res, err := probe.Run(context.Background(), probe.Options{
		Target: listen, Max: 15 * time.Second, Progress: &progress,
		Dial: func(ctx context.Context, addr string) (*net.TCPConn, error) { return netlab.Dial(ctx, lab.App, addr) },
	})
	t.Logf("probe progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	var text bytes.Buffer
	_ = res.WriteText(&text)
	t.Logf("summary:\n%s", text.String())

	l.App = keepalive{PathIdleTimeout: res.Recommended.PathIdleTimeout.String()}
	g.Reload(t, guardConfig(l))
	sessions := dialN(t, lab.App, listen, 3)
	idle := 3 * lab.Timeout
	time.Sleep(idle)
	errs := roundTripAll(sessions, 3*time.Second)
	for i, err := range errs {
		if err != nil {
			t.Errorf("session %d with the recommended [listener.keepalive] %+v: round trip after %v idle through the %v firewall: %v",
				i, l.App, idle, lab.Timeout, err)
		}
	}
}
