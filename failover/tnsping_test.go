package failover

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

func tnspingBackend(t *testing.T, health string, addrs ...string) (*Backend, *metrics.Metrics) {
	t.Helper()
	var specs []string
	for _, a := range addrs {
		specs = append(specs, `address = "`+a+`"`)
	}
	return startBackend(t, "", "  check = \"tnsping\"\n  interval = \"50ms\"\n  timeout = \"50ms\"\n  rise = 1\n  fall = 1\n"+health+"\n", specs...)
}

// startBackend runs backend "b" (with health checks) of a config whose
// [[backend]] has the keys in backendKeys, the [backend.health] table
// health and the given server specs; it stops at the test's end.
func startBackend(t *testing.T, backendKeys, health string, specs ...string) (*Backend, *metrics.Metrics) {
	t.Helper()
	return startBackendLogged(t, hclog.NewNullLogger(), backendKeys, health, specs...)
}

// startBackendLogged is startBackend with the backend's log going to log.
func startBackendLogged(t *testing.T, log hclog.Logger, backendKeys, health string, specs ...string) (*Backend, *metrics.Metrics) {
	t.Helper()
	text := "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\n" + backendKeys + "  [backend.health]\n" + health + servers(specs...)
	cfg, _, err := config.Parse([]byte(text), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	b := New(cfg.Backend("b"), log, m)
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	t.Cleanup(func() { cancel(); b.Stop() })
	return b, m
}

// checkLog is a backend's log that tells how often a server's health
// check began to fail. Each failed check drops the positive service answer
// (the listener may be restarting), so the next check that passes asks
// again: on a loaded machine a check of 50ms can time out, and that second
// question is the product's due, not a fault. With fall = 1 every run of
// failed checks logs one "health check failed".
type checkLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *checkLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *checkLog) logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: l, Level: hclog.Warn})
}

// failedRuns is how many runs of failed checks the server at addr had.
func (l *checkLog) failedRuns(addr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, "health check failed") && strings.Contains(line, "server="+addr+" ") {
			n++
		}
	}
	return n
}

func (l *checkLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serveEach listens on loopback and runs handle for every connection it
// accepts, each in a goroutine of its own, closing the connection after;
// the listener closes when the test ends.
func serveEach(t *testing.T, handle func(c net.Conn)) net.Listener {
	t.Helper()
	return serveEachAt(t, "127.0.0.1:0", handle)
}

// serveEachAt is serveEach on addr (a listener that starts again).
func serveEachAt(t *testing.T, addr string, handle func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}

// A listener that answers tnsping is up, and its version is exported; one
// that accepts TCP but resets (a dead listener behind a load balancer), or
// answers garbage, is down even though a TCP check would pass.
func TestTnspingCheck(t *testing.T) {
	alive := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, VSNNUM: 318767104})
	resets := tnstest.New(t, tnstest.Config{Mode: tnstest.Reset})
	garbage := tnstest.New(t, tnstest.Config{Mode: tnstest.Garbage, Garbage: []byte("SSH-2.0-OpenSSH\r\n")})
	b, m := tnspingBackend(t, "", alive.Addr(), resets.Addr(), garbage.Addr())
	eventually(t, "first checks", func() bool { return alive.Accepted() > 0 && resets.Accepted() > 0 && garbage.Accepted() > 0 })
	// Servers start down; the live one's first check has answered once its
	// version is known (Accepted counts the connection, not the answer).
	eventually(t, "states", func() bool {
		return b.Servers[0].ListenerVersion() != "" && b.Servers[0].Up() && !b.Servers[1].Up() && !b.Servers[2].Up()
	})
	if v := b.Servers[0].ListenerVersion(); v != "19.0.0.0.0" {
		t.Fatalf("listener version %q, want 19.0.0.0.0 (VSNNUM 318767104)", v)
	}
	if got := testutil.ToFloat64(m.ListenerVersion.WithLabelValues("b", alive.Addr(), "19.0.0.0.0")); got != 1 {
		t.Fatalf("tnsguard_oracle_listener_info = %v", got)
	}
	if got := testutil.ToFloat64(m.BackendUp.WithLabelValues("b", resets.Addr())); got != 0 {
		t.Fatalf("backend_up of a resetting listener = %v", got)
	}
	if n := testutil.CollectAndCount(m.HealthDuration); n != 1 {
		t.Fatalf("health durations observed for %d servers, want only the live one", n)
	}
}

// A listener whose REFUSE holds no text, the text in the DATA packet after
// it (a layout node-oracledb reads), answers tnsping all the same: it is up,
// with its version; asked for a service it does not have, it is down. Until
// 2026-11-30 every check of it failed ("REFUSE announces 61 bytes of data,
// holds 0"): the server was down for good and /readyz 503 with the listener
// serving.
func TestTnspingCheckOfARefuseWhoseTextFollowsInData(t *testing.T) {
	alive := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, RefuseApart: true})
	b, _ := tnspingBackend(t, "", alive.Addr())
	eventually(t, "the listener up, its version known", func() bool {
		return b.Servers[0].Up() && b.Servers[0].ListenerVersion() == "19.0.0.0.0"
	})
	has := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}, RefuseApart: true})
	lacks := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}, RefuseApart: true})
	var log checkLog
	// A timeout of 1 s: a check cut at 50 ms on a loaded machine is logged
	// as a timeout, and the outage's one line then names no ORA-12514.
	b2, _ := startBackendLogged(t, log.logger(), "", "  check = \"tnsping\"\n  interval = \"1s\"\n  timeout = \"1s\"\n  rise = 1\n  fall = 1\n"+
		"  service = \"ORDERS\"\n  service_interval = \"1h\"\n", `address = "`+has.Addr()+`"`, `address = "`+lacks.Addr()+`"`)
	// Servers start down: the second one's check may not have answered
	// yet when the first is up. Wait for its line too.
	deadline := time.Now().Add(10 * time.Second)
	for !b2.Servers[0].Up() || b2.Servers[1].Up() || !strings.Contains(log.String(), "12514") {
		if time.Now().After(deadline) {
			t.Fatalf("up %v and %v; the check of the listener without the service does not name its ORA-12514:\n%s",
				b2.Servers[0].Up(), b2.Servers[1].Up(), log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// With health.service, the listener must also have that service registered:
// a listener up but refusing ORA-12514 for it counts as down.
func TestTnspingServiceProbe(t *testing.T) {
	has := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
	lacks := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	var log checkLog
	b, _ := startBackendLogged(t, log.logger(), "", "  check = \"tnsping\"\n  interval = \"50ms\"\n  timeout = \"50ms\"\n  rise = 1\n  fall = 1\n"+
		"  service = \"ORDERS\"\n  service_interval = \"1h\"\n", `address = "`+has.Addr()+`"`, `address = "`+lacks.Addr()+`"`)
	eventually(t, "service states", func() bool { return b.Servers[0].Up() && !b.Servers[1].Up() })
	// A registered service is asked once per service_interval, not at every
	// check (each positive answer starts a server process on the database
	// host); one that is not registered is asked at every check. A check
	// that failed (a 50ms timeout on a loaded machine) drops the answer, and
	// the next one asks again: that question is due.
	asked := func(l *tnstest.Listener) int {
		n := 0
		for _, c := range l.Connects() {
			if strings.Contains(string(c), "SERVICE_NAME=ORDERS") {
				n++
			}
		}
		return n
	}
	before := asked(lacks)
	eventually(t, "three more checks of the listener without the service", func() bool { return asked(lacks) >= before+3 })
	time.Sleep(150 * time.Millisecond) // three more checks of each
	if n, failed := asked(has), log.failedRuns(has.Addr()); n < 1 || n > 1+failed {
		t.Fatalf("the listener with the service was asked %d times, with %d runs of failed checks; want once per interval, and once after each failure:\n%s", n, failed, log.String())
	}
}

// A database restart: its listener answers first, and the service registers
// later. The server is up at the next check after the service registered,
// not service_interval later (a failed probe is not kept).
func TestServiceRegisteringLaterIsUpAtTheNextCheck(t *testing.T) {
	lacks := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	has := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
	var target atomic.Value // where the one address forwards: before and after registration
	target.Store(lacks.Addr())
	ln := serveEach(t, func(c net.Conn) {
		up, err := net.Dial("tcp", target.Load().(string))
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		io.Copy(c, up)
	})
	b, _ := tnspingBackend(t, "  service = \"ORDERS\"\n  service_interval = \"1h\"", ln.Addr().String())
	eventually(t, "down while the service is not registered", func() bool { return !b.Servers[0].Up() })
	target.Store(has.Addr()) // the service registers
	registered := time.Now()
	eventually(t, "up once the service registered", b.Servers[0].Up)
	if took := time.Since(registered); took > time.Second {
		t.Fatalf("up %v after the service registered; want the next check (50ms interval)", took)
	}
}

// A listener restart (or a reboot of its host) within service_interval of
// the last positive service probe: the listener comes back before its
// database's service registers. The server must stay down until the service
// is there, as after any other restart (README: "the server counts as up only
// once the service is there"). Until now the probe's positive answer from
// before the outage was kept through the failed checks, so the first tnsping
// that passed made the server up, fail-back sent sessions to it, and with the
// default retry_on their apps got ORA-12514 until the service registered.
func TestServiceAskedAgainAfterTheListenerWasDown(t *testing.T) {
	lacks := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	has := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
	var target atomic.Value // where the front forwards: the listener with or without the service
	target.Store(has.Addr())
	forward := func(c net.Conn) {
		up, err := net.Dial("tcp", target.Load().(string))
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, c)
		io.Copy(c, up)
	}
	// Outside the ephemeral range: the same port is listened on again below,
	// and a connect meanwhile (a check's of this one, another process's)
	// could take a freed port of that range as its own.
	ln := serveEachAt(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), forward)
	addr := ln.Addr().String()
	b, _ := tnspingBackend(t, "  service = \"ORDERS\"\n  service_interval = \"1h\"", addr)
	eventually(t, "up with the service registered", b.Servers[0].Up)

	ln.Close() // the listener stops: dials are refused
	eventually(t, "down while the listener is stopped", func() bool { return !b.Servers[0].Up() })
	target.Store(lacks.Addr()) // it starts again, before the service registers
	serveEachAt(t, addr, forward)
	eventually(t, "the listener answering again", func() bool { return lacks.Accepted() > 0 })
	time.Sleep(300 * time.Millisecond) // six checks of 50ms
	if b.Servers[0].Up() {
		t.Fatal("up after the listener restarted, with its service not registered: the probe's answer from before the restart was kept")
	}
	target.Store(has.Addr()) // the service registers
	eventually(t, "up once the service registered", b.Servers[0].Up)
}

// A database starting up (NOMOUNT, MOUNT) or in restricted mode has its
// service registered, but the listener refuses every session for it with
// ORA-12528 (blocking) or ORA-12526 (restricted); one out of processes
// refuses with ORA-12519. health.service is what keeps fail-back away from
// a server that cannot take the service's sessions yet, so such a server is
// down, as one whose service is not registered is: until the fix it was up,
// and with the default retry_on every app sent back to it got the REFUSE
// (go-ora ORA-12528, node-oracledb NJS-511) while the standby was healthy.
// A refusal that is no "cannot take the session now" (ORA-12618, versions
// incompatible) still counts as registered.
func TestServiceRefusingEverySessionIsDown(t *testing.T) {
	blocked := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
	restricted := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526})
	full := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12519})
	other := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12618})
	b, _ := tnspingBackend(t, "  service = \"ORDERS\"\n  service_interval = \"1h\"", blocked.Addr(), restricted.Addr(), full.Addr(), other.Addr())
	eventually(t, "the service probed on every server", func() bool {
		for _, l := range []*tnstest.Listener{blocked, restricted, full, other} {
			if len(l.Connects()) < 2 {
				return false
			}
		}
		return true
	})
	eventually(t, "the listener with the service and a refusal of another kind up", b.Servers[3].Up)
	time.Sleep(200 * time.Millisecond) // four checks of 50ms
	for i, code := range []int{12528, 12526, 12519} {
		if b.Servers[i].Up() {
			t.Errorf("a server whose listener refuses every session for the service with ORA-%d is up: fail-back sends the apps to it", code)
		}
	}
}

// The service probe runs on a connection of its own; to a server that
// expects PROXY headers it opens with a LOCAL header too, or a downstream
// tnsguard or HAProxy refuses it and the server counts as down.
func TestServiceProbeSendsLocalProxyHeader(t *testing.T) {
	db := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
	var missing atomic.Int32 // connections that came without a LOCAL header
	ln := serveEach(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if h, err := proxyproto.Read(br); err != nil || h.Command != proxyproto.LOCAL {
			missing.Add(1)
			return // what a downstream proxy does: refuse it
		}
		up, err := net.Dial("tcp", db.Addr())
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(up, br)
		io.Copy(c, up)
	})
	b, m := startBackend(t, "send_proxy_protocol = \"v2\"\n",
		"  check = \"tnsping\"\n  interval = \"200ms\"\n  timeout = \"200ms\"\n  rise = 1\n  fall = 1\n  service = \"ORDERS\"\n  service_interval = \"1h\"\n",
		`address = "`+ln.Addr().String()+`"`)
	eventually(t, "the service asked for through the proxy", func() bool {
		for _, c := range db.Connects() {
			if strings.Contains(string(c), "SERVICE_NAME=ORDERS") {
				return true
			}
		}
		return false
	})
	// A passed check (its duration observed, the server up) is the proof.
	eventually(t, "a passed check", func() bool {
		return testutil.CollectAndCount(m.HealthDuration) == 1 && b.Servers[0].Up()
	})
	if n := missing.Load(); n != 0 {
		t.Fatalf("%d connections came without a LOCAL header", n)
	}
}

// A health check to a server that expects PROXY headers opens with a LOCAL
// header, so the downstream proxy accepts it; the check still runs after it.
func TestHealthCheckSendsLocalProxyHeader(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan *proxyproto.Header, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				h, _ := proxyproto.Read(bufio.NewReader(c))
				got <- h
			}()
			startBackend(t, "send_proxy_protocol = \""+version+"\"\n", "  check = \"tcp\"\n  interval = \"1h\"\n",
				`address = "`+ln.Addr().String()+`"`)
			select {
			case h := <-got:
				if h == nil || h.Command != proxyproto.LOCAL {
					t.Fatalf("server read %+v, want a LOCAL header", h)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no health check arrived")
			}
		})
	}
}

// A reload that rebuilds the backend (here a changed connect_budget) keeps
// the listener's positive answer about health.service: it is asked again
// after service_interval, as without the reload. Every reload asked every
// server at once, and each positive answer starts a server process on the
// database host.
func TestReloadKeepsTheServiceAnswer(t *testing.T) {
	has := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
	health := "  check = \"tnsping\"\n  interval = \"50ms\"\n  timeout = \"50ms\"\n  rise = 1\n  fall = 1\n  service = \"ORDERS\"\n  service_interval = \"1h\"\n"
	var log checkLog // a failed check drops the answer (TestTnspingServiceProbe)
	b, _ := startBackendLogged(t, log.logger(), "", health, `address = "`+has.Addr()+`"`)
	asked := func() int {
		n := 0
		for _, c := range has.Connects() {
			if strings.Contains(string(c), "SERVICE_NAME=ORDERS") {
				n++
			}
		}
		return n
	}
	eventually(t, "up, the service asked", func() bool { return b.Servers[0].Up() && asked() >= 1 })

	text := "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nconnect_budget = \"30s\"\n  [backend.health]\n" + health + servers(`address = "`+has.Addr()+`"`)
	cfg, _, err := config.Parse([]byte(text), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	nb := New(cfg.Backend("b"), log.logger(), metrics.New(prometheus.NewRegistry(), "test"))
	nb.Inherit(b)
	ctx, cancel := context.WithCancel(context.Background())
	nb.Start(ctx)
	t.Cleanup(func() { cancel(); nb.Stop() })
	time.Sleep(300 * time.Millisecond) // six checks of the rebuilt backend
	if !nb.Servers[0].Up() {
		// A check that failed just now (its line follows), or the rebuild.
		eventually(t, "the failed check that took the rebuilt backend's server down", func() bool { return log.failedRuns(has.Addr()) > 0 })
	}
	n := asked() // before the failures: each question after one comes after its line
	if failed := log.failedRuns(has.Addr()); n > 1+failed {
		t.Errorf("the listener was asked about the service %d times, with %d runs of failed checks; want once (service_interval 1h, across the reload), and once after each failure:\n%s", n, failed, log.String())
	}
}

// A server that is down says "health check failed" once, not again when
// its failures reach fall, nor after every reload: until 2026-11-30 a
// server down at start was logged twice, and once more after each reload
// that rebuilt its backend, as if it had failed anew.
func TestDownServerIsLoggedOnceAcrossAReload(t *testing.T) {
	down := tnstest.New(t, tnstest.Config{Mode: tnstest.Reset})
	health := "  check = \"tnsping\"\n  interval = \"20ms\"\n  timeout = \"20ms\"\n  rise = 1\n  fall = 2\n"
	var log checkLog
	spec := `address = "` + down.Addr() + `"`
	b, _ := startBackendLogged(t, log.logger(), "", health, spec)
	// A check begins after the one before it was judged and logged: with
	// fall+2 begun, fall+1 are done.
	checks := func(n int) func() bool { return func() bool { return len(down.Connects()) >= n } }
	eventually(t, "four checks at start", checks(4))
	if n := log.failedRuns(down.Addr()); n != 1 {
		t.Fatalf("a server down from the start: %d \"health check failed\" lines, want 1:\n%s", n, log.String())
	}

	cfg, _, err := config.Parse([]byte("[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nconnect_budget = \"30s\"\n  [backend.health]\n"+health+servers(spec)), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	nb := New(cfg.Backend("b"), log.logger(), metrics.New(prometheus.NewRegistry(), "test"))
	nb.Inherit(b)
	b.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	nb.Start(ctx)
	t.Cleanup(func() { cancel(); nb.Stop() })
	eventually(t, "four checks after the reload", checks(len(down.Connects())+4))
	if nb.Servers[0].Up() {
		t.Fatal("the server is up after the reload; its checks all fail")
	}
	if n := log.failedRuns(down.Addr()); n != 1 {
		t.Fatalf("a server down before and after a reload: %d \"health check failed\" lines, want 1:\n%s", n, log.String())
	}
}
