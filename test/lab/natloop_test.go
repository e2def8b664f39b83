package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
	"golang.org/x/sys/unix"
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

// A transparent capture without an exclusion for tnsguard itself: an
// iptables OUTPUT REDIRECT sends every connection to the database's port to
// tnsguard's listener on another port, and tnsguard's own dial of the
// database is sent there too. Its dial's address is the database's (another
// host's), and the listener sees it come from this host to its own port:
// until 2026-12-01 neither side knew it for tnsguard's own, and one app set
// off a loop that ran on by itself (5,068 sessions and about 10k fds in 2 s,
// with no self_dial). Now the listener asks the kernel for the address such a
// connection was sent to before the NAT (SO_ORIGINAL_DST), and finds its own
// dial there. The same with a DNAT to the host's own address, or to another
// address of the host than the one its dials come from.
func TestLabRedirectOfTheServersPortToTnsguardIsALoop(t *testing.T) {
	t.Parallel()
	const port, listen = 1521, 1522
	const other = "192.0.2.1" // an address of the host on lo, not the dial's
	for _, tc := range []struct {
		name string
		to   func(lab *netlab.Lab) []string // the rule's target
		at   func(lab *netlab.Lab) string   // where it sends the dial
	}{
		{"REDIRECT",
			func(*netlab.Lab) []string { return []string{"REDIRECT", "--to-ports", fmt.Sprint(listen)} },
			func(*netlab.Lab) string { return fmt.Sprintf("127.0.0.1:%d", listen) }},
		{"DNAT to the host's address",
			func(lab *netlab.Lab) []string { return []string{"DNAT", "--to-destination", lab.AppAddr(listen)} },
			func(lab *netlab.Lab) string { return lab.AppAddr(listen) }},
		{"DNAT to another address of the host",
			func(*netlab.Lab) []string {
				return []string{"DNAT", "--to-destination", fmt.Sprintf("%s:%d", other, listen)}
			},
			func(*netlab.Lab) string { return fmt.Sprintf("%s:%d", other, listen) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
			lab.Exec(t, lab.App, "ip", "addr", "add", other+"/32", "dev", "lo")
			lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
			guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", listen),
				Servers: []string{lab.DBAddr(port)}, Health: "off", ConnectBudget: "5s"})
			lab.IPTables(t, lab.App, append([]string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(port),
				"-j"}, tc.to(lab)...)...)
			redirectedIsALoop(t, lab, guard, lab.DBAddr(port), tc.at(lab))
		})
	}
}

// redirectedIsALoop connects an app captured as a transparent capture
// means to (it dials the database at server, and the host's NAT sends it
// to tnsguard at at), which tnsguard's own dial of server is too, and
// asserts that the loop is found at once.
func redirectedIsALoop(t *testing.T, lab *netlab.Lab, guard *netlab.Tnsguard, server, at string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	c, err := lab.Dial(ctx, lab.App, server)
	if err == nil {
		defer c.Close()
		err = roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second)
	}
	took := time.Since(began)
	m := guard.MetricsWhen(t, 5*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"})
		return v >= 1
	})
	dump := m.Dump("tnsguard_sessions_rejected_total", "tnsguard_sessions_total", "tnsguard_sessions_active", "process_open_fds")
	if err == nil {
		t.Fatalf("app answered through a loop back to tnsguard: want it reset\n%s", dump)
	}
	if took > time.Second {
		t.Errorf("app reset after %v (%s), want within a second: the loop found at once\n%s", took.Round(time.Millisecond), netlab.Classify(err), dump)
	}
	// Every session the loop made: those that ended, those still open.
	ended, _ := m.Sum("tnsguard_sessions_total", nil)
	active, _ := m.Sum("tnsguard_sessions_active", nil)
	if ended+active >= 10 {
		t.Errorf("%v sessions ended and %v open for one app into a loop, want fewer than 10 in all\n%s", ended, active, dump)
	}
	if fds, ok := m.Sum("process_open_fds", nil); ok && fds > 100 {
		t.Errorf("process_open_fds = %v after one app into a loop, want a few dozen at most", fds)
	}
	// One app is one self_dial but for the accept-before-note race: 2 now
	// and then, and 3 in about 1 of 16 runs under -race when the first
	// hop's reset reached the app's session late and it dialed again. The
	// loop's bound is the session count above.
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v < 1 || v > 4 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v for one app into a loop through the host's NAT, want 1 (up to 4 with the accept-before-note race)\n%s", v, dump)
	}
	t.Logf("app: %s after %v; sessions: %v ended, %v open", netlab.Classify(err), took.Round(time.Millisecond), ended, active)
	// The warning names the NAT: the server's address looks right.
	if nat := fmt.Sprintf("nat=\"%s -> %s\"", server, at); !strings.Contains(guard.Log(), "check the server's address") || !strings.Contains(guard.Log(), nat) {
		t.Errorf("no warning to check the server's address, naming %s, in the log:\n%s", nat, guard.Log())
	}
}

// The capture with the exclusion it needs, here by port (the rule sends the
// app's port, not the database's): a local app whose connection the host's
// NAT sent to tnsguard is an app, and is served, though its connection, too,
// comes from this host with another address before the NAT.
func TestLabAppSentToTnsguardByTheHostsNATIsServed(t *testing.T) {
	t.Parallel()
	const port, listen, captured = 1521, 1522, 1600
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	db := lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", listen),
		Servers: []string{lab.DBAddr(port)}, Health: "off", ConnectBudget: "5s"})
	lab.IPTables(t, lab.App, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(captured),
		"-j", "REDIRECT", "--to-ports", fmt.Sprint(listen))
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := lab.Dial(ctx, lab.App, lab.DBAddr(captured))
		cancel()
		if err == nil {
			err = roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second)
			c.Close()
		}
		if err != nil {
			t.Errorf("app %d redirected to tnsguard: %v, want the database's answer", i, err)
		}
	}
	if _, ok := db.Next("accept", 5*time.Second); !ok {
		t.Errorf("the database saw no connection")
	}
	if v, _ := guard.Metrics(t).Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v != 0 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v for apps the host's NAT sent to tnsguard, want 0", v)
	}
}

// Health checks through the same capture: a check's connection to the
// database's address is sent to the listener as the sessions' are. Until
// 2026-12-01 each check reached the listener, passed (the server up,
// /readyz 200) and set off a loop of its own; with the loop caught at its
// second hop, each check passed all the same and counted a self_dial. Now
// a check to an address that the host's NAT has lately sent to a listener
// is dialed as the proxy's own and fails when it reached this host's
// listener: the server is down and tnsguard not ready, and the apps'
// sessions are not sent round the loop. Without the rule the same check
// reaches the database and passes again.
func TestLabHealthCheckThroughTheHostsNATLoopFails(t *testing.T) {
	t.Parallel()
	const port, listen = 1521, 1522
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	server := lab.DBAddr(port)
	up := netlab.Labels{"backend": "orders", "server": server}
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", listen),
		Servers: []string{server}, HealthInterval: "200ms", ConnectBudget: "3s"})
	rule := []string{"OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(port), "-j", "REDIRECT", "--to-ports", fmt.Sprint(listen)}
	lab.IPTables(t, lab.App, append([]string{"-t", "nat", "-A"}, rule...)...)
	m := guard.MetricsWhen(t, 15*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_backend_up", up)
		return v == 0
	})
	dump := m.Dump("tnsguard_backend_up", "tnsguard_sessions_rejected_total", "tnsguard_sessions_total", "tnsguard_sessions_active", "process_open_fds")
	if v, _ := m.Sum("tnsguard_backend_up", up); v != 0 {
		t.Errorf("tnsguard_backend_up = %v with every check sent back to tnsguard's own listener, want 0\n%s", v, dump)
	}
	if code, _, err := guard.Get("/readyz"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/readyz: %d %v with the only server's address sent to tnsguard itself, want 503", code, err)
	}
	// At most the first check's connection, which turned noting on, is
	// taken for an app; the later ones are the proxy's own.
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v > 1 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v from health checks alone, want at most 1\n%s", v, dump)
	}
	if fds, ok := m.Sum("process_open_fds", nil); ok && fds > 100 {
		t.Errorf("process_open_fds = %v from health checks into a loop, want a few dozen at most", fds)
	}

	lab.IPTables(t, lab.App, append([]string{"-t", "nat", "-D"}, rule...)...)
	m = guard.MetricsWhen(t, 15*time.Second, func(m netlab.Metrics) bool {
		v, _ := m.Sum("tnsguard_backend_up", up)
		return v == 1
	})
	if v, _ := m.Sum("tnsguard_backend_up", up); v != 1 {
		t.Errorf("tnsguard_backend_up = %v after the capture rule went, want 1: the checks reach the database", v)
	}
}

// The same capture on IPv6 (ip6tables REDIRECT sends this host's own
// connections to ::1): a listener on [::] whose server is an IPv6 address
// finds the loop as it does on IPv4 (IP6T_SO_ORIGINAL_DST).
func TestLabRedirectOfTheServersIPv6PortToTnsguardIsALoop(t *testing.T) {
	t.Parallel()
	const port, listen = 1521, 1522
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	// An address and a route for the server's: the NAT takes the dial
	// before it leaves the host, so nothing need answer there.
	const self, server = "2001:2::2", "2001:2:0:1::2"
	lab.Exec(t, lab.App, "ip", "-6", "addr", "add", self+"/64", "dev", "lo", "nodad")
	lab.Exec(t, lab.App, "ip", "-6", "route", "add", "2001:2:0:1::/64", "dev", "lo", "src", self)
	srv := fmt.Sprintf("[%s]:%d", server, port)
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("[::]:%d", listen),
		Servers: []string{srv}, Health: "off", ConnectBudget: "5s"})
	lab.Exec(t, lab.App, "ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(port),
		"-j", "REDIRECT", "--to-ports", fmt.Sprint(listen))
	redirectedIsALoop(t, lab, guard, srv, fmt.Sprintf("[::1]:%d", listen))
}

// A reload that gives the captured listener another name (its backend too)
// while the capture stays: the checks of the renamed backend's server are
// still sent to the listener by the host's NAT, and must still fail. Until
// 2026-12-01 the NAT route seen before the reload kept the old listener's
// name as long as the checks kept it fresh, so no check was dialed as the
// proxy's own again: each passed (the server up, /readyz 200) and set off
// a loop of two sessions and a self_dial, at every interval, until one
// happened to be reset at its connect.
func TestLabHealthCheckThroughTheHostsNATLoopFailsAfterARename(t *testing.T) {
	t.Parallel()
	const port, listen = 1521, 1522
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	server := lab.DBAddr(port)
	orders := link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", listen),
		Servers: []string{server}, HealthInterval: "200ms", ConnectBudget: "3s"}
	guard := startGuard(t, lab, orders)
	lab.IPTables(t, lab.App, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(port),
		"-j", "REDIRECT", "--to-ports", fmt.Sprint(listen))
	selfDials := func(m netlab.Metrics) float64 {
		v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"})
		return v
	}
	m := guard.MetricsWhen(t, 15*time.Second, func(m netlab.Metrics) bool {
		v, ok := m.Sum("tnsguard_backend_up", netlab.Labels{"backend": "orders", "server": server})
		return ok && v == 0
	})
	if v, _ := m.Sum("tnsguard_backend_up", netlab.Labels{"backend": "orders", "server": server}); v != 0 {
		t.Fatalf("tnsguard_backend_up = %v before the reload, want 0 (TestLabHealthCheckThroughTheHostsNATLoopFails)", v)
	}
	sales := orders
	sales.Name = "sales"
	guard.Reload(t, guardConfig(sales))
	before := selfDials(guard.Metrics(t))
	up := netlab.Labels{"backend": "sales", "server": server}
	m = guard.MetricsWhen(t, 15*time.Second, func(m netlab.Metrics) bool {
		v, ok := m.Sum("tnsguard_backend_up", up)
		return ok && v == 0
	})
	// Then it stays down, its checks setting off no loop: watched for ten
	// check intervals (the fault showed at every one).
	for until := time.Now().Add(2 * time.Second); time.Now().Before(until); time.Sleep(100 * time.Millisecond) {
		v, _ := m.Sum("tnsguard_backend_up", up)
		if v != 0 || selfDials(m)-before > 1 {
			break
		}
		m = guard.Metrics(t)
	}
	dump := m.Dump("tnsguard_backend_up", "tnsguard_sessions_rejected_total", "tnsguard_sessions_total")
	if v, _ := m.Sum("tnsguard_backend_up", up); v != 0 {
		t.Errorf("tnsguard_backend_up = %v after the listener was renamed, with every check still sent back to it, want 0\n%s", v, dump)
	}
	if d := selfDials(m) - before; d > 1 {
		t.Errorf("%v self_dials from the health checks after the rename, want at most 1: each check passed as an app and set off a loop\n%s", d, dump)
	}
}

// The capture of the server's own port, with the exclusion it needs: the
// host's NAT sends apps' connections to the database to tnsguard, and
// tnsguard's own (sessions and health checks) to the database. Here the
// rule takes the apps' connections by a mark the apps' sockets carry
// (tnsguard and the test both run as root, so -m owner cannot tell them);
// to the kernel it is the same route as `-m owner ! --uid-owner tnsguard`.
// Every app is served, no self_dial, the server up and tnsguard ready, with
// the checks dialed as the proxy's own while the route is kept.
func TestLabCaptureOfTheServersPortWithTheExclusionIsServed(t *testing.T) {
	t.Parallel()
	const port, listen, mark = 1521, 1522, 0x2a
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", port))
	server := lab.DBAddr(port)
	guard := startGuard(t, lab, link{Name: "orders", Listen: fmt.Sprintf("0.0.0.0:%d", listen),
		Servers: []string{server}, HealthInterval: "200ms", ConnectBudget: "5s"})
	lab.IPTables(t, lab.App, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", fmt.Sprint(port),
		"-m", "mark", "--mark", fmt.Sprint(mark), "-j", "REDIRECT", "--to-ports", fmt.Sprint(listen))
	dial := func(ctx context.Context) (net.Conn, error) {
		var c net.Conn
		d := net.Dialer{KeepAlive: -1, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) }); err != nil {
				return err
			}
			return serr
		}}
		err := netlab.Do(lab.App, func() error {
			var err error
			c, err = d.DialContext(ctx, "tcp", server)
			return err
		})
		return c, err
	}
	const apps, rounds = 20, 10
	began := time.Now()
	errs := make(chan error, apps)
	for i := range apps {
		go func() {
			for r := range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := dial(ctx)
				cancel()
				if err == nil {
					err = roundTrip(c, []byte("select 1 from dual\n"), 10*time.Second)
					c.Close()
				}
				if err != nil {
					errs <- fmt.Errorf("app %d, round %d: %s: %w", i, r, netlab.Classify(err), err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range apps {
		if err := <-errs; err != nil {
			t.Errorf("%v, want the database's answer", err)
		}
	}
	// Checks ran while the route was kept: at least five intervals.
	for time.Since(began) < time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	m := guard.Metrics(t)
	dump := m.Dump("tnsguard_backend_up", "tnsguard_sessions_rejected_total", "tnsguard_sessions_total")
	if v, _ := m.Sum("tnsguard_sessions_rejected_total", netlab.Labels{"reason": "self_dial"}); v != 0 {
		t.Errorf("tnsguard_sessions_rejected_total{reason=\"self_dial\"} = %v for apps the host's NAT sent to tnsguard, want 0\n%s", v, dump)
	}
	if v, _ := m.Sum("tnsguard_backend_up", netlab.Labels{"backend": "orders", "server": server}); v != 1 {
		t.Errorf("tnsguard_backend_up = %v, want 1: the checks are not captured, and reach the database\n%s", v, dump)
	}
	if code, _, err := guard.Get("/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("/readyz: %d %v, want 200", code, err)
	}
	if strings.Contains(guard.Log(), "is listener") {
		t.Errorf("a check of the database was taken for the listener:\n%s", guard.Log())
	}
}
