package e2e

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// listenerConf and backendConf build test configurations: fixed addresses
// so that a reloaded file names the same sockets.
type listenerConf struct{ name, listen, backend, extra string }

type backendConf struct {
	name    string
	servers []string
	extra   string
	health  string // [backend.health]'s lines; "": a tcp check every second
}

func config(admin, shutdown string, ls []listenerConf, bs []backendConf) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[log]\nlevel = \"info\"\nformat = \"json\"\n[admin]\nlisten = %q\n", admin)
	if shutdown != "" {
		fmt.Fprintf(&b, "[shutdown]\n%s\n", shutdown)
	}
	for _, l := range ls {
		fmt.Fprintf(&b, "[[listener]]\nname = %q\nlisten = %q\nbackend = %q\n%s\n", l.name, l.listen, l.backend, l.extra)
	}
	for _, k := range bs {
		fmt.Fprintf(&b, "[[backend]]\nname = %q\nconnect_timeout = \"1s\"\nconnect_budget = \"3s\"\n%s\n", k.name, k.extra)
		health := k.health
		if health == "" {
			health = "  check = \"tcp\"\n  interval = \"1s\"\n  timeout = \"500ms\"\n"
		}
		b.WriteString("  [backend.health]\n" + health)
		for _, s := range k.servers {
			fmt.Fprintf(&b, "  [[backend.server]]\n  address = %q\n", s)
		}
	}
	return b.String()
}

// 50 sessions do round trips back to back while SIGHUP adds a listener and
// points the existing listener at another backend: no session sees an
// error, the new listener answers, new sessions go to the new backend and
// the live ones stay where they are. Then a bad file: it is refused with
// every error logged, tnsguard_config_last_reload_successful turns 0, and
// everything keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	e1, e2 := newEcho(t), newEcho(t)
	admin, main, extra := freeAddr(t), freeAddr(t), freeAddr(t)
	bs := []backendConf{{name: "b1", servers: []string{e1.addr()}}, {name: "b2", servers: []string{e2.addr()}}}
	before := config(admin, "", []listenerConf{{name: "main", listen: main, backend: "b1"}}, bs)
	g := start(t, admin, before, true)

	ld := startLoad(t, main, 50)
	time.Sleep(300 * time.Millisecond)
	r0 := ld.rounds.Load()

	after := config(admin, "", []listenerConf{
		{name: "main", listen: main, backend: "b2"},
		{name: "extra", listen: extra, backend: "b1"},
	}, bs)
	if !g.reload(after) {
		t.Fatalf("good reload refused:\n%s", g.log)
	}
	if v := g.metric("tnsguard_config_last_reload_successful"); v != 1 {
		t.Fatalf("reload gauge = %v after a good reload", v)
	}
	c, err := net.Dial("tcp", extra)
	if err != nil {
		t.Fatalf("the added listener does not answer: %v", err)
	}
	if err := roundTrip(c, []byte("via extra"), 2*time.Second); err != nil {
		t.Fatalf("round trip through the added listener: %v", err)
	}
	c.Close()
	e1Before, e2Before := e1.sessions.Load(), e2.sessions.Load()
	c, err = net.Dial("tcp", main)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, []byte("new session"), 2*time.Second); err != nil {
		t.Fatalf("new session on the changed listener: %v", err)
	}
	c.Close()
	if d1, d2 := e1.sessions.Load()-e1Before, e2.sessions.Load()-e2Before; d1 != 0 || d2 != 1 {
		t.Fatalf("a new session on the changed listener reached b1 %d times and b2 %d times, want b2 once", d1, d2)
	}
	time.Sleep(300 * time.Millisecond)
	r1 := ld.rounds.Load()
	if r1 == r0 {
		t.Fatal("no round trips after the reload")
	}

	// Two errors of meaning: both must be logged, nothing may change.
	bad := config(admin, "", []listenerConf{
		{name: "main", listen: main, backend: "nope"},
		{name: "extra", listen: extra, backend: "b1", extra: `proxy_protocol = "sometimes"`},
	}, bs)
	if g.reload(bad) {
		t.Fatal("a bad file was accepted")
	}
	// Every problem on its own log line.
	for _, want := range []string{
		`backend "nope" is not defined`,
		`proxy_protocol "sometimes" is not one of off, optional, required`,
	} {
		waitFor(t, 2*time.Second, "a log line for "+want, func() bool {
			n := 0
			for _, l := range g.log.find("reload failed: the running configuration stays") {
				if e := fmt.Sprint(l["error"]); strings.Contains(e, want) && !strings.Contains(e, "\n") {
					n++
				}
			}
			return n == 1
		})
	}
	if v := g.metric("tnsguard_config_last_reload_successful"); v != 0 {
		t.Fatalf("reload gauge = %v after a bad reload, want 0", v)
	}
	for _, addr := range []string{main, extra} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s after a bad reload: %v", addr, err)
		}
		if err := roundTrip(c, []byte("still here"), 2*time.Second); err != nil {
			t.Fatalf("%s after a bad reload: %v", addr, err)
		}
		c.Close()
	}
	time.Sleep(300 * time.Millisecond)
	if ld.rounds.Load() == r1 {
		t.Fatal("no round trips after the bad reload")
	}
	if errs := ld.Stop(); len(errs) > 0 {
		t.Fatalf("%d live sessions broke, first: %v", len(errs), errs[0])
	}
	t.Logf("50 sessions did %d round trips across a good and a bad reload, 0 errors", ld.rounds.Load())
	if code := g.stop(syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// A removed listener stops accepting at once, but its live session goes on
// until it ends or, at shutdown, until the drain timeout.
func TestReloadRemovedListenerKeepsItsSessions(t *testing.T) {
	e := newEcho(t)
	admin, a, b := freeAddr(t), freeAddr(t), freeAddr(t)
	bs := []backendConf{{name: "db", servers: []string{e.addr()}}}
	g := start(t, admin, config(admin, "grace = \"0s\"\ndrain_timeout = \"1s\"", []listenerConf{
		{name: "a", listen: a, backend: "db"}, {name: "b", listen: b, backend: "db"},
	}, bs), true)
	s, err := net.Dial("tcp", a)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := roundTrip(s, []byte("before"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if !g.reload(config(admin, "grace = \"0s\"\ndrain_timeout = \"1s\"", []listenerConf{{name: "b", listen: b, backend: "db"}}, bs)) {
		t.Fatal("reload refused")
	}
	if _, err := net.DialTimeout("tcp", a, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the removed listener: %v, want connection refused", err)
	}
	for i := range 5 {
		if err := roundTrip(s, fmt.Appendf(nil, "after %d", i), 2*time.Second); err != nil {
			t.Fatalf("the removed listener's session broke: %v", err)
		}
	}
	// At shutdown it is drained like any other: closed at the drain timeout.
	start := time.Now()
	g.cmd.Process.Signal(syscall.SIGTERM)
	err = readUntilErr(s, 5*time.Second)
	took := time.Since(start)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("session of the removed listener at the drain timeout: %v, want a reset", err)
	}
	if took < 900*time.Millisecond || took > 2*time.Second {
		t.Fatalf("closed %v after SIGTERM, want about the 1s drain timeout", took)
	}
	if code := g.stop(syscall.SIGTERM, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if l := g.log.find("drained"); len(l) != 1 || l[0]["sessions_closed_at_timeout"] != float64(1) {
		t.Fatalf("drained log: %v, want sessions_closed_at_timeout=1", l)
	}
}

// Renaming a listener, or swapping the addresses of two, keeps the sockets:
// the reload works, no connection is refused, live sessions go on.
func TestReloadRenameAndSwapListeners(t *testing.T) {
	e1, e2 := newEcho(t), newEcho(t)
	admin, a, b := freeAddr(t), freeAddr(t), freeAddr(t)
	bs := []backendConf{{name: "b1", servers: []string{e1.addr()}}, {name: "b2", servers: []string{e2.addr()}}}
	g := start(t, admin, config(admin, "", []listenerConf{
		{name: "one", listen: a, backend: "b1"}, {name: "two", listen: b, backend: "b2"},
	}, bs), true)
	ld := startLoad(t, a, 5)

	// Keep dialing both addresses during the reloads: none may be refused.
	stop := make(chan struct{})
	dialErr := make(chan error, 1)
	go func() {
		defer close(dialErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, addr := range []string{a, b} {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					err = roundTrip(c, []byte("ping"), 2*time.Second)
					c.Close()
				}
				if err != nil {
					dialErr <- fmt.Errorf("%s: %w", addr, err)
					return
				}
			}
		}
	}()
	if !g.reload(config(admin, "", []listenerConf{
		{name: "uno", listen: a, backend: "b1"}, {name: "two", listen: b, backend: "b2"},
	}, bs)) {
		t.Fatalf("renaming a listener at the same address was refused:\n%s", g.log)
	}
	if !g.reload(config(admin, "", []listenerConf{
		{name: "uno", listen: b, backend: "b1"}, {name: "two", listen: a, backend: "b2"},
	}, bs)) {
		t.Fatalf("swapping two listeners' addresses was refused:\n%s", g.log)
	}
	close(stop)
	if err := <-dialErr; err != nil {
		t.Fatalf("a connection was refused during the reloads: %v", err)
	}
	// a now belongs to "two" -> b2.
	n := e2.sessions.Load()
	c, err := net.Dial("tcp", a)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, []byte("swapped"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if e2.sessions.Load() != n+1 {
		t.Fatal("after the swap, a new session on the first address did not reach b2")
	}
	time.Sleep(100 * time.Millisecond)
	if errs := ld.Stop(); len(errs) > 0 {
		t.Fatalf("live sessions broke: %v", errs[0])
	}
}
