package failover

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// zoneChild marks the process that TestNameOfAZonedLinkLocalAddress runs
// in network and mount namespaces of its own.
const zoneChild = "TNSGUARD_ZONE_CHILD"

// A name that /etc/hosts gives a link-local address with its zone
// (fe80::7%tz0 db-ll, which Go's resolver reads, and so Go's dialer
// reaches): the server's dials and health checks reach it. Until
// 2026-11-30 the lookup dropped the zone (net.Resolver.LookupNetIP keeps
// none), every dial and check failed with "connect: invalid argument", and
// the server was down for good though the same address as a literal
// ([fe80::7%tz0]:1521) works. The binary is built with CGO_ENABLED=0, so
// the Go resolver is the one users run.
func TestNameOfAZonedLinkLocalAddress(t *testing.T) {
	if os.Getenv(zoneChild) == "" {
		_, uerr := exec.LookPath("unshare")
		_, ierr := exec.LookPath("ip")
		if os.Geteuid() != 0 || uerr != nil || ierr != nil {
			msg := "needs root, unshare and ip (a link-local address in namespaces of its own)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg + " (CI=true, so this is a failure, not a skip)")
			}
			t.Skip(msg)
		}
		cmd := exec.Command("unshare", "--net", "--mount", os.Args[0], "-test.run=^TestNameOfAZonedLinkLocalAddress$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), zoneChild+"=1", "GODEBUG=netdns=go")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in namespaces of its own: %v\n%s", err, out)
		}
		return
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"}, // this host's own addresses are reached through lo
		{"link", "add", "tz0", "type", "veth", "peer", "name", "tz1"},
		{"link", "set", "tz0", "up"},
		{"link", "set", "tz1", "up"},
		{"-6", "addr", "add", "fe80::7/64", "dev", "tz0", "nodad"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	var ln net.Listener
	var err error
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) { // the address is usable once the link is
		if ln, err = net.Listen("tcp", "[fe80::7%tz0]:0"); err == nil || time.Since(start) > 3*time.Second {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// The address can be listened on before it answers: a connect made at
	// once may hang past its timeout (4 to 10 runs in 20, the same with a
	// plain Go program and no tnsguard code), while a new connect a moment
	// later gets through. Wait until a dial of the literal address does.
	literal := fmt.Sprintf("[fe80::7%%tz0]:%d", ln.Addr().(*net.TCPAddr).Port)
	for start := time.Now(); ; {
		c, err := net.DialTimeout("tcp", literal, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("the link-local address itself never answered: %v", err)
		}
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("fe80::7%tz0 db-ll\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(hosts, "/etc/hosts", "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("db-ll:%d", port), 2*time.Second); err != nil {
		t.Fatalf("Go's dialer: %v (the name's address does not answer)", err)
	} else {
		c.Close()
	}
	b := testBackend(t, `connect_timeout = "1s"
  [backend.health]
  check = "off"
`+servers(fmt.Sprintf(`address = "db-ll:%d"`, port)))
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	defer func() { cancel(); b.Stop() }()
	c, err := b.Servers[0].Dial(ctx)
	if err != nil {
		t.Fatalf("a dial of the server: %v; want the connection Go's dialer makes", err)
	}
	c.Close()
}
