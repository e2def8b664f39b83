package admin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
)

// A client outside admin.allow gets its 403 and the connection is closed: it
// kept it (and one of the process's fds) for as long as it liked, so a
// refused client could starve the proxy of fds.
func TestForbiddenClientConnectionIsClosed(t *testing.T) {
	s := startStack(t, ordersConfig("127.0.0.1:1"))

	reg := prometheus.NewRegistry()
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0", AllowNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		reg, s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	c, err := net.Dial("tcp", adm.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("a client outside admin.allow still holds its connection 5 s after its 403 (err %v)", err)
	}
}

// admin.allow = ["fe80::/10"] lets a link-local client in: its address
// comes with a zone (%eth0), which no prefix contains, so it got 403.
func TestAllowLinkLocalIPv6(t *testing.T) {
	var local netip.Addr
	var zone string
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsLinkLocalUnicast() && p.Addr().Is6() {
				local, zone = p.Addr(), ifc.Name
			}
		}
	}
	if !local.IsValid() {
		t.Skip("no IPv6 link-local address")
	}
	s := startStack(t, ordersConfig("127.0.0.1:1"))
	adm, err := Start(config.Admin{Listen: "[::]:0", AllowNets: []netip.Prefix{netip.MustParsePrefix("fe80::/10")}},
		prometheus.NewRegistry(), s.p, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	port := adm.Addr().(*net.TCPAddr).Port
	url := fmt.Sprintf("http://[%s%%25%s]:%d/healthz", local, zone, port)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from a client in fe80::/10 with admin.allow = [\"fe80::/10\"]: %s, want 200", url, resp.Status)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
