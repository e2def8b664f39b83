package lab

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// A database that this host's own NAT hides behind one of the host's
// addresses, on the port that tnsguard listens on at every address: kube-proxy
// in IPVS mode puts every ClusterIP on the node's kube-ipvs0, so a tnsguard
// with hostNetwork: true on 0.0.0.0:1521 whose server is a Service's
// ClusterIP:1521 has just that; here an iptables OUTPUT DNAT in tnsguard's
// namespace sends its own address's port 1521 to the database in db. Both
// addresses of such a dial are the host's and its port is a listener's,
// and until 2026-11-30 tnsguard took it for a dial of itself: every app
// reset as self_dial, the database never dialed, and every health check
// failed undialed (tnsguard_backend_up 0, /readyz 503). Now the kernel is
// asked whether the dial reached a socket of this host.

// natToDB makes tnsguard's namespace (app) send connections to its own
// address's port to the database in db, as kube-proxy's IPVS does a
// ClusterIP's, and returns how to remove that rule.
func natToDB(t *testing.T, lab *netlab.Lab, port int) (remove func()) {
	t.Helper()
	rule := []string{"OUTPUT", "-p", "tcp", "-d", lab.AppIP.String(), "--dport", fmt.Sprint(port),
		"-j", "DNAT", "--to-destination", lab.DBAddr(port)}
	lab.IPTables(t, lab.App, append([]string{"-t", "nat", "-A"}, rule...)...)
	return func() { lab.IPTables(t, lab.App, append([]string{"-t", "nat", "-D"}, rule...)...) }
}

// appServedThroughNAT connects an app to tnsguard (on loopback, which the
// NAT leaves alone) and asserts that the database in db answers it.
func appServedThroughNAT(t *testing.T, lab *netlab.Lab, guard *netlab.Tnsguard, db *netlab.Proc, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := lab.Dial(ctx, lab.App, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("app: dial tnsguard: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second); err != nil {
		m := guard.Metrics(t)
		t.Fatalf("app behind a server that the host's NAT sends to the database: %v, want the database's answer\n%s",
			err, m.Dump("tnsguard_sessions_rejected_total", "tnsguard_sessions_total", "tnsguard_backend_up"))
	}
	if ev, ok := db.Next("accept", 5*time.Second); !ok {
		t.Errorf("the database in db saw no connection (NAT not in force?)")
	} else {
		t.Logf("database accepted %s", ev.Remote)
	}
	if v, _ := guard.Metrics(t).Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v != 0 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v, want 0: no loop, NAT sent the dial to the database", v)
	}
}

// With health checks off: what the sessions do.
func TestLabServerBehindTheHostsOwnNATIsNoLoop(t *testing.T) {
	t.Parallel()
	const port = 1521
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	db := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	natToDB(t, lab, port)
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", port),
		Servers: []string{lab.AppAddr(port)}, Health: "off", ConnectBudget: "3s"})
	for range 3 {
		appServedThroughNAT(t, lab, guard, db, port)
	}
}

// With health checks on: the server is up and tnsguard ready; and when the
// NAT rule goes, the same address is tnsguard itself again, and is found
// to be: the app is reset as a self_dial, the server goes down.
func TestLabHealthCheckBehindTheHostsOwnNAT(t *testing.T) {
	t.Parallel()
	const port = 1521
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	db := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	remove := natToDB(t, lab, port)
	server := lab.AppAddr(port)
	up := netlab.Labels{"backend": "orders", "server": server}
	// startGuard waits for /readyz 200: until 2026-11-30 it never came.
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", port),
		Servers: []string{server}, HealthInterval: "200ms", ConnectBudget: "3s"})
	if v, _ := guard.Metrics(t).Sum("tnsguard_backend_up", up); v != 1 {
		t.Errorf("tnsguard_backend_up = %v for a database behind the host's NAT, want 1", v)
	}
	appServedThroughNAT(t, lab, guard, db, port)

	remove()
	m := guard.MetricsWhen(t, 15*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_backend_up", up)
		return v == 0
	})
	if v, _ := m.Sum("tnsguard_backend_up", up); v != 0 {
		t.Errorf("tnsguard_backend_up = %v for the proxy's own address with no NAT rule left, want 0", v)
	}
	if code, _, err := guard.Get("/readyz"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d %v with no server but the proxy itself, want 503", code, err)
	}
	// The checks that found the loop count none: each dialed the listener
	// as the proxy's own connection, which it resets quietly.
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v != 0 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v after the checks found the loop, no app yet: want 0, the checks count none", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The loop is found at once: the app's connect may see the reset.
	if c, err := lab.Dial(ctx, lab.App, fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		defer c.Close()
		if err := roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second); err == nil {
			t.Errorf("app answered with the server at the proxy's own address: want it reset (a loop)")
		}
	}
	m = guard.MetricsWhen(t, 5*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"})
		return v >= 1
	})
	// The app is counted. One app should be one self_dial, but the race of
	// an accept before its dial is noted counts one more at each hop it
	// wins (README: "one self_dial too many"): 2 in about 20 runs under
	// load, and 4 once in CI (2026-12-01), so the count is not exact here;
	// that the checks count none is asserted above.
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v < 1 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v for one app into a real loop, want at least 1", v)
	}
}

// A server behind the host's own NAT that resets a connection as soon as
// its handshake ends (a downstream proxy at its connection limit, a load
// balancer with no backend left, a listener's full queue with
// tcp_abort_on_overflow) is a server that failed, not a loop: the app goes
// on to the next server. Such a reset can end tnsguard's connect, as one
// of its own listeners' does when a dial loops back to it; until
// 2026-12-01 the address alone made it a loop: every app was reset as a
// self_dial with the next server up, and the operator told to check the
// server's address.
func TestLabServerBehindTheHostsOwnNATThatResetsIsNoLoop(t *testing.T) {
	t.Parallel()
	const port, next = 1521, 1522
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	db := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", next))
	natToDB(t, lab, port)
	// The handshake's last ACK (and all after it) is answered with a
	// reset, which reaches tnsguard's dial before its connect returns.
	lab.IPTables(t, lab.DB, "-A", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(port),
		"-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "REJECT", "--reject-with", "tcp-reset")
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", port),
		Servers: []string{lab.AppAddr(port), lab.DBAddr(next)}, Health: "off", ConnectBudget: "5s"})
	const apps = 30
	for i := range apps {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := lab.Dial(ctx, lab.App, fmt.Sprintf("127.0.0.1:%d", port))
		cancel()
		if err == nil {
			err = roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second)
			c.Close()
		}
		if err != nil {
			t.Errorf("app %d: %v, want the next server's answer", i, err)
		}
	}
	if _, ok := db.Next("accept", 5*time.Second); !ok {
		t.Errorf("the next server saw no connection")
	}
	m := guard.Metrics(t)
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v != 0 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v for a server behind the host's NAT that resets, want 0: no loop\n%s",
			v, m.Dump("tnsguard_sessions_rejected_total", "tnsguard_sessions_total"))
	}
}
