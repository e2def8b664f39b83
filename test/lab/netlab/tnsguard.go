package netlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Binary builds a Go main package once, on first use, for all tests of a test binary
// run. Share one value per package (e.g. a package-level var next to TestMain).
type Binary struct {
	// ModDir is the module root, relative to the test's working directory (the
	// package directory) or absolute; Pkg is the package to build, e.g. "./cmd/tnsguard".
	ModDir, Pkg string
	// Env names an environment variable that, when set, gives a prebuilt binary to
	// use instead (e.g. TNSGUARD_LAB_BIN, to test a release build).
	Env string

	once sync.Once
	dir  string
	path string
	err  error
}

// Path returns the built binary, building it the first time; the test fails (with the
// compiler's output) when it does not build.
func (b *Binary) Path(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		if b.Env != "" && os.Getenv(b.Env) != "" {
			b.path, b.err = filepath.Abs(os.Getenv(b.Env))
			return
		}
		b.dir, b.err = os.MkdirTemp("", "netlab-bin-")
		if b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, filepath.Base(b.Pkg))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.path, b.Pkg)
		cmd.Dir = b.ModDir
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", b.Pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("netlab: %v", b.err)
	}
	return b.path
}

// Remove deletes the built binary; call it after m.Run in TestMain.
func (b *Binary) Remove() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// Tnsguard is a tnsguard process running in a lab namespace.
type Tnsguard struct {
	// NS is its namespace; Admin its admin listen address there; ConfigPath its config.
	NS, Admin, ConfigPath string

	cmd  *exec.Cmd
	out  *lockedWriter
	buf  *bytes.Buffer
	done chan struct{}
	err  error
	http *http.Client
}

// StartTnsguard writes config to a file and runs `bin run -config FILE` in namespace ns,
// then waits until GET http://admin/readyz answers 200 (admin is the [admin] listen
// address of config, reachable inside ns). It is stopped at cleanup; its log is shown
// when the test failed.
func (l *Lab) StartTnsguard(t testing.TB, bin, ns, admin, config string) *Tnsguard {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &Tnsguard{NS: ns, Admin: admin, ConfigPath: path, buf: &bytes.Buffer{}, done: make(chan struct{}), http: HTTPClient(ns)}
	g.out = &lockedWriter{w: g.buf}
	g.cmd = l.Command(ns, bin, "run", "-config", path)
	g.cmd.Stdout, g.cmd.Stderr = g.out, g.out
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("netlab: start tnsguard: %v", err)
	}
	go func() { g.err = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("netlab: tnsguard log:\n%s", g.Log())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, err := g.Get("/readyz")
		if err == nil && code == http.StatusOK {
			return g
		}
		select {
		case <-g.done:
			t.Fatalf("netlab: tnsguard exited before ready: %v\nconfig:\n%s", g.err, config)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("netlab: tnsguard /readyz not 200 after 20s (last: %d %v)\nconfig:\n%s", code, err, config)
		}
	}
}

// Stop sends SIGTERM and waits up to 10 s for exit (then SIGKILL). It returns the exit
// error (nil for exit status 0).
func (g *Tnsguard) Stop() error {
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	return g.err
}

// Reload writes config over the file tnsguard runs with, sends SIGHUP and
// waits until the log says the configuration was reloaded (a failed reload
// fails the test).
func (g *Tnsguard) Reload(t testing.TB, config string) {
	t.Helper()
	before := strings.Count(g.Log(), "configuration reloaded")
	if err := os.WriteFile(g.ConfigPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("netlab: SIGHUP: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		log := g.Log()
		if strings.Contains(log, "reload failed") {
			t.Fatalf("netlab: reload failed:\n%s", log)
		}
		if strings.Count(log, "configuration reloaded") > before {
			return
		}
	}
	t.Fatal("netlab: no \"configuration reloaded\" within 10s of SIGHUP")
}

// Done is closed when the process has ended.
func (g *Tnsguard) Done() <-chan struct{} { return g.done }

// Pid is the process's id (ip netns exec runs tnsguard in its own place).
func (g *Tnsguard) Pid() int { return g.cmd.Process.Pid }

// Log returns what tnsguard printed so far.
func (g *Tnsguard) Log() string {
	g.out.mu.Lock()
	defer g.out.mu.Unlock()
	return g.buf.String()
}

// Get fetches path from the admin listener.
func (g *Tnsguard) Get(path string) (int, []byte, error) {
	resp, err := g.http.Get("http://" + g.Admin + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Metrics scrapes /metrics; the test fails when it cannot.
func (g *Tnsguard) Metrics(t testing.TB) Metrics {
	t.Helper()
	code, body, err := g.Get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("netlab: GET /metrics: %d %v", code, err)
	}
	m, err := ParseMetrics(body)
	if err != nil {
		t.Fatalf("netlab: parse /metrics: %v\n%s", err, body)
	}
	return m
}

// MetricsWhen scrapes /metrics until ok holds or limit has passed, and
// returns the last scrape. A session's end is counted just after its legs
// are closed, so a peer can see the reset a moment before /metrics does.
func (g *Tnsguard) MetricsWhen(t testing.TB, limit time.Duration, ok func(Metrics) bool) Metrics {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		m := g.Metrics(t)
		if ok(m) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Metrics is one scrape in the Prometheus text format, by family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the Prometheus text exposition format.
func ParseMetrics(body []byte) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	return Metrics(fams), err
}

// Labels selects series: every given label must match; absent labels match anything.
type Labels map[string]string

func (ls Labels) match(m *dto.Metric) bool {
	for k, v := range ls {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Sum adds the values of the counter, gauge or untyped series of name that match sel
// (for histograms: their sample sums). ok is false when no series matched.
func (ms Metrics) Sum(name string, sel Labels) (v float64, ok bool) {
	f := ms[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !sel.match(m) {
			continue
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		case m.Untyped != nil:
			v += m.GetUntyped().GetValue()
		case m.Histogram != nil:
			v += m.GetHistogram().GetSampleSum()
		}
	}
	return v, ok
}

// Histogram returns the summed sample count and sum of histogram name over the series
// that match sel.
func (ms Metrics) Histogram(name string, sel Labels) (count uint64, sum float64, ok bool) {
	f := ms[name]
	if f == nil {
		return 0, 0, false
	}
	for _, m := range f.GetMetric() {
		if m.Histogram == nil || !sel.match(m) {
			continue
		}
		ok = true
		count += m.GetHistogram().GetSampleCount()
		sum += m.GetHistogram().GetSampleSum()
	}
	return count, sum, ok
}

// Dump renders the series of the named families (all tnsguard_ families when none are
// named) one per line, for test logs.
func (ms Metrics) Dump(names ...string) string {
	if len(names) == 0 {
		for n := range ms {
			if strings.HasPrefix(n, "tnsguard_") {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f := ms[n]
		if f == nil {
			fmt.Fprintf(&b, "%s: absent\n", n)
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			var val string
			switch {
			case m.Counter != nil:
				val = fmt.Sprint(m.GetCounter().GetValue())
			case m.Gauge != nil:
				val = fmt.Sprint(m.GetGauge().GetValue())
			case m.Untyped != nil:
				val = fmt.Sprint(m.GetUntyped().GetValue())
			case m.Histogram != nil:
				h := m.GetHistogram()
				val = fmt.Sprintf("count=%d sum=%g", h.GetSampleCount(), h.GetSampleSum())
			}
			fmt.Fprintf(&b, "%s{%s} %s\n", n, strings.Join(ls, ","), val)
		}
	}
	return b.String()
}
