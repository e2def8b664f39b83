package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// churn is apps opening sessions back to back (dial, one round trip,
// close) and an operator's monitor polling /healthz, counting what failed.
type churn struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	sessions atomic.Int64
	polls    atomic.Int64
	mu       sync.Mutex
	errs     []error
}

func startChurn(addr, admin string, apps int) *churn {
	c := &churn{stop: make(chan struct{})}
	fail := func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.errs = append(c.errs, err)
	}
	for i := range apps {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for k := 0; ; k++ {
				select {
				case <-c.stop:
					return
				default:
				}
				conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					fail(fmt.Errorf("app %d session %d: %w", i, k, err))
					continue
				}
				if err := roundTrip(conn, fmt.Appendf(nil, "app %d session %d", i, k), 2*time.Second); err != nil {
					fail(fmt.Errorf("app %d session %d: %w", i, k, err))
				} else {
					c.sessions.Add(1)
				}
				conn.Close()
			}
		}()
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			resp, err := httpClient.Get("http://" + admin + "/healthz")
			if err != nil {
				fail(fmt.Errorf("/healthz: %w", err))
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				fail(fmt.Errorf("/healthz: %d", resp.StatusCode))
				continue
			}
			c.polls.Add(1)
		}
	}()
	return c
}

func (c *churn) Stop() []error {
	close(c.stop)
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errs
}

// notifySocket is a stand-in for systemd's NOTIFY_SOCKET: it keeps the
// messages sent to it.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) has(msg string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func (n *notifySocket) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return fmt.Sprintf("%q", n.msgs)
}

// upgraded waits for the log line that says the new process serves and
// returns its pid.
func (g *instance) upgraded(limit time.Duration) int {
	g.t.Helper()
	var pid int
	waitFor(g.t, limit, "the old process to say the new one serves", func() bool {
		lines := g.log.find("upgrade: the new process serves; this one stops accepting and drains")
		if len(lines) == 0 {
			return false
		}
		pid = int(lines[0]["pid"].(float64))
		return true
	})
	return pid
}

// SIGUSR2 with the binary replaced on disk: apps opening sessions all the
// while see no refusal and no reset, the admin port answers throughout, the
// old process drains its pooled session and exits 0, the new one (the new
// binary) serves on, and systemd is told the new main pid.
func TestUpgradeOnSIGUSR2RefusesNothing(t *testing.T) {
	const drain = 2 * time.Second
	e := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	// The binary runs from a copy that the test replaces, as a package
	// upgrade does: a new file at the same path.
	bin := filepath.Join(t.TempDir(), "tnsguard")
	copyFile(t, binary(t), bin)
	notify := newNotifySocket(t)
	// grace 5s: an upgrade does not wait for it (the new process serves).
	conf := config(admin, fmt.Sprintf("grace = \"5s\"\ndrain_timeout = %q", drain),
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}})
	g := startCmd(t, admin, conf, true, func(_, path string) *exec.Cmd {
		cmd := exec.Command(bin, "run", "-config", path)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.path)
		return cmd
	})
	waitFor(t, 5*time.Second, "READY=1 to systemd", func() bool { return notify.has("READY=1") })

	pooled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Close()
	if err := roundTrip(pooled, []byte("pooled"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	c := startChurn(addr, admin, 4)
	waitFor(t, 5*time.Second, "sessions before the upgrade", func() bool { return c.sessions.Load() > 50 })

	tmp := bin + ".new"
	copyFile(t, binary(t), tmp)
	if err := os.Rename(tmp, bin); err != nil { // the running binary's file is gone now
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID := g.upgraded(10 * time.Second)
	handedAt := time.Now()
	if newPID == g.cmd.Process.Pid {
		t.Fatalf("the new process has the old one's pid %d", newPID)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", newPID)); err != nil || exe != bin {
		t.Errorf("the new process runs %q (%v), want the new file %s", exe, err, bin)
	}
	waitFor(t, 5*time.Second, "MAINPID to systemd", func() bool { return notify.has(fmt.Sprintf("MAINPID=%d", newPID)) })
	if notify.has("STOPPING=1") {
		t.Errorf("systemd was told the service stops: %s", notify)
	}
	// The old process's session goes on during its drain.
	if err := roundTrip(pooled, []byte("pooled, old process draining"), 2*time.Second); err != nil {
		t.Fatalf("pooled session during the drain: %v", err)
	}
	select {
	case <-g.done:
	case <-time.After(drain + 5*time.Second):
		t.Fatalf("old process still running %v after the handover (drain_timeout %v)", time.Since(handedAt), drain)
	}
	if g.exit != 0 {
		t.Errorf("old process exit code %d, want 0", g.exit)
	}
	if took := g.exited.Sub(handedAt); took < drain-200*time.Millisecond {
		t.Errorf("old process exited %v after the handover, before its drain_timeout %v with a session open", took, drain)
	}
	// Reset at the drain timeout, as on SIGTERM: the pool reconnects.
	if err := readUntilErr(pooled, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("pooled session after the old process's drain: %v, want a reset", err)
	}
	before := c.sessions.Load()
	waitFor(t, 5*time.Second, "sessions served by the new process alone", func() bool { return c.sessions.Load() > before+50 })
	errs := c.Stop()
	for i, err := range errs {
		if i == 10 {
			t.Errorf("... %d errors in all", len(errs))
			break
		}
		t.Errorf("during the upgrade: %v", err)
	}
	t.Logf("%d sessions and %d /healthz polls, %d failed", c.sessions.Load(), c.polls.Load(), len(errs))
	if len(g.log.find("upgrade: serving on the sockets handed over; the old process drains")) != 1 {
		t.Error("the new process did not log that it serves on the sockets handed over")
	}
	// The new process stops on SIGTERM as any tnsguard does.
	if got := g.log.find("handed over: draining"); len(got) != 1 {
		t.Errorf("old process's drain lines: %v", got)
	}
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new process to stop on SIGTERM", func() bool { return len(g.log.find("drained")) == 2 })
}

// A new binary that cannot start (here: the config file is now broken)
// leaves the old process serving as before, with the reason logged; the
// next SIGUSR2, after the file is mended, upgrades.
func TestUpgradeThatFailsLeavesTheOldProcessServing(t *testing.T) {
	e := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	conf := config(admin, "grace = \"0s\"\ndrain_timeout = \"1s\"",
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}})
	g := start(t, admin, conf, true)
	pooled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Close()
	if err := os.WriteFile(g.path, []byte("[[listener]]\nname = \"l\"\nlisten = 1521\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var failed []map[string]any
	waitFor(t, 10*time.Second, "the upgrade to fail", func() bool {
		failed = g.log.find("upgrade failed: this process serves on")
		return len(failed) > 0
	})
	if msg, _ := failed[0]["error"].(string); !strings.Contains(msg, "ended before it served (exit status 1)") {
		t.Errorf("upgrade failure logged as %q", msg)
	}
	if !strings.Contains(g.log.String(), g.path+":3") { // the new process's own error, with the file's line
		t.Errorf("the new process's config error is not in the log:\n%s", g.log)
	}
	for i := range 3 {
		if err := roundTrip(pooled, fmt.Appendf(nil, "pooled %d", i), 2*time.Second); err != nil {
			t.Fatalf("pooled session after the failed upgrade: %v", err)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("new session after the failed upgrade: %v", err)
		}
		err = roundTrip(c, []byte("new"), 2*time.Second)
		c.Close()
		if err != nil {
			t.Fatalf("new session after the failed upgrade: %v", err)
		}
	}
	if code, _ := g.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz %d after the failed upgrade", code)
	}

	if err := os.WriteFile(g.path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	g.upgraded(10 * time.Second)
	select {
	case <-g.done:
	case <-time.After(5 * time.Second):
		t.Fatal("old process still running 5 s after the second upgrade")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("new process"), 2*time.Second); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// As a container's first process (PID 1), tnsguard refuses SIGUSR2 and
// serves on: after the drain its exit would end the container and the new
// process with it.
func TestUpgradeRefusedAsPID1(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare (util-linux):", err)
	}
	e := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	conf := config(admin, "grace = \"0s\"\ndrain_timeout = \"1s\"",
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}})
	g := startCmd(t, admin, conf, true, func(bin, path string) *exec.Cmd {
		return exec.Command("unshare", "--pid", "--fork", "--kill-child", bin, "run", "-config", path)
	})
	// tnsguard is unshare's child; it is PID 1 in its own PID namespace.
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", g.cmd.Process.Pid, g.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(children), &pid); err != nil {
		t.Fatalf("unshare's children %q: %v", children, err)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var failed []map[string]any
	waitFor(t, 5*time.Second, "the upgrade to be refused", func() bool {
		failed = g.log.find("upgrade failed: this process serves on")
		return len(failed) > 0
	})
	if msg, _ := failed[0]["error"].(string); !strings.Contains(msg, "PID 1") {
		t.Errorf("refusal logged as %q", msg)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("after the refused upgrade: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("still here"), 2*time.Second); err != nil {
		t.Fatalf("after the refused upgrade: %v", err)
	}
}
