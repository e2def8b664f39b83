package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fillLogPipe writes to tnsguard's stderr pipe (through /proc) until it
// takes no more: the lines a reader that hung left unread. The stalled
// reader may take one more read (32 KiB) after the first fill: it fills
// until 100ms pass with nothing taken.
func fillLogPipe(t *testing.T, pid int) {
	t.Helper()
	fd, err := syscall.Open(fmt.Sprintf("/proc/%d/fd/2", pid), syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	line := []byte(`{"@level":"info","@message":"a line the log reader has not read"}` + "\n")
	for {
		n := 0
		for {
			if _, err := syscall.Write(fd, line); err != nil {
				if err != syscall.EAGAIN {
					t.Fatal(err)
				}
				break
			}
			n++
		}
		if n == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Until 2026-11-30 a log reader that stopped reading (journald or a Docker
// log driver that hung: stderr is a 64 KiB pipe) stopped tnsguard once the
// pipe was full: hclog writes each line under a lock that every logger
// shares, so the first line that could not be written held it, and every
// goroutine that logged after it waited. An app whose listener's backend
// was down waited on its socket instead of its reset (5 s and counting,
// dial refused at once); a reload that added a listener logged "listening" under
// the proxy's lock, and then no new connection on any listener was served
// and /readyz, /metrics and /api/links hung (3 s timeouts; /healthz said
// 200); SIGTERM neither drained nor ended the process (still running 6 s
// later, /readyz 200). Lines now go through a bounded queue (logout.go):
// with the reader stalled and the pipe full, all of that works.
func TestFullLogPipeStopsNothing(t *testing.T) {
	e := newEcho(t)
	admin, main, dead, extra := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	nowhere := freeAddr(t) // nothing listens: the dial is refused
	ls := []listenerConf{{name: "main", listen: main, backend: "b1"}, {name: "dead", listen: dead, backend: "bdead"}}
	bs := []backendConf{{name: "b1", servers: []string{e.addr()}}, {name: "bdead", servers: []string{nowhere},
		extra: "retry_on = []"}}
	shutdown := "grace = \"100ms\"\ndrain_timeout = \"1s\""
	g := start(t, admin, config(admin, shutdown, ls, bs), false)

	open := dialOK(t, main)
	if err := roundTrip(open, []byte("before"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	g.log.stall()
	var resume sync.Once
	t.Cleanup(func() { resume.Do(g.log.resume) })
	fillLogPipe(t, g.cmd.Process.Pid)

	// A new session whose backend is down gets its reset within the
	// budget; its "no backend" line is the first that cannot be written.
	// The dial is made at accept and refused at once: the reset may come
	// before connect returns, which is the reset the app is owed too.
	c, err := net.Dial("tcp", dead)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		c.Write([]byte("hello"))
		began := time.Now()
		if err := readUntilErr(c, 3*time.Second); isTimeout(err) {
			t.Errorf("no backend: the app's connection still open %v after it spoke (its one dial was refused)", time.Since(began).Round(time.Millisecond))
		}
		c.Close()
	}

	// A reload that adds a listener: it serves, and so does the old one.
	ls = append(ls, listenerConf{name: "extra", listen: extra, backend: "b1"})
	if err := os.WriteFile(g.path, []byte(config(admin, shutdown, ls, bs)), 0o600); err != nil {
		t.Fatal(err)
	}
	g.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := newSessionWithin(extra, time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("listener added by the reload: %v", err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := newSessionWithin(main, 2*time.Second); err != nil {
		t.Errorf("new session after the reload: %v", err)
	}
	if code, body := g.get("/readyz"); code == 0 { // 503: bdead has no server up
		t.Errorf("/readyz after the reload: %s", body)
	}
	for _, path := range []string{"/metrics", "/api/links"} {
		if code, body := g.get(path); code != http.StatusOK {
			t.Errorf("%s after the reload: %d %s", path, code, body)
		}
	}
	if err := roundTrip(open, []byte("after"), 2*time.Second); err != nil {
		t.Errorf("open session: %v", err)
	}

	// SIGTERM drains: the open session is closed at drain_timeout, and the
	// process ends (its last lines waited for at most logFlushLimit, 1s).
	began := time.Now()
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
		t.Logf("exited %v after SIGTERM (grace 100ms, drain_timeout 1s)", g.exited.Sub(began).Round(time.Millisecond))
	case <-time.After(4 * time.Second):
		code, _ := g.get("/readyz")
		t.Errorf("still running 4s after SIGTERM (grace 100ms, drain_timeout 1s); /readyz says %d", code)
	}
	open.Close()
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// newSessionWithin connects to addr, does a round trip and closes, within limit.
func newSessionWithin(addr string, limit time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, []byte("new session"), limit)
}
