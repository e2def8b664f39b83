package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// The binary under test: built once per test run from ./cmd/tnsguard, or
// taken from TNSGUARD_E2E_BIN (e.g. a release build).
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("TNSGUARD_E2E_BIN"); p != "" {
			binPath, buildErr = filepath.Abs(p)
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
		if buildDir, buildErr = os.MkdirTemp("", "tnsguard-e2e-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "tnsguard")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/tnsguard")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/tnsguard: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freeAddr is a loopback address that was free a moment ago, outside the
// ephemeral range. Configs need fixed addresses so that a reloaded file can
// name the same listener.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := loopback.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// logSink keeps tnsguard's JSON log lines.
type logSink struct {
	hold  sync.Mutex // held (stall): Write waits, and tnsguard's log pipe fills
	mu    sync.Mutex
	raw   bytes.Buffer
	lines []map[string]any
	part  []byte
	// The process has exited (ended), and its last lines have been read
	// from the pipe (complete, closed when exitMarker comes through it).
	ended    atomic.Bool
	complete chan struct{}
}

// exitMarker is the line the harness writes into tnsguard's log pipe
// once the process has exited: every line it wrote comes before it.
const exitMarker = "e2e harness: tnsguard exited"

func newLogSink() *logSink { return &logSink{complete: make(chan struct{})} }

// settle waits, once the process has exited, until its last lines are
// read: Wait returns when it exits, and the goroutine that copies the pipe
// may not have read them yet (a line the test looked for right after
// g.done was missing). A stalled sink is waited for 5 s at most.
func (s *logSink) settle() {
	if !s.ended.Load() {
		return
	}
	select {
	case <-s.complete:
	case <-time.After(5 * time.Second):
	}
}

func (s *logSink) Write(p []byte) (int, error) {
	s.hold.Lock()
	s.hold.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.raw.Write(p)
	s.part = append(s.part, p...)
	for {
		i := bytes.IndexByte(s.part, '\n')
		if i < 0 {
			break
		}
		var m map[string]any
		if json.Unmarshal(s.part[:i], &m) == nil {
			if m["@message"] == exitMarker {
				select {
				case <-s.complete:
				default:
					close(s.complete)
				}
			} else {
				s.lines = append(s.lines, m)
			}
		}
		s.part = s.part[i+1:]
	}
	return len(p), nil
}

// stall stops reading tnsguard's log, as a log reader that hangs
// (journald, a Docker log driver, `| logger`): its pipe fills, and then
// every write to it blocks. resume reads on.
func (s *logSink) stall()  { s.hold.Lock() }
func (s *logSink) resume() { s.hold.Unlock() }

// find returns the lines whose message is msg.
func (s *logSink) find(msg string) []map[string]any {
	s.settle()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, m := range s.lines {
		if m["@message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (s *logSink) String() string {
	s.settle()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.raw.String()
}

// instance is one running `tnsguard run -config FILE`.
type instance struct {
	t      *testing.T
	cmd    *exec.Cmd
	path   string // its config file
	admin  string
	log    *logSink
	done   chan struct{}
	exit   int
	exited time.Time
}

// start runs tnsguard with config (which must have admin.listen = admin and
// log.format = "json") and waits until /healthz answers; with ready, until
// /readyz says 200.
func start(t *testing.T, admin, config string, ready bool) *instance {
	t.Helper()
	return startCmd(t, admin, config, ready, func(bin, path string) *exec.Cmd {
		return exec.Command(bin, "run", "-config", path)
	})
}

// startCmd is start with the command line made by command from the binary
// and the config file's path (a wrapper may set limits, then exec it).
func startCmd(t *testing.T, admin, config string, ready bool, command func(bin, path string) *exec.Cmd) *instance {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &instance{t: t, path: path, admin: admin, log: newLogSink(), done: make(chan struct{})}
	g.cmd = command(binary(t), path)
	if g.cmd.Env == nil {
		// Not a systemd service's (a test run from one): an upgrade
		// without NOTIFY_SOCKET would be refused.
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "INVOCATION_ID=") {
				g.cmd.Env = append(g.cmd.Env, kv)
			}
		}
	}
	// A pipe of its own, not os/exec's: Wait then returns when tnsguard
	// exits, not when every process holding the pipe has (an upgrade's
	// new process writes its log to it too).
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// This process keeps its end, to write exitMarker after tnsguard's
	// last line (logSink.settle).
	g.cmd.Stdout, g.cmd.Stderr = w, w
	err = g.cmd.Start()
	if err != nil {
		w.Close()
		r.Close()
		t.Fatal(err)
	}
	go func() {
		defer r.Close()
		io.Copy(g.log, r)
	}()
	go func() {
		err := g.cmd.Wait()
		g.exited = time.Now()
		g.exit = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			g.exit = ee.ExitCode()
		} else if err != nil {
			g.exit = -1
		}
		g.log.ended.Store(true)
		go func() { // blocks while the sink is stalled and the pipe full
			fmt.Fprintf(w, "{\"@message\":%q}\n", exitMarker) // one write, under PIPE_BUF: whole between lines
			w.Close()
		}()
		close(g.done)
	}()
	t.Cleanup(func() {
		select {
		case <-g.done:
		default:
			g.cmd.Process.Kill()
			<-g.done
		}
		for _, pid := range g.upgrades() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("tnsguard log:\n%s", g.log)
		}
	})
	path2 := "/healthz"
	if ready {
		path2 = "/readyz"
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if code, _ := g.get(path2); code == http.StatusOK {
			return g
		}
		select {
		case <-g.done:
			t.Fatalf("tnsguard exited (code %d) before %s answered 200", g.exit, path2)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not 200 after 15s", path2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// upgrades are the pids of the processes that SIGUSR2 started.
func (g *instance) upgrades() []int {
	var pids []int
	for _, l := range g.log.find("upgrade: started the new binary; serving until it serves") {
		if pid, ok := l["new_pid"].(float64); ok {
			pids = append(pids, int(pid))
		}
	}
	return pids
}

// get returns the status code and body of an admin path (0 when the admin
// listener does not answer).
func (g *instance) get(path string) (int, string) {
	resp, err := httpClient.Get("http://" + g.admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric reads one sample from /metrics; labels are name=value pairs that
// must all match. It fails the test when no sample matches.
func (g *instance) metric(name string, labels ...string) float64 {
	g.t.Helper()
	v, ok := g.metricOK(name, labels...)
	if !ok {
		g.t.Fatalf("metric %s%v not found", name, labels)
	}
	return v
}

func (g *instance) metricOK(name string, labels ...string) (float64, bool) {
	g.t.Helper()
	code, body := g.get("/metrics")
	if code != http.StatusOK {
		g.t.Fatalf("/metrics: %d %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		g.t.Fatalf("parse /metrics: %v", err)
	}
	f, ok := families[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}

// reload writes config to the instance's file, sends SIGHUP and waits for
// the log line that says how it went: true when reloaded.
func (g *instance) reload(config string) bool {
	g.t.Helper()
	if err := os.WriteFile(g.path, []byte(config), 0o600); err != nil {
		g.t.Fatal(err)
	}
	ok, failed := len(g.log.find("configuration reloaded")), len(g.log.find("reload failed: the running configuration stays"))
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		g.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if len(g.log.find("configuration reloaded")) > ok {
			return true
		}
		if len(g.log.find("reload failed: the running configuration stays")) > failed {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.t.Fatal("no reload result logged 10s after SIGHUP")
	return false
}

// stop sends sig and waits for the exit code.
func (g *instance) stop(sig os.Signal, limit time.Duration) int {
	g.t.Helper()
	g.cmd.Process.Signal(sig)
	select {
	case <-g.done:
		return g.exit
	case <-time.After(limit):
		g.t.Fatalf("tnsguard still running %v after %v", limit, sig)
		return -1
	}
}

// echoServer is a backend that echoes; it counts the connections that
// carried data (health checks connect and close without any).
type echoServer struct {
	ln       net.Listener
	sessions atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func newEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() {
					e.mu.Lock()
					delete(e.conns, c)
					e.mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 32<<10)
				counted := false
				for {
					n, err := c.Read(buf)
					if n > 0 && !counted {
						counted = true
						e.sessions.Add(1)
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

// roundTrip sends msg and reads it back within limit.
func roundTrip(c net.Conn, msg []byte, limit time.Duration) error {
	c.SetDeadline(time.Now().Add(limit))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs: sent %q, got %q", msg, got)
	}
	return nil
}

// load is n live sessions, each doing round trips back to back until Stop.
type load struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	rounds atomic.Int64
	mu     sync.Mutex
	errs   []error
}

// openSessions dials n sessions to addr, each with one round trip done;
// they are closed when the test ends, if not before.
func openSessions(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
		if err := roundTrip(c, []byte("hello"), 5*time.Second); err != nil {
			t.Fatalf("session %d first round trip: %v", i, err)
		}
	}
	return conns
}

// startLoad dials n sessions to addr (all connected before it returns) and
// keeps them doing round trips.
func startLoad(t *testing.T, addr string, n int) *load {
	t.Helper()
	l := &load{stop: make(chan struct{})}
	conns := openSessions(t, addr, n)
	for i, c := range conns {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer c.Close()
			for k := 0; ; k++ {
				select {
				case <-l.stop:
					return
				default:
				}
				msg := fmt.Appendf(nil, "session %03d round %09d", i, k)
				if err := roundTrip(c, msg, 5*time.Second); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, fmt.Errorf("session %d round %d: %w", i, k, err))
					l.mu.Unlock()
					return
				}
				l.rounds.Add(1)
			}
		}()
	}
	t.Cleanup(func() { l.Stop() })
	return l
}

// Stop ends the load and returns the errors seen.
func (l *load) Stop() []error {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errs
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readUntilErr reads until an error and returns it.
func readUntilErr(c net.Conn, limit time.Duration) error {
	c.SetReadDeadline(time.Now().Add(limit))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

// run runs the binary with args and returns its exit code and output.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary(t), args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("run %v: %v", args, err)
	return -1, ""
}
