package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tnsguard/tnsguard/config"
)

// A process started with a low soft open-files limit (systemd's default
// 1024, a shell's ulimit -n) logged "raised the open-files limit:
// from=19999 to=20000": Go's runtime lifts the soft limit to hard-1 before
// main runs, so the limit tnsguard read was not the one it started with,
// and the operator read a false starting limit. The test starts itself
// with a soft limit of 1024 and reads the line that raiseFileLimit logs.
func TestFileLimitLogDoesNotMisstateTheStartingLimit(t *testing.T) {
	if os.Getenv("TNSGUARD_RLIMIT_CHILD") == "1" {
		log := hclog.New(&hclog.LoggerOptions{Output: os.Stdout, Level: hclog.Debug})
		raiseFileLimit(log)
		return
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 4096 {
		t.Skipf("hard open-files limit %d: too low to start a child at 1024 below it", lim.Max)
	}
	low := lim
	low.Cur = 1024
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileLimitLogDoesNotMisstateTheStartingLimit$")
	cmd.Env = append(os.Environ(), "TNSGUARD_RLIMIT_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "raised the open-files limit") {
		t.Fatalf("no \"raised the open-files limit\" line:\n%s", out)
	}
	if wrong := fmt.Sprintf("from=%d", lim.Max-1); strings.Contains(string(out), wrong) {
		t.Errorf("the line names %s, the limit Go's runtime set, not the 1024 the process started with:\n%s", wrong, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("to=%d", lim.Max)) {
		t.Errorf("the line does not name the new limit to=%d:\n%s", lim.Max, out)
	}
}

// max_sessions promises that the sessions past it are turned away, each
// counted: set above what the open-files limit holds (two fds a session),
// it was never reached. The fds ran out first, accept failed with EMFILE,
// health checks failed and every backend was reported down, without a
// word at start about the limit that could not be kept. run warns.
func TestMaxSessionsAboveTheFileLimitWarns(t *testing.T) {
	cfg, _, err := config.Parse([]byte(`
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
max_sessions = 3000
[[listener]]
name = "sales"
listen = "127.0.0.1:1523"
backend = "orders"
max_sessions = 2000
[[listener]]
name = "other"
listen = "127.0.0.1:1524"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := "max_sessions of the listeners (5000 sessions in all, 2 open files each) needs about 10024 open files, and the open-files limit is 1024: the fds run out first, and then new connections wait in the backlog and health checks fail instead of sessions being turned away at max_sessions; raise the limit (LimitNOFILE, ulimit -n) or lower max_sessions"
	if got := fileLimitWarning(cfg, 1024); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if got := fileLimitWarning(cfg, 1048576); got != "" {
		t.Errorf("a limit that holds every session warns: %s", got)
	}
}
