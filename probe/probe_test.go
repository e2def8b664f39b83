package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tnsguard/tnsguard/test/loopback"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// target is a TCP server on loopback that keeps connections and counts what
// the probe does to it: connections open at once, bytes received, and
// connections still open.
type target struct {
	ln *net.TCPListener
	// closeAfter > 0: close each connection this long after accept, with a
	// FIN, or with a reset when reset is set.
	closeAfter time.Duration
	reset      bool

	mu       sync.Mutex
	open     int
	maxOpen  int
	accepted int
	received int
	wg       sync.WaitGroup
}

func startTarget(t *testing.T, closeAfter time.Duration, reset bool) *target {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln, closeAfter: closeAfter, reset: reset}
	tg.wg.Add(1)
	go tg.serve()
	t.Cleanup(func() {
		ln.Close()
		tg.wg.Wait()
	})
	return tg
}

func (tg *target) addr() string { return tg.ln.Addr().String() }

func (tg *target) serve() {
	defer tg.wg.Done()
	for {
		c, err := tg.ln.AcceptTCP()
		if err != nil {
			return
		}
		tg.mu.Lock()
		tg.open++
		tg.accepted++
		tg.maxOpen = max(tg.maxOpen, tg.open)
		tg.mu.Unlock()
		tg.wg.Add(1)
		go tg.hold(c)
	}
}

func (tg *target) hold(c *net.TCPConn) {
	defer tg.wg.Done()
	defer func() {
		tg.mu.Lock()
		tg.open--
		tg.mu.Unlock()
	}()
	var timer *time.Timer
	if tg.closeAfter > 0 {
		timer = time.AfterFunc(tg.closeAfter, func() {
			if tg.reset {
				c.SetLinger(0)
			}
			c.Close()
		})
		defer timer.Stop()
	}
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		tg.mu.Lock()
		tg.received += n
		tg.mu.Unlock()
		if err != nil {
			c.Close()
			return
		}
	}
}

// waitAllClosed waits until the target has seen every connection end.
func (tg *target) waitAllClosed(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		tg.mu.Lock()
		open := tg.open
		tg.mu.Unlock()
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d test connections still open at the target after the run", open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tg *target) stats() (maxOpen, accepted, received int) {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.maxOpen, tg.accepted, tg.received
}

// A loopback target with nothing in between: no timeout up to -max, failure
// none, found in about max, nothing sent to the service, nothing left open.
func TestRunNoMiddlebox(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	var progress bytes.Buffer
	start := time.Now()
	res, err := Run(context.Background(), Options{Target: tg.addr(), Max: 3 * time.Second, Progress: &progress})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	if res.Found || res.Failure != FailureNone || res.ShortestDead != 0 {
		t.Errorf("found %v failure %q died after %v; want no timeout, failure none", res.Found, res.Failure, res.ShortestDead)
	}
	if res.LongestAlive < 3*time.Second || res.LongestAlive > 3400*time.Millisecond { // a late timer on a loaded machine
		t.Errorf("longest idle survived = %v, want 3s (max)", res.LongestAlive)
	}
	if took < 3*time.Second || took > 5*time.Second {
		t.Errorf("took %v, want about 3s", took)
	}
	if res.RTT <= 0 || res.RTT > 100*time.Millisecond {
		t.Errorf("rtt = %v", res.RTT)
	}
	want := Recommendation{PathIdleTimeout: 3 * time.Second, Idle: time.Second, Interval: time.Second, Count: 3, UserTimeout: 4 * time.Second}
	if res.Recommended != want {
		t.Errorf("recommended = %+v, want %+v", res.Recommended, want)
	}
	if !regexp.MustCompile(`idle 3(\.\d+)?s: alive`).MatchString(progress.String()) {
		t.Errorf("progress does not show the check at 3s:\n%s", progress.String())
	}
	tg.waitAllClosed(t)
	maxOpen, accepted, received := tg.stats()
	if received != 0 {
		t.Errorf("the target's application received %d bytes; the probe must send none", received)
	}
	if maxOpen > defaultParallel {
		t.Errorf("%d connections open at once, want at most %d", maxOpen, defaultParallel)
	}
	if res.Connections != accepted || res.Checks < 3 {
		t.Errorf("result says %d connections, %d checks; the target accepted %d", res.Connections, res.Checks, accepted)
	}
}

// A target that resets connections 2.5s after accept is told from a
// middlebox that resets idle flows: the connections checked alive in between
// die at the same time after connect, not after the same idle time.
func TestRunTargetResetsAfterAccept(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 2500*time.Millisecond, true)
	var progress bytes.Buffer
	res, err := Run(context.Background(), Options{Target: tg.addr(), Max: 20 * time.Second, Progress: &progress})
	t.Logf("progress:\n%s", progress.String())
	if !errors.Is(err, ErrClosedByTarget) {
		t.Fatalf("err = %v, want ErrClosedByTarget", err)
	}
	if d := res.TargetClosedAfter - 2500*time.Millisecond; d < -150*time.Millisecond || d > 300*time.Millisecond { // clocks start at connect and at accept
		t.Errorf("target closed after %v, want 2.5s", res.TargetClosedAfter)
	}
	if res.Found {
		t.Errorf("reported a middlebox timeout of %v (%s)", res.IdleTimeout, res.Failure)
	}
	tg.waitAllClosed(t)
}

// A target that closes idle connections (FIN) 2.5s after accept, like an
// Oracle listener's INBOUND_CONNECT_TIMEOUT: its own outcome, not a
// middlebox timeout.
func TestCommandTargetClosesIdle(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 2500*time.Millisecond, false)
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), []string{"-target", tg.addr(), "-max", "20s"}, &stdout, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	// The probe's clock starts when its connect returns, the target's at
	// accept: on a loaded machine either may be a few ms ahead.
	m := regexp.MustCompile(`closed by target after (\d+(?:\.\d+)?s)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("stderr does not say the target closed connections")
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d < 2400*time.Millisecond || d > 2700*time.Millisecond {
		t.Errorf("stderr says the target closed connections after %s, want about 2.5s", m[1])
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout: %q, want nothing", stdout.String())
	}
	tg.waitAllClosed(t)
}

func TestCommandNoTimeoutText(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), []string{"-target", tg.addr(), "-max", "3s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
	}
	out := stdout.String()
	t.Logf("stdout:\n%s", out)
	for _, want := range []string{
		"no idle timeout found up to 3s",
		"failure:       none",
		"[backend.keepalive]\npath_idle_timeout = \"3s\"",
		"idle         = \"1s\"",
		"count        = 3",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if !strings.Contains(stderr.String(), ": alive") {
		t.Errorf("no progress on stderr:\n%s", stderr.String())
	}
}

// -json prints exactly the contract's object.
func TestCommandJSONShape(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), []string{"-target", tg.addr(), "-max", "2s", "-json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
	}
	if n := strings.Count(stdout.String(), "\n"); n != 1 {
		t.Errorf("stdout has %d lines, want one JSON object: %q", n, stdout.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %q", err, stdout.String())
	}
	keys := func(m map[string]any) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		sort.Strings(k)
		return k
	}
	if k := keys(got); !reflect.DeepEqual(k, []string{"failure", "idle_timeout_seconds", "recommended", "rtt_seconds", "target"}) {
		t.Errorf("keys = %v", k)
	}
	if got["target"] != tg.addr() || got["idle_timeout_seconds"] != nil || got["failure"] != "none" {
		t.Errorf("target %v idle_timeout_seconds %v failure %v", got["target"], got["idle_timeout_seconds"], got["failure"])
	}
	if rtt, ok := got["rtt_seconds"].(float64); !ok || rtt <= 0 || rtt > 0.1 {
		t.Errorf("rtt_seconds = %v", got["rtt_seconds"])
	}
	rec, _ := got["recommended"].(map[string]any)
	want := map[string]any{"path_idle_timeout": "2s", "idle": "1s", "interval": "1s", "count": 3.0}
	if !reflect.DeepEqual(rec, want) {
		t.Errorf("recommended = %v, want %v", rec, want)
	}
}

func TestReportFound(t *testing.T) {
	r := Result{Target: "db:1521", Found: true, IdleTimeout: 300500 * time.Millisecond, Failure: FailureDrop,
		RTT: 1200 * time.Microsecond, Recommended: Recommend(300500 * time.Millisecond)}
	b, err := json.Marshal(r.Report())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"target":"db:1521","idle_timeout_seconds":300.5,"failure":"drop","rtt_seconds":0.0012,"recommended":{"path_idle_timeout":"5m0s","idle":"1m40s","interval":"33s","count":3}}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

// The advice names both tables: the probe cannot tell which leg the path it
// measured is, and the app leg's middlebox needs [listener.keepalive] (in the lab,
// the printed [backend.keepalive] pasted as is left all 5 app sessions through a
// 7 s firewall in front of tnsguard dead after 21 s idle; the same values under
// [listener.keepalive] kept them).
func TestReportTextNamesBothLegs(t *testing.T) {
	r := Result{Target: "tnsguard:1522", Found: true, IdleTimeout: 6750 * time.Millisecond, LongestAlive: 6500 * time.Millisecond,
		ShortestDead: 7 * time.Second, Failure: FailureDrop, Recommended: Recommend(6750 * time.Millisecond)}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("text:\n%s", b.String())
	for _, want := range []string{"[backend.keepalive]\npath_idle_timeout = \"6s\"", "[listener.keepalive]"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q", want)
		}
	}
}

// A timeout under the shortest whole-second keepalive: the text must say that
// no keepalive serves this path, not just print settings `tnsguard check` then
// warns cannot work.
func TestReportTextTimeoutUnderASecond(t *testing.T) {
	r := Result{Target: "db:1521", Found: true, IdleTimeout: 500 * time.Millisecond, LongestAlive: 0,
		ShortestDead: 1001 * time.Millisecond, Failure: FailureReset, Recommended: Recommend(500 * time.Millisecond)}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("text:\n%s", b.String())
	if !strings.Contains(b.String(), "keepalive cannot keep") {
		t.Errorf("text does not say keepalive cannot serve a path that forgets connections within a second")
	}
	// A 7 s path is served: no such note.
	r = Result{Target: "db:1521", Found: true, IdleTimeout: 6750 * time.Millisecond, LongestAlive: 6500 * time.Millisecond,
		ShortestDead: 7 * time.Second, Failure: FailureDrop, Recommended: Recommend(6750 * time.Millisecond)}
	b.Reset()
	_ = r.WriteText(&b)
	if strings.Contains(b.String(), "keepalive cannot keep") {
		t.Errorf("a 7 s path got the note that keepalive cannot serve it:\n%s", b.String())
	}
}

func TestCommandRefused(t *testing.T) {
	t.Parallel()
	addr, err := loopback.Addr() // nothing listens there now, and no listener on port 0 can be given it
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), []string{"-target", addr, "-json"}, &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "connection refused") {
		t.Errorf("stderr = %q, want it to say connection refused", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", stdout.String())
	}
}

// -h is help asked for, not a usage error: the usage on stdout, exit 0
// (it exited 2 with the usage on stderr).
func TestCommandHelpIsNoError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Command(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 || stderr.Len() != 0 ||
		!strings.HasPrefix(stdout.String(), "usage: tnsguard probe -target HOST:PORT") || !strings.Contains(stdout.String(), "-parallel N") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0 with the usage on stdout", code, stdout.String(), stderr.String())
	}
}

func TestCommandUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "give -target HOST:PORT"},
		{[]string{"-target", "a:1", "-config", "x.toml"}, 2, "not both"},
		{[]string{"-backend", "x"}, 2, "-backend needs -config"},
		{[]string{"-target", "a:1", "extra"}, 2, "unexpected argument"},
		{[]string{"-max", "soon"}, 2, "invalid value"},
		{[]string{"-target", "127.0.0.1:1", "-max", "0s"}, 2, "give a positive time"}, // it ran for the 2h default
		{[]string{"-target", "nohostport"}, 2, "give HOST:PORT"},                      // exited 1, as if the target were down
		{[]string{"-target", "db:0"}, 2, "give HOST:PORT"},
		{[]string{"-target", "db:99999"}, 2, "give HOST:PORT"},
		{[]string{"-target", "::1:1521"}, 2, "give HOST:PORT (IPv6 in brackets: [::1]:1521)"}, // as healthcheck -admin says
		{[]string{"-target", "127.0.0.1:1", "-max", "500ms"}, 2, "below the shortest idle"},
		{[]string{"-target", "127.0.0.1:1", "-parallel", "1"}, 2, "at least 2"},
		{[]string{"-target", "127.0.0.1:1", "-parallel", "-3"}, 2, "at least 2"},
		{[]string{"-target", "127.0.0.1:1", "-parallel", "100000"}, 2, "at most 64"}, // it was taken
		{[]string{"-config", "/nonexistent/tnsguard.toml"}, 1, "no such file"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Command(context.Background(), c.args, &stdout, &stderr); code != c.code {
			t.Errorf("%v: exit %d, want %d", c.args, code, c.code)
		}
		if !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: stderr = %q, want %q", c.args, stderr.String(), c.want)
		}
	}
}

// -config FILE -backend NAME probes the backend's first server.
func TestCommandTargetFromConfig(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	cfg := `
[[listener]]
name    = "orders"
listen  = "127.0.0.1:0"
backend = "orders"

[[backend]]
name = "other"
  [[backend.server]]
  address = "127.0.0.1:1"

[[backend]]
name = "orders"
  [[backend.server]]
  address = "` + tg.addr() + `"
  [[backend.server]]
  address = "127.0.0.1:2"
`
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := Command(context.Background(), []string{"-config", path, "-backend", "orders", "-max", "1s", "-json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), `"target":"`+tg.addr()+`"`) {
		t.Errorf("stdout = %s, want target %s", stdout.String(), tg.addr())
	}
	stderr.Reset()
	if code := Command(context.Background(), []string{"-config", path, "-max", "1s"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "choose one with -backend") {
		t.Errorf("two backends, no -backend: exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := Command(context.Background(), []string{"-config", path, "-backend", "nope"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), `backend "nope" is not defined`) {
		t.Errorf("unknown backend: exit %d, stderr %q", code, stderr.String())
	}
}

// Cancelling the run ends it at once and closes every connection; the
// result holds what was found before. The cancel comes once the first
// check (idle 1s) has its answer: a deadline of 1.5s fell before that
// answer on a loaded machine (once in four runs under -race), and the
// partial result was empty.
func TestRunCancel(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	progress := writerFunc(func(p []byte) {
		if cancelled.IsZero() && bytes.Contains(p, []byte(": alive")) {
			cancelled = time.Now()
			cancel()
		}
	})
	res, err := Run(ctx, Options{Target: tg.addr(), Max: time.Hour, Progress: progress})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context canceled", err)
	}
	if took := time.Since(cancelled); took > time.Second {
		t.Errorf("took %v after the cancel", took)
	}
	if res.LongestAlive < time.Second || res.LongestAlive > 1400*time.Millisecond { // a late timer on a loaded machine
		t.Errorf("partial result: longest idle survived %v, want 1s", res.LongestAlive)
	}
	tg.waitAllClosed(t)
}

// writerFunc is an io.Writer (Options.Progress, written from Run's
// goroutine) that hands each line to f.
type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }

// Ctrl-C before the first check says so: until this test it printed Go's
// "context canceled" (or "connect to ...: operation was canceled").
func TestCommandInterruptedBeforeAnyCheck(t *testing.T) {
	t.Parallel()
	tg := startTarget(t, 0, false)
	ctx, cancel := context.WithCancel(context.Background()) // as Ctrl-C does
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	var stdout, stderr bytes.Buffer
	code := Command(ctx, []string{"-target", tg.addr(), "-max", "1h"}, &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "interrupted") || strings.Contains(stderr.String(), "context") {
		t.Errorf("stderr = %q, want it to say the run was interrupted", stderr.String())
	}
	tg.waitAllClosed(t)
}
