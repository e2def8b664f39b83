package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGTERM: /readyz turns 503 at once while the listener still accepts (and
// serves) for the grace; then new connections are refused; a busy session
// finishes its work; an idle one is reset at the drain timeout and counted;
// the process exits 0.
func TestDrainOnSIGTERM(t *testing.T) {
	const grace, drain = time.Second, 2500 * time.Millisecond // the busy session's last round trip has 1.5 s before the drain timeout
	e := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	g := start(t, admin, config(admin, fmt.Sprintf("grace = %q\ndrain_timeout = %q", grace, drain),
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}}), true)

	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	for _, c := range []net.Conn{busy, idle} {
		if err := roundTrip(c, []byte("hi"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	// The busy session works on for 2s after SIGTERM: past the grace, and
	// it ends by itself (closes) before grace + drain_timeout.
	busyDone := make(chan error, 1)
	go func() {
		until := time.Now().Add(2 * time.Second)
		for i := 0; time.Now().Before(until); i++ {
			if err := roundTrip(busy, fmt.Appendf(nil, "work %d", i), 2*time.Second); err != nil {
				busyDone <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		busyDone <- busy.Close()
	}()
	idleErr := make(chan error, 1)
	go func() { idleErr <- readUntilErr(idle, 10*time.Second) }()

	sigAt := time.Now()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var notReady, refused time.Duration
	servedDuringGrace := false
	for refused == 0 && time.Since(sigAt) < 5*time.Second {
		if notReady == 0 {
			if code, _ := g.get("/readyz"); code == http.StatusServiceUnavailable {
				notReady = time.Since(sigAt)
			}
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		switch {
		case err == nil:
			if notReady != 0 && roundTrip(c, []byte("late"), time.Second) == nil {
				servedDuringGrace = true // readiness already 503, still served
			}
			c.Close()
		case errors.Is(err, syscall.ECONNREFUSED):
			refused = time.Since(sigAt)
		default:
			t.Fatalf("dial during drain: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	switch {
	case notReady == 0:
		t.Fatal("/readyz never turned 503")
	case refused == 0:
		t.Fatal("the listener still accepted 5s after SIGTERM")
	case notReady >= refused:
		t.Fatalf("/readyz turned 503 after %v, the listener closed after %v: readiness must flip first", notReady, refused)
	case refused < grace-100*time.Millisecond:
		t.Fatalf("the listener closed %v after SIGTERM, before the %v grace", refused, grace)
	case !servedDuringGrace:
		t.Fatal("no new session was served between the 503 and the end of the grace")
	}
	if err := <-busyDone; err != nil {
		t.Fatalf("the busy session broke during the drain: %v", err)
	}
	select {
	case err := <-idleErr:
		at := time.Since(sigAt)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("idle session at the drain timeout: %v, want a reset", err)
		}
		if at < grace+drain-100*time.Millisecond || at > grace+drain+time.Second {
			t.Fatalf("idle session closed %v after SIGTERM, want about %v", at, grace+drain)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle session was never closed")
	}
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		t.Fatal("tnsguard did not exit")
	}
	if g.exit != 0 {
		t.Fatalf("exit code %d after the drain", g.exit)
	}
	if l := g.log.find("drained"); len(l) != 1 || l[0]["sessions_closed_at_timeout"] != float64(1) {
		t.Fatalf("drained log: %v, want sessions_closed_at_timeout=1", l)
	}
	t.Logf("readyz 503 after %v, listener closed after %v, idle session reset and exit after %v",
		notReady.Round(time.Millisecond), refused.Round(time.Millisecond), g.exited.Sub(sigAt).Round(time.Millisecond))
}

// A drain with nothing left to wait for ends right after the grace.
func TestDrainWithoutSessionsIsQuick(t *testing.T) {
	e := newEcho(t)
	admin, addr := freeAddr(t), freeAddr(t)
	g := start(t, admin, config(admin, "grace = \"200ms\"\ndrain_timeout = \"30s\"",
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}}), true)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(c, []byte("x"), time.Second)
	c.Close()
	sigAt := time.Now()
	if code := g.stop(syscall.SIGINT, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if d := g.exited.Sub(sigAt); d > 2*time.Second {
		t.Fatalf("exit took %v with no session left", d)
	}
}

// tnsguard healthcheck: 0 against a ready instance, 1 against one that is
// up but not ready (its only server is down) or draining, 1 when nothing
// answers.
func TestHealthcheckExitCodes(t *testing.T) {
	e := newEcho(t)
	readyAdmin, addr := freeAddr(t), freeAddr(t)
	ready := start(t, readyAdmin, config(readyAdmin, "grace = \"3s\"\ndrain_timeout = \"1s\"",
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{e.addr()}}}), true)
	if code, out := run(t, "healthcheck", "-admin", readyAdmin); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("healthcheck against a ready instance: exit %d, %q", code, out)
	}

	downAdmin, downAddr, dead := freeAddr(t), freeAddr(t), freeAddr(t)
	down := start(t, downAdmin, config(downAdmin, "",
		[]listenerConf{{name: "l", listen: downAddr, backend: "db"}},
		[]backendConf{{name: "db", servers: []string{dead}}}), false)
	waitFor(t, 5*time.Second, "/readyz 503 with the server down", func() bool {
		code, _ := down.get("/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, out := run(t, "healthcheck", "-admin", downAdmin); code != 1 || !strings.Contains(out, "not ready") {
		t.Fatalf("healthcheck against an unready instance: exit %d, %q", code, out)
	}

	if code, out := run(t, "healthcheck", "-admin", freeAddr(t)); code != 1 || !strings.Contains(out, "not reachable") {
		t.Fatalf("healthcheck against no instance: exit %d, %q", code, out)
	}

	// Draining (inside the grace): not ready any more.
	ready.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 2*time.Second, "/readyz 503 while draining", func() bool {
		code, _ := ready.get("/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, out := run(t, "healthcheck", "-admin", readyAdmin); code != 1 {
		t.Fatalf("healthcheck against a draining instance: exit %d, %q", code, out)
	}
}
