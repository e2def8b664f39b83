package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/test/loopback"
	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// Reload and drain, in-package: what the metrics say. The end-to-end
// versions with the binary and real signals are in test/e2e.

func mustParse(t *testing.T, toml string) *config.Config {
	t.Helper()
	cfg, _, err := config.Parse([]byte(toml), "reload.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// twoListeners is oneBackendConfig plus a listener "m" on the same backend.
func twoListeners(be string) string {
	return strings.Replace(oneBackendConfig(be), "[[backend]]", `[[listener]]
name = "m"
listen = "127.0.0.2:0"
backend = "b"
[[backend]]`, 1)
}

// At the drain timeout the sessions left are closed with a reset and
// counted (outcome closed, cause proxy), including one whose listener a
// reload had removed; sessions that had ended alone are ok.
func TestShutdownCountsSessionsClosedAtDrainTimeout(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, twoListeners(be.addr()))
	onL, onM := h.dial("l"), h.dial("m")
	for _, c := range []*net.TCPConn{onL, onM} {
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// Remove listener m: its session goes on.
	if err := h.p.Apply(mustParse(t, oneBackendConfig(be.addr()))); err != nil {
		t.Fatal(err)
	}
	onM.Write([]byte("y"))
	if _, err := io.ReadFull(onM, make([]byte, 1)); err != nil {
		t.Fatalf("session of a removed listener broke at the reload: %v", err)
	}

	const grace, drain = 100 * time.Millisecond, 300 * time.Millisecond
	done := make(chan struct{})
	start := time.Now()
	go func() {
		h.p.Shutdown(grace, drain)
		close(done)
	}()
	waitFor(t, 50*time.Millisecond, "not ready at once", func() bool { ok, _ := h.p.Ready(); return !ok })
	for _, c := range []*net.TCPConn{onL, onM} {
		if _, err := readErr(c, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("session at the drain timeout: %v, want a reset", err)
		}
	}
	<-done
	if took := time.Since(start); took < grace+drain || took > grace+drain+500*time.Millisecond {
		t.Fatalf("Shutdown took %v, want about %v", took, grace+drain)
	}
	for _, l := range []string{"l", "m"} {
		if v := counter(h.m.SessionsTotal, l, "b", "other", "closed"); v != 1 {
			t.Errorf("sessions_total{listener=%s,outcome=closed} = %v, want 1", l, v)
		}
		if v := counter(h.m.Resets, l, "b", be.addr(), "client", "active", "proxy"); v != 1 {
			t.Errorf("resets_total{listener=%s,cause=proxy} = %v, want 1", l, v)
		}
	}
}

// A connection still sending its PROXY header when the drain times out
// (it is not a session yet) ends then too, not at its header timeout.
func TestShutdownEndsPendingHeaders(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "30s"`, ""))
	c := h.dial("l")
	c.Write(proxyproto.SIGV2) // and nothing more
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	h.p.Shutdown(0, 200*time.Millisecond)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Shutdown waited %v for a header that would time out after 30s", took)
	}
	if _, err := readErr(c, time.Second); err == nil || errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("pending connection after shutdown: %v, want closed", err)
	}
}

// An app that connects and closes without a byte (a load balancer's or a
// monitor's port check) is an ordinary session end: the backend answering
// its FIN with a FIN is no failure, so no re-dial, no breaker count, no
// reset.
func TestPortCheckIsNotABackendFailure(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	for range 10 {
		c := h.dial("l")
		c.Close()
	}
	waitFor(t, 3*time.Second, "10 sessions ok", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 10
	})
	if n := testutil.CollectAndCount(h.m.Redials); n != 0 {
		t.Fatalf("%d redial series after port checks", n)
	}
	if n := sumCounters(t, h.m.Resets); n != 0 {
		t.Fatalf("%v resets counted after port checks", n)
	}
	c := h.dial("l")
	c.Write([]byte("still fine"))
	if _, err := io.ReadFull(c, make([]byte, 10)); err != nil {
		t.Fatalf("a real session after the port checks: %v", err)
	}
}

// The same port check while the database is unreachable: after the first
// failed dial nothing is re-dialed for an app that has gone. The session
// was re-dialed for the whole connect_budget, counted as no_backend, and
// held a drain that long.
func TestPortCheckDuringAnOutageEndsAfterOneDial(t *testing.T) {
	h := startProxy(t, strings.Replace(oneBackendConfig(blackhole(t)), `connect_timeout = "500ms"`, `connect_timeout = "300ms"`, 1))
	c := h.dial("l")
	start := time.Now()
	c.Close()
	waitFor(t, 3*time.Second, "the session ended as ok", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 1
	})
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("the port check's session lasted %v; connect_budget is 3s, one dial 300ms", took)
	}
	if v := counter(h.m.SessionsRejected, "l", "no_backend"); v != 0 {
		t.Errorf("rejected{no_backend} = %v for an app that had gone", v)
	}
	if v := counter(h.m.Redials, "l", "b", "timeout"); v != 0 {
		t.Errorf("redials{timeout} = %v for an app that had gone", v)
	}
}

// A reload that changes a listener's backend sends new sessions to the new
// one while live sessions stay; removed servers lose their up gauge (a
// stale 0 would fire alerts forever).
func TestReloadChangesBackendAndForgetsRemovedServers(t *testing.T) {
	one := newBackend(t, echo)
	two := newBackend(t, echo)
	cfg := oneBackendConfig(one.addr(), two.addr())
	h := startProxy(t, cfg)
	old := h.dial("l")
	old.Write([]byte("a"))
	if _, err := io.ReadFull(old, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if got := len(one.accepted()); got != 1 {
		t.Fatalf("first server took %d connections", got)
	}
	// The listener now goes to backend c whose only server is two.
	next := strings.Replace(oneBackendConfig(two.addr()), `backend = "b"`, `backend = "c"`, 1)
	next = strings.Replace(next, `name = "b"`, `name = "c"`, 1)
	if err := h.p.Apply(mustParse(t, next)); err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	c.Write([]byte("b"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if len(one.accepted()) != 1 || len(two.accepted()) != 1 {
		t.Fatalf("after the reload: first server %d, second %d connections; want the new session on the second",
			len(one.accepted()), len(two.accepted()))
	}
	old.Write([]byte("c"))
	if _, err := io.ReadFull(old, make([]byte, 1)); err != nil {
		t.Fatalf("the live session broke at the reload: %v", err)
	}
	if n := testutil.CollectAndCount(h.m.BackendUp); n != 1 {
		t.Fatalf("%d tnsguard_backend_up series after the reload, want 1 (backend c's server)", n)
	}
	if v := testutil.ToFloat64(h.m.BackendUp.WithLabelValues("c", two.addr())); v != 1 {
		t.Fatalf("backend_up{c} = %v", v)
	}
}

// Turning proxy_protocol on by reload applies to new connections only: a
// live plain session goes on, a new one without a header is refused.
func TestReloadTurnsProxyProtocolOn(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	addr := h.addr("l")
	live := h.dial("l")
	live.Write([]byte("a"))
	if _, err := io.ReadFull(live, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	next := ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`, "")
	next = strings.Replace(next, `listen = "127.0.0.1:0"`, "listen = \""+addr+"\"", 1)
	// The listen string changed from :0 to the bound port: the socket is
	// inherited, not re-bound.
	if err := h.p.Apply(mustParse(t, next)); err != nil {
		t.Fatal(err)
	}
	live.Write([]byte("b"))
	if _, err := io.ReadFull(live, make([]byte, 1)); err != nil {
		t.Fatalf("live plain session after turning PROXY on: %v", err)
	}
	n := len(be.accepted())
	c := h.dial("l")
	c.Write([]byte("\x00\x3a\x00\x00\x01\x00\x00\x00"))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("plain connection after turning PROXY on read %q", b)
	}
	waitFor(t, time.Second, "proxy_missing counted", func() bool {
		return counter(h.m.SessionsRejected, "l", rejectProxyMissing) == 1
	})
	if len(be.accepted()) != n {
		t.Fatal("a plain connection reached the backend after PROXY was required")
	}
}

// A session still opening on a server that a reload removes must not bring
// the server's gauges back once it gets its answer: the replaced backend
// no longer reports, and no tnsguard_backend_up series outlives the
// server (an alert on it would never resolve).
func TestReplacedBackendReportsNoMore(t *testing.T) {
	answer := make(chan struct{})
	slow := newBackend(t, func(c *net.TCPConn) {
		<-answer // answers only after the reload
		echo(c)
	})
	fresh := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(slow.addr()))
	c := h.dial("l")
	c.Write([]byte("a"))
	waitFor(t, 5*time.Second, "the session reached the first server", func() bool { return len(slow.accepted()) == 1 })

	if err := h.p.Apply(mustParse(t, oneBackendConfig(fresh.addr()))); err != nil {
		t.Fatal(err)
	}
	close(answer)
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("the session that was opening at the reload: %v", err)
	}
	if n := testutil.CollectAndCount(h.m.BackendUp); n != 1 {
		t.Errorf("%d tnsguard_backend_up series, want 1 (the new server's)", n)
	}
	if n := testutil.CollectAndCount(h.m.BreakerState); n != 1 {
		t.Errorf("%d tnsguard_breaker_state series, want 1 (the new server's)", n)
	}
}

// A reload that fails (a listen address taken) changes nothing, not even
// the gauges: a server marked down stays down, and a server only the
// rejected file has gets no series (its connect histogram was created when
// the backends were built, before the bind failed).
func TestFailedReloadKeepsServerDown(t *testing.T) {
	dead := closedPort(t)
	h := startProxy(t, oneBackendConfig(dead))
	onlyInRejected := closedPort(t)
	c := h.dial("l")
	c.Write([]byte("a"))
	waitFor(t, 5*time.Second, "a failed dial marks the server down", func() bool {
		return testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", dead)) == 0
	})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	next := strings.Replace(oneBackendConfig(dead, onlyInRejected), `connect_budget = "3s"`, `connect_budget = "4s"`, 1) // a changed backend
	next = strings.Replace(next, `listen = "127.0.0.1:0"
backend`, `listen = "`+taken.Addr().String()+`"
backend`, 1)
	if err := h.p.Apply(mustParse(t, next)); err == nil {
		t.Fatal("reload onto a taken address succeeded")
	}
	if v := testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", dead)); v != 0 {
		t.Errorf("backend_up = %v after a failed reload, want 0 still", v)
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "server" && lp.GetValue() == onlyInRejected {
					t.Errorf("%s has a series of %s, a server only the rejected file has", mf.GetName(), onlyInRejected)
				}
			}
		}
	}
}

// hasIdleSeries tells whether tnsguard_sessions_idle has a series for the
// listener and backend.
func (h *harness) hasIdleSeries(t *testing.T, listener, backend string) bool {
	for _, sm := range h.samples(t, "tnsguard_sessions_idle") {
		if sm.labels["listener"] == listener && sm.labels["backend"] == backend {
			return true
		}
	}
	return false
}

// A listener a reload removed loses its tnsguard_sessions_idle series once
// its last session ends, as its other gauges go at the reload: it was
// rewritten to 0 every second for the process's life.
func TestRemovedListenerLosesItsIdleSeries(t *testing.T) {
	be := newBackend(t, echo)
	idleSeriesGoesWithLastSession(t, twoListeners(be.addr()), "m", "b", oneBackendConfig(be.addr()))
}

// The same for a listener pointed at another backend: the (listener, old
// backend) series goes with the old backend's last session.
func TestRepointedListenerLosesItsOldBackendsIdleSeries(t *testing.T) {
	be := newBackend(t, echo)
	cfg := strings.Replace(oneBackendConfig(be.addr()), `backend = "b"`, `backend = "c"`, 1)
	idleSeriesGoesWithLastSession(t, oneBackendConfig(be.addr()), "l", "b", strings.Replace(cfg, `name = "b"`, `name = "c"`, 1))
}

// idleSeriesGoesWithLastSession opens a session of listener to backend
// under the config before, reloads to after (which no longer pairs them),
// and checks that their idle series stays while the session is open and
// goes once it ends.
func idleSeriesGoesWithLastSession(t *testing.T, before, listener, backend, after string) {
	t.Helper()
	h := startProxy(t, before)
	c := h.dial(listener)
	echoed(t, c, "hello")
	pair := fmt.Sprintf("(%s, %s)'s idle series", listener, backend)
	has := func() bool { return h.hasIdleSeries(t, listener, backend) }
	waitFor(t, 3*time.Second, pair, has)
	if err := h.p.Apply(mustParse(t, after)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // a housekeeping tick with the session still open
	if !has() {
		t.Fatalf("%s went while its session was still open", pair)
	}
	c.Close()
	waitFor(t, 3*time.Second, pair+" gone", func() bool { return !has() })
}

// Renaming a listener on a wildcard address hands its socket over too
// (README "Reload"). On 0.0.0.0, the address of the Docker and Kubernetes
// configs, the reload failed with "address already in use": Go binds it as
// a dual-stack [::] socket, which the new listener's 0.0.0.0 did not match.
func TestRenameListenerOnWildcardKeepsItsSocket(t *testing.T) {
	for _, host := range []string{"0.0.0.0", "[::]", ""} {
		t.Run("host "+host, func(t *testing.T) {
			addr := fmt.Sprintf("%s:%d", host, freeWildcardPort(t))
			be := newBackend(t, echo)
			h := startProxy(t, listenerAt(oneBackendConfig(be.addr()), addr))
			renamed := strings.Replace(listenerAt(oneBackendConfig(be.addr()), addr), `name = "l"`, `name = "m"`, 1)
			if err := h.p.Apply(mustParse(t, renamed)); err != nil {
				t.Fatalf("renaming the listener on %s: %v", addr, err)
			}
			echoed(t, h.dial("m"), "served after the rename")
		})
	}
}

// Renaming a listener hands its socket to the new one through a duplicate
// fd. That must leave the running socket non-blocking, even when the
// process runs out of fds halfway: a blocking listening socket makes the
// old accept loop wait in the kernel, and closing it (later in a reload, or
// at shutdown, under the proxy's lock) wait for the next app to connect.
func TestReloadOutOfFDsLeavesListenerNonBlocking(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	addr := h.addr("l")
	renamed := mustParse(t, strings.Replace(listenerAt(oneBackendConfig(be.addr()), addr), `name = "l"`, `name = "m"`, 1))
	h.p.mu.Lock()
	ln := h.p.listeners["l"].ln
	h.p.mu.Unlock()
	nonBlocking := func() bool {
		t.Helper()
		rc, err := ln.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		nb := false
		rc.Control(func(fd uintptr) {
			fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
			nb = err == nil && fl&unix.O_NONBLOCK != 0
		})
		return nb
	}

	dropSplicePipes()
	var hoard fdHoard
	hoard.grab(t)
	hoard.release(1) // one fd free: the first dup gets it, the second fails
	err := h.p.Apply(renamed)
	hoard.free()
	if err == nil {
		t.Fatal("the reload succeeded with one fd free; the test needs it to run out halfway")
	}
	t.Logf("reload with one fd free: %v", err)
	if !nonBlocking() {
		t.Fatal("the running listener's socket was left in blocking mode")
	}
	c := h.dial("l")
	echoed(t, c, "still served")
}

// Two listeners of one file on the same address, written two ways
// ("127.0.0.1:P" and "localhost:P"), cannot start: the second bind fails.
// A reload must refuse that file too, not hand the running socket to both
// (each then takes connections from the other's queue, for its own
// backend), and leave a file that fails at the next restart.
func TestReloadRefusesTwoListenersOnOneAddress(t *testing.T) {
	one, two := newBackend(t, echo), newBackend(t, echo)
	// check refuses such a file now; the reload's own guard is tested on
	// a config changed after it was checked.
	twoOnOne := func(port string) *config.Config {
		cfg := mustParse(t, fmt.Sprintf(`
[log]
level = "warn"
[[listener]]
name = "x"
listen = "127.0.0.1:%s"
backend = "one"
[[listener]]
name = "y"
listen = "localhost:0"
backend = "two"
[[backend]]
name = "one"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
[[backend]]
name = "two"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, port, one.addr(), two.addr()))
		cfg.Listeners[1].Listen = "localhost:" + port
		return cfg
	}
	free := fmt.Sprint(freePort(t))
	fresh := New(hclog.NewNullLogger(), metrics.New(prometheus.NewRegistry(), "test"))
	startErr := fresh.Apply(twoOnOne(free))
	fresh.Shutdown(0, 0)
	if startErr == nil {
		t.Skip("this system binds both")
	}

	h := startProxy(t, oneBackendConfig(one.addr()))
	_, port, _ := net.SplitHostPort(h.addr("l"))
	if err := h.p.Apply(twoOnOne(port)); err == nil {
		t.Fatalf("a start with this file fails (%v), a reload took it: x on %v, y on %v",
			startErr, h.p.Addr("x"), h.p.Addr("y"))
	}
}

// The README's reload table: when a listener's limits change, "sessions
// already open keep what they had". An idle_timeout set by a reload applies
// to new sessions; a pooled session opened before it is not reset by it.
func TestReloadIdleTimeoutKeepsOpenSessions(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	addr := h.addr("l")
	live := h.dial("l")
	echoed(t, live, "a")
	next := ppConfig(be.addr(), `idle_timeout = "1s"`, "")
	next = strings.Replace(next, `listen = "127.0.0.1:0"`, "listen = \""+addr+"\"", 1)
	if err := h.p.Apply(mustParse(t, next)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // idle over the new limit
	if err := roundTrip(live, []byte("b")); err != nil {
		t.Fatalf("a session opened before the reload was ended by its new idle_timeout: %v (resets idle_timeout: %v)", err,
			counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "idle_timeout"))
	}
}

// A reload that changes a backend rebuilds it. A server known down stays
// down until its checks say otherwise, in the gauge and for new sessions: it started
// up, so alerts flapped and sessions dialed it for a health timeout (here a
// black hole, so the first check takes its whole timeout).
func TestReloadKeepsADownServerDown(t *testing.T) {
	good := newBackend(t, echo)
	bad := blackhole(t)
	cfg := strings.Replace(oneBackendConfig(bad, good.addr()), `check = "off"`, `check = "tcp"
  interval = "5s"
  timeout = "300ms"`, 1)
	h := startProxy(t, cfg)
	waitFor(t, 5*time.Second, "the good server up, the black-holed one down", func() bool {
		return testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", good.addr())) == 1 &&
			testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", bad)) == 0
	})
	// Servers start down: the black hole is known down (checked, not
	// only unchecked) once its first check has timed out.
	time.Sleep(600 * time.Millisecond)
	if err := h.p.Apply(mustParse(t, strings.Replace(cfg, `connect_budget = "3s"`, `connect_budget = "4s"`, 1))); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(h.m.BackendUp.WithLabelValues("b", bad)); v != 0 {
		t.Fatalf("backend_up of the down server right after the reload: %v, want 0", v)
	}
	c := h.dial("l")
	echoed(t, c, "hello")
	for _, result := range []string{"ok", "timeout", "canceled", "refused", "unreachable", "error"} {
		if n, _ := histogram(t, h.m.ConnectDuration.WithLabelValues("b", bad, result)); n != 0 {
			t.Fatalf("the first session after the reload dialed the down server (%d dial(s), result %s)", n, result)
		}
	}
}

// least_sessions after a reload that rebuilds the backend: the sessions
// still live on each server count. A has 2 live sessions, B none; a reload
// changes connect_budget only; the next sessions go to B. They went to A:
// the rebuilt servers started at 0 and the old sessions ended on the old
// ones.
func TestReloadKeepsLeastSessionsCounts(t *testing.T) {
	a, b := newServer(t, sayName("A")), newServer(t, sayName("B"))
	cfg := backendTOML(`balance = "least_sessions"
connect_budget = "3s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", a.address), fmt.Sprintf("address = %q", b.address))
	h := startProxy(t, cfg)
	open := map[string][]net.Conn{}
	t.Cleanup(func() {
		for _, l := range open {
			for _, c := range l {
				c.Close()
			}
		}
	})
	reach := func() string {
		name, conn, err := h.reached()
		if err != nil {
			t.Fatal(err)
		}
		open[name] = append(open[name], conn)
		return name
	}
	for range 4 {
		reach()
	}
	for _, c := range open["B"] {
		c.Close()
	}
	open["B"] = nil
	waitFor(t, 2*time.Second, "B's sessions ended", func() bool { return h.p.backend("b").Servers[1].Sessions() == 0 })
	if err := h.p.Apply(mustParse(t, strings.Replace(cfg, `connect_budget = "3s"`, `connect_budget = "4s"`, 1))); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if name := reach(); name != "B" {
			t.Fatalf("session %d after the reload went to %s, which had 2 live sessions, want B (none)", i+1, name)
		}
	}
}

// A reload that rebuilds a backend does not restart its health checks'
// count: with fall = 3, one failed check right after the reload leaves an
// up server up, as it does without a reload (the control). It took the
// first result of the new checks as a cold start's, so a short blip at a
// reload turned /readyz to 503 for rise checks.
func TestReloadKeepsFall(t *testing.T) {
	a := newServer(t, sayName("A"))
	cfg := backendTOML(`connect_budget = "3s"
[backend.health]
check = "tcp"
interval = "100ms"
timeout = "100ms"
rise = 2
fall = 6`, fmt.Sprintf("address = %q", a.address)) // 6: slack for a loaded machine's late wake-ups
	h := startProxy(t, cfg)
	waitFor(t, time.Second, "ready", func() bool { ok, _ := h.p.Ready(); return ok })
	wentDown := func(d time.Duration) bool {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
			if ok, _ := h.p.Ready(); !ok {
				return true
			}
		}
		return false
	}
	a.down()
	time.Sleep(150 * time.Millisecond) // one or two failed checks
	a.up()
	if wentDown(300 * time.Millisecond) {
		t.Fatal("control: a short refusal without a reload marked the server down")
	}
	a.down()
	if err := h.p.Apply(mustParse(t, strings.Replace(cfg, `connect_budget = "3s"`, `connect_budget = "4s"`, 1))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond) // the new backend's first check fails
	a.up()
	if wentDown(400 * time.Millisecond) {
		t.Fatal("after a reload, one failed check (fall = 6) marked the server down")
	}
}

// A reload that turns tnsping off drops tnsguard_oracle_listener_info for
// the backend's servers: nothing updates it any more, and it kept saying the
// old version for the life of the process. Turned on again by the next
// reload, the series comes back with the next check: the rebuilt backend
// had inherited the version string, so setVersion saw no change and never
// set the series again.
func TestReloadTnspingOffThenOnBringsTheVersionBack(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12560})
	mk := func(check string) string {
		return backendTOML(fmt.Sprintf("[backend.health]\ncheck = %q\ninterval = \"50ms\"\ntimeout = \"50ms\"", check), fmt.Sprintf("address = %q", l.Addr()))
	}
	h := startProxy(t, mk("tnsping"))
	waitFor(t, 2*time.Second, "version", func() bool { return gauge(h.m.ListenerVersion, "b", l.Addr(), "19.0.0.0.0") == 1 })
	if err := h.p.Apply(mustParse(t, listenerAt(mk("tcp"), h.addr("l")))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := testutil.CollectAndCount(h.m.ListenerVersion); n != 0 {
		t.Fatalf("tnsguard_oracle_listener_info still has %d series after tnsping was turned off", n)
	}
	if err := h.p.Apply(mustParse(t, listenerAt(mk("tnsping"), h.addr("l")))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // about ten checks
	if n := testutil.CollectAndCount(h.m.ListenerVersion); n != 1 {
		t.Fatalf("tnsguard_oracle_listener_info has %d series after tnsping was turned on again and 10 checks, want 1", n)
	}
}

// A reload that turns health checks off while a server's first check is
// still running (here a listener that never answers tnsping, so the check
// waits its 2s timeout). With checks off, servers start up and only a
// dial's result changes that (failover.New). The rebuilt server inherited
// "down" from a server no check had ever judged (it only started down),
// so /readyz stays 503 with nothing left that would ever check it.
func TestReloadChecksOffBeforeTheFirstCheck(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	mk := func(check string) string {
		return backendTOML(fmt.Sprintf("connect_budget = \"3s\"\n[backend.health]\ncheck = %q\ninterval = \"5s\"\ntimeout = \"2s\"", check), fmt.Sprintf("address = %q", l.Addr()))
	}
	h := startProxy(t, mk("tnsping"))
	if err := h.p.Apply(mustParse(t, listenerAt(mk("off"), h.addr("l")))); err != nil {
		t.Fatal(err)
	}
	// Control: the same config with checks off from the start is ready.
	fresh := startProxy(t, mk("off"))
	if ok, why := fresh.p.Ready(); !ok {
		t.Fatalf("control: %s", why)
	}
	time.Sleep(2500 * time.Millisecond) // past the old check's timeout
	if ok, why := h.p.Ready(); !ok {
		t.Fatalf("after the reload to check = \"off\": not ready (%s); the server was never checked down", why)
	}
}

// A connection accepted before a reload that renames the listener's backend,
// whose PROXY header arrives after it, is served by the new backend: the
// reload left a backend up, and nothing is wrong with the app. handle read
// the listener's config before the header wait and looked up the old
// backend's name after it: a reset counted as no_backend (found in review).
func TestHeaderAfterReloadThatRenamesTheBackend(t *testing.T) {
	be, _ := ppBackend(t, false)
	before := ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`, "")
	h := startProxy(t, before)
	c := dialFrom(t, "127.0.0.1", h.addr("l"))
	time.Sleep(100 * time.Millisecond) // handle is waiting for the header

	after := strings.Replace(strings.Replace(before, "backend = \"b\"\n", "backend = \"b2\"\n", 1),
		"[[backend]]\nname = \"b\"\n", "[[backend]]\nname = \"b2\"\n", 1)
	if after == before {
		t.Fatal("the config's backend was not renamed")
	}
	if err := h.p.Apply(mustParse(t, after)); err != nil {
		t.Fatal(err)
	}
	hdr := ppHeader(t, 1, "203.0.113.7:40000", "198.51.100.1:1521")
	got, err := exchange(c, append(hdr, "hello"...), 3*time.Second)
	if string(got) != "hello" {
		t.Fatalf("app got %q, %v; want the echo (rejected no_backend: %v)", got, err,
			counter(h.m.SessionsRejected, "l", "no_backend"))
	}
}

// README: "listener renamed ... accepted without a gap: the listening socket
// is handed over, no connection is refused". Apps connect without pause
// while reloads rename the listener and its backend together (l/b <-> m/b2,
// same address). Every connection must echo. The old listener's accept loop
// takes connections until the reload closes it; their handle looked the old
// backend's name up in the new config and reset them as no_backend (1-2 per
// reload, found in review).
func TestRenameListenerAndBackendRefusesNothing(t *testing.T) {
	renameUnderLoad(t, true)
}

// The same with the listener renamed alone (control).
func TestRenameListenerOnlyRefusesNothing(t *testing.T) {
	renameUnderLoad(t, false)
}

func renameUnderLoad(t *testing.T, backendToo bool) {
	be := newBackend(t, echo)
	addr, err := loopback.Addr()
	if err != nil {
		t.Fatal(err)
	}
	a := listenerAt(oneBackendConfig(be.addr()), addr)
	b := strings.Replace(a, `name = "l"`, `name = "m"`, 1)
	if backendToo {
		b = strings.Replace(b, `backend = "b"`, `backend = "b2"`, 1)
		b = strings.Replace(b, "[[backend]]\nname = \"b\"\n", "[[backend]]\nname = \"b2\"\n", 1)
	}
	if a == b {
		t.Fatal("no rename")
	}
	ca, cb := mustParse(t, a), mustParse(t, b)
	h := startProxy(t, a)
	ok, bad, fails := roundTripsWhileApplying(t, h, []string{addr}, 8, 100, cb, ca)
	var rej []string
	for _, s := range h.samples(t, "tnsguard_sessions_rejected_total") {
		if s.value > 0 {
			rej = append(rej, fmt.Sprintf("%v=%v", s.labels, s.value))
		}
	}
	t.Logf("ok %d, failed %d, rejected %v", ok, bad, rej)
	if bad > 0 {
		t.Errorf("%d of %d connections failed across renames: %v; rejected: %v", bad, ok+bad, fails, rej)
	}
}

// roundTripsWhileApplying runs workers apps that each connect, in a loop,
// to addrs in turn for one round trip, while cfgs are applied in turn n
// times, 5 ms apart; it returns how many round trips worked, how many
// failed, and the first failures.
func roundTripsWhileApplying(t *testing.T, h *harness, addrs []string, workers, n int, cfgs ...*config.Config) (ok, bad int64, fails []string) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var okN, badN atomic.Int64
	var mu sync.Mutex
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				addr := addrs[(w+i)%len(addrs)]
				nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err == nil {
					nc.SetDeadline(time.Now().Add(3 * time.Second))
					err = roundTrip(nc, []byte(fmt.Sprintf("w%d-i%d", w, i)))
					nc.Close()
				}
				if err != nil {
					badN.Add(1)
					mu.Lock()
					if len(fails) < 5 {
						fails = append(fails, addr+": "+err.Error())
					}
					mu.Unlock()
				} else {
					okN.Add(1)
				}
			}
		}(w)
	}
	for i := range n {
		if err := h.p.Apply(cfgs[i%len(cfgs)]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	return okN.Load(), badN.Load(), fails
}

// An app connects to a listener that routes by service and, before its
// CONNECT (SERVICE_NAME=SALES) arrives, a reload renames the SALES route's
// backend (sales-db -> sales-db2, route updated, same server). The app must
// reach the SALES server, not the "*" route's database: routing looked the
// admission-time route up in the new config, found nothing, and kept the
// default (found in review).
func TestRouteAcrossReloadThatRenamesTheRoutesBackend(t *testing.T) {
	sales, orders := newServer(t, sayName("S")), newServer(t, sayName("O"))
	before := routesConfig(sales.address, orders.address)
	after := strings.Replace(strings.Replace(before, `"sales" = "sales-db"`, `"sales" = "sales-db2"`, 1),
		"name = \"sales-db\"\n", "name = \"sales-db2\"\n", 1)
	if after == before {
		t.Fatal("no rename")
	}
	h := startProxy(t, before)
	connect, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))`)
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	time.Sleep(100 * time.Millisecond) // admitted, routing waits for the CONNECT
	if err := h.p.Apply(mustParse(t, after)); err != nil {
		t.Fatal(err)
	}
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := make([]byte, 1)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "S" {
		t.Fatalf("app got %q, %v; want the SALES server's answer (S), not the default route's (O)", got, err)
	}
}

// An Oracle client that gives up while its CONNECT waits for a server (its
// own connect timeout: it closes) is not re-dialed for: the rest of the
// budget went into dials for no one, and the database, once back, got the
// CONNECT and the FIN, a server process for an app that had gone. A
// non-Oracle opening with a half-close is still carried
// (TestReplayCarriesHalfClose).
func TestOracleClientThatGaveUpIsNotRedialedFor(t *testing.T) {
	srv, h, c := connectWhileRefused(t, "5s", "50ms", "100ms")
	time.Sleep(300 * time.Millisecond)
	closed := time.Now()
	c.Close() // the app's connect timeout
	waitFor(t, 2*time.Second, "the session's end", func() bool { return len(h.p.liveSessions()) == 0 })
	took := time.Since(closed)
	srv.up()
	time.Sleep(300 * time.Millisecond)
	if n := srv.accepts(); n != 0 {
		t.Errorf("the server, back %v after the app left, took %d connections for it", took, n)
	}
	if took > time.Second {
		t.Errorf("the session went on %v after its app left (backoff_max 100ms)", took)
	}
	if v := counter(h.m.SessionsRejected, "l", "no_backend"); v != 0 {
		t.Errorf("rejected{no_backend} = %v for an app that had gone", v)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); v != 1 {
		t.Errorf("sessions_total{outcome=ok} = %v, want 1: an app that left is an ordinary end", v)
	}
}

// The same app closing during the pause between two rounds, which is most
// of a re-dialing session's time, with the database back before the pause
// ends: the dial after the pause went out, and the database got the
// CONNECT and the FIN.
func TestOracleClientThatGaveUpInThePauseIsNotDialedFor(t *testing.T) {
	srv, h, c := connectWhileRefused(t, "10s", "1s", "1s")
	time.Sleep(100 * time.Millisecond) // the first dial was refused: the session is in its 0.5-1 s pause
	c.Close()                          // the app's connect timeout
	time.Sleep(50 * time.Millisecond)
	srv.up() // the database is back before the pause ends
	waitFor(t, 3*time.Second, "the session's end", func() bool { return len(h.p.liveSessions()) == 0 })
	time.Sleep(200 * time.Millisecond)
	if n := srv.accepts(); n != 0 {
		t.Errorf("the database took %d connection(s) for an app that had closed before it came back", n)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); v != 1 {
		t.Errorf("sessions_total{outcome=ok} = %v, want 1", v)
	}
}

// The database moved while its old address is down: an app's connection
// waits in tnsguard, re-dialing the old address, when a reload points the
// backend at the new one. The waiting connection reaches the new address;
// until 2026-11-30 it dialed the old one until its budget ended, and the
// app got a REFUSE (ORA-12541) with the new address up.
func TestReloadReachesASessionWaitingForAServer(t *testing.T) {
	_, h, c := connectWhileRefused(t, "10s", "50ms", "200ms")
	waitFor(t, 5*time.Second, "a re-dial of the old address", func() bool {
		return counter(h.m.Redials, "l", "b", "connect") >= 1
	})
	moved := newBackend(t, echo)
	if err := h.p.Apply(mustParse(t, backendTOML(`connect_timeout = "300ms"
connect_budget = "10s"
backoff = "50ms"
backoff_max = "200ms"
[backend.health]
check = "off"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q", moved.addr())))); err != nil {
		t.Fatal(err)
	}
	reachedTheNewAddress(t, c, moved)
}

// reachedTheNewAddress checks that the app's connection c, waiting for a
// server when a reload pointed its backend at moved (an echo), gets its
// CONNECT back from there, and that moved took that one connection.
func reachedTheNewAddress(t *testing.T, c net.Conn, moved *backendServer) {
	t.Helper()
	reloaded := time.Now()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil {
		t.Fatalf("the app's connection, waiting at the reload: %v", err)
	}
	if pkt.Type != tns.TypeConnect {
		t.Fatalf("the app got a %v %v after the reload, want its CONNECT echoed by the new address", pkt.Type, time.Since(reloaded).Round(time.Millisecond))
	}
	if n := len(moved.accepted()); n != 1 {
		t.Fatalf("the new address took %d connections, want 1", n)
	}
}

// A session waiting out the pause between two rounds when the reload comes
// dials the new address when the pause ends, not the old one once more:
// an old host that is down (dials time out) cost the session another
// connect_timeout, and with less than that left of its budget the app got
// ORA-12170 with the new address up (until 2026-11-30).
func TestReloadInThePauseDialsTheNewAddressNext(t *testing.T) {
	body := `connect_timeout = "2s"
connect_budget = "4s"
backoff = "1s"
backoff_max = "1s"
[backend.health]
check = "off"
[backend.breaker]
failures = 0`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q", blackhole(t))))
	connect, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=ORDERS)))`)
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	// The first dial times out after 2s; the pause after it is 0.5-1s.
	waitFor(t, 5*time.Second, "the first dial of the old address timed out", func() bool {
		return !h.p.backend("b").Servers[0].Up()
	})
	moved := newBackend(t, echo)
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q", moved.addr())))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil {
		t.Fatalf("the app's connection, in the pause at the reload: %v", err)
	}
	if pkt.Type != tns.TypeConnect {
		t.Fatalf("the app got a %v, want its CONNECT echoed by the new address (1s of its budget left after the pause)", pkt.Type)
	}
}

// The reload that points the backend at the database's new address may
// also rename the listener (its socket handed over), move it to another
// port, or drop it: the connections it already accepted, waiting in
// tnsguard, are still the backend's, and reach the new address as those of
// a listener the reload kept do. Until 2026-11-30 they dialed the old
// address until their budget ended, and their apps got ORA-12541 with the
// new address up.
func TestReloadReachesAWaitingSessionWhoseListenerChanged(t *testing.T) {
	for _, tt := range []struct {
		name   string
		change func(cfg, addr string) string
	}{
		{"renamed", func(cfg, addr string) string {
			return strings.Replace(listenerAt(cfg, addr), `name = "l"`, `name = "m"`, 1)
		}},
		{"moved to another address", func(cfg, _ string) string { return listenerAt(cfg, "127.0.0.2:0") }},
		{"removed", func(cfg, _ string) string { return strings.Replace(cfg, `name = "l"`, `name = "m"`, 1) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, h, c := connectWhileRefused(t, "10s", "50ms", "200ms")
			waitFor(t, 5*time.Second, "a re-dial of the old address", func() bool {
				return counter(h.m.Redials, "l", "b", "connect") >= 1
			})
			moved := newBackend(t, echo)
			cfg := tt.change(backendTOML(`connect_timeout = "300ms"
connect_budget = "10s"
backoff = "50ms"
backoff_max = "200ms"
[backend.health]
check = "off"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q", moved.addr())), h.addr("l"))
			if err := h.p.Apply(mustParse(t, cfg)); err != nil {
				t.Fatal(err)
			}
			reachedTheNewAddress(t, c, moved)
		})
	}
}

// max_sessions counts the sessions of a listening socket. A reload that
// only renames the listener hands the socket over; the sessions admitted
// under the old name stopped counting, and the renamed listener let in
// max_sessions more (a review saw 35 sessions on a listener of 30). Their
// ends free the renamed listener's slots.
func TestRenameKeepsMaxSessionsCount(t *testing.T) {
	limitHoldsAcrossReload(t, func(base, addr string) (string, string, string) {
		return strings.Replace(listenerAt(base, addr), `name = "l"`, `name = "m"`, 1), "m", addr
	})
}

// limitHoldsAcrossReload fills a listener of max_sessions = 2, applies the
// config that change makes of it (with the listener's name and address
// after it), and checks that a 3rd session there is refused and counted,
// and that a slot an old session frees takes a new one.
func limitHoldsAcrossReload(t *testing.T, change func(base, addr string) (string, string, string)) {
	t.Helper()
	be := newBackend(t, echo)
	base := strings.Replace(oneBackendConfig(be.addr()), `backend = "b"`, "backend = \"b\"\nmax_sessions = 2", 1)
	h := startProxy(t, base)
	var old []*net.TCPConn
	for range 2 {
		c := h.dial("l")
		echoed(t, c, "under the limit")
		old = append(old, c)
	}
	cfg, name, addr := change(base, h.addr("l"))
	if err := h.p.Apply(mustParse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr) // the reset may come before connect returns
	if err == nil {
		_, err = readErr(c, 2*time.Second)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a 3rd session on listener %q at %s with max_sessions = 2 and 2 open: %v, want a reset", name, addr, err)
	}
	waitFor(t, 2*time.Second, "the rejection", func() bool {
		return counter(h.m.SessionsRejected, name, "max_sessions") == 1
	})
	old[0].Close()
	waitFor(t, 2*time.Second, "a slot freed by a session from before the reload", func() bool {
		return len(h.p.liveSessions()) == 1
	})
	echoed(t, h.dial(name), "a slot freed")
}

// connectWhileRefused sends an Oracle CONNECT through a proxy whose only
// server refuses (a listener restarting; checks and breaker off), with the
// given budget and backoff: the session is re-dialing.
func connectWhileRefused(t *testing.T, budget, backoff, backoffMax string) (*server, *harness, *net.TCPConn) {
	t.Helper()
	srv := newServer(t, echo)
	srv.down()
	h := startProxy(t, backendTOML(fmt.Sprintf(`connect_timeout = "300ms"
connect_budget = %q
backoff = %q
backoff_max = %q
[backend.health]
check = "off"
[backend.breaker]
failures = 0`, budget, backoff, backoffMax), fmt.Sprintf("address = %q", srv.address)))
	pkt, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=ORDERS)))`)
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	return srv, h, c
}

// A reload that only re-spells a listener's address (0.0.0.0:port for
// :port) keeps its socket; the log said "stopped accepting" of it while it
// went on accepting. A renamed listener says what became of it.
func TestReloadThatKeepsTheSocketSaysSo(t *testing.T) {
	port := freeWildcardPort(t)
	be := newBackend(t, echo)
	h, logs := startProxyLog(t, listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf("0.0.0.0:%d", port)))
	if err := h.p.Apply(mustParse(t, listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf(":%d", port)))); err != nil {
		t.Fatal(err)
	}
	echoed(t, h.dial("l"), "served after the address was re-spelled")
	if n := len(logs.lines("stopped accepting")); n != 0 {
		t.Errorf("%d \"stopped accepting\" lines for a listener that accepts on; log:\n%s", n, logs)
	}
	renamed := strings.Replace(listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf(":%d", port)), `name = "l"`, `name = "m"`, 1)
	if err := h.p.Apply(mustParse(t, renamed)); err != nil {
		t.Fatal(err)
	}
	echoed(t, h.dial("m"), "served after the rename")
	if n := len(logs.lines("renamed: its socket and sessions go on", "listener=l", "as=m")); n != 1 {
		t.Errorf("%d rename lines; log:\n%s", n, logs)
	}
}

// A reload that changes keepalive reaches the sessions already open, live
// or dormant, on both legs: pooled sessions live for days, and the usual
// reason to change keepalive is a firewall that forgets sooner than
// thought (the advice of tnsguard probe, pasted and reloaded). Until
// 2026-11-30 they kept the values they began with, so each was cut by that
// firewall once more after the fix (TestLabReloadedKeepaliveReachesOpenSessions
// shows it through a real firewall). A session of a backend that the
// reload removed keeps its database leg's.
func TestReloadKeepaliveReachesOpenSessions(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	addr := h.addr("l")
	asLoaded := func(client, backend keepalive.Settings) string {
		cfg := strings.Replace(oneBackendConfig(be.addr()), `listen = "127.0.0.1:0"
backend`, "listen = \""+addr+"\"\nbackend", 1)
		for _, r := range []struct {
			table string
			ka    keepalive.Settings
		}{{"listener", client}, {"backend", backend}} {
			old := map[string]string{"listener": "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"\n",
				"backend": "  idle = \"11s\"\n  interval = \"2s\"\n  count = 4\n  user_timeout = \"19s\"\n"}[r.table]
			cfg = strings.Replace(cfg, old, fmt.Sprintf("  idle = %q\n  interval = %q\n  count = %d\n  user_timeout = %q\n",
				r.ka.Idle, r.ka.Interval, r.ka.Count, r.ka.UserTimeout), 1)
		}
		return cfg
	}
	was := [2]keepalive.Settings{
		{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second},
		{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second},
	}

	dormant := h.dial("l")
	echoed(t, dormant, "a")
	ds := sessionOf(t, h.p, dormant)
	waitFor(t, 3*time.Second, "the session dormant", ds.isDormant)
	legSettings(t, ds, was[0], was[1])
	first := [2]keepalive.Settings{
		{Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3, UserTimeout: 13 * time.Second},
		{Idle: 4 * time.Second, Interval: time.Second, Count: 2, UserTimeout: 9 * time.Second},
	}
	if err := h.p.Apply(mustParse(t, asLoaded(first[0], first[1]))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, ds, first[0], first[1])
	echoed(t, dormant, "b") // and it still works

	live := h.dial("l")
	echoed(t, live, "c")
	ls := sessionOf(t, h.p, live)
	second := [2]keepalive.Settings{
		{Idle: 9 * time.Second, Interval: 4 * time.Second, Count: 6, UserTimeout: 29 * time.Second},
		{Idle: 13 * time.Second, Interval: 3 * time.Second, Count: 2, UserTimeout: 23 * time.Second},
	}
	if err := h.p.Apply(mustParse(t, asLoaded(second[0], second[1]))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, ls, second[0], second[1])
	legSettings(t, ds, second[0], second[1])

	// The backend renamed: its sessions keep their database leg's keepalive.
	renamed := strings.ReplaceAll(asLoaded(was[0], was[1]), `"b"`, `"b2"`)
	if err := h.p.Apply(mustParse(t, renamed)); err != nil {
		t.Fatal(err)
	}
	legSettings(t, ls, was[0], second[1])
	echoed(t, live, "d")
}

// A connection whose PROXY header is still awaited when a reload changes
// its listener's keepalive becomes a session of the new config (handle
// reads it again), and its app leg must carry the new keepalive too: the
// socket got the old one when it was accepted, retuneSessions does not see
// it (not yet a session), and the session's ka says the new one, so no
// later reload with the same values sets it either.
func TestReloadDuringProxyHeaderWaitSetsTheNewKeepalive(t *testing.T) {
	for _, respell := range []bool{false, true} { // the same listener, or an heir with the socket
		t.Run(fmt.Sprintf("respelled=%v", respell), func(t *testing.T) {
			be := newBackend(t, echo)
			listenerKeys := `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "3s"`
			h := startProxy(t, ppConfig(be.addr(), listenerKeys, ""))
			addr := h.addr("l")
			c := dialFrom(t, "127.0.0.1", addr)
			time.Sleep(100 * time.Millisecond) // accepted, its header awaited

			newKA := keepalive.Settings{Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3, UserTimeout: 13 * time.Second}
			cfg := ppConfig(be.addr(), listenerKeys, "")
			if respell {
				cfg = strings.Replace(cfg, "listen = \"127.0.0.1:0\"\nbackend", "listen = \""+addr+"\"\nbackend", 1)
			}
			cfg = strings.Replace(cfg, "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"\n",
				"  idle = \"5s\"\n  interval = \"2s\"\n  count = 3\n  user_timeout = \"13s\"\n", 1)
			if err := h.p.Apply(mustParse(t, cfg)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(ppHeader(t, 2, c.LocalAddr().String(), addr)); err != nil {
				t.Fatal(err)
			}
			echoed(t, c, "a")
			s := sessionOf(t, h.p, c)
			legSettings(t, s, newKA, keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})
		})
	}
}

// A connection whose handshake completed before a reload changed its
// listener's keepalive, but that handle reads the config of after it (in
// the accept queue, or its goroutine waiting on p.mu while Apply runs, as
// in a reconnect storm during a reload), inherited the old idle, interval
// and count from the listening socket; ApplyAccepted sets only the user
// timeout. Its session must still get the new values on the socket.
func TestReloadWhileAcceptedSetsTheNewKeepalive(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"\n",
		"  idle = \"5s\"\n  interval = \"2s\"\n  count = 3\n  user_timeout = \"13s\"\n", 1)
	parsed := mustParse(t, cfg)
	addr := h.addr("l")
	h.p.mu.Lock() // Apply, then the new connection's handle, wait for it in that order
	applied := make(chan error, 1)
	go func() { applied <- h.p.Apply(parsed) }()
	time.Sleep(50 * time.Millisecond)
	c := dialFrom(t, "127.0.0.1", addr) // its handshake completes now, under the old listening socket's options
	time.Sleep(50 * time.Millisecond)
	h.p.mu.Unlock()
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	echoed(t, c, "a")
	s := sessionOf(t, h.p, c)
	legSettings(t, s, keepalive.Settings{Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3, UserTimeout: 13 * time.Second},
		keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})
}

// Retuning the open sessions' keepalive runs after the reload let go of
// the lock that accepts take: with tens of thousands of sessions it takes
// hundreds of milliseconds, and until 2026-11-30 every new connection
// waited for it. Here one session's retune is held up for as long as the
// test likes (its lock held); a new app is served meanwhile.
func TestReloadRetuningDoesNotHoldAccepts(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	addr := h.addr("l")
	held := h.dial("l")
	echoed(t, held, "a")
	s := sessionOf(t, h.p, held)

	next := strings.Replace(strings.Replace(oneBackendConfig(be.addr()), `listen = "127.0.0.1:0"`, "listen = \""+addr+"\"", 1),
		"  idle = \"7s\"\n", "  idle = \"8s\"\n", 1)
	h.p.mu.Lock()
	l := h.p.listeners["l"]
	h.p.mu.Unlock()
	s.mu.Lock()
	applied := make(chan error, 1)
	go func() { applied <- h.p.Apply(mustParse(t, next)) }()
	// The reload is in place (the listener has the new config) and its
	// retune waits for the held session.
	waitFor(t, 3*time.Second, "the reload in place", func() bool { return l.cfg().Keepalive.Settings().Idle == 8*time.Second })
	served := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		served <- roundTrip(c, []byte("new app"))
	}()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("a new app during the retune: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Error("a new app waited for the reload's retune")
	}
	select {
	case err := <-applied:
		t.Fatalf("the reload ended with a session's retune held up: %v", err)
	default:
	}
	s.mu.Unlock()
	if err := <-applied; err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, keepalive.Settings{Idle: 8 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second},
		keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})
	echoed(t, held, "b")
}

// A reload whose listen address is taken by this process's own socket (the
// README's limit: a listener moved to an address that overlaps the one it
// is bound to, or onto the admin listener's) does not blame "another
// process": the operator looking for one finds only tnsguard in `ss -ltnp`.
// The error names what holds the address.
func TestReloadOntoItsOwnSocketSaysWhatHoldsIt(t *testing.T) {
	port := freeWildcardPort(t)
	be := newBackend(t, echo)
	h := startProxy(t, listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf("127.0.0.1:%d", port)))
	err := h.p.Apply(mustParse(t, listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf("0.0.0.0:%d", port))))
	if err == nil {
		t.Fatal("moving the listener from 127.0.0.1 to 0.0.0.0 on one port succeeded in one reload")
	}
	if want := fmt.Sprintf(`listener "l" of the running configuration listens on 127.0.0.1:%d`, port); !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "another process") {
		t.Errorf("moving onto an overlapping address of its own: %v\nwant it to hold %q and not blame another process", err, want)
	}

	adm, err := net.Listen("tcp", "127.0.0.1:0") // the admin listener, which a reload does not move
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	h.p.AlsoListens("the admin listener", adm.Addr())
	err = h.p.Apply(mustParse(t, listenerAt(oneBackendConfig(be.addr()), adm.Addr().String())))
	if want := fmt.Sprintf("the admin listener of this process listens on %s", adm.Addr()); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "another process") {
		t.Errorf("moving onto the admin listener's address: %v\nwant it to hold %q and not blame another process", err, want)
	}
}

// A listener whose address a reload changes (its name stays: a new port,
// or a move in two steps onto an address that overlaps its own) is the
// same listener to its user: the sessions it accepted on the old address
// must get its keepalive when this reload or a later one changes it, as
// the sessions of a renamed listener do. They kept the values they were
// accepted with, for the life of the pooled session.
func TestReloadKeepaliveFollowsAListenerThatMoved(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	echoed(t, c, "a")
	s := sessionOf(t, h.p, c)
	db := keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second}
	legSettings(t, s, keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second}, db)

	moved := listenerAt(oneBackendConfig(be.addr()), fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	withKA := func(idle, interval string, count int, ut string) string {
		return strings.Replace(moved, "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"\n",
			fmt.Sprintf("  idle = %q\n  interval = %q\n  count = %d\n  user_timeout = %q\n", idle, interval, count, ut), 1)
	}
	// Moved and retuned in one reload.
	if err := h.p.Apply(mustParse(t, withKA("5s", "2s", 3, "13s"))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, keepalive.Settings{Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3, UserTimeout: 13 * time.Second}, db)
	// And a later reload on the new address only.
	if err := h.p.Apply(mustParse(t, withKA("4s", "1s", 2, "9s"))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, keepalive.Settings{Idle: 4 * time.Second, Interval: time.Second, Count: 2, UserTimeout: 9 * time.Second}, db)
	echoed(t, c, "b")
}

// The sessions a listener admitted on its old address count against its
// max_sessions on the new one, as through a rename: a listener at its
// limit that moved to a new port let in max_sessions more, twice the
// limit under one name.
func TestMovedListenerKeepsMaxSessionsCount(t *testing.T) {
	limitHoldsAcrossReload(t, func(base, _ string) (string, string, string) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return listenerAt(base, addr), "l", addr
	})
}

// least_sessions across two reloads: one takes server A out, the next puts
// it back, while A's sessions still live (an operator who took the wrong
// server out and undoes it, or drains A for a while and returns it). A
// and B have 2 live sessions each; the next 2 sessions are to go one to
// each. They both went to A: the A the second reload built counted from 0,
// and A's live sessions ended on the A of the first configuration.
func TestReloadThatPutsAServerBackKeepsItsLeastSessionsCount(t *testing.T) {
	a, b := newServer(t, sayName("A")), newServer(t, sayName("B"))
	cfg := backendTOML(`balance = "least_sessions"
connect_budget = "3s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", a.address), fmt.Sprintf("address = %q", b.address))
	without := backendTOML(`balance = "least_sessions"
connect_budget = "3s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", b.address))
	h := startProxy(t, cfg)
	var open []net.Conn
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	reach := func() string {
		name, conn, err := h.reached()
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, conn)
		return name
	}
	got := map[string]int{}
	for range 4 {
		got[reach()]++
	}
	if got["A"] != 2 || got["B"] != 2 {
		t.Fatalf("before the reloads: %v, want 2 on each", got)
	}
	for _, c := range []string{without, cfg} {
		if err := h.p.Apply(mustParse(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	got = map[string]int{}
	for range 2 {
		got[reach()]++
	}
	if got["A"] != 1 || got["B"] != 1 {
		t.Fatalf("after A was taken out and put back, with 2 live sessions on each: the next 2 sessions went %v, want 1 to each (A counted %d live sessions)",
			got, h.p.backend("b").Servers[0].Sessions())
	}
}

// lspec is one listener of listenersConfig: on backend "b", with its
// address, max_sessions (0: none) and keepalive idle.
type lspec struct {
	name, addr string
	max        int
	idle       string
}

// listenersConfig is oneBackendConfig with the listeners ls instead of "l".
func listenersConfig(be string, ls ...lspec) string {
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "[[listener]]\nname = %q\nlisten = %q\nbackend = \"b\"\nmax_sessions = %d\n  [listener.keepalive]\n  idle = %q\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"\n",
			l.name, l.addr, l.max, l.idle)
	}
	base := oneBackendConfig(be)
	return base[:strings.Index(base, "[[listener]]")] + b.String() + base[strings.Index(base, "[[backend]]"):]
}

// appKA is the app leg's keepalive of listenersConfig with that idle.
func appKA(idle time.Duration) keepalive.Settings {
	return keepalive.Settings{Idle: idle, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second}
}

var dbKA = keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second}

// atLimit checks that a new connection to addr is reset and counted as
// over listener name's max_sessions (the n-th such rejection).
func atLimit(t *testing.T, h *harness, name, addr string, n float64) {
	t.Helper()
	c, err := net.Dial("tcp", addr) // the reset may come before connect returns
	if err == nil {
		_, err = readErr(c, 2*time.Second)
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a session over listener %q's max_sessions at %s: %v, want a reset", name, addr, err)
	}
	waitFor(t, 2*time.Second, "the rejection of "+name, func() bool {
		return counter(h.m.SessionsRejected, name, "max_sessions") == n
	})
}

// Two listeners swap addresses in one reload (l:X, m:Y -> l:Y, m:X), back
// and forth, while apps connect to both addresses in a loop: each socket
// is handed to the listener that takes its address, so no connect is
// refused and no connection in the accept queues is lost.
func TestSwapListenersRefusesNothing(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ab := mustParse(t, listenersConfig(be.addr(), lspec{"l", x, 0, "7s"}, lspec{"m", y, 0, "9s"}))
	ba := mustParse(t, listenersConfig(be.addr(), lspec{"l", y, 0, "7s"}, lspec{"m", x, 0, "9s"}))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 0, "7s"}, lspec{"m", y, 0, "9s"}))
	ok, bad, fails := roundTripsWhileApplying(t, h, []string{x, y}, 6, 60, ba, ab)
	t.Logf("ok %d, failed %d", ok, bad)
	if bad > 0 {
		t.Errorf("%d of %d connections failed across swaps: %v", bad, ok+bad, fails)
	}
	if ok == 0 {
		t.Error("no connection was served")
	}
}

// Two listeners that swap addresses stay themselves: each one's sessions
// count against its own max_sessions and follow its own keepalive,
// whichever socket they came in on. They went with the socket: after
// l:X, m:Y -> l:Y, m:X an app of m at X was refused for l's session, l
// let one more in at Y, and l's session got m's keepalive.
func TestSwapListenersKeepsEachOnesSessions(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 1, "7s"}, lspec{"m", y, 1, "9s"}))
	c := h.dial("l")
	echoed(t, c, "before the swap")
	s := sessionOf(t, h.p, c)
	legSettings(t, s, appKA(7*time.Second), dbKA)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"l", y, 1, "5s"}, lspec{"m", x, 1, "9s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, appKA(5*time.Second), dbKA) // l's new keepalive, not m's
	atLimit(t, h, "l", y, 1)                      // l's session counts against l
	echoed(t, h.dial("m"), "m has a free slot at x")
	echoed(t, c, "after the swap")
}

// A listener that moves onto the address of one the same reload removes
// takes that socket over (no refusal there), but its sessions stay its
// own: they count against its max_sessions and follow its keepalive. They
// were dropped: the mover took the removed listener's counts instead, let
// in max_sessions more, and its sessions kept the keepalive they had.
func TestMoveOntoARemovedListenersAddressKeepsItsOwnSessions(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 1, "7s"}, lspec{"m", y, 1, "9s"}))
	cl, cm := h.dial("l"), h.dial("m")
	echoed(t, cl, "l's")
	echoed(t, cm, "m's")
	sm := sessionOf(t, h.p, cm)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"m", x, 1, "5s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, sm, appKA(5*time.Second), dbKA)
	atLimit(t, h, "m", x, 1)
	cm.Close()
	waitFor(t, 2*time.Second, "m's session to end", func() bool { return len(h.p.liveSessions()) == 1 })
	echoed(t, h.dial("m"), "the slot m's session freed")
	echoed(t, cl, "the removed listener's session goes on")
}

// A listener removed by one reload and put back by a later one, while
// its sessions live (the two-step way onto an address that overlaps its
// own, or an operator undoing a removal), is the same listener: its
// sessions count against its max_sessions again and get its keepalive.
// They stayed those of the removed listener: uncounted (one more let in),
// with the keepalive they had.
func TestListenerPutBackKeepsItsSessions(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 1, "7s"}, lspec{"m", y, 0, "9s"}))
	c := h.dial("l")
	echoed(t, c, "before")
	s := sessionOf(t, h.p, c)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"m", y, 0, "9s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, appKA(7*time.Second), dbKA) // a removed listener's: as they were
	z := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, back := range []string{x, z} { // on its address, or another one
		if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"m", y, 0, "9s"}))); err != nil {
			t.Fatal(err)
		}
		if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"l", back, 1, "5s"}, lspec{"m", y, 0, "9s"}))); err != nil {
			t.Fatal(err)
		}
		legSettings(t, s, appKA(5*time.Second), dbKA)
		atLimit(t, h, "l", back, map[string]float64{x: 1, z: 2}[back])
	}
	echoed(t, c, "after")
	c.Close()
	waitFor(t, 2*time.Second, "the session to end", func() bool { return len(h.p.liveSessions()) == 0 })
	echoed(t, h.dial("l"), "the slot it freed")
}

// A renamed listener's idle (dormant) session survives the rename, counts
// against the new name's max_sessions and gets its keepalive.
func TestRenameRetunesAnIdleSession(t *testing.T) {
	be := newBackend(t, echo)
	x := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 1, "7s"}))
	c := h.dial("l")
	echoed(t, c, "before")
	s := sessionOf(t, h.p, c)
	waitFor(t, 3*time.Second, "the session dormant", s.isDormant)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"n", x, 1, "5s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, appKA(5*time.Second), dbKA)
	atLimit(t, h, "n", x, 1)
	echoed(t, c, "after")
}

// A connection that a listener accepted before a reload removed it, and
// that is admitted after that reload (it waited for its PROXY header, or
// for the reload's lock), is one of the removed listener's sessions: a
// reload that puts the listener back gives it back too. It was dropped
// when the listener had no other session at its removal: the listener put
// back let in one more than its max_sessions, and the session kept its
// keepalive.
func TestListenerPutBackTakesASessionAdmittedAfterItsRemoval(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := func(ls ...lspec) *config.Config {
		return mustParse(t, strings.Replace(listenersConfig(be.addr(), ls...), "name = \"l\"\n",
			"name = \"l\"\nproxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n", 1))
	}
	header := func(port int) []byte { return []byte(fmt.Sprintf("PROXY TCP4 10.0.0.1 10.0.0.2 %d 1521\r\n", port)) }
	h := startProxy(t, listenersConfig(be.addr(), lspec{"m", y, 0, "9s"}))
	if err := h.p.Apply(cfg(lspec{"l", x, 1, "7s"}, lspec{"m", y, 0, "9s"})); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", x)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h.p.mu.Lock()
	lln := h.p.listeners["l"].ln
	h.p.mu.Unlock()
	raw, err := lln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "l's accept loop to take the connection (it then waits for its header)", func() bool {
		queued := uint8(1)
		raw.Control(func(fd uintptr) {
			if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				queued = uint8(min(ti.Unacked, 1)) // a listening socket's accept queue
			}
		})
		return queued == 0
	})
	if err := h.p.Apply(cfg(lspec{"m", y, 0, "9s"})); err != nil {
		t.Fatal(err)
	}
	c.Write(header(1000))
	echoed(t, c, "admitted after l's removal")
	if err := h.p.Apply(cfg(lspec{"l", x, 1, "5s"}, lspec{"m", y, 0, "9s"})); err != nil {
		t.Fatal(err)
	}
	ss := h.p.liveSessions()
	if len(ss) != 1 {
		t.Fatalf("%d sessions, want 1", len(ss))
	}
	legSettings(t, ss[0], appKA(5*time.Second), dbKA)
	d, err := net.Dial("tcp", x)
	if err == nil {
		d.Write(header(1001))
		_, err = readErr(d, 2*time.Second)
		d.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a session over the put-back listener's max_sessions: %v, want a reset", err)
	}
	echoed(t, c, "after")
}

// A listener put back onto the address of another that the same reload
// removes takes its own sessions back, as put back anywhere else, and
// keeps them, as any listener moving onto a removed one's address does:
// they count against its max_sessions and get its keepalive; the removed
// listener's go on as a removed listener's. It took the removed
// listener's instead, as if that one had been renamed, and its own stayed
// uncounted with the keepalive they had.
func TestListenerPutBackOntoARemovedListenersAddressTakesItsOwnSessions(t *testing.T) {
	be := newBackend(t, echo)
	x, y, z := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"l", x, 1, "7s"}, lspec{"m", y, 1, "9s"}, lspec{"k", z, 0, "8s"}))
	cl, cm := h.dial("l"), h.dial("m")
	echoed(t, cl, "l's")
	echoed(t, cm, "m's")
	sl, sm := sessionOf(t, h.p, cl), sessionOf(t, h.p, cm)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"m", y, 1, "9s"}, lspec{"k", z, 0, "8s"}))); err != nil {
		t.Fatal(err)
	}
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"l", y, 1, "5s"}, lspec{"k", z, 0, "8s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, sl, appKA(5*time.Second), dbKA) // l's, put back
	legSettings(t, sm, appKA(9*time.Second), dbKA) // a removed listener's: as they were
	atLimit(t, h, "l", y, 1)
	cm.Close()
	waitFor(t, 2*time.Second, "m's session to end", func() bool { return len(h.p.liveSessions()) == 1 })
	atLimit(t, h, "l", y, 2) // m's session freed no slot of l's
	cl.Close()
	waitFor(t, 2*time.Second, "l's session to end", func() bool { return len(h.p.liveSessions()) == 0 })
	echoed(t, h.dial("l"), "the slot l's session freed")
}

// A listener removed with no session is kept one reload more (a session
// it accepted may still be on its way in), but with still none it yields
// its name to a rename: the renamed listener's sessions go on counting
// against the limits of the name and get its keepalive.
func TestRenameOntoTheNameOfAListenerRemovedEmptyKeepsItsSessions(t *testing.T) {
	be := newBackend(t, echo)
	x, y := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	h := startProxy(t, listenersConfig(be.addr(), lspec{"a", x, 1, "7s"}, lspec{"b", y, 1, "9s"}))
	c := h.dial("b")
	echoed(t, c, "b's")
	s := sessionOf(t, h.p, c)
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"b", y, 1, "9s"}))); err != nil {
		t.Fatal(err)
	}
	if err := h.p.Apply(mustParse(t, listenersConfig(be.addr(), lspec{"a", y, 1, "5s"}))); err != nil {
		t.Fatal(err)
	}
	legSettings(t, s, appKA(5*time.Second), dbKA)
	atLimit(t, h, "a", y, 1)
	echoed(t, c, "after")
}
