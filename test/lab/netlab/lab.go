// Package netlab builds a real stateful firewall on one machine for tests: three
// network namespaces joined by veth pairs, with the Linux connection tracker in the
// middle one acting as the middlebox that forgets idle connections.
//
//	app (198.18.x.2) --veth-- fw (198.18.x.1 | 198.18.y.1) --veth-- db (198.18.y.2)
//
// The fw namespace forwards only what conntrack knows: ESTABLISHED/RELATED packets and
// new SYNs. A packet of a flow that stayed idle longer than the established timeout is
// INVALID for conntrack (nf_conntrack_tcp_loose=0) and is black-holed (StaleDrop) or
// answered with an RST (StaleReset), like a cloud load balancer or NAT gateway.
//
// Typical use, from a test in a package whose TestMain calls [RunHelper] first:
//
//	var bin = &netlab.Binary{ModDir: "../..", Pkg: "./cmd/tnsguard"}
//
//	func TestMain(m *testing.M) { netlab.RunHelper(); os.Exit(m.Run()) }
//
//	func TestIdle(t *testing.T) {
//		lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second})
//		db := lab.StartEcho(t, lab.DB, ":1521") // echo server (a process) in db
//		g := lab.StartTnsguard(t, bin.Path(t), lab.App, "127.0.0.1:9521", config)
//		conn, err := lab.Dial(ctx, lab.App, "127.0.0.1:1522") // a socket made in app
//		...
//		undo := lab.BlackHolePort(t, 1521) // cable cut for live flows to/from :1521
//		stop := lab.Netem(t, netem.Config{Queue: 1, Delay: 50 * time.Millisecond},
//			"-p", "tcp", "--dport", "1521") // delay that TCP sees
//		m := g.Metrics(t) // parsed /metrics
//		v, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend"})
//	}
//
// Processes run in a namespace with [Lab.Command] (ip netns exec). Sockets owned by the
// test process itself are made inside a namespace by [Lab.Dial], [Lab.Listen] and
// [Lab.HTTPClient] (a locked OS thread enters the namespace only for socket()); they
// keep working from any goroutine afterwards.
//
// New skips the test, loudly, when it is not root or ip/iptables are missing, except
// when CI=true: there the lab must run, so it fails instead.
//
// Everything is removed in t.Cleanup, also when the test fails: processes started
// through the Lab are killed and the namespaces (with their veths and rules) deleted.
package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Stale says what the firewall does with a packet of a connection it has forgotten.
type Stale int

const (
	// StaleDrop black-holes it silently (default iptables policy DROP).
	StaleDrop Stale = iota
	// StaleReset answers it with a TCP RST (REJECT --reject-with tcp-reset), like a
	// load balancer that resets idle flows.
	StaleReset
)

func (s Stale) String() string {
	if s == StaleReset {
		return "reset"
	}
	return "drop"
}

// Config shapes a lab. The zero value is a drop-mode firewall with a 5 s timeout.
type Config struct {
	// EstablishedTimeout is conntrack's idle timeout for established TCP flows in fw
	// (whole seconds; default 5s).
	EstablishedTimeout time.Duration
	// Stale is what fw does to packets of forgotten flows.
	Stale Stale
}

// Lab is one running topology. Its namespace names and addresses are unique per Lab, so
// labs can run in parallel tests.
type Lab struct {
	// App, FW and DB are the namespace names (use them with Command, Dial, Listen).
	App, FW, DB string
	// AppIP is app's address; FWAppIP and FWDBIP are fw's on each leg; DBIP is db's.
	AppIP, FWAppIP, FWDBIP, DBIP netip.Addr
	// Timeout is the conntrack established timeout in force.
	Timeout time.Duration

	id string
	t  testing.TB

	mu    sync.Mutex
	stale Stale
	procs []*exec.Cmd
}

// Requirements returns what is missing to run the lab here, or "" when nothing is.
func Requirements() string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces and iptables need CAP_NET_ADMIN; run the tests as root, e.g. sudo -E go test ./test/lab/)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("the %q command (apt-get install -y iptables iproute2)", tool))
		}
	}
	return strings.Join(missing, "; ")
}

// Require skips t with a loud message naming what is missing (root, ip, iptables). With
// CI=true it fails instead: CI runs as root and installs both, so a skip there would hide
// a broken lab.
func Require(t testing.TB) {
	t.Helper()
	missing := Requirements()
	if missing == "" {
		return
	}
	msg := "NETWORK LAB NOT RUN: missing " + missing
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true, so this is a failure, not a skip)")
	}
	t.Skip("\n*****\n" + msg + "\n*****")
}

// New builds the app/fw/db topology and registers its removal with t.Cleanup.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	Require(t)
	if cfg.EstablishedTimeout <= 0 {
		cfg.EstablishedTimeout = 5 * time.Second
	}
	secs := int((cfg.EstablishedTimeout + time.Second - 1) / time.Second)
	began := time.Now()

	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("netlab: random id: %v", err)
	}
	id := strconv.FormatUint(uint64(b[0])<<24|uint64(b[1])<<16|uint64(b[2])<<8|uint64(b[3]), 36)
	for len(id) < 6 {
		id = "0" + id
	}
	id = id[len(id)-6:]
	// Each lab gets its own /24s: the namespaces are separate, so the same addresses
	// would work, but distinct ones make captures and logs unambiguous.
	x := 1 + int(b[0])%126
	appNet := netip.AddrFrom4([4]byte{198, 18, byte(2 * x), 0})
	dbNet := netip.AddrFrom4([4]byte{198, 18, byte(2*x + 1), 0})
	l := &Lab{
		App:     "tl" + id + "app",
		FW:      "tl" + id + "fw",
		DB:      "tl" + id + "db",
		AppIP:   hostAddr(appNet, 2),
		FWAppIP: hostAddr(appNet, 1),
		FWDBIP:  hostAddr(dbNet, 1),
		DBIP:    hostAddr(dbNet, 2),
		Timeout: time.Duration(secs) * time.Second,
		id:      id,
		t:       t,
		stale:   cfg.Stale,
	}
	t.Cleanup(l.destroy)

	a0, f0, f1, d0 := "tl"+id+"a0", "tl"+id+"f0", "tl"+id+"f1", "tl"+id+"d0"
	// Few processes, not one per step: labs are built by tests running in parallel.
	type step struct {
		stdin string
		args  []string
	}
	lines := func(ls ...string) string { return strings.Join(ls, "\n") + "\n" }
	ipBatch := func(ns string, ls ...string) step {
		if ns == "" {
			return step{lines(ls...), []string{"ip", "-batch", "-"}}
		}
		return step{lines(ls...), []string{"ip", "-n", ns, "-batch", "-"}}
	}
	stale := ""
	if cfg.Stale == StaleReset {
		stale = strings.Join(resetRule("-A")[1:], " ")
	}
	steps := []step{
		ipBatch("",
			"netns add "+l.App, "netns add "+l.FW, "netns add "+l.DB,
			"link add "+a0+" type veth peer name "+f0,
			"link set "+a0+" netns "+l.App, "link set "+f0+" netns "+l.FW,
			"link add "+d0+" type veth peer name "+f1,
			"link set "+d0+" netns "+l.DB, "link set "+f1+" netns "+l.FW),
		ipBatch(l.App, "link set lo up",
			"addr add "+l.AppIP.String()+"/24 dev "+a0, "link set "+a0+" up",
			"route add default via "+l.FWAppIP.String()),
		ipBatch(l.FW, "link set lo up",
			"addr add "+l.FWAppIP.String()+"/24 dev "+f0, "link set "+f0+" up",
			"addr add "+l.FWDBIP.String()+"/24 dev "+f1, "link set "+f1+" up"),
		ipBatch(l.DB, "link set lo up",
			"addr add "+l.DBIP.String()+"/24 dev "+d0, "link set "+d0+" up",
			"route add default via "+l.FWDBIP.String()),
		{lines("*filter", ":FORWARD DROP [0:0]",
			"-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
			"-A FORWARD -p tcp --syn -m conntrack --ctstate NEW -j ACCEPT",
			stale, "COMMIT"),
			[]string{"ip", "netns", "exec", l.FW, "iptables-restore"}},
		// conntrack's sysctls appear in a namespace once a conntrack rule exists there.
		{"", []string{"ip", "netns", "exec", l.FW, "sysctl", "-qw", "net.ipv4.ip_forward=1",
			"net.netfilter.nf_conntrack_tcp_loose=0",
			fmt.Sprintf("net.netfilter.nf_conntrack_tcp_timeout_established=%d", secs)}},
	}
	for _, s := range steps {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, s.args[0], s.args[1:]...)
		cmd.Stdin = strings.NewReader(s.stdin)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("netlab: %s: %v\n%s\n%s", strings.Join(s.args, " "), err, s.stdin, out)
		}
	}
	t.Logf("netlab: lab %s up in %v: app %s | fw %s %s (conntrack established timeout %v, stale flows: %v) | db %s",
		id, time.Since(began).Round(time.Millisecond), l.AppIP, l.FWAppIP, l.FWDBIP, l.Timeout, cfg.Stale, l.DBIP)
	return l
}

func hostAddr(net netip.Addr, host byte) netip.Addr {
	a := net.As4()
	a[3] = host
	return netip.AddrFrom4(a)
}

func resetRule(op string) []string {
	return []string{"iptables", op, "FORWARD", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"}
}

func run(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
}

// ID is the lab's unique id (part of every namespace and interface name).
func (l *Lab) ID() string { return l.id }

// AppAddr returns "app-ip:port".
func (l *Lab) AppAddr(port int) string { return netip.AddrPortFrom(l.AppIP, uint16(port)).String() }

// DBAddr returns "db-ip:port", the address a backend server in db listens on.
func (l *Lab) DBAddr(port int) string { return netip.AddrPortFrom(l.DBIP, uint16(port)).String() }

// Command returns a command that runs name in namespace ns (ip netns exec). The Lab kills
// it in cleanup if it is still running after being started.
func (l *Lab) Command(ns, name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	l.track(cmd)
	return cmd
}

func (l *Lab) track(cmd *exec.Cmd) {
	l.mu.Lock()
	l.procs = append(l.procs, cmd)
	l.mu.Unlock()
}

// Exec runs name in namespace ns and fails the test if it fails.
func (l *Lab) Exec(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	full := append([]string{"ip", "netns", "exec", ns, name}, args...)
	out, err := run(full...)
	if err != nil {
		t.Fatalf("netlab: %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	return string(out)
}

// IPTables runs iptables with args in namespace ns and fails the test if it fails.
func (l *Lab) IPTables(t testing.TB, ns string, args ...string) {
	t.Helper()
	l.Exec(t, ns, "iptables", args...)
}

// SetStale switches what fw does with packets of forgotten flows.
func (l *Lab) SetStale(t testing.TB, s Stale) {
	t.Helper()
	l.mu.Lock()
	cur := l.stale
	l.stale = s
	l.mu.Unlock()
	if cur == s {
		return
	}
	if s == StaleReset {
		l.IPTables(t, l.FW, resetRule("-A")[1:]...)
	} else {
		l.IPTables(t, l.FW, resetRule("-D")[1:]...)
	}
}

// SetEstablishedTimeout changes conntrack's established timeout in fw (whole seconds)
// and l.Timeout; call it from the test's goroutine. It applies to flows as their next
// packet refreshes them.
func (l *Lab) SetEstablishedTimeout(t testing.TB, d time.Duration) {
	t.Helper()
	secs := int((d + time.Second - 1) / time.Second)
	l.Exec(t, l.FW, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_tcp_timeout_established=%d", secs))
	l.Timeout = time.Duration(secs) * time.Second
}

// BlackHolePort makes fw drop every TCP packet to or from port (both directions, live
// flows included): a cable cut or a failed node between app and db. The returned
// function removes the rules (also done at cleanup by namespace removal).
func (l *Lab) BlackHolePort(t testing.TB, port int) (restore func()) {
	t.Helper()
	return l.insertDrop(t, l.FW, "FORWARD", port)
}

// BlackHoleAppLeg makes the app namespace drop every TCP packet that arrives to or from
// local port (INPUT chain, so loopback traffic between an app and a proxy beside it is
// cut too): the app vanished without closing. The returned function removes the rules.
func (l *Lab) BlackHoleAppLeg(t testing.TB, port int) (restore func()) {
	t.Helper()
	return l.insertDrop(t, l.App, "INPUT", port)
}

// UnreachableAppLeg makes the app namespace answer every TCP packet sent to the app
// from local port with ICMP host unreachable: the app's host is gone and a router says
// so. What the app sends still arrives. The kernel takes such ICMP for a connection's
// data as a soft error: it goes on retransmitting, and reports EHOSTUNREACH instead of
// ETIMEDOUT when it gives up (only for data in flight: a keepalive probe's answer is
// outside the window and ignored). The returned function removes the rule.
func (l *Lab) UnreachableAppLeg(t testing.TB, port int) (restore func()) {
	t.Helper()
	return l.insertRules(t, l.App, "INPUT",
		[]string{"-p", "tcp", "--sport", strconv.Itoa(port), "-j", "REJECT", "--reject-with", "icmp-host-unreachable"})
}

func (l *Lab) insertDrop(t testing.TB, ns, chain string, port int) func() {
	t.Helper()
	p := strconv.Itoa(port)
	return l.insertRules(t, ns, chain,
		[]string{"-p", "tcp", "--dport", p, "-j", "DROP"},
		[]string{"-p", "tcp", "--sport", p, "-j", "DROP"})
}

// insertRules puts rules at the head of ns's chain and returns a function that
// deletes them.
func (l *Lab) insertRules(t testing.TB, ns, chain string, rules ...[]string) func() {
	t.Helper()
	for _, r := range rules {
		l.IPTables(t, ns, append([]string{"-I", chain, "1"}, r...)...)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, r := range rules {
				l.IPTables(t, ns, append([]string{"-D", chain}, r...)...)
			}
		})
	}
}

// Rules returns fw's FORWARD rules with counters, for logs when a test fails.
func (l *Lab) Rules() string {
	out, _ := run("ip", "netns", "exec", l.FW, "iptables", "-L", "FORWARD", "-v", "-n")
	return string(out)
}

func (l *Lab) destroy() {
	l.mu.Lock()
	procs := l.procs
	l.procs = nil
	l.mu.Unlock()
	for _, cmd := range procs {
		if cmd.Process != nil {
			_ = cmd.Process.Kill() // harmless when it already ended
		}
	}
	for _, ns := range []string{l.App, l.FW, l.DB} {
		// Anything still running inside (a child of a killed ip netns exec) goes too.
		if out, err := run("ip", "netns", "pids", ns); err == nil {
			for _, f := range bytes.Fields(out) {
				if pid, err := strconv.Atoi(string(f)); err == nil {
					if p, err := os.FindProcess(pid); err == nil {
						_ = p.Kill()
					}
				}
			}
		}
		if out, err := run("ip", "netns", "del", ns); err != nil && !bytes.Contains(out, []byte("No such file")) {
			l.t.Logf("netlab: ip netns del %s: %v %s", ns, err, out)
		}
	}
}

// FlushConntrack empties fw's connection tracking table, as a firewall restart or a
// failover to a peer without state sync does (`conntrack -F`; done over netlink, so the
// conntrack tool is not needed). Every live flow is forgotten at once: its next packet is
// INVALID, dropped or answered with an RST as Stale says.
func (l *Lab) FlushConntrack(t testing.TB) {
	t.Helper()
	if err := Do(l.FW, flushConntrack); err != nil {
		t.Fatalf("netlab: flush conntrack in %s: %v", l.FW, err)
	}
}

// flushConntrack sends ctnetlink's IPCTNL_MSG_CT_DELETE with no tuple (delete all,
// IPv4) and waits for the kernel's ACK.
func flushConntrack() error {
	const (
		nfnlSubsysCtnetlink = 1 // NFNL_SUBSYS_CTNETLINK
		ipctnlMsgCtDelete   = 2 // IPCTNL_MSG_CT_DELETE
	)
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	msg := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysCtnetlink<<8|ipctnlMsgCtDelete)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	msg[unix.NLMSG_HDRLEN] = unix.AF_INET     // nfgenmsg: family, version 0, res_id 0
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return syscall.Errno(-code)
			}
			return nil
		}
	}
	return fmt.Errorf("no netlink ACK in %d bytes", n)
}
