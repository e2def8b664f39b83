package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netem"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// The scenarios of issue 10. Each builds its own lab (app | fw | db namespaces), runs
// tnsguard beside the app, an echo server as the database, and asserts what a user
// would notice. Measured numbers are logged (go test -v).

const (
	dbPort    = 1521
	guardAddr = "127.0.0.1:1522" // tnsguard's listener, inside app
)

// requireGuard skips/fails like netlab.Require and builds tnsguard before a lab is made.
func requireGuard(t *testing.T) {
	t.Helper()
	netlab.Require(t)
	tnsguardBin.Path(t)
}

// Scenarios 1 and 2: a firewall that forgets idle flows after lab.Timeout, dropping
// (1) or resetting (2) their next packet. Sessions through tnsguard survive 3x the
// timeout; the same sessions made directly do not.
func TestLabIdleFirewall(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	cases := []struct {
		name      string
		stale     netlab.Stale
		db        keepalive
		directErr string // what the direct sessions see
	}{
		{"drop", netlab.StaleDrop, dbKeepalive, "timeout"},
		{"reset", netlab.StaleReset, dbKeepalive, "reset"},
		// Only the firewall's timeout is given: tnsguard derives the keepalive from it.
		{"drop-path_idle_timeout", netlab.StaleDrop, keepalive{PathIdleTimeout: "3s"}, "timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: tc.stale})
			lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
			guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: tc.db})

			viaGuard := dialN(t, lab.App, guardAddr, 10)
			direct := dialN(t, lab.App, lab.DBAddr(dbPort), 10)
			idle := 3 * lab.Timeout
			time.Sleep(idle)

			start := time.Now()
			guardErrs := roundTripAll(viaGuard, 3*time.Second)
			directErrs := roundTripAll(direct, 3*time.Second)
			t.Logf("after %v idle behind a %v %s firewall: via tnsguard %d/10 ok %v; direct %d/10 ok %v (checked in %v)",
				idle, lab.Timeout, tc.stale, countOK(guardErrs), describe(guardErrs), countOK(directErrs), describe(directErrs),
				time.Since(start).Round(time.Millisecond))
			for i, err := range guardErrs {
				if err != nil {
					t.Errorf("session %d via tnsguard: round trip after %v idle: %v", i, idle, err)
				}
			}
			// The lab proves itself: without tnsguard the firewall kills every one.
			for i, err := range directErrs {
				if got := netlab.Classify(err); got != tc.directErr {
					t.Errorf("direct session %d: want %s after %v idle, got %v", i, tc.directErr, idle, err)
				}
			}
			m := guard.Metrics(t)
			if resets, _ := m.Sum("tnsguard_resets_total", nil); resets != 0 {
				t.Errorf("tnsguard_resets_total = %v, want 0\n%s", resets, m.Dump("tnsguard_resets_total"))
			}
			if active, ok := m.Sum("tnsguard_sessions_active", netlab.Labels{"listener": "orders"}); !ok || active != 10 {
				t.Errorf("tnsguard_sessions_active = %v (present %v), want 10", active, ok)
			}
			if t.Failed() {
				t.Logf("metrics:\n%s\nfirewall:\n%s", m.Dump(), lab.Rules())
			}
		})
	}
}

// The database leg's keepalive, when idle and user_timeout are 20s or more, is
// set once a session has lasted a second instead of at its dial (README: "The
// backend's options are set once a session lasts"). Its first probe must still
// leave before a firewall that forgets after 23s: 20s of idle, plus at most 2s
// until housekeeping sets it. Sessions idle for 30s from their first round trip
// survive through tnsguard, dormant by then; the same sessions made directly do
// not.
func TestLabKeepaliveSetLate(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 23 * time.Second, Stale: netlab.StaleDrop})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	db := keepalive{Idle: "20s", Interval: "5s", Count: 3, UserTimeout: "40s"}
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: db})

	viaGuard := dialN(t, lab.App, guardAddr, 5)
	direct := dialN(t, lab.App, lab.DBAddr(dbPort), 5)
	const idle = 30 * time.Second
	time.Sleep(idle)
	guardErrs := roundTripAll(viaGuard, 3*time.Second)
	directErrs := roundTripAll(direct, 3*time.Second)
	t.Logf("after %v idle behind a %v firewall: via tnsguard %d/5 ok %v; direct %d/5 ok %v",
		idle, lab.Timeout, countOK(guardErrs), describe(guardErrs), countOK(directErrs), describe(directErrs))
	for i, err := range guardErrs {
		if err != nil {
			t.Errorf("session %d via tnsguard: round trip after %v idle: %v", i, idle, err)
		}
	}
	for i, err := range directErrs {
		if got := netlab.Classify(err); got != "timeout" {
			t.Errorf("direct session %d: want timeout after %v idle, got %v", i, idle, err)
		}
	}
	if m := guard.Metrics(t); t.Failed() {
		t.Logf("metrics:\n%s\nfirewall:\n%s", m.Dump(), lab.Rules())
	}
}

// ended is how and when one app session ended.
type ended struct {
	err   error
	after time.Duration
}

// waitEnd blocks on a read of c (optionally after writing msg) and reports when and
// how the session ended, measured from t0.
func waitEnd(c net.Conn, msg []byte, t0 time.Time, limit time.Duration) ended {
	_ = c.SetDeadline(t0.Add(limit))
	if msg != nil {
		if _, err := c.Write(msg); err != nil {
			return ended{err, time.Since(t0)}
		}
	}
	buf := make([]byte, 1024)
	for {
		_, err := c.Read(buf)
		if err != nil {
			return ended{err, time.Since(t0)}
		}
	}
}

// Scenario 3: the path to the database black-holes a live flow (cable cut, failed
// node). tnsguard's backend keepalive / TCP_USER_TIMEOUT notices within user_timeout
// plus one keepalive interval and resets the app's connection, so the app's driver
// reports a broken connection instead of hanging.
func TestLabBlackHoleLiveFlow(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	const (
		userTimeout = 4 * time.Second // dbKeepalive
		interval    = time.Second
	)
	conns := dialN(t, lab.App, guardAddr, 4)
	time.Sleep(1500 * time.Millisecond) // keepalive is running on the idle backend legs

	lab.BlackHolePort(t, dbPort)
	t0 := time.Now()
	res := make([]ended, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			var msg []byte
			if i%2 == 0 { // half of them send a query into the black hole, half stay idle
				msg = []byte("query into the void\n")
			}
			res[i] = waitEnd(c, msg, t0, 20*time.Second)
		})
	}
	wg.Wait()
	limit := userTimeout + interval
	for i, r := range res {
		kind := "idle"
		if i%2 == 0 {
			kind = "active"
		}
		t.Logf("session %d (%s): ended after %v: %v", i, kind, r.after.Round(time.Millisecond), netlab.Classify(r.err))
		if !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("session %d (%s): want the app's connection reset, got %v after %v", i, kind, r.err, r.after)
		}
		if r.after > limit+500*time.Millisecond {
			t.Errorf("session %d (%s): detected after %v, want within user_timeout+interval = %v", i, kind, r.after, limit)
		}
	}
	m := guard.MetricsWhen(t, 2*time.Second, func(m netlab.Metrics) bool {
		got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend"})
		return got >= float64(len(conns))
	})
	got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout"})
	if got < float64(len(conns)) {
		t.Errorf("tnsguard_resets_total{side=backend,cause=timeout} = %v, want %d\n%s", got, len(conns), m.Dump("tnsguard_resets_total"))
	}
	// A query cut in flight is an active session's end: no keepalive setting
	// could have saved it, and no advice says otherwise. The sessions cut
	// while idle are idle deaths (from the outside, a cable cut while idle
	// looks like a middlebox that forgot the flow).
	for phase, want := range map[string]float64{"active": 2, "idle": 2} {
		if got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout", "phase": phase}); got != want {
			t.Errorf("tnsguard_resets_total{side=backend,cause=timeout,phase=%s} = %v, want %v\n%s", phase, got, want, m.Dump("tnsguard_resets_total"))
		}
	}
	t.Logf("resets:\n%s", m.Dump("tnsguard_resets_total"))
}

// queriesAreReset sends msg on every conn at once and checks that each app
// connection is reset (within 20 s): the query went into a path that is
// gone, and tnsguard passed the backend leg's death on.
func queriesAreReset(t *testing.T, conns []*net.TCPConn, msg string) {
	t.Helper()
	t0 := time.Now()
	res := make([]ended, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { res[i] = waitEnd(c, []byte(msg), t0, 20*time.Second) })
	}
	wg.Wait()
	for i, r := range res {
		t.Logf("session %d: ended after %v: %v", i, r.after.Round(time.Millisecond), netlab.Classify(r.err))
		if !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("session %d: want the app's connection reset, got %v after %v", i, r.err, r.after)
		}
	}
}

// A query into a cable cut after a pause that the path has outlived before
// (the same sessions answered after a longer one) is an active end, though
// keepalive sent no probe in the pause: a path that kept flows through longer
// pauses did not forget this one. No advice.
func TestLabQueryIntoACutAfterAnOutlivedPause(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second, Stale: netlab.StaleDrop})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	db := keepalive{Idle: "20s", Interval: "1s", Count: 3, UserTimeout: "4s"} // no probe in these pauses
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: db})
	conns := dialN(t, lab.App, guardAddr, 2)
	time.Sleep(3 * time.Second)
	if errs := roundTripAll(conns, 3*time.Second); countOK(errs) != len(conns) {
		t.Fatalf("round trips after 3 s: %v", describe(errs))
	}
	time.Sleep(2 * time.Second)
	lab.BlackHolePort(t, dbPort)
	queriesAreReset(t, conns, "query into the cut\n")
	m := resetsCounted(t, guard, 2)
	if got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout", "phase": "active"}); got != 2 {
		t.Errorf("tnsguard_resets_total{side=backend,cause=timeout,phase=active} = %v, want 2\n%s", got, m.Dump("tnsguard_resets_total"))
	}
	if log := guard.Log(); strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("keepalive advice for a cable cut:\n%s", log)
	}
}

// A query sent after a pause in which the firewall forgot the flow (the
// database leg's keepalive idle is longer than the firewall's timeout) is
// dropped, retransmitted and timed out, like a query into a cable cut. But
// here the pause lost the path: the end is counted idle, and the log says
// which keepalive to set.
func TestLabQueryAfterTheFirewallForgot(t *testing.T) {
	t.Parallel()
	queryAfterTheFlowWasForgotten(t, netlab.StaleDrop, "timeout")
}

// The same forgotten flow behind a load balancer that resets (StaleReset)
// instead of dropping: the query after the pause gets an RST at once. The
// app is reset at once, and the pause, in which the flow was lost, is what
// the end counts: phase idle, an idle time of 7 s, and the keepalive advice,
// as when the firewall drops (until the fix, a reset's end was idle only
// when the pause was at least keepalive idle, so a keepalive idle that is
// too long for the middlebox counted active and never brought the advice).
func TestLabQueryAfterTheResettingFirewallForgot(t *testing.T) {
	t.Parallel()
	queryAfterTheFlowWasForgotten(t, netlab.StaleReset, "rst")
}

// queryAfterTheFlowWasForgotten: the database leg's keepalive idle (20 s)
// is longer than the firewall's timeout (3 s), and the apps send a query
// after a 7 s pause. The firewall drops it or answers with an RST (stale);
// either way the apps are reset, the ends count idle with cause (the pause
// lost the path), the log gives the keepalive advice, and /api/resets
// gives the pause as the idle time. With an RST the apps are reset at once.
func queryAfterTheFlowWasForgotten(t *testing.T, stale netlab.Stale, cause string) {
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: stale})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	db := keepalive{Idle: "20s", Interval: "1s", Count: 3, UserTimeout: "4s"} // idle too long for this firewall
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: db})
	conns := dialN(t, lab.App, guardAddr, 2)
	const pause = 7 * time.Second
	time.Sleep(pause) // the firewall forgets the database legs after 3 s
	t0 := time.Now()
	queriesAreReset(t, conns, "query after the pause\n")
	if d := time.Since(t0); stale == netlab.StaleReset && d > time.Second {
		t.Errorf("apps reset %v after the query, want at once (the firewall answered with an RST)", d)
	}
	m := resetsCounted(t, guard, 2)
	want := netlab.Labels{"side": "backend", "cause": cause, "phase": "idle"}
	if got, _ := m.Sum("tnsguard_resets_total", want); got != 2 {
		t.Errorf("tnsguard_resets_total%v = %v, want 2\n%s", want, got, m.Dump("tnsguard_resets_total"))
	}
	// The advice and /api/resets come after the count (finish): wait.
	if log := adviceLogged(guard); !strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("no keepalive advice in the log:\n%s", log)
	}
	// The session was idle for the pause, not for the user timeout that
	// followed the query: that is the idle the advice and /api/resets give.
	var got struct {
		Resets []struct {
			Idle float64 `json:"idle_seconds"`
		} `json:"resets"`
	}
	var (
		code int
		body []byte
		err  error
	)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got.Resets = nil
		code, body, err = guard.Get("/api/resets")
		if err != nil || code != 200 || json.Unmarshal(body, &got) != nil || len(got.Resets) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || code != 200 || json.Unmarshal(body, &got) != nil || len(got.Resets) != 2 {
		t.Fatalf("/api/resets: %d %s %v", code, body, err)
	}
	for _, ev := range got.Resets {
		if ev.Idle < pause.Seconds()-0.5 || ev.Idle > pause.Seconds()+1 {
			t.Errorf("idle_seconds %.1f, want the pause, %v", ev.Idle, pause)
		}
	}
}

// An upload cut in flight: the apps stream to the database without a
// pause when its path is black-holed. Each app is reset within
// user_timeout + one interval, and the end is active (bytes were being
// retransmitted; no keepalive setting could have saved it), with no
// keepalive advice. Until the fix, bulk bytes spliced into the backend's
// socket before the cut were counted as moving when the socket failed, so
// the end looked like bytes lost after a pause as long as the user
// timeout: phase idle, and the advice to shorten keepalive.
func TestLabUploadIntoACut(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	const (
		userTimeout = 4 * time.Second // dbKeepalive
		interval    = time.Second
	)
	conns := dialN(t, lab.App, guardAddr, 2)
	var t0 time.Time
	cut := make(chan struct{})
	go func() {
		time.Sleep(2 * time.Second) // streaming by then
		lab.BlackHolePort(t, dbPort)
		t0 = time.Now()
		close(cut)
	}()
	res := make([]ended, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			// A reset's error goes to whichever of the app's read and
			// write takes it first; the other then finds a plain end
			// (EOF or EPIPE). Either one's ECONNRESET is the reset.
			errs := stream(c)
			err := <-errs
			at := time.Now()
			if second := <-errs; errors.Is(second, syscall.ECONNRESET) {
				err = second
			}
			<-cut
			res[i] = ended{err, at.Sub(t0)}
		})
	}
	wg.Wait()
	for i, r := range res {
		t.Logf("session %d (streaming): ended %v after the cut: %v", i, r.after.Round(time.Millisecond), netlab.Classify(r.err))
		if !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("session %d: want the app's connection reset, got %v after %v", i, r.err, r.after)
		}
		if r.after > userTimeout+interval+500*time.Millisecond {
			t.Errorf("session %d: detected %v after the cut, want within user_timeout+interval = %v", i, r.after, userTimeout+interval)
		}
	}
	m := resetsCounted(t, guard, len(conns))
	if got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout", "phase": "active"}); got != float64(len(conns)) {
		t.Errorf("tnsguard_resets_total{side=backend,cause=timeout,phase=active} = %v, want %d\n%s", got, len(conns), m.Dump("tnsguard_resets_total"))
	}
	if log := guard.Log(); strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("keepalive advice for an upload cut in flight:\n%s", log)
	}
}

// adviceLogged returns tnsguard's log once it has the keepalive advice, or
// after 5 s without it. A session's end is counted before the advice it
// brings is logged (proxy's finish), and the log reaches the test through
// a pipe: a log read at once after the count can miss it.
func adviceLogged(guard *netlab.Tnsguard) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		log := guard.Log()
		if strings.Contains(log, "sessions on this link die while idle") || time.Now().After(deadline) {
			return log
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// resetsCounted scrapes /metrics once n resets of the backend side are
// counted, or after 2 s: the apps see a reset a moment before it is
// counted (MetricsWhen).
func resetsCounted(t *testing.T, guard *netlab.Tnsguard, n int) netlab.Metrics {
	return guard.MetricsWhen(t, 2*time.Second, func(m netlab.Metrics) bool {
		got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend"})
		return got >= float64(n)
	})
}

// stream writes to c and reads what comes back, without a pause, for at
// most 20 s; the error that ends each comes on the channel, the first
// first.
func stream(c net.Conn) <-chan error {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	errs := make(chan error, 2)
	go func() { // the echo comes back: read it
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				errs <- err
				return
			}
		}
	}()
	return errs
}

// A result set streaming to an app whose host vanishes (it was reading,
// without a pause): tnsguard's app-side user timeout ends the session and
// resets the database leg within user_timeout + one interval, and the end
// is active, a result to an app that vanished, with no keepalive advice.
// Until the fix it counted idle (see TestLabUploadIntoACut).
func TestLabResultToAVanishedApp(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	// Each query comes back four times over: the way to the app stays
	// full, so bytes are in flight to it when it vanishes even if the app
	// (a goroutine of this test, on a loaded machine) pauses just then.
	// With a plain echo, one such pause emptied the way in a CI run: the
	// session was idle when the path went, and counted so.
	db := lab.StartHelper(t, lab.DB, "echo", netlab.EchoArgs{Listen: fmt.Sprintf(":%d", dbPort), Repeat: 4})
	app := keepalive{Idle: "1s", Interval: "1s", Count: 2, UserTimeout: "3s"}
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: app, DB: dbKeepalive})
	const n = 2
	conns := dialN(t, lab.App, guardAddr, n)
	for _, c := range conns { // the app sends and reads (the result) without a pause
		stream(c)
	}
	time.Sleep(2 * time.Second)
	lab.BlackHoleAppLeg(t, 1522)
	t0 := time.Now()
	limit := 3*time.Second + time.Second // user_timeout + one interval
	deadline := time.After(limit + 5*time.Second)
	for closed := 0; closed < n; {
		select {
		case ev, ok := <-db.Events:
			if !ok {
				t.Fatal("echo server ended")
			}
			if ev.Event != "close" || ev.Bytes == 0 {
				continue
			}
			closed++
			d := ev.At.Sub(t0)
			t.Logf("database saw session from %s closed (%s) %v after the app vanished", ev.Remote, ev.How, d.Round(time.Millisecond))
			if ev.How != "reset" || d > limit+500*time.Millisecond {
				t.Errorf("backend leg from %s ended with %q after %v, want a reset within %v", ev.Remote, ev.How, d, limit)
			}
		case <-deadline:
			t.Fatalf("database saw %d of %d sessions closed; want all\n%s", closed, n, guard.Metrics(t).Dump())
		}
	}
	m := guard.MetricsWhen(t, 2*time.Second, func(m netlab.Metrics) bool {
		got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "client"})
		return got >= n
	})
	if got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "client", "cause": "timeout", "phase": "active"}); got != n {
		t.Errorf("tnsguard_resets_total{side=client,cause=timeout,phase=active} = %v, want %d\n%s", got, n, m.Dump("tnsguard_resets_total"))
	}
	if log := guard.Log(); strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("keepalive advice for a result cut in flight:\n%s", log)
	}
}

// Scenario 4: the database server is killed and restarted. Sessions on the dead server
// end promptly (no hang); a session opened while it is down waits and succeeds as soon
// as it is back; new sessions succeed after that.
func TestLabBackendRestart(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	listen := fmt.Sprintf(":%d", dbPort)
	db := lab.StartEcho(t, lab.DB, listen)
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)},
		App: appKeepalive, DB: dbKeepalive, HealthInterval: "500ms", Rise: 1, Fall: 1, ConnectBudget: "15s"})
	conns := dialN(t, lab.App, guardAddr, 3)

	db.Kill()
	t0 := time.Now()
	res := make([]ended, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { res[i] = waitEnd(c, []byte("still there?\n"), t0, 10*time.Second) })
	}
	wg.Wait()
	for i, r := range res {
		t.Logf("session %d on the killed server: ended after %v: %v", i, r.after.Round(time.Millisecond), netlab.Classify(r.err))
		if k := netlab.Classify(r.err); k != "eof" && k != "reset" {
			t.Errorf("session %d: want it ended (eof or reset) when the server died, got %v", i, r.err)
		}
		if r.after > 2*time.Second {
			t.Errorf("session %d: ended after %v, want promptly (< 2s)", i, r.after)
		}
	}

	// An app connects while the server is down: tnsguard holds it within connect_budget.
	type result struct {
		err error
		at  time.Time
	}
	pending := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := netlab.Dial(ctx, lab.App, guardAddr)
		if err != nil {
			pending <- result{err, time.Now()}
			return
		}
		defer c.Close()
		err = roundTrip(c, []byte("waiting for the db\n"), 15*time.Second)
		pending <- result{err, time.Now()}
	}()
	time.Sleep(1500 * time.Millisecond)
	lab.StartEcho(t, lab.DB, listen)
	back := time.Now()
	r := <-pending
	if r.err != nil {
		t.Fatalf("session opened while the server was down: %v (want it to wait and succeed)\n%s", r.err, guard.Metrics(t).Dump())
	}
	wait := r.at.Sub(back)
	t.Logf("session opened while down: answered %v after the server was back (it had waited %v)", wait.Round(time.Millisecond), r.at.Sub(t0).Round(time.Millisecond))
	if wait > 3*time.Second {
		t.Errorf("session answered %v after the server came back, want < 3s", wait)
	}
	fresh := dialN(t, lab.App, guardAddr, 3)
	if errs := roundTripAll(fresh, 3*time.Second); countOK(errs) != len(fresh) {
		t.Errorf("new sessions after restart: %v", describe(errs))
	}
	t.Logf("metrics:\n%s", guard.Metrics(t).Dump("tnsguard_resets_total", "tnsguard_redials_total", "tnsguard_sessions_total", "tnsguard_backend_up"))
}

// Scenario 5: the app vanishes without closing (its host died, its leg is cut). The
// client-leg keepalive ends the session and tnsguard resets the backend leg, so the
// database is not left with a zombie session holding locks, nor told that the app
// finished cleanly. Either nothing answers any more (black hole: the user timeout
// expires), or a router answers that the host is unreachable (ICMP: the same wait,
// and the kernel then reports EHOSTUNREACH). Each app's last message, sent as it
// vanishes, is in flight when the leg dies (the database's echo of it, where it got
// through).
func TestLabVanishedApp(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	for _, tc := range []struct {
		name, cause string
		cut         func(*netlab.Lab, testing.TB, int) func()
	}{
		{"black hole", "timeout", (*netlab.Lab).BlackHoleAppLeg},
		{"host unreachable", "unreachable", (*netlab.Lab).UnreachableAppLeg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vanishedApp(t, tc.cause, tc.cut)
		})
	}
}

func vanishedApp(t *testing.T, cause string, cut func(*netlab.Lab, testing.TB, int) func()) {
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	db := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	app := keepalive{Idle: "1s", Interval: "1s", Count: 2, UserTimeout: "3s"}
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: app, DB: dbKeepalive})
	const n = 3
	conns := dialN(t, lab.App, guardAddr, n)

	cut(lab, t, 1522)
	t0 := time.Now()
	for _, c := range conns {
		if _, err := c.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
	}
	limit := 3*time.Second + time.Second // user_timeout + one interval (idle 1s + 2 probes fits in it)
	var closes []netlab.Event
	deadline := time.After(limit + 5*time.Second)
	for len(closes) < n {
		select {
		case ev, ok := <-db.Events:
			if !ok {
				t.Fatal("echo server ended")
			}
			if ev.Event == "close" && ev.Bytes > 0 { // health checks carry no bytes
				closes = append(closes, ev)
				t.Logf("database saw session from %s closed (%s) %v after the app vanished", ev.Remote, ev.How, ev.At.Sub(t0).Round(time.Millisecond))
			}
		case <-deadline:
			t.Fatalf("database saw %d of %d sessions closed within %v of the app vanishing; want all (zombie sessions)\n%s",
				len(closes), n, limit+5*time.Second, guard.Metrics(t).Dump())
		}
	}
	for _, ev := range closes {
		if d := ev.At.Sub(t0); d > limit+500*time.Millisecond {
			t.Errorf("backend leg from %s closed %v after the app vanished, want within %v", ev.Remote, d, limit)
		}
		if ev.How != "reset" {
			t.Errorf("backend leg from %s ended with %q, want a reset", ev.Remote, ev.How)
		}
	}
	m := guard.MetricsWhen(t, 2*time.Second, func(m netlab.Metrics) bool {
		resets, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "client", "cause": cause})
		active, _ := m.Sum("tnsguard_sessions_active", nil)
		return resets >= n && active == 0
	})
	if got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "client", "cause": cause}); got < n {
		t.Errorf("tnsguard_resets_total{side=client,cause=%s} = %v, want %d\n%s", cause, got, n, m.Dump("tnsguard_resets_total"))
	}
	if active, _ := m.Sum("tnsguard_sessions_active", nil); active != 0 {
		t.Errorf("tnsguard_sessions_active = %v after the app vanished, want 0", active)
	}
}

// Scenario 6a: delay and loss that the kernel sees (NFQUEUE netem in fw on the packets
// to the database). Sessions carry on; tnsguard_backend_rtt_seconds reads the delay and
// tnsguard_backend_retransmits_total counts the loss.
func TestLabKernelLatencyAndLoss(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	const delay = 50 * time.Millisecond
	stop := lab.Netem(t, netem.Config{Queue: 21, Delay: delay, Loss: 0.01}, "-p", "tcp", "-d", lab.DBIP.String(), "--dport", fmt.Sprint(dbPort))
	conns := dialN(t, lab.App, guardAddr, 10)

	// Every session does round trips of 8 KiB for a few seconds.
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	trips := make([]int, len(conns))
	until := time.Now().Add(5 * time.Second)
	for i, c := range conns {
		wg.Go(func() {
			msg := make([]byte, 8<<10)
			for time.Now().Before(until) {
				if err := roundTrip(c, msg, 10*time.Second); err != nil {
					errs[i] = err
					return
				}
				trips[i]++
			}
		})
	}
	time.Sleep(3 * time.Second)
	during := guard.Metrics(t)
	wg.Wait()
	after := guard.Metrics(t)
	st := stop()
	server := netlab.Labels{"server": lab.DBAddr(dbPort)}
	rtt, rttOK := during.Sum("tnsguard_backend_rtt_seconds", server)
	retrans, _ := after.Sum("tnsguard_backend_retransmits_total", server)
	hcN, hcSum, _ := after.Histogram("tnsguard_health_check_duration_seconds", server)
	total := 0
	for _, n := range trips {
		total += n
	}
	hcMean := hcSum / float64(max(hcN, 1))
	t.Logf("netem %v delay, 1%% loss on the way to the db: %d round trips in 10 sessions, errors %v; tnsguard_backend_rtt_seconds %.4f; "+
		"tnsguard_backend_retransmits_total %v; health check (tcp connect) mean %.4fs over %d; netem %+v", delay, total, describe(errs), rtt, retrans, hcMean, hcN, st)
	for i, err := range errs {
		if err != nil {
			t.Errorf("session %d under delay and loss: %v", i, err)
		}
	}
	// The delay packets really got: on a busy machine the queue releases them a little
	// late, and the kernel rightly sees that too.
	got := st.MeanHeld.Seconds()
	if !rttOK || rtt < 0.7*got || rtt > 1.3*got+st.MaxLate.Seconds() {
		t.Errorf("tnsguard_backend_rtt_seconds = %v (present %v), want the %v the queue held packets within 30%% (configured %v)\n%s",
			rtt, rttOK, st.MeanHeld, delay, during.Dump("tnsguard_backend_rtt_seconds"))
	}
	// The health check's connect waits one RTT, so it sees network latency too (the
	// SYN and the ACK of the handshake cross the queue).
	// 0.8: the histogram's mean over a handful of checks wanders a few ms
	// on a loaded machine (seen: 44.98 ms for a 50 ms queue).
	if hcN == 0 || hcMean < 0.8*delay.Seconds() {
		t.Errorf("health check duration mean %vs over %d checks, want >= %vs: a connect takes one RTT", hcMean, hcN, 0.8*delay.Seconds())
	}
	if retrans <= 0 {
		t.Errorf("tnsguard_backend_retransmits_total = %v with %d packets dropped, want > 0\n%s", retrans, st.Dropped, after.Dump("tnsguard_backend_retransmits_total"))
	}
}

// Scenario 6b: latency above TCP (Toxiproxy in db, between tnsguard and the server) is
// invisible to the kernel's RTT but seen by application round trips: the tnsping
// health check's duration.
func TestLabLatencyAboveTCP(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	const latency = 100 * time.Millisecond
	lab.StartToxiproxy(t, lab.DB, netlab.ToxiproxyArgs{Listen: ":1531", Upstream: fmt.Sprintf("127.0.0.1:%d", dbPort), Latency: latency})
	plain := link{Name: "plain", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive, Health: "tnsping", HealthInterval: "500ms"}
	slow := link{Name: "slow", Listen: "127.0.0.1:1523", Servers: []string{lab.DBAddr(1531)}, App: appKeepalive, DB: dbKeepalive, Health: "tnsping", HealthInterval: "500ms"}
	guard := startGuard(t, lab, plain, slow)

	// One session each, so that the backends have live sockets for the RTT gauge.
	pc := dialN(t, lab.App, plain.Listen, 1)[0]
	sc := dialN(t, lab.App, slow.Listen, 1)[0]
	var appPlain, appSlow time.Duration
	for range 5 {
		s := time.Now()
		if err := roundTrip(pc, []byte("plain\n"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
		appPlain = max(appPlain, time.Since(s))
		s = time.Now()
		if err := roundTrip(sc, []byte("slow\n"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
		appSlow = max(appSlow, time.Since(s))
	}
	time.Sleep(3 * time.Second) // several health checks
	m := guard.Metrics(t)

	hc := func(backend string) float64 {
		n, sum, ok := m.Histogram("tnsguard_health_check_duration_seconds", netlab.Labels{"backend": backend})
		if !ok || n == 0 {
			t.Errorf("no tnsguard_health_check_duration_seconds for backend %s\n%s", backend, m.Dump("tnsguard_health_check_duration_seconds"))
			return math.NaN()
		}
		return sum / float64(n)
	}
	rtt := func(backend string) float64 {
		v, ok := m.Sum("tnsguard_backend_rtt_seconds", netlab.Labels{"backend": backend})
		if !ok {
			t.Errorf("no tnsguard_backend_rtt_seconds for backend %s\n%s", backend, m.Dump("tnsguard_backend_rtt_seconds"))
		}
		return v
	}
	hcPlain, hcSlow := hc("plain"), hc("slow")
	rttPlain, rttSlow := rtt("plain"), rtt("slow")
	t.Logf("toxiproxy latency %v each way: health check mean plain %.4fs slow %.4fs; kernel RTT plain %.6fs slow %.6fs; app round trip max plain %v slow %v",
		latency, hcPlain, hcSlow, rttPlain, rttSlow, appPlain.Round(time.Microsecond), appSlow.Round(time.Microsecond))
	// A tnsping is one round trip: its CONNECT and the REFUSE each wait `latency`.
	if !(hcSlow >= 1.8*latency.Seconds()) {
		t.Errorf("health check duration behind toxiproxy = %vs, want >= %vs (it must see latency above TCP)", hcSlow, 1.8*latency.Seconds())
	}
	if !(hcPlain < 0.05) {
		t.Errorf("health check duration without toxiproxy = %vs, want < 0.05s", hcPlain)
	}
	if rttSlow > 0.01 {
		t.Errorf("kernel RTT behind toxiproxy = %vs, want < 0.01s: latency above TCP is not the kernel's", rttSlow)
	}
	if appSlow < 2*latency {
		t.Errorf("app round trip via toxiproxy %v, want >= %v (lab check)", appSlow, 2*latency)
	}
}

// Scenario 6c: the path's delay grows while a pool holds idle sessions. The kernel
// samples a socket's RTT only when data it sent is acknowledged, so an idle session
// keeps the RTT of its last query; tnsguard_backend_rtt_seconds (and /api/links) must
// read the path's delay now, not the mean with the idle sessions' old figures (it read
// 20 ms for a 40 ms path with half the sessions idle).
func TestLabKernelRTTWithIdleSessions(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	conns := dialN(t, lab.App, guardAddr, 6) // before the delay: RTTs of some µs
	const delay = 40 * time.Millisecond
	stop := lab.Netem(t, netem.Config{Queue: 23, Delay: delay}, "-p", "tcp", "-d", lab.DBIP.String(), "--dport", fmt.Sprint(dbPort))

	// Half the sessions stay idle (a pool's spare connections); the others work for
	// longer than the idle ones' last RTT sample may count (5 s).
	var wg sync.WaitGroup
	errs := make([]error, 3)
	until := time.Now().Add(8 * time.Second)
	for i, c := range conns[:3] {
		wg.Go(func() {
			msg := make([]byte, 8<<10)
			for time.Now().Before(until) {
				if err := roundTrip(c, msg, 10*time.Second); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	time.Sleep(7 * time.Second)
	rtt, ok, api := serverRTT(t, guard, lab.DBAddr(dbPort))
	wg.Wait()
	st := stop()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("busy session %d: %v", i, err)
		}
	}
	if api == nil {
		t.Fatal("/api/links: no rtt_seconds")
	}
	got := st.MeanHeld.Seconds()
	t.Logf("netem %v: held %v on average; tnsguard_backend_rtt_seconds %.4f, /api/links rtt_seconds %.4f, with 3 of 6 sessions idle", delay, st.MeanHeld, rtt, *api)
	for what, v := range map[string]float64{"tnsguard_backend_rtt_seconds": rtt, "/api/links rtt_seconds": *api} {
		if !ok || v < 0.7*got || v > 1.3*got+st.MaxLate.Seconds() {
			t.Errorf("%s = %v with idle sessions in the pool, want the %v the path delays packets now, within 30%%", what, v, st.MeanHeld)
		}
	}
}

// A firewall that forgets sooner than the keepalive tnsguard was started
// with, found out later (tnsguard probe, or the idle resets), and the
// database leg's keepalive shortened by a reload: the pooled sessions
// already open must survive from then on, not only the ones opened after
// it. Until 2026-11-30 they kept the keepalive they began with, and each
// was cut by the firewall once more after the fix.
func TestLabReloadedKeepaliveReachesOpenSessions(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: netlab.StaleDrop})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	l := link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive,
		DB: keepalive{Idle: "10s", Interval: "5s", Count: 3, UserTimeout: "30s"}} // too slow for this firewall
	guard := startGuard(t, lab, l)
	pooled := dialN(t, lab.App, guardAddr, 5)
	l.DB = dbKeepalive
	guard.Reload(t, guardConfig(l))

	idle := 3 * lab.Timeout
	time.Sleep(idle)
	errs := roundTripAll(pooled, 3*time.Second)
	t.Logf("after %v idle behind a %v firewall, keepalive reloaded: %d/5 ok %v", idle, lab.Timeout, countOK(errs), describe(errs))
	for i, err := range errs {
		if err != nil {
			t.Errorf("session %d, open before the reload: round trip after %v idle: %v", i, idle, err)
		}
	}
	if m := guard.Metrics(t); t.Failed() {
		t.Logf("metrics:\n%s\nfirewall:\n%s", m.Dump(), lab.Rules())
	}
}

// A reload that sets a user_timeout (4 s) shorter than the waits of two
// live sessions. A long query (the database thinks for 8 s, its TCP
// answers keepalive) is untouched: the user timeout bounds only data left
// unanswered. A bulk load that the database stops reading for 8 s (its
// window closed, its TCP answering the zero-window probes) is cut at the
// new user timeout all the same (Linux 5.11 and later): nothing was idle,
// so the end counts active, with no keepalive advice. Until the fix it
// counted idle, and the advice blamed a middlebox.
func TestLabReloadedUserTimeoutAndLiveSessions(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second, Stale: netlab.StaleDrop})
	ln, err := lab.Listen(lab.DB, fmt.Sprintf(":%d", dbPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch {
					case strings.HasPrefix(line, "query"): // 8 s of thinking
						time.Sleep(8 * time.Second)
					case strings.HasPrefix(line, "load"): // reads the load only after 8 s
						c.Write([]byte(line))
						time.Sleep(8 * time.Second)
						n, _ := io.CopyN(io.Discard, r, 32<<20)
						line = fmt.Sprintf("loaded %d\n", n)
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	l := link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive,
		DB: keepalive{Idle: "30s", Interval: "10s", Count: 3, UserTimeout: "60s"}}
	guard := startGuard(t, lab, l)
	conns := dialN(t, lab.App, guardAddr, 2)
	query, load := make(chan error, 1), make(chan error, 1)
	go func() {
		conns[0].SetDeadline(time.Now().Add(20 * time.Second))
		conns[0].Write([]byte("query\n"))
		_, err := bufio.NewReader(conns[0]).ReadString('\n')
		query <- err
	}()
	go func() {
		c := conns[1]
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("load\n"))
		r := bufio.NewReader(c)
		r.ReadString('\n')
		go c.Write(make([]byte, 32<<20))
		_, err := r.ReadString('\n')
		load <- err
	}()
	time.Sleep(1500 * time.Millisecond)
	l.DB = dbKeepalive // user_timeout 4s
	guard.Reload(t, guardConfig(l))
	if err := <-query; err != nil {
		t.Errorf("long query in flight at the reload: %v", err)
	}
	if err := <-load; err == nil {
		t.Logf("the stalled load survived the user timeout (a kernel before 5.11?)")
		return
	}
	m := guard.MetricsWhen(t, 2*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"cause": "timeout"})
		return v == 1
	})
	want := netlab.Labels{"side": "backend", "cause": "timeout", "phase": "active"}
	if got, _ := m.Sum("tnsguard_resets_total", want); got != 1 {
		t.Errorf("tnsguard_resets_total%v = %v, want 1\n%s", want, got, m.Dump("tnsguard_resets_total"))
	}
	if log := guard.Log(); strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("keepalive advice for a database that stopped reading:\n%s", log)
	}
}

// The kernel RTT of a server no session uses is measured by its health
// checks (the handshake's round trip): tnsguard_backend_rtt_seconds and
// /api/links read the path's delay before any app connected, and follow
// the path after the last session ended. Until 2026-11-30 such a server
// had no RTT at all, and after its sessions the gauge kept the last one's
// for as long as none came (a delay long gone read as the path's now).
func TestLabKernelRTTFromHealthChecks(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	const delay = 40 * time.Millisecond
	stop := lab.Netem(t, netem.Config{Queue: 24, Delay: delay}, "-p", "tcp", "-d", lab.DBIP.String(), "--dport", fmt.Sprint(dbPort))

	time.Sleep(3500 * time.Millisecond) // three checks through the delay, no session
	gauge, ok, api := serverRTT(t, guard, lab.DBAddr(dbPort))
	// A session through the delay, then it ends and the delay goes.
	c := dialN(t, lab.App, guardAddr, 1)[0]
	if err := roundTrip(c, make([]byte, 8<<10), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Close()
	st := stop()
	// The delay the packets really got: on a busy machine the queue releases
	// some late (seen: 67 ms on average for 40 ms, a check's RTT 113 ms), and
	// the kernel rightly sees that too.
	if !ok || gauge < 0.7*delay.Seconds() || gauge > 1.3*delay.Seconds()+0.01+st.MaxLate.Seconds() || api == nil || *api != gauge {
		t.Errorf("no session yet, %v on the path (the queue up to %v late): tnsguard_backend_rtt_seconds %v (present %v), /api/links %v; want the delay, from the health checks", delay, st.MaxLate, gauge, ok, api)
	}
	time.Sleep(3500 * time.Millisecond)
	gauge, ok, api = serverRTT(t, guard, lab.DBAddr(dbPort))
	apiRTT := -1.0
	if api != nil {
		apiRTT = *api
	}
	t.Logf("netem held packets %v on average, at most %v late; after it stopped, no session: gauge %v, /api/links %v", st.MeanHeld, st.MaxLate, gauge, apiRTT)
	if !ok || gauge > 0.01 || apiRTT < 0 || apiRTT > 0.01 {
		t.Errorf("the delay gone and no session since: tnsguard_backend_rtt_seconds %v, /api/links %v; want the path's RTT now (under 10 ms), not the last session's %v", gauge, apiRTT, delay)
	}
}

// The path's delay grows while a pool's sessions are idle, then the pool
// wakes: one query per session every 1.5 s, each session every 9 s (a pool
// larger than its load). The kernel moves a socket's smoothed RTT an
// eighth of the way to each new sample, so a woken session reads nearly the
// old delay for many queries (24-32 ms for a 50 ms path over 30 s, ss -ti
// agreeing); the health checks measured the new delay all along.
// tnsguard_backend_rtt_seconds and /api/links must read the path's delay
// now, not the woken sessions' lagging figures: until 2026-11-30 they read
// 24 ms from the first query on.
func TestLabKernelRTTOfAPoolThatWakes(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	match := []string{"-p", "tcp", "-d", lab.DBIP.String(), "--dport", fmt.Sprint(dbPort)}
	stop := lab.Netem(t, netem.Config{Queue: 25, Delay: 20 * time.Millisecond}, match...)
	conns := dialN(t, lab.App, guardAddr, 6)
	for range 10 { // the sessions' RTT settles at 20 ms
		for i, err := range roundTripAll(conns, 5*time.Second) {
			if err != nil {
				t.Fatalf("session %d: %v", i, err)
			}
		}
	}
	stop()
	const delay = 50 * time.Millisecond
	stop = lab.Netem(t, netem.Config{Queue: 26, Delay: delay}, match...)
	time.Sleep(7 * time.Second) // idle past the 5 s that a live socket's RTT counts for; checks through the delay

	var readings []string
	t0 := time.Now()
	for i := 0; time.Since(t0) < 12*time.Second; i++ {
		if err := roundTrip(conns[i%len(conns)], []byte("select 1 from dual\n"), 5*time.Second); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		gauge, _, rtt := serverRTT(t, guard, lab.DBAddr(dbPort))
		if rtt == nil {
			t.Fatal("/api/links: no rtt_seconds")
		}
		at, api := time.Since(t0).Round(100*time.Millisecond), *rtt
		readings = append(readings, fmt.Sprintf("%v: %.4f %.4f", at, gauge, api))
		for what, v := range map[string]float64{"tnsguard_backend_rtt_seconds": gauge, "/api/links rtt_seconds": api} {
			if v < 0.7*delay.Seconds() {
				t.Errorf("%v after the pool woke: %s = %v, want the path's %v now (within 30%%), not the woken sessions' lagging RTT", at, what, v, delay)
			}
		}
		time.Sleep(1500 * time.Millisecond)
	}
	st := stop()
	t.Logf("netem %v: held %v on average; after each query, tnsguard_backend_rtt_seconds and /api/links: %s", delay, st.MeanHeld, strings.Join(readings, ", "))
}

// Loss on the way back from the database (its results) is retransmitted by
// the database's kernel, not tnsguard's: tnsguard_backend_retransmits_total
// counts the segments tnsguard sent again, so it stays near 0 while the
// database retransmits one segment per loss (measured: 4-5 for 225 lost).
// The README's table of which figure sees which delay says so.
func TestLabLossOnTheWayBackIsNotTnsguardsRetransmits(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: dbKeepalive})
	conns := dialN(t, lab.App, guardAddr, 4)
	stop := lab.Netem(t, netem.Config{Queue: 27, Delay: 10 * time.Millisecond, Loss: 0.05}, "-p", "tcp", "-s", lab.DBIP.String(), "--sport", fmt.Sprint(dbPort))
	var wg sync.WaitGroup
	until := time.Now().Add(4 * time.Second)
	for i, c := range conns {
		wg.Go(func() {
			msg := make([]byte, 8<<10)
			for time.Now().Before(until) {
				if err := roundTrip(c, msg, 10*time.Second); err != nil {
					t.Errorf("session %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	m := guard.Metrics(t)
	st := stop()
	// Each side's own count, from its sockets (ss: retrans:current/total):
	// the database's, and tnsguard's sockets to it (tnsguard runs in app).
	retrans := func(ns, filter string) int {
		out := lab.Exec(t, ns, "ss", "-Htin", "state", "established", filter, "=", fmt.Sprintf(":%d", dbPort))
		sum := 0
		for _, f := range strings.Fields(out) {
			if v, ok := strings.CutPrefix(f, "retrans:"); ok {
				if _, total, ok := strings.Cut(v, "/"); ok {
					n := 0
					fmt.Sscan(total, &n)
					sum += n
				}
			}
		}
		return sum
	}
	dbRetrans, guardRetrans := retrans(lab.DB, "sport"), retrans(lab.App, "dport")
	re, _ := m.Sum("tnsguard_backend_retransmits_total", netlab.Labels{"server": lab.DBAddr(dbPort)})
	t.Logf("5%% loss on the way from the database: netem dropped %d of %d (held %v on average, at most %v late); tnsguard_backend_retransmits_total %v; the database's sockets retransmitted %d, tnsguard's %d",
		st.Dropped, st.Packets, st.MeanHeld, st.MaxLate, re, dbRetrans, guardRetrans)
	if st.Dropped < 50 {
		t.Fatalf("netem dropped %d segments, want at least 50 (lab check)", st.Dropped)
	}
	if dbRetrans < int(st.Dropped) {
		t.Errorf("the database retransmitted %d segments for %d lost, want at least one each (lab check)", dbRetrans, st.Dropped)
	}
	// What tnsguard's own kernel sent again, and nothing of the database's.
	// That is few when the queue releases on time; on a loaded machine its
	// lateness (MaxLate) fires tnsguard's tail-loss probes and RTOs, which
	// are tnsguard's retransmits all the same (seen in CI: 23 for 116 lost).
	if re > float64(guardRetrans) {
		t.Errorf("tnsguard_backend_retransmits_total = %v, more than tnsguard's sockets to the database retransmitted (%d; the database's %d for %d segments lost on the way back): it must count what tnsguard sent again", re, guardRetrans, dbRetrans, st.Dropped)
	}
}
