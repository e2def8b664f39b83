package lab

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// oracleOpen opens an Oracle Net session from namespace ns to addr as a
// driver does: CONNECT, and, when the answer is a REDIRECT, the same
// CONNECT with its reconnect data to the address it names (the driver's
// own connection, as go-ora and node-oracledb make it). It returns the
// connection the node listener ACCEPTed.
func oracleOpen(t *testing.T, ns, addr string) *net.TCPConn {
	t.Helper()
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=scan)(PORT=1521)))")
	if err != nil {
		t.Fatal(err)
	}
	for hop := 0; hop < 2; hop++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := netlab.Dial(ctx, ns, addr)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(connect); err != nil {
			t.Fatal(err)
		}
		pkt, err := tns.ReadPacket(c, tns.Length16, 0)
		if err != nil {
			t.Fatalf("answer from %s: %v", addr, err)
		}
		c.SetDeadline(time.Time{})
		switch pkt.Type {
		case tns.TypeAccept:
			t.Cleanup(func() { c.Close() })
			return c
		case tns.TypeRedirect:
			r, err := tns.ParseRedirect(pkt.Raw)
			if err != nil || len(r.Addresses()) == 0 {
				t.Fatalf("REDIRECT %q: %v", r.Address, err)
			}
			c.Close()
			addr = r.Addresses()[0].HostPort()
			if connect, err = tns.BuildRedirectedConnect(connect, r.ReconnectData); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("answer from %s: %v", addr, pkt.Type)
		}
	}
	t.Fatal("REDIRECTed twice")
	return nil
}

// A RAC SCAN listener sends every app to a node listener with a REDIRECT.
// A driver that follows it itself has a connection of its own to the node,
// with none of tnsguard's keepalive: behind a firewall that forgets idle
// flows, the pooled sessions die. With redirect = "follow" tnsguard makes
// that connection, with the database leg's keepalive, and the sessions
// survive 3x the firewall's timeout.
func TestLabRedirectedSessionsSurviveTheFirewall(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: netlab.StaleDrop})
	const scanPort, nodePort = dbPort, dbPort + 1
	nodeLn, err := lab.Listen(lab.DB, lab.DBAddr(nodePort))
	if err != nil {
		t.Fatal(err)
	}
	node := tnstest.NewOn(t, nodeLn, tnstest.Config{Mode: tnstest.Accept})
	scanLn, err := lab.Listen(lab.DB, lab.DBAddr(scanPort))
	if err != nil {
		t.Fatal(err)
	}
	reconnect := fmt.Sprintf("(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=%s)(PORT=%d))(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)))", lab.DBIP, nodePort)
	tnstest.NewOn(t, scanLn, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: reconnect})
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(scanPort)},
		App: appKeepalive, DB: dbKeepalive, BackendKeys: `redirect = "follow"`})

	var viaGuard, direct []*net.TCPConn
	for range 5 {
		viaGuard = append(viaGuard, oracleOpen(t, lab.App, guardAddr))
		direct = append(direct, oracleOpen(t, lab.App, lab.DBAddr(scanPort)))
	}
	idle := 3 * lab.Timeout
	time.Sleep(idle)
	guardErrs := roundTripAll(viaGuard, 3*time.Second)
	directErrs := roundTripAll(direct, 3*time.Second)
	t.Logf("after %v idle behind a %v firewall, sessions REDIRECTed to the node: via tnsguard %d/5 ok %v; the driver's own %d/5 ok %v",
		idle, lab.Timeout, countOK(guardErrs), describe(guardErrs), countOK(directErrs), describe(directErrs))
	for i, err := range guardErrs {
		if err != nil {
			t.Errorf("session %d via tnsguard: round trip after %v idle: %v", i, idle, err)
		}
	}
	for i, err := range directErrs { // the lab proves itself
		if got := netlab.Classify(err); got != "timeout" {
			t.Errorf("the driver's own session %d to the node: want timeout after %v idle, got %v", i, idle, err)
		}
	}
	m := guard.Metrics(t)
	if n, _ := m.Sum("tnsguard_tns_redirects_followed_total", nil); n != 5 {
		t.Errorf("tnsguard_tns_redirects_followed_total = %v, want 5", n)
	}
	if resets, _ := m.Sum("tnsguard_resets_total", nil); resets != 0 {
		t.Errorf("tnsguard_resets_total = %v, want 0\n%s", resets, m.Dump("tnsguard_resets_total"))
	}
}
