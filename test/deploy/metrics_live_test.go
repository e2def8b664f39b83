package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/tnsguard/tnsguard/test/loopback"
)

// echoServer is a database stand-in: it echoes what it reads, and resets the
// connection (RST) when it reads "RESET".
type echoServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startEchoServer(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]bool{}}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(e.close)
	return e
}

func (e *echoServer) serve() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.mu.Lock()
		e.conns[c] = true
		e.mu.Unlock()
		e.wg.Add(1)
		go e.handle(c.(*net.TCPConn))
	}
}

func (e *echoServer) handle(c *net.TCPConn) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if strings.Contains(string(buf[:n]), "RESET") {
			c.SetLinger(0)
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (e *echoServer) close() {
	e.ln.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// freeAddr returns a loopback address with a port nothing listens on now,
// outside the ephemeral range.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := loopback.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// scrape is one /metrics page: sample names present and family types.
type scrape struct {
	samples map[string]bool
	types   map[string]string
	text    string
}

func scrapeMetrics(url string) (scrape, error) {
	s := scrape{samples: map[string]bool{}, types: map[string]string{}}
	resp, err := http.Get(url)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	s.text = string(b)
	sc := bufio.NewScanner(strings.NewReader(s.text))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			s.types[f[2]] = f[3]
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:strings.IndexAny(line, "{ ")]
		s.samples[name] = true
	}
	return s, sc.Err()
}

// missing returns the names (sample or family) a scrape does not serve.
func (s scrape) missing(names []string) []string {
	var out []string
	for _, n := range names {
		if s.samples[n] {
			continue
		}
		if s.types[n] != "" && (s.samples[n+"_bucket"] || s.samples[n+"_count"]) {
			continue // a histogram named by its family
		}
		out = append(out, n)
	}
	return out
}

func httpStatus(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// roundTrip writes msg and reads the same bytes back.
func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, sent %q", buf, msg)
	}
	return nil
}

// checkMetricsLive runs the binary the Dockerfile builds, opens sessions that
// produce every kind of series (a live session, a rejected one, a re-dial, a backend
// reset, a reload), and checks that every metric name the alert rules and the
// dashboard use is on /metrics, with the type they expect.
func checkMetricsLive(t *testing.T, bin, version string) {
	var used []string
	seen := map[string]bool{}
	for _, f := range []string{rulesPath, dashboardPath} {
		for _, m := range usedMetrics(t, f) {
			if !seen[m] {
				seen[m] = true
				used = append(used, m)
			}
		}
	}
	sort.Strings(used)

	echo := startEchoServer(t)
	dead := freeAddr(t) // nothing listens: connects are refused
	admin, echoListen, failoverListen := freeAddr(t), freeAddr(t), freeAddr(t)

	cfgPath := filepath.Join(t.TempDir(), "tnsguard.toml")
	cfg := fmt.Sprintf(`
[log]
level = "debug"

[admin]
listen = %q

[shutdown]
grace         = "100ms"
drain_timeout = "2s"

[[listener]]
name         = "echo"
listen       = %q
backend      = "echo"
max_sessions = 1

[[listener]]
name    = "failover"
listen  = %q
backend = "failover"

[[backend]]
name = "echo"
  [backend.health]
  check    = "tcp"
  interval = "200ms"
  timeout  = "150ms"
  rise     = 1
  fall     = 1
  [[backend.server]]
  address = %q

[[backend]]
name            = "failover"
connect_timeout = "1s"
connect_budget  = "5s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address  = %q
  priority = 0
  [[backend.server]]
  address  = %q
  priority = 1
`, admin, echoListen, failoverListen, echo.ln.Addr(), dead, echo.ln.Addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "tnsguard.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("tnsguard log:\n%s", b)
		}
	}()

	base := "http://" + admin
	deadline := time.Now().Add(15 * time.Second)
	for httpStatus(base+"/readyz") != http.StatusOK {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("tnsguard exited before it was ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 within 15s (last %d)", httpStatus(base+"/readyz"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The image's HEALTHCHECK command against this instance.
	if out, err := runCmd(t, "", nil, bin, "healthcheck", "-admin", admin); err != nil {
		t.Errorf("tnsguard healthcheck on a ready instance: %v: %s", err, out)
	}

	// A: a session that stays open (sessions_active, bytes, RTT of a live conn).
	a, err := net.Dial("tcp", echoListen)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := roundTrip(a, "hello\n"); err != nil {
		t.Fatalf("session through listener echo: %v", err)
	}
	// B: over max_sessions = 1: closed at once (sessions_rejected_total).
	// The reset can beat the dial's own completion check on loopback.
	if b, err := net.Dial("tcp", echoListen); err == nil {
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := b.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a session over max_sessions was not closed: %v", err)
		}
		b.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dialing listener echo: %v", err)
	}
	// C: the first server refuses (redials_total), the second echoes, then resets it
	// (resets_total, sessions_total, session_duration_seconds).
	c, err := net.Dial("tcp", failoverListen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "ping\n"); err != nil {
		t.Fatalf("session through listener failover: %v", err)
	}
	c.Write([]byte("RESET"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the backend's RST the app read %v, want ECONNRESET", err)
	}
	// A reload of the same file (config_last_reload_*).
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}

	var s scrape
	var miss []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		s, err = scrapeMetrics(base + "/metrics")
		if err == nil {
			if miss = s.missing(used); len(miss) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range miss {
		t.Errorf("%s is used by the rules or the dashboard but not on a live /metrics", m)
	}
	for _, m := range used {
		fam := family(m, s.types)
		if want, got := knownMetrics[fam], s.types[fam]; got != "" && want != got {
			t.Errorf("%s is a %s on /metrics, the rules and dashboard treat it as a %s", fam, got, want)
		}
	}
	if !strings.Contains(s.text, `tnsguard_build_info{version="`+version+`"} 1`) {
		t.Errorf("tnsguard_build_info does not carry the -X main.version %q", version)
	}
	t.Logf("%d metric names used by the rules and the dashboard, all on /metrics: %s", len(used), strings.Join(used, " "))

	a.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("tnsguard after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("tnsguard did not exit within 15s of SIGTERM (drain_timeout 2s)")
	}
}
