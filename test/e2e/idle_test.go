package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// An idle tnsguard sleeps: with no session, and with pooled sessions that
// sit between queries, no timer of its own wakes the process. Until
// 2026-12-02 housekeeping's two tickers (every 100 ms and every second)
// woke it 11 times a second, and Go's scheduler threads woke one another:
// 55 context switches a second with nothing to do, 6 ms of CPU a second
// for 5,000 idle sessions. Measured here: 0-4 a second.
func TestAnIdleProxySleeps(t *testing.T) {
	echo := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	// No health check: its dial every second would wake the process.
	g := start(t, admin, config(admin, "", []listenerConf{{name: "l", listen: addr, backend: "echo"}},
		[]backendConf{{name: "echo", servers: []string{echo.addr()}, health: "  check = \"off\"\n"}}), true)
	pid := g.cmd.Process.Pid
	const limit = 15        // a second
	time.Sleep(time.Second) // the start's own work done
	if rate := switchesPerSecond(t, pid, 3*time.Second); rate > limit {
		t.Errorf("with no session, tnsguard's threads were switched %.1f times a second, want at most %d", rate, limit)
	}
	const n = 200
	conns := openSessions(t, addr, n)
	// Past the database leg's keepalive, which housekeeping sets once a
	// session has lasted a second, and the memory trim after the burst.
	time.Sleep(2 * time.Second)
	if rate := switchesPerSecond(t, pid, 3*time.Second); rate > limit {
		t.Errorf("with %d idle sessions, tnsguard's threads were switched %.1f times a second, want at most %d", n, rate, limit)
	}
	// Asleep is not deaf: a session that talks again is served at once.
	if err := roundTrip(conns[0], []byte("again"), time.Second); err != nil {
		t.Errorf("an idle session's next round trip: %v", err)
	}
}

// switchesPerSecond counts the context switches of pid's threads over
// window: each time a thread sleeps, or is put off a CPU. A timer that
// wakes a Go process costs several (its scheduler's threads wake one
// another); an idle one sleeps.
func switchesPerSecond(t *testing.T, pid int, window time.Duration) float64 {
	t.Helper()
	before := contextSwitches(t, pid)
	start := time.Now()
	time.Sleep(window)
	n := contextSwitches(t, pid) - before
	rate := float64(n) / time.Since(start).Seconds()
	t.Logf("%d context switches in %v (%.1f a second)", n, window, rate)
	return rate
}

// contextSwitches sums the voluntary and involuntary context switches of
// pid's live threads.
func contextSwitches(t *testing.T, pid int) int64 {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	var sum int64
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // a thread that ended
		}
		statusFields(b, func(k string, n int) {
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				sum += int64(n)
			}
		})
	}
	return sum
}
