package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness is a running proxy on loopback with a fresh registry.
type harness struct {
	t   testing.TB
	p   *Proxy
	m   *metrics.Metrics
	reg *prometheus.Registry
	cfg *config.Config
}

// startProxy runs a proxy from TOML; the listener named "l" is usually
// bound on 127.0.0.1:0. Its log goes to stderr at warn (debug with
// TNSGUARD_TEST_LOG set).
func startProxy(t testing.TB, toml string) *harness {
	t.Helper()
	return startProxyWith(t, toml, testLog())
}

// testLog is the tests' logger: warnings on stderr, everything with
// TNSGUARD_TEST_LOG set.
func testLog() hclog.Logger {
	level := hclog.Warn
	if os.Getenv("TNSGUARD_TEST_LOG") != "" {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{Level: level, Output: os.Stderr})
}

// startProxyWith is startProxy with the given logger.
func startProxyWith(t testing.TB, toml string, log hclog.Logger) *harness {
	t.Helper()
	return startProxyMade(t, toml, log, New)
}

// startProxyMade is startProxyWith, the proxy made by mk.
func startProxyMade(t testing.TB, toml string, log hclog.Logger, mk func(hclog.Logger, *metrics.Metrics) *Proxy) *harness {
	t.Helper()
	cfg, _, err := config.Parse([]byte(toml), "test.toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	p := mk(log, m)
	reg.MustRegister(metrics.NewTCPInfoCollector(p))
	if err := p.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	h := &harness{t: t, p: p, m: m, reg: reg, cfg: cfg}
	t.Cleanup(func() { p.Shutdown(0, time.Second) })
	return h
}

func (h *harness) addr(name string) string { return h.p.Addr(name).String() }

// backend is the running backend of that name (sessions find theirs
// through their listener: current).
func (h *harness) dial(name string) *net.TCPConn {
	h.t.Helper()
	c, err := net.Dial("tcp", h.addr(name))
	if err != nil {
		h.t.Fatalf("dial proxy: %v", err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// counter reads one series of a counter vec.
// sumCounters is the sum of every series of c.
func sumCounters(t testing.TB, c *prometheus.CounterVec) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1024)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	sum := 0.0
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		sum += pb.GetCounter().GetValue()
	}
	return sum
}

func counter(c *prometheus.CounterVec, labels ...string) float64 {
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backendServer is a real TCP server on loopback whose connections are
// handled by fn; it records them so tests can reset or inspect them.
type backendServer struct {
	ln    *net.TCPListener
	mu    sync.Mutex
	conns []*net.TCPConn
	wg    sync.WaitGroup
}

func newBackend(t testing.TB, fn func(c *net.TCPConn)) *backendServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backendServer{ln: ln.(*net.TCPListener)}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := b.ln.AcceptTCP()
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// A test that took every fd: the connection waits in the
				// backlog until it gives them back.
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				fn(c)
			}()
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *backendServer) addr() string { return b.ln.Addr().String() }

func (b *backendServer) close() {
	b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *backendServer) accepted() []*net.TCPConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*net.TCPConn(nil), b.conns...)
}

// echo copies everything back and half-closes when the client does.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// endOf waits up to limit for how a peer's connection ended, as its handler
// reports it on ch (nil: EOF), and fails the test if it does not end.
func endOf(t testing.TB, ch <-chan error, limit time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(limit):
		t.Fatalf("%s did not end within %v", what, limit)
	}
	return nil
}

// resetConn closes with SO_LINGER 0: the peer gets an RST.
func resetConn(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// listenerAt puts listener "l" of a config from oneBackendConfig (or built
// like it) on addr: the listener's line only, not admin.listen's.
func listenerAt(cfg, addr string) string {
	return strings.Replace(cfg, "name = \"l\"\nlisten = \"127.0.0.1:0\"", fmt.Sprintf("name = \"l\"\nlisten = %q", addr), 1)
}

func oneBackendConfig(servers ...string) string {
	s := `
[log]
level = "warn"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
  [listener.keepalive]
  idle = "7s"
  interval = "3s"
  count = 5
  user_timeout = "31s"
[[backend]]
name = "b"
connect_timeout = "500ms"
connect_budget = "3s"
backoff = "50ms"
backoff_max = "200ms"
  [backend.keepalive]
  idle = "11s"
  interval = "2s"
  count = 4
  user_timeout = "19s"
  [backend.health]
  check = "off"
`
	for _, a := range servers {
		s += fmt.Sprintf("  [[backend.server]]\n  address = %q\n", a)
	}
	return s
}

// stressConfig is oneBackendConfig for the stress tests, whose backend is
// one of hundreds of goroutines of this test process: on a loaded machine
// under -race it may take seconds to send a session's first byte, and
// connect_budget (3 s) then reset the app in its opening ("first byte:
// connection reset by peer"), which is not what they test. A stall of
// the copy itself still fails them (their per-read and per-write limits).
func stressConfig(t testing.TB, server string) string {
	t.Helper()
	cfg := oneBackendConfig(server)
	long := strings.Replace(cfg, `connect_budget = "3s"`, `connect_budget = "60s"`, 1)
	if long == cfg {
		t.Fatal("stressConfig: oneBackendConfig has no connect_budget = \"3s\" to lengthen")
	}
	return long
}

// readErr reads until an error and returns the time it took and the error.
func readErr(c net.Conn, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return time.Since(start), err
		}
	}
}

// sessionOf is the live session of the app connection c.
func sessionOf(t testing.TB, p *Proxy, c *net.TCPConn) *session {
	t.Helper()
	var found *session
	waitFor(t, 2*time.Second, "the session of "+c.LocalAddr().String(), func() bool {
		for _, s := range p.liveSessions() {
			if s.in.client.String() == c.LocalAddr().String() {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// withLegs runs f on the session's two sockets, conns or, while dormant, the
// bare fds.
func (s *session) withLegs(f func(client, backend syscall.Conn)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dormant {
		f(rawSock(s.raw[0]), rawSock(s.raw[1]))
		return
	}
	f(s.client, s.conn)
}

// legSettings checks the keepalive settings read back from both of s's
// sockets, in either state.
func legSettings(t *testing.T, s *session, wantClient, wantBackend keepalive.Settings) {
	t.Helper()
	s.withLegs(func(client, backend syscall.Conn) {
		for _, leg := range []struct {
			name string
			conn syscall.Conn
			want keepalive.Settings
		}{{"client", client, wantClient}, {"backend", backend, wantBackend}} {
			got, err := keepalive.Read(leg.conn)
			if err != nil {
				t.Fatalf("%s leg: %v", leg.name, err)
			}
			if got != leg.want {
				t.Errorf("%s leg: got %+v, want %+v", leg.name, got, leg.want)
			}
		}
	})
}

// isDormant tells whether the session has let go of its conns.
func (s *session) isDormant() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dormant
}

// grabFDs dups stdin until the process is out of file descriptors,
// appending each fd to hoard: every fd free now, including any freed since
// an earlier call. The caller closes them.
func grabFDs(t *testing.T, hoard *[]int) {
	t.Helper()
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			return
		}
		*hoard = append(*hoard, fd)
	}
}

// dropSplicePipes lets go of the pipes Go's splice pool holds (from earlier
// tests' bulk transfers): a collection empties the pool and its cleanups
// close their fds a moment later. A test that counts the fds out, or takes
// every one, calls it first, or a pipe closed meanwhile gives a revive or
// a dup the fd the test meant to take.
func dropSplicePipes() {
	runtime.GC()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
}

// fdHoard is the fds a test took to run the process out of them.
type fdHoard []int

// grab takes every free fd, including any the process freed meanwhile.
func (h *fdHoard) grab(t *testing.T) {
	t.Helper()
	grabFDs(t, (*[]int)(h))
}

// release gives n of them back (the last taken).
func (h *fdHoard) release(n int) {
	for ; n > 0 && len(*h) > 0; n-- {
		syscall.Close((*h)[len(*h)-1])
		*h = (*h)[:len(*h)-1]
	}
}

// free gives every one back.
func (h *fdHoard) free() { h.release(len(*h)) }

// held is how many fds the reserve holds.
func (r *fdReserve) held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.fds)
}

// grabWithReserve takes every free fd and the proxy's reserve too
// (fdreserve.go), which it cannot take back: the process is out of fds for
// revives as well.
func (h *fdHoard) grabWithReserve(t *testing.T, p *Proxy) {
	t.Helper()
	h.grab(t)
	if !p.reserve.spend(func() { h.grab(t) }) {
		t.Fatal("the proxy's fd reserve was empty")
	}
	if n := p.reserve.held(); n != 0 {
		t.Fatalf("the reserve took back %d fds from a process out of them", n)
	}
}

// sample is one series of a gathered metric: its labels and value.
type sample struct {
	labels map[string]string
	value  float64 // a counter's or a gauge's
}

// samples gathers h's registry and returns every series of the metric name
// (without creating any, as WithLabelValues would).
func (h *harness) samples(t testing.TB, name string) []sample {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []sample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sm := sample{labels: map[string]string{}, value: m.GetCounter().GetValue() + m.GetGauge().GetValue()}
			for _, lp := range m.GetLabel() {
				sm.labels[lp.GetName()] = lp.GetValue()
			}
			out = append(out, sm)
		}
	}
	return out
}

// readRefuse reads a REFUSE from c within limit, then the end of stream
// after it (tnsguard closes with a FIN after a REFUSE it hands on): it
// returns the REFUSE's ERR, or fails the test.
func readRefuse(t *testing.T, c net.Conn, limit time.Duration) int {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil || pkt.Type != tns.TypeRefuse {
		t.Fatalf("read %v, %v; want a REFUSE", pkt.Type, err)
	}
	r, err := tns.ParseRefuse(pkt.Raw)
	code, ok := r.Err()
	if err != nil || !ok {
		t.Fatalf("REFUSE %q: %v; want one with ERR=", pkt.Raw, err)
	}
	if _, err := readErr(c, limit); !errors.Is(err, io.EOF) {
		t.Fatalf("after the REFUSE: %v; want the end of stream (FIN)", err)
	}
	return code
}
