package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// Helpers of the failover tests (failover_test.go, replay_test.go): a proxy
// whose log can be read back, servers that go away and come back on the
// same port, a black-holed address, and a TOML builder for one backend.

// logBuffer is an io.Writer safe for the logger's concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if os.Getenv("TNSGUARD_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the log lines that contain every one of the words.
func (b *logBuffer) lines(words ...string) []string {
	var out []string
	for _, l := range strings.Split(b.String(), "\n") {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(l, w)
		}
		if ok && l != "" {
			out = append(out, l)
		}
	}
	return out
}

// startProxyLog is startProxy with the log (info and up) kept for the test.
func startProxyLog(t *testing.T, toml string) (*harness, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	return startProxyWith(t, toml, hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})), logs
}

// backendTOML is a whole config with listener "l" on 127.0.0.1:0 and backend
// "b": body holds the backend's keys and sub-tables ([backend.health] and so
// on); each server is a ;-separated list of its keys.
func backendTOML(body string, servers ...string) string {
	var sb strings.Builder
	sb.WriteString(`
[log]
level = "info"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
`)
	sb.WriteString(body)
	sb.WriteString("\n")
	for _, s := range servers {
		fmt.Fprintf(&sb, "[[backend.server]]\n%s\n", strings.ReplaceAll(s, ";", "\n"))
	}
	return sb.String()
}

// server is a backend whose listening socket can be closed and bound again
// on the same port, as when a database listener restarts.
type server struct {
	t       *testing.T
	address string
	fn      func(c *net.TCPConn)

	mu       sync.Mutex
	ln       *net.TCPListener
	loopDone chan struct{} // closed when the current accept loop has ended
	conns    []*net.TCPConn
	accepted int
	hold     int // while down: a bound, not listening socket keeping the port
	wg       sync.WaitGroup
}

// tagThenEcho is a server's handler that answers the first read with tag
// then that read's bytes, and echoes the rest: which server took a session.
func tagThenEcho(tag string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		c.Write([]byte(tag))
		c.Write(buf[:n])
		echo(c)
	}
}

func newServer(t *testing.T, fn func(c *net.TCPConn)) *server {
	t.Helper()
	s := &server{t: t, fn: fn}
	s.start("127.0.0.1:0")
	s.address = s.ln.Addr().String()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.t.Fatalf("listen %s: %v", addr, err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.ln, s.loopDone = ln.(*net.TCPListener), done
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		for {
			c, err := ln.(*net.TCPListener).AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.accepted++
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.fn(c)
			}()
		}
	}()
}

// accepts is how many connections the server accepted in all.
func (s *server) accepts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// down closes the listening socket and resets every connection: dials
// are refused. The port stays reserved by a bound socket that does not
// listen (so no other test's socket takes it), until up.
func (s *server) down() {
	s.mu.Lock()
	s.ln.Close()
	done := s.loopDone
	s.mu.Unlock()
	// Go closes the socket only once the blocked Accept has returned; until
	// then the kernel still completes handshakes.
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		resetConn(c) // RST: no TIME_WAIT left on the port
	}
	s.conns = nil
	if s.hold == 0 {
		s.hold = reservePort(s.t, s.address, true)
	}
}

// up binds the same port again.
func (s *server) up() {
	s.mu.Lock()
	if s.hold != 0 {
		unix.Close(s.hold)
		s.hold = 0
	}
	s.mu.Unlock()
	s.start(s.address)
}

func (s *server) stop() {
	s.down()
	s.mu.Lock()
	unix.Close(s.hold)
	s.hold = 0
	s.mu.Unlock()
	s.wg.Wait()
}

// reservePort binds a TCP socket to addr without listening: SYNs to it are
// answered with RST (connection refused) and the port cannot be taken by
// automatic port choice (connect, or listen on port 0) meanwhile. reuse
// allows the bind while old connections of the port linger in TIME_WAIT.
func reservePort(t *testing.T, addr string, reuse bool) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if reuse {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		unix.Close(fd)
		t.Fatalf("reserving %s: %v", addr, err)
	}
	return fd
}

// closedPort is an address where nothing listens, for the whole test:
// dials are refused.
func closedPort(t *testing.T) string {
	t.Helper()
	fd := reservePort(t, "127.0.0.1:0", false)
	t.Cleanup(func() { unix.Close(fd) })
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
}

// blackhole is a loopback address whose dials hang until their timeout
// (loopback.Blackhole).
func blackhole(t *testing.T) string { return loopback.Blackhole(t) }

// sayName writes the server's name on accept, then echoes: a session can
// tell which server it reached from its first byte.
func sayName(name string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		if _, err := c.Write([]byte(name)); err != nil {
			return
		}
		echo(c)
	}
}

// reachedPaced opens n sessions at once, one every gap, and counts them by
// the server each reached ("error" for one that failed). The sessions stay
// open until the test ends, so they count as a server's live sessions.
func (h *harness) reachedPaced(t *testing.T, n int, gap time.Duration) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name, conn, err := h.reached()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				got["error"]++
				return
			}
			got[name]++
			t.Cleanup(func() { conn.Close() })
		}()
		time.Sleep(gap)
	}
	wg.Wait()
	return got
}

// reached dials the proxy, reads the name byte of the server the session
// reached, checks an echo, and returns the name with the still-open conn.
func (h *harness) reached() (string, *net.TCPConn, error) {
	c, err := net.Dial("tcp", h.addr("l"))
	if err != nil {
		return "", nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	name := make([]byte, 1)
	if _, err := io.ReadFull(c, name); err != nil {
		c.Close()
		return "", nil, fmt.Errorf("reading the server's name: %w", err)
	}
	if err := roundTrip(c, []byte("ping")); err != nil {
		c.Close()
		return "", nil, err
	}
	c.SetDeadline(time.Time{})
	return string(name), c.(*net.TCPConn), nil
}

// roundTrip writes msg and expects it echoed back.
func roundTrip(c net.Conn, msg []byte) error {
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs: sent %d bytes, got others back", len(msg))
	}
	return nil
}

// histogram returns the sample count and sum of one histogram series.
func histogram(t *testing.T, o prometheus.Observer) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

func gauge(g *prometheus.GaugeVec, labels ...string) float64 {
	var m dto.Metric
	if err := g.WithLabelValues(labels...).Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}

// fullQueue is a loopback listener with backlog 0 that accepts nothing
// until serve: the first connection (a health check) fills its accept
// queue and the kernel drops the SYNs after it, so dials wait out their
// timeout (loopback.Blackhole), as at a database whose listener stalls.
// serve starts taking connections, each handled by fn.
type fullQueue struct {
	address string
	fd      int
}

func newFullQueue(t *testing.T) *fullQueue {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	q := &fullQueue{address: fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port), fd: fd}
	t.Cleanup(func() { unix.Close(q.fd) })
	return q
}

func (q *fullQueue) serve(t *testing.T, fn func(c *net.TCPConn)) {
	t.Helper()
	f := os.NewFile(uintptr(q.fd), "full queue") // f owns the socket now
	q.fd = -1
	ln, err := net.FileListener(f) // a dup of it
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				fn(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
