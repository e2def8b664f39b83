package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// lockedBuffer is the log of a runCommand in another goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	addr, err := loopback.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runConfig is a config with the admin listener on admin and the given
// admin.allow list (TOML array text).
func runConfig(admin, allow string) string {
	return fmt.Sprintf(`[admin]
listen = %q
allow = %s
[shutdown]
grace = "0s"
drain_timeout = "1s"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "127.0.0.1:1"
`, admin, allow)
}

// startRun writes runConfig(admin, "[]") to a file and runs `tnsguard run
// -config` on it in the test process (real signals). It returns the file,
// the log and a function that drains it with SIGTERM.
func startRun(t *testing.T, admin string) (string, *lockedBuffer, func() int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(runConfig(admin, "[]")), 0o644); err != nil {
		t.Fatal(err)
	}
	log, stop := runFile(t, admin, path)
	return path, log, stop
}

// runFile runs `tnsguard run -config path` in the test process (real
// signals) until its admin listener (admin) answers. It returns the log
// and a function that drains it with SIGTERM.
func runFile(t *testing.T, admin, path string) (*lockedBuffer, func() int) {
	t.Helper()
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- runCommand([]string{"-config", path}, &log, &log) }()
	waitUntil(t, "the admin listener", func() bool {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	stop := func() int {
		syscall.Kill(os.Getpid(), syscall.SIGTERM)
		select {
		case c := <-code:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("run did not end after SIGTERM; log:\n%s", log.String())
			return -1
		}
	}
	return &log, stop
}

// metricsStatus is the status of GET /metrics on the admin listener.
func metricsStatus(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Status
}

// reload rewrites path and sends SIGHUP, then waits for the n-th reload
// line in the log.
func reload(t *testing.T, log *lockedBuffer, path, text string, n int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitUntil(t, "the reload", func() bool {
		s := log.String()
		return strings.Count(s, "configuration reloaded")+strings.Count(s, "reload failed") >= n
	})
}

// A reload that narrows admin.allow takes effect at once: "configuration
// reloaded" while anyone can still read /metrics, /status and /api/resets
// would be a lock the operator thinks is shut. Widening it again opens it.
func TestReloadAdminAllow(t *testing.T) {
	admin := freePort(t)
	path, log, stop := startRun(t, admin)
	reload(t, log, path, runConfig(admin, `["192.0.2.0/24"]`), 1)
	if got := metricsStatus(t, admin); got != "403 Forbidden" {
		t.Errorf("after a reload with admin.allow = [192.0.2.0/24], 127.0.0.1 gets %s, want 403", got)
	}
	reload(t, log, path, runConfig(admin, `["127.0.0.0/8"]`), 2)
	if got := metricsStatus(t, admin); got != "200 OK" {
		t.Errorf("after a reload with admin.allow = [127.0.0.0/8], 127.0.0.1 gets %s, want 200", got)
	}
	if code := stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// The admin.listen warning compares with the address the admin listener is
// bound to, not with the file of the last reload: moving it to B and back
// to the running A is no change, and the warning never names B as running.
func TestReloadAdminListenWarning(t *testing.T) {
	admin, other := freePort(t), freePort(t)
	path, log, stop := startRun(t, admin)
	reload(t, log, path, runConfig(other, "[]"), 1) // warns: needs a restart
	reload(t, log, path, runConfig(admin, "[]"), 2) // back to what runs
	if code := stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	s := log.String()
	if n := strings.Count(s, "admin.listen changed"); n != 1 || strings.Contains(s, "running="+other) {
		t.Fatalf("%d admin.listen warnings, want 1 naming %s as running:\n%s", n, admin, s)
	}
}

// log.format cannot change in a running process (the logger is built once):
// a reload that changes it says so instead of logging "reloaded" alone.
func TestReloadLogFormatWarning(t *testing.T) {
	admin := freePort(t)
	path, log, stop := startRun(t, admin)
	reload(t, log, path, "[log]\nformat = \"json\"\n"+runConfig(admin, "[]"), 1)
	if code := stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if s := log.String(); !strings.Contains(s, "log.format changed: it takes effect at the next restart") {
		t.Fatalf("no warning about log.format in:\n%s", s)
	}
}

// A SIGTERM after a burst of SIGHUPs drains and exits. The signals shared
// one channel, and signal.Notify drops what a full channel cannot take:
// HUPs queued behind a slow reload crowded the TERM out, and the process
// ran on (until systemd's SIGKILL, with no drain).
func TestSIGTERMAfterABurstOfSIGHUPs(t *testing.T) {
	admin := freePort(t)
	var b strings.Builder
	b.WriteString(runConfig(admin, "[]"))
	for i := range 400 { // a config whose reload takes some milliseconds
		fmt.Fprintf(&b, "[[backend]]\nname = \"x%d\"\n  [backend.health]\n  check = \"off\"\n  [[backend.server]]\n  address = \"127.0.0.1:%d\"\n", i, 2000+i)
	}
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- runCommand([]string{"-config", path}, &log, &log) }()
	waitUntil(t, "start", func() bool { return strings.Contains(log.String(), "tnsguard started") })
	for range 10 {
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		time.Sleep(3 * time.Millisecond)
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit %d", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("SIGTERM after a burst of SIGHUPs was lost: still running 10s later; %d reloads logged",
			strings.Count(log.String(), "configuration reloaded"))
	}
}

// `tnsguard run FILE` (-config forgotten) is a usage error. It ran the
// embedded default instead of the user's file, and said nothing.
func TestRunRefusesAFileWithoutConfigFlag(t *testing.T) {
	for _, args := range [][]string{{"mine.toml"}, {"mine.toml", "-config", "mine.toml"}, {"-config", ""}} {
		var log lockedBuffer
		code := make(chan int, 1)
		go func() { code <- runCommand(args, &log, &log) }()
		select {
		case c := <-code:
			if c != 2 {
				t.Errorf("run %q: exit %d, want 2; log:\n%s", args, c, log.String())
			}
		case <-time.After(3 * time.Second):
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-code
			t.Fatalf("run %q ran (on the embedded default); log:\n%s", args, log.String())
		}
	}
}

// A start that fails (the listener's port is taken) logs its error and
// nothing about a drain: it logged a drain, with a drain timeout's
// warning, for sessions that never were.
func TestFailedStartLogsNoDrain(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := strings.Replace(runConfig(freePort(t), "[]"), `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", taken.Addr()), 1)
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	if c := runCommand([]string{"-config", path}, &log, &log); c != 1 {
		t.Fatalf("exit %d, want 1", c)
	}
	if out := log.String(); !strings.Contains(out, "cannot start") || strings.Contains(out, "drain") {
		t.Errorf("log of a failed start:\n%s", out)
	}
}

// A listen address that passes check but cannot be bound names the file,
// the listener, the line and what the kernel's words mean: it named the
// listener only, and "cannot assign requested address" left the operator
// to guess. So does a reload that moves a listener onto a port in use.
func TestBindErrorsNameFileLineAndMeaning(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	notHere := strings.Replace(runConfig(freePort(t), "[]"), `listen = "127.0.0.1:0"`, `listen = "192.0.2.1:1521"`, 1)
	if err := os.WriteFile(path, []byte(notHere), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	if c := runCommand([]string{"-config", path}, &log, &log); c != 1 {
		t.Fatalf("exit %d, want 1", c)
	}
	want := path + `: listener \"l\": listen tcp 192.0.2.1:1521: bind: cannot assign requested address (no interface of this host has that address) (line 9)`
	if out := log.String(); !strings.Contains(out, want) {
		t.Errorf("log of a start on an address not this host's:\n%s\nwant it to hold:\n%s", out, want)
	}

	admin := freePort(t)
	path, rlog, stop := startRun(t, admin)
	moved := strings.Replace(runConfig(admin, "[]"), `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", taken.Addr()), 1)
	reload(t, rlog, path, moved, 1)
	if code := stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	want = fmt.Sprintf(`reload failed: the running configuration stays: error="%s: listener \"l\": listen tcp %s: bind: address already in use (another process listens on it) (line 9)"`, path, taken.Addr())
	if out := rlog.String(); !strings.Contains(out, want) {
		t.Errorf("log of a reload onto a port in use:\n%s\nwant it to hold:\n%s", out, want)
	}
}

// A second SIGTERM during a drain ends it at once: the sessions left are
// closed and run returns, instead of waiting out drain_timeout (here 30 s)
// with the second signal ignored.
func TestSecondSignalEndsTheDrain(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	listen := freePort(t)
	cfg := strings.NewReplacer(`drain_timeout = "1s"`, `drain_timeout = "30s"`, `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", listen),
		`address = "127.0.0.1:1"`, fmt.Sprintf("address = %q", echo.Addr())).Replace(runConfig(freePort(t), "[]"))
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	code := make(chan int, 1)
	go func() { code <- runCommand([]string{"-config", path}, &log, &log) }()
	waitUntil(t, "start", func() bool { return strings.Contains(log.String(), "tnsguard started") })
	c, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	waitUntil(t, "the drain", func() bool { return strings.Contains(log.String(), "stopped accepting") })
	start := time.Now()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case got := <-code:
		if got != 0 || time.Since(start) > 3*time.Second {
			t.Errorf("exit %d after %v", got, time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the second SIGTERM did not end the drain; log:\n%s", log.String())
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the session left open was not closed")
	}
}

// admin.listen's bind errors are placed as a listener's are: file, line
// and what the kernel's words mean (they named neither). A reload that puts
// a listener on the address the admin listener still holds (admin.listen
// moved in the same file: that takes a restart) says the admin listener
// holds it, not "another process", which the operator would look for in
// vain.
func TestAdminBindErrorsAndOwnSocketsNameWhatHoldsThem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	notHere := strings.Replace(runConfig("192.0.2.1:9521", "[]"), "allow = []", `allow = ["127.0.0.0/8"]`, 1)
	if err := os.WriteFile(path, []byte(notHere), 0o644); err != nil {
		t.Fatal(err)
	}
	var log lockedBuffer
	if c := runCommand([]string{"-config", path}, &log, &log); c != 1 {
		t.Fatalf("exit %d, want 1", c)
	}
	want := path + `: admin: listen tcp 192.0.2.1:9521: bind: cannot assign requested address (no interface of this host has that address) (line 2)`
	if out := log.String(); !strings.Contains(out, want) {
		t.Errorf("log of a start with admin.listen not this host's:\n%s\nwant it to hold:\n%s", out, want)
	}

	admin := freePort(t)
	path, rlog, stop := startRun(t, admin)
	onAdmin := strings.Replace(runConfig(freePort(t), "[]"), `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", admin), 1)
	reload(t, rlog, path, onAdmin, 1)
	if code := stop(); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	want = fmt.Sprintf(`listen tcp %s: bind: address already in use (the admin listener of this process listens on %s: move onto it in a second reload, after one that moves that off) (line 9)`, admin, admin)
	if out := rlog.String(); !strings.Contains(out, want) {
		t.Errorf("log of a reload onto the running admin listener's address:\n%s\nwant it to hold:\n%s", out, want)
	}
}
