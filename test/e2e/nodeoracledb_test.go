package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// nodeResult is what testdata/node-oracledb/connect.js prints: one
// node-oracledb getConnection, as an app's pool opens a connection.
type nodeResult struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Cause   string `json:"cause"` // the lines of the message after the first (node-oracledb's "Cause: ORA-...")
	MS      int    `json:"ms"`
}

// nodeConnect runs node-oracledb (thin mode: pure JavaScript, the driver's
// own CONNECT bytes) against connectString. The driver's modules come from
// `make deps` (npm ci in testdata/node-oracledb); without them the test is
// skipped, or fails under CI.
func nodeConnect(t *testing.T, connectString string) nodeResult {
	t.Helper()
	return nodeConnectWithin(t, connectString, "15")
}

// nodeConnectWithin is nodeConnect with the driver's connectTimeout (in
// seconds), after which it gives up with NJS-510 and closes.
func nodeConnectWithin(t *testing.T, connectString, connectTimeout string) nodeResult {
	t.Helper()
	node := requireTool(t, "node")
	dir, err := filepath.Abs(filepath.Join("testdata", "node-oracledb"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oracledb")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node-oracledb is not installed in %s; CI must run make deps", dir)
		}
		t.Skipf("SKIPPED: node-oracledb is not installed: run make deps (npm ci in %s); set CI=1 to make this a failure", dir)
	}
	cmd := exec.Command(node, filepath.Join(dir, "connect.js"), connectString, connectTimeout)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node connect.js: %v\n%s", err, out)
	}
	var r nodeResult
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil {
		t.Fatalf("node connect.js printed %q: %v", out, err)
	}
	return r
}

// reachedDatabase tells a node-oracledb attempt that got past the listener:
// the fake listeners accept, then echo, so the driver fails on its own
// Advanced Networking Option packet coming back (NJS-531). That is as far
// as a session goes without an Oracle server; a listener's refusal or a
// broken connection shows up as other codes (NJS-511, NJS-518, NJS-500,
// NJS-501, ...).
func reachedDatabase(r nodeResult) bool { return r.Code == "NJS-531" }

// oracleGuard starts tnsguard with listener "l" in front of backend "db"
// (the servers in order of preference, and backendKeys); it returns the
// instance and the address apps connect to.
func oracleGuard(t *testing.T, backendKeys string, servers ...string) (*instance, string) {
	t.Helper()
	admin, addr := freeAddr(t), freeAddr(t)
	g := start(t, admin, config(admin, "",
		[]listenerConf{{name: "l", listen: addr, backend: "db"}},
		[]backendConf{{name: "db", servers: servers, extra: backendKeys}}), true)
	return g, addr
}

// node-oracledb, the driver of Node.js apps (knex's "oracledb" client sits
// on it), through tnsguard in front of fake listeners built from captured
// packets. Each case is what an app on a pool would notice during a
// switchover or a listener restart.
func TestNodeOracledbThroughTnsguard(t *testing.T) {
	backendKeys := `balance = "priority"
retry_on = ["connect", "reset", "refuse"]
backoff = "50ms"
backoff_max = "200ms"`

	// The service moved: the preferred listener refuses with ORA-12514 (not
	// registered), the standby accepts. Direct, the app gets NJS-518;
	// through tnsguard it reaches the standby, which gets the driver's
	// CONNECT byte for byte.
	t.Run("switchover", func(t *testing.T) {
		preferred := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
		standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		if r := nodeConnect(t, preferred.Addr()+"/SALES"); r.Code != "NJS-518" {
			t.Fatalf("direct to the refusing listener: %+v; want NJS-518 (service not registered)", r)
		}
		g, addr := oracleGuard(t, backendKeys, preferred.Addr(), standby.Addr())
		r := nodeConnect(t, addr+"/SALES")
		if !reachedDatabase(r) {
			t.Fatalf("through tnsguard: %+v; want the standby to have accepted (NJS-531 from the echoing fake)", r)
		}
		a, b := preferred.Connects(), standby.Connects()
		if len(a) != 2 || len(b) != 1 {
			t.Fatalf("CONNECTs: preferred %d (want 2: direct and through tnsguard), standby %d (want 1)", len(a), len(b))
		}
		if !bytes.Equal(a[1], b[0]) {
			t.Fatalf("the standby got another CONNECT than the refusing listener:\n%x\n%x", a[1], b[0])
		}
		info, err := tns.ParseConnectData(b[0])
		if err != nil || info.Description.ServiceName() != "SALES" {
			t.Fatalf("node-oracledb's CONNECT read as service %q, %v", info.Description.ServiceName(), err)
		}
		waitFor(t, 3*time.Second, "the redial counted", func() bool {
			v, _ := g.metricOK("tnsguard_redials_total", "listener", "l", "backend", "db", "reason", "refuse")
			return v == 1
		})
	})

	// The same switchover, with the preferred listener's REFUSE holding no
	// text and its text in the DATA packet after it: node-oracledb reads that
	// layout (NJS-518 directly). Until 2026-11-30 tnsguard took it for an
	// answer that is not TNS and passed it on: the app got NJS-518 with the
	// standby serving, and nothing was counted.
	t.Run("switchover, REFUSE text in a DATA packet", func(t *testing.T) {
		preferred := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514, RefuseApart: true})
		standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		if r := nodeConnect(t, preferred.Addr()+"/SALES"); r.Code != "NJS-518" {
			t.Fatalf("direct to the refusing listener: %+v; want NJS-518 (service not registered)", r)
		}
		g, addr := oracleGuard(t, backendKeys, preferred.Addr(), standby.Addr())
		if r := nodeConnect(t, addr+"/SALES"); !reachedDatabase(r) {
			t.Fatalf("through tnsguard: %+v; want the standby to have accepted (NJS-531 from the echoing fake)", r)
		}
		a, b := preferred.Connects(), standby.Connects()
		if len(a) != 2 || len(b) != 1 || !bytes.Equal(a[1], b[0]) {
			t.Fatalf("CONNECTs: preferred %d (want 2: direct and through tnsguard), standby %d (want 1, the same bytes)", len(a), len(b))
		}
		waitFor(t, 3*time.Second, "the redial counted", func() bool {
			v, _ := g.metricOK("tnsguard_redials_total", "listener", "l", "backend", "db", "reason", "refuse")
			return v == 1
		})
	})

	// The service moved while the app's pool kept opening connections, with
	// retry_on as the defaults have it and with "refuse": tnsguard remembers
	// the old primary's ORA-12514, so the pool's next connection goes to the
	// standby without dialing it. Without "refuse" only the first connection
	// meets NJS-518 (the refusal passed on is remembered too); with it, none
	// does. Without that memory each of them got NJS-518 with the default
	// retry_on, and each dialed the old primary first with "refuse". (A knex
	// pool, 100 queries 300 ms apart, open_for 10s: 3 got NJS-518, after 0,
	// 10 and 30 s, as the memory ran out and doubled; with "refuse" none,
	// and the old primary got 3 CONNECTs.)
	for _, tc := range []struct {
		name, retryOn, first string
	}{
		{"switchover remembered, default retry_on", `["connect", "reset"]`, "NJS-518"},
		{"switchover remembered, refuse in retry_on", `["connect", "reset", "refuse"]`, "NJS-531"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			preferred := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
			standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
			// open_for (the memory's time) well above three node starts
			// under load (require('oracledb') alone took 4.4 s at load 13).
			keys := "retry_on = " + tc.retryOn + "\n[backend.breaker]\nopen_for = \"2m\""
			admin, addr := freeAddr(t), freeAddr(t)
			conf := config(admin, "",
				[]listenerConf{{name: "l", listen: addr, backend: "db"}},
				[]backendConf{{name: "db", servers: []string{preferred.Addr(), standby.Addr()}, extra: keys}})
			// The standby after the old primary for every session (servers
			// of one priority take turns): only the memory sends a
			// connection to the standby first.
			standbyLine := "address = \"" + standby.Addr() + "\"\n"
			conf = strings.Replace(conf, standbyLine, standbyLine+"  priority = 1\n", 1)
			g := start(t, admin, conf, true)
			if r := nodeConnect(t, addr+"/SALES"); r.Code != tc.first {
				t.Fatalf("first connection after the switchover: %+v; want %s", r, tc.first)
			}
			if n := len(preferred.Connects()); n != 1 {
				t.Fatalf("the old primary got %d CONNECTs from the first connection, want 1", n)
			}
			for i := range 2 {
				if r := nodeConnect(t, addr+"/SALES"); !reachedDatabase(r) {
					t.Fatalf("connection %d after the switchover: %+v; want the standby to have accepted, the old primary's refusal remembered", i+2, r)
				}
			}
			if n := len(preferred.Connects()); n != 1 {
				t.Fatalf("the old primary got %d CONNECTs in all, want 1: later connections still asked it first", n)
			}
			if n := len(standby.Connects()); n != 2+strings.Count(tc.retryOn, "refuse") {
				t.Fatalf("the standby got %d CONNECTs", n)
			}
			const line = "server refused service: new sessions for it try this server last"
			waitFor(t, 5*time.Second, "the refusal logged", func() bool { return len(g.log.find(line)) > 0 })
			if n := len(g.log.find(line)); n != 1 {
				t.Fatalf("%d %q lines, want 1: once per server and service", n, line)
			}
		})
	}

	// A listener that accepts and never answers (a hung listener process, a
	// load balancer forwarding into a black hole) is first, a standby that
	// serves is second. The app waits answer_timeout (connect.js gives the
	// driver 15 s; by default node-oracledb has no connect timeout, and knex
	// passes none), then gets the standby's answer. Before answer_timeout it waited connect_budget
	// and got NJS-511 naming ORA-12170, until `failures` apps had, which
	// opened the hung server's circuit.
	t.Run("hung listener then standby", func(t *testing.T) {
		hung := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
		standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		g, addr := oracleGuard(t, backendKeys+"\nanswer_timeout = \"1s\"", hung.Addr(), standby.Addr())
		r := nodeConnect(t, addr+"/SALES")
		if !reachedDatabase(r) {
			t.Fatalf("through tnsguard: %+v; want the standby to have accepted once answer_timeout (1s) passed, within the 3s connect_budget", r)
		}
		if r.MS < 1000 {
			t.Fatalf("the app got the standby's answer after %d ms: the hung listener was not waited on for answer_timeout", r.MS)
		}
		a, b := hung.Connects(), standby.Connects()
		if len(a) != 1 || len(b) != 1 || !bytes.Equal(a[0], b[0]) {
			t.Fatalf("CONNECTs: hung listener %d, standby %d; want one each, the same bytes", len(a), len(b))
		}
		waitFor(t, 3*time.Second, "the redial counted", func() bool {
			v, _ := g.metricOK("tnsguard_redials_total", "listener", "l", "backend", "db", "reason", "timeout")
			return v == 1
		})
	})

	// The same hung listener, with the driver's connectTimeout (3 s, as
	// knex's connect_timeout=3) shorter than answer_timeout (5 s, the
	// default): each app gives up first
	// (NJS-510), before tnsguard would leave the hung listener. Each
	// session counts as abandoned, and, as the listener held the CONNECT
	// silent for over 2 s with the standby up, as its failure: after
	// failures = 2 the next app gets the standby at once. Until 2026-12-01
	// every such app failed, each session counted ok, and the circuit never
	// opened (knex with connect_timeout=3: 8 of 8 NJS-510).
	t.Run("app gives up on a hung listener before its answer timeout", func(t *testing.T) {
		hung := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
		standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		admin, addr := freeAddr(t), freeAddr(t)
		cfg := config(admin, "",
			[]listenerConf{{name: "l", listen: addr, backend: "db"}},
			[]backendConf{{name: "db", servers: []string{hung.Addr(), standby.Addr()}, extra: backendKeys + "\n[backend.breaker]\nfailures = 2"}})
		// answer_timeout is 5 s (the default), under the budget; the
		// standby is one (priority 1), not the hung listener's equal.
		cfg = strings.NewReplacer(`connect_budget = "3s"`, `connect_budget = "10s"`,
			fmt.Sprintf("address = %q", standby.Addr()), fmt.Sprintf("address = %q\n  priority = 1", standby.Addr())).Replace(cfg)
		g := start(t, admin, cfg, true)
		for i := range 2 {
			if r := nodeConnectWithin(t, addr+"/SALES", "3"); r.Code != "NJS-510" {
				t.Fatalf("app %d through tnsguard: %+v; want NJS-510 (its own connect timeout) from the hung listener", i+1, r)
			}
		}
		waitFor(t, 3*time.Second, "the sessions counted abandoned", func() bool {
			v, _ := g.metricOK("tnsguard_sessions_total", "listener", "l", "backend", "db", "outcome", "abandoned")
			return v == 2
		})
		if v, _ := g.metricOK("tnsguard_sessions_total", "listener", "l", "backend", "db", "outcome", "ok"); v != 0 {
			t.Errorf("sessions_total{outcome=ok} = %v for apps that gave up, want 0", v)
		}
		r := nodeConnectWithin(t, addr+"/SALES", "3")
		if !reachedDatabase(r) {
			t.Fatalf("the app after two gave up: %+v; want the standby (the hung listener's circuit open)", r)
		}
		if r.MS > 1000 {
			t.Errorf("the standby's answer took %d ms, want at once", r.MS)
		}
		if a, b := len(hung.Connects()), len(standby.Connects()); a != 2 || b != 1 {
			t.Errorf("CONNECTs: hung listener %d, standby %d; want 2 and 1", a, b)
		}
	})

	// No server has the service until the budget ends: the app gets the
	// very error it gets without tnsguard (the last REFUSE, unchanged), not
	// a broken connection.
	t.Run("every server refuses", func(t *testing.T) {
		l1 := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
		l2 := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
		_, addr := oracleGuard(t, backendKeys, l1.Addr(), l2.Addr())
		direct := nodeConnect(t, l1.Addr()+"/ORDERS")
		r := nodeConnect(t, addr+"/ORDERS")
		if r.Code != direct.Code || r.Code != "NJS-518" || !strings.Contains(r.Message, `"ORDERS"`) {
			t.Fatalf("through tnsguard: %+v; direct: %+v; want the same NJS-518 naming ORDERS", r, direct)
		}
		if r.MS < 2500 || r.MS > 6000 {
			t.Fatalf("the app got the refusal after %d ms; want it at the end of the 3s connect_budget", r.MS)
		}
		if n := len(l1.Connects()) + len(l2.Connects()); n < 4 {
			t.Fatalf("%d CONNECTs reached the listeners: tnsguard did not keep trying", n)
		}
	})

	// Every server is down (nothing listens on their ports). Direct, the
	// driver reports the refused connection at once; through tnsguard,
	// after the budget, it reports a REFUSE naming ORA-12541 (no listener):
	// not NJS-500, the broken connection app teams take for a firewall.
	t.Run("no server listening", func(t *testing.T) {
		admin, addr := freeAddr(t), freeAddr(t)
		start(t, admin, config(admin, "",
			[]listenerConf{{name: "l", listen: addr, backend: "db"}},
			[]backendConf{{name: "db", servers: []string{freeAddr(t), freeAddr(t)}, extra: backendKeys}}), false) // never ready: no server is up
		r := nodeConnect(t, addr+"/SALES")
		if r.Code != "NJS-511" || !strings.Contains(r.Cause, "ORA-12541") {
			t.Fatalf("through tnsguard: %+v; want NJS-511 naming ORA-12541", r)
		}
		if r.MS < 2500 || r.MS > 6000 {
			t.Fatalf("the app got the REFUSE after %d ms; want it at the end of the 3s connect_budget", r.MS)
		}
	})

	// A listener restarting resets new connections after reading their
	// CONNECT: tnsguard replays the driver's opening on the next server.
	t.Run("listener resets", func(t *testing.T) {
		restarting := tnstest.New(t, tnstest.Config{Mode: tnstest.Reset})
		other := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		g, addr := oracleGuard(t, backendKeys, restarting.Addr(), other.Addr())
		r := nodeConnect(t, addr+"/SALES")
		if !reachedDatabase(r) {
			t.Fatalf("through tnsguard: %+v; want the second server to have accepted", r)
		}
		a, b := restarting.Connects(), other.Connects()
		if len(a) != 1 || len(b) != 1 || !bytes.Equal(a[0], b[0]) {
			t.Fatalf("CONNECTs: resetting listener %d, next %d; want one each, the same bytes", len(a), len(b))
		}
		waitFor(t, 3*time.Second, "the redial counted", func() bool {
			v, _ := g.metricOK("tnsguard_redials_total", "listener", "l", "backend", "db", "reason", "reset")
			return v == 1
		})
	})

	// The database moved while its old host is down: the app's pool is
	// opening a connection (tnsguard re-dials the old address within
	// connect_budget) when a reload points the backend at the new host.
	// That connection reaches the new host: it is not failed with ORA-12541
	// at the end of the budget by a server the running config no longer has.
	t.Run("reload while the app waits", func(t *testing.T) {
		moved := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		admin, addr, gone := freeAddr(t), freeAddr(t), freeAddr(t)
		conf := func(server string) string {
			return strings.Replace(config(admin, "",
				[]listenerConf{{name: "l", listen: addr, backend: "db"}},
				[]backendConf{{name: "db", servers: []string{server}, extra: backendKeys}}),
				`connect_budget = "3s"`, `connect_budget = "10s"`, 1)
		}
		g := start(t, admin, conf(gone), false) // never ready: its one server is down
		// Reload once tnsguard has re-dialed the old address for the app.
		// Off the test's goroutine: no t.Fatal there. Its limit includes
		// node's start (require('oracledb') took 4.4 s at load 13, more
		// at load 25: 8 s ran out before the app had connected); the
		// app's own wait is connect_budget, from its connection on.
		reloaded := make(chan error, 1)
		appDone := make(chan struct{})
		appEnded := sync.OnceFunc(func() { close(appDone) })
		defer appEnded() // nodeConnect's t.Fatal too
		go func() {
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				select {
				case <-appDone:
					reloaded <- errors.New("the app's connection ended before tnsguard re-dialed the old address")
					return
				default:
				}
				if _, body := g.get("/metrics"); strings.Contains(body, `tnsguard_redials_total{backend="db",listener="l",reason="connect"}`) {
					if err := os.WriteFile(g.path, []byte(conf(moved.Addr())), 0o600); err != nil {
						reloaded <- err
						return
					}
					reloaded <- g.cmd.Process.Signal(syscall.SIGHUP)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			reloaded <- errors.New("no re-dial of the old address within 60s")
		}()
		r := nodeConnect(t, addr+"/SALES")
		appEnded()
		if err := <-reloaded; err != nil {
			t.Fatal(err)
		}
		if !reachedDatabase(r) {
			t.Fatalf("through tnsguard, reloaded onto the new host while connecting: %+v; want the new host to have accepted (NJS-531 from the echoing fake)", r)
		}
		if n := len(moved.Connects()); n != 1 {
			t.Fatalf("the new host got %d CONNECTs, want 1", n)
		}
	})

	// routes pick the backend from the service in the driver's CONNECT (its
	// connect data is long: it comes in a DATA packet after the CONNECT).
	t.Run("route by service", func(t *testing.T) {
		sales := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
		orders := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"ORDERS"}})
		admin, addr := freeAddr(t), freeAddr(t)
		start(t, admin, config(admin, "",
			[]listenerConf{{name: "l", listen: addr, backend: "orders-db",
				extra: `routes = { "sales" = "sales-db", "*" = "orders-db" }`}},
			[]backendConf{{name: "sales-db", servers: []string{sales.Addr()}}, {name: "orders-db", servers: []string{orders.Addr()}}}), true)
		for _, svc := range []string{"SALES", "ORDERS"} {
			if r := nodeConnect(t, addr+"/"+svc); !reachedDatabase(r) {
				t.Fatalf("service %s: %+v; want it routed to the listener that has it", svc, r)
			}
		}
		if len(sales.Connects()) != 1 || len(orders.Connects()) != 1 {
			t.Fatalf("CONNECTs: sales %d, orders %d; want one each", len(sales.Connects()), len(orders.Connects()))
		}
	})

	// A RAC SCAN listener answers REDIRECT to a node listener, with the
	// connect data to send there. Direct, node-oracledb dials the node
	// itself; with redirect = "follow" tnsguard does, and the node gets
	// byte for byte the CONNECT that node-oracledb itself sends it (Oracle's
	// own driver: the same fields, flag 0x04, the reconnect data), while the
	// app stays on tnsguard.
	t.Run("SCAN redirect followed", func(t *testing.T) {
		node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		reconnect := "(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=127.0.0.1)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)))"
		scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: reconnect})
		if r := nodeConnect(t, scan.Addr()+"/SALES"); !reachedDatabase(r) {
			t.Fatalf("direct through the REDIRECT: %+v; want the node to have accepted", r)
		}
		g, addr := oracleGuard(t, backendKeys+"\nredirect = \"follow\"", scan.Addr())
		if r := nodeConnect(t, addr+"/SALES"); !reachedDatabase(r) {
			t.Fatalf("through tnsguard: %+v; want the node to have accepted", r)
		}
		got := node.Connects()
		if len(got) != 2 {
			t.Fatalf("the node got %d CONNECTs, want 2 (the driver's, then tnsguard's)", len(got))
		}
		if !bytes.Equal(got[0], got[1]) {
			t.Fatalf("tnsguard sent the node another CONNECT than node-oracledb does after a REDIRECT:\ndriver:   %x\ntnsguard: %x", got[0], got[1])
		}
		waitFor(t, 3*time.Second, "the followed REDIRECT counted", func() bool {
			v, _ := g.metricOK("tnsguard_tns_redirects_followed_total", "listener", "l", "backend", "db", "server", scan.Addr())
			return v == 1
		})
	})
}
