package proxy

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// rejectChild marks the process that TestIPv6FirewallRejectIsUnreachable
// runs in a network namespace of its own.
const rejectChild = "TNSGUARD_IPV6_REJECT_CHILD"

// A firewall in front of an IPv6 database rejects the connection, as
// firewalld does by default on RHEL and Oracle Linux hosts ("reject with
// icmpx admin-prohibited"; with iptables, icmp6-adm-prohibited). The same
// rule over IPv4 (ICMP code 13, administratively prohibited) reaches the
// dialer as EHOSTUNREACH: result and cause "unreachable", and an Oracle app
// gets ORA-12543 (destination host unreachable). Over IPv6 Linux reports it
// as EACCES ("connect: permission denied"), which was counted as
// result="error", cause "error", and the Oracle app was reset instead of
// getting its REFUSE: the same firewall read differently by address family.
func TestIPv6FirewallRejectIsUnreachable(t *testing.T) {
	if os.Getenv(rejectChild) == "" {
		_, uerr := exec.LookPath("unshare")
		_, ierr := exec.LookPath("ip")
		_, terr := exec.LookPath("ip6tables")
		_, t4err := exec.LookPath("iptables")
		if os.Geteuid() != 0 || uerr != nil || ierr != nil || terr != nil || t4err != nil {
			msg := "needs root, unshare, ip, iptables and ip6tables (a firewall in a network namespace of its own)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg + " (CI=true, so this is a failure, not a skip)")
			}
			t.Skip(msg)
		}
		cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^TestIPv6FirewallRejectIsUnreachable$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), rejectChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a network namespace of its own: %v\n%s", err, out)
		}
		return
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v %s", err, out)
	}
	for _, c := range []struct{ family, tool, addr, with string }{
		{"IPv4", "iptables", "127.0.0.1", "icmp-admin-prohibited"},
		{"IPv6", "ip6tables", "::1", "icmp6-adm-prohibited"},
	} {
		t.Run(c.family, func(t *testing.T) {
			ln, err := net.Listen("tcp", net.JoinHostPort(c.addr, "0")) // a live server behind the rule
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			server := ln.Addr().String()
			_, port, _ := net.SplitHostPort(server)
			rule := []string{"OUTPUT", "-p", "tcp", "-d", c.addr, "--dport", port, "-j", "REJECT", "--reject-with", c.with}
			if out, err := exec.Command(c.tool, append([]string{"-A"}, rule...)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v %s", c.tool, err, out)
			}
			defer exec.Command(c.tool, append([]string{"-D"}, rule...)...).Run()

			// Without "connect" in retry_on the session ends at its first
			// failed dial, and routes make tnsguard read the CONNECT first:
			// the app's answer is that dial's alone. The kernel reports an
			// ICMPv6 rejection of a SYN it sends itself at the retransmit
			// (1 s): connect_timeout leaves it room.
			cfg := strings.Replace(oracleConfig("", server), `retry_on = ["connect", "reset", "refuse"]`, `retry_on = ["reset", "refuse"]`, 1)
			cfg = strings.Replace(cfg, `services = ["SALES"]`, `routes = { "SALES" = "b", "*" = "b" }`, 1)
			cfg = strings.Replace(cfg, `connect_timeout = "1s"`, `connect_timeout = "3s"`, 1)
			cfg = strings.Replace(cfg, `connect_budget = "2s"`, `connect_budget = "4s"`, 1)
			h := startProxy(t, cfg)
			err = goOraPing(t, h.addr("l"), "SALES")
			if err == nil || !strings.Contains(err.Error(), "ORA-12543") {
				t.Errorf("go-ora: %v; want ORA-12543 (destination host unreachable)", err)
			}
			if n, _ := histogram(t, h.m.ConnectDuration.WithLabelValues("b", server, "unreachable")); n != 1 {
				e, _ := histogram(t, h.m.ConnectDuration.WithLabelValues("b", server, "error"))
				t.Errorf("%v dials counted as unreachable (%v as error); want 1", n, e)
			}
			waitFor(t, time.Second, "a reset event, phase connect, cause unreachable", func() bool {
				ev := h.p.Resets(0)
				return len(ev) == 1 && ev[0].Cause == "unreachable" && ev[0].Phase == PhaseConnect
			})
			if t.Failed() {
				ev := h.p.Resets(0)
				t.Logf("resets: %+v", ev)
			}
		})
	}
}
