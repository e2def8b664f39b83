package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
)

// PROXY protocol tests: every client here is a real socket on loopback.
// 127.0.0.1 plays the trusted load balancer; 127.0.0.2 (also loopback) an
// untrusted host.

// ppConfig is oneBackendConfig with extra keys in the listener and the
// backend table.
func ppConfig(be, listenerKeys, backendKeys string) string {
	s := oneBackendConfig(be)
	s = strings.Replace(s, "backend = \"b\"\n", "backend = \"b\"\n"+listenerKeys+"\n", 1)
	return strings.Replace(s, "[[backend]]\nname = \"b\"\n", "[[backend]]\nname = \"b\"\n"+backendKeys+"\n", 1)
}

// ppHeader is a PROXY header (version 1 or 2) for a TCP connection from
// src to dst ("ip:port").
func ppHeader(t testing.TB, version byte, src, dst string) []byte {
	t.Helper()
	s, d := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst))
	b, err := proxyproto.HeaderProxyFromAddrs(version, s, d).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ppSeen is what a backend connection received: the PROXY header tnsguard
// sent (when the backend expects one) and every byte after it, until EOF.
type ppSeen struct {
	hdr  *proxyproto.Header
	data []byte
	err  error
}

// ppBackend echoes everything and reports each connection on the channel
// once the app's side has ended (before it closes its own side, so a client
// that saw EOF can look at the channel at once).
func ppBackend(t *testing.T, withHeader bool) (*backendServer, chan ppSeen) {
	ch := make(chan ppSeen, 64)
	return newBackend(t, ppServe(ch, withHeader)), ch
}

func ppServe(ch chan ppSeen, withHeader bool) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		var seen ppSeen
		if withHeader {
			if seen.hdr, seen.err = proxyproto.Read(br); seen.err != nil {
				ch <- seen
				c.Close()
				return
			}
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := br.Read(buf)
			seen.data = append(seen.data, buf[:n]...)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					seen.err = err
				}
				break
			}
		}
		ch <- seen
		c.CloseWrite()
	}
}

// dialFrom connects to addr from a given local IP (127.0.0.2 = untrusted).
func dialFrom(t *testing.T, ip, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// exchange writes b, half-closes, and reads until EOF or error.
func exchange(c *net.TCPConn, b []byte, limit time.Duration) ([]byte, error) {
	c.SetDeadline(time.Now().Add(limit))
	if _, err := c.Write(b); err != nil {
		return nil, err
	}
	c.CloseWrite()
	return io.ReadAll(c)
}

// closedBeforeDialing asserts that c is closed by tnsguard (reset or EOF,
// nothing read) within limit, that the backend never saw a connection, and
// that the rejection was counted with reason.
func closedBeforeDialing(t *testing.T, h *harness, be *backendServer, c *net.TCPConn, limit time.Duration, reason string) time.Time {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit + time.Second))
	b, err := io.ReadAll(c)
	took := time.Since(start)
	if len(b) > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection not closed by tnsguard: read %q, %v", b, err)
	}
	if took > limit {
		t.Fatalf("closed after %v, want within %v", took, limit)
	}
	waitFor(t, time.Second, "rejection "+reason+" counted", func() bool {
		return counter(h.m.SessionsRejected, "l", reason) >= 1
	})
	if n := len(be.accepted()); n != 0 {
		t.Fatalf("the backend saw %d connections; want none (closed before dialing)", n)
	}
	return start.Add(took)
}

// From a trusted load balancer, v1 and v2: the real client address is what
// allow and max_sessions_per_source see and what the session records; the
// header never reaches the backend, the bytes sent with it (read past the
// header) and after it arrive complete and in order.
func TestProxyInFromTrustedSource(t *testing.T) {
	for _, version := range []byte{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			be, seen := ppBackend(t, false)
			h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
allow = ["203.0.113.0/24"]
max_sessions_per_source = 1`, ""))
			addr := h.addr("l")

			// Allowed: the header and the first app bytes in one segment.
			a := dialFrom(t, "127.0.0.1", addr)
			a.Write(append(ppHeader(t, version, "203.0.113.7:5555", "192.0.2.1:1521"), "hello "...))
			if _, err := io.ReadFull(a, make([]byte, 6)); err != nil {
				t.Fatalf("allowed client: %v", err)
			}
			live := h.p.liveSessions()
			if len(live) != 1 || live[0].source() != netip.MustParseAddr("203.0.113.7") {
				t.Fatalf("live sessions %v: want one from 203.0.113.7", live)
			}
			if got := live[0].in.client.String(); got != "203.0.113.7:5555" {
				t.Fatalf("session's client = %s", got)
			}

			// Same real client again: over its per-source limit, although
			// the load balancer's own address is the same for everyone.
			dup := dialFrom(t, "127.0.0.1", addr)
			dup.Write(ppHeader(t, version, "203.0.113.7:5556", "192.0.2.1:1521"))
			io.ReadAll(dup) // closed: reset or EOF, the count below says why
			waitFor(t, time.Second, "per-source rejection", func() bool {
				return counter(h.m.SessionsRejected, "l", "max_sessions_per_source") == 1
			})
			// Another real client through the same balancer: its own slot.
			other := dialFrom(t, "127.0.0.1", addr)
			other.Write(ppHeader(t, version, "203.0.113.8:5555", "192.0.2.1:1521"))
			if got, err := exchange(other, []byte("other"), 2*time.Second); err != nil || string(got) != "other" {
				t.Fatalf("second real client: %q, %v", got, err)
			}

			got, err := exchange(a, []byte("world"), 2*time.Second)
			if err != nil || string(got) != "world" {
				t.Fatalf("allowed client: %q, %v", got, err)
			}
			for range 2 {
				s := <-seen
				if d := string(s.data); d != "hello world" && d != "other" {
					t.Fatalf("backend received %q: header bytes leaked or app bytes lost", d)
				}
			}

			// Denied by allow: the real address, not the balancer's.
			n := len(be.accepted())
			denied := dialFrom(t, "127.0.0.1", addr)
			denied.Write(ppHeader(t, version, "198.51.100.9:4000", "192.0.2.1:1521"))
			if b, _ := io.ReadAll(denied); len(b) != 0 {
				t.Fatalf("denied client read %q", b)
			}
			waitFor(t, time.Second, "not_allowed counted", func() bool {
				return counter(h.m.SessionsRejected, "l", "not_allowed") == 1
			})
			if len(be.accepted()) != n {
				t.Fatal("the backend saw a connection for a client outside allow")
			}
		})
	}
}

// required: a source outside trusted_proxies is closed before dialing,
// header or not; a trusted source without a header likewise.
func TestProxyRequiredRefusesBeforeDialing(t *testing.T) {
	be, _ := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`, ""))
	addr := h.addr("l")

	// Untrusted: reset at accept, before reading anything; the reset may
	// even beat the end of the client's connect.
	for i, first := range [][]byte{
		ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521"),
		[]byte("\x00\x3a\x00\x00\x01\x00\x00\x00"), // a TNS CONNECT's start
	} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			waitFor(t, time.Second, "untrusted rejection counted", func() bool {
				return counter(h.m.SessionsRejected, "l", rejectProxyUntrusted) == float64(i+1)
			})
			continue
		}
		c.Write(first)
		closedBeforeDialing(t, h, be, c.(*net.TCPConn), 500*time.Millisecond, rejectProxyUntrusted)
		c.Close()
	}
	if n := len(be.accepted()); n != 0 {
		t.Fatalf("the backend saw %d connections from an untrusted source", n)
	}

	c := dialFrom(t, "127.0.0.1", addr)
	c.Write([]byte("\x00\x3a\x00\x00\x01\x00\x00\x00"))
	closedBeforeDialing(t, h, be, c, 500*time.Millisecond, rejectProxyMissing)
}

// optional: plain connections pass unchanged from anyone (including bytes
// that start like "PROXY" but are not a header); a header is honoured from
// a trusted source only; an untrusted source that sends one is closed, so
// no client picks the address tnsguard checks.
func TestProxyOptional(t *testing.T) {
	be, seen := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1/32"]
allow = ["127.0.0.0/8", "203.0.113.0/24"]`, ""))
	addr := h.addr("l")

	for _, tc := range []struct{ from, data string }{
		{"127.0.0.2", "\x00\x3a\x00\x00\x01\x00\x00\x00 plain TNS"},
		{"127.0.0.1", "\x00\x3a\x00\x00\x01\x00\x00\x00 plain TNS from the balancer itself"},
		{"127.0.0.2", "PING\r\n"},      // "P" like PROXY, then not
		{"127.0.0.1", "\r\n\r\nhello"}, // starts like the v2 signature, then not
	} {
		c := dialFrom(t, tc.from, addr)
		got, err := exchange(c, []byte(tc.data), 2*time.Second)
		if err != nil || string(got) != tc.data {
			t.Fatalf("plain %q from %s: got %q, %v", tc.data, tc.from, got, err)
		}
		if s := <-seen; string(s.data) != tc.data {
			t.Fatalf("backend got %q, want %q", s.data, tc.data)
		}
	}

	c := dialFrom(t, "127.0.0.1", addr)
	c.Write(ppHeader(t, 1, "203.0.113.9:1000", "192.0.2.1:1521"))
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range h.p.liveSessions() {
		found = found || s.source() == netip.MustParseAddr("203.0.113.9")
	}
	if !found {
		t.Fatal("trusted header in optional mode not honoured: no session from 203.0.113.9")
	}
	c.Close()

	n := len(be.accepted())
	spoof := dialFrom(t, "127.0.0.2", addr)
	spoof.Write(append(ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521"), "data"...))
	b, _ := io.ReadAll(spoof)
	if len(b) != 0 {
		t.Fatalf("untrusted header: read %q", b)
	}
	waitFor(t, time.Second, "untrusted header refused", func() bool {
		return counter(h.m.SessionsRejected, "l", rejectProxyUntrusted) == 1
	})
	if len(be.accepted()) != n {
		t.Fatal("an untrusted PROXY header reached the backend")
	}
}

// optional: a plain client whose first message is short and starts like a
// signature's first byte ("P" as PROXY, "\r" as the v2 signature), then
// differs, and that then waits for the answer without closing its side,
// is served at once. The library peeked 5 and then 12 bytes whatever the
// first ones were, so such a client ("PING\r\n", 6 bytes) waited for bytes
// it would never send and was reset at proxy_header_timeout as
// proxy_timeout. TestProxyOptional half-closes after its bytes, which
// ended the peek and hid this.
func TestProxyOptionalShortPlainMessageWaitingForItsAnswer(t *testing.T) {
	be, seen := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "3s"`, ""))
	addr := h.addr("l")
	for _, tc := range []struct{ from, data string }{
		{"127.0.0.2", "PING\r\n"},
		{"127.0.0.1", "PING\r\n"},
		{"127.0.0.2", "\r\n\r\nhi"},
	} {
		c := dialFrom(t, tc.from, addr)
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(tc.data)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(tc.data))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.data {
			t.Fatalf("plain %q from %s, waiting for its answer: got %q, %v (rejected: proxy_timeout %v, proxy_invalid %v)",
				tc.data, tc.from, got, err, counter(h.m.SessionsRejected, "l", rejectProxyTimeout), counter(h.m.SessionsRejected, "l", rejectProxyInvalid))
		}
		c.Close()
		if s := <-seen; string(s.data) != tc.data {
			t.Fatalf("backend got %q, want %q", s.data, tc.data)
		}
	}
}

// A client that connects and leaves (a FIN or a reset) without a byte sent
// no PROXY header: on an optional listener it is not a rejection at all,
// and on a required one from a trusted source the header is missing, not
// invalid. Both used to count as proxy_untrusted ("an untrusted host sent a
// header", what operators alert on as spoofing) or proxy_invalid.
func TestProxyClientLeavesBeforeAByte(t *testing.T) {
	be, _ := ppBackend(t, false)
	// Each round from its own untrusted address: a port bound on one
	// address again soon may meet the proxy's TIME_WAIT, which resets it.
	leave := func(addr string, reset bool, from ...string) {
		for _, from := range from {
			c := dialFrom(t, from, addr)
			if reset {
				c.SetLinger(0)
			}
			c.Close()
		}
	}
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1/32"]`, ""))
	leave(h.addr("l"), false, "127.0.0.2", "127.0.0.1") // untrusted, trusted
	leave(h.addr("l"), true, "127.0.0.3", "127.0.0.1")
	waitFor(t, 2*time.Second, "the sessions ended", func() bool { return len(h.p.liveSessions()) == 0 })
	time.Sleep(50 * time.Millisecond)
	for _, reason := range []string{rejectProxyUntrusted, rejectProxyInvalid, rejectProxyMissing} {
		if v := counter(h.m.SessionsRejected, "l", reason); v != 0 {
			t.Errorf("optional: rejected{%s} = %v for clients that sent nothing", reason, v)
		}
	}

	h = startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`, ""))
	leave(h.addr("l"), true, "127.0.0.1") // an untrusted one is refused at once, before it can leave
	waitFor(t, 2*time.Second, "refused", func() bool { return counter(h.m.SessionsRejected, "l", rejectProxyMissing) == 1 })
	if v := counter(h.m.SessionsRejected, "l", rejectProxyInvalid); v != 0 {
		t.Errorf("required: rejected{proxy_invalid} = %v for a trusted client that reset before a byte", v)
	}
}

// A header that trickles, or a client that says nothing, is closed at
// proxy_header_timeout; a v1 line split over reads, an over-long v1 line
// and a v2 length beyond 4 KiB are refused at once. None reaches a backend.
func TestProxyHeaderTimeoutAndLimits(t *testing.T) {
	const timeout = 400 * time.Millisecond
	be, _ := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "400ms"`, ""))
	addr := h.addr("l")

	t.Run("v2 trickle", func(t *testing.T) {
		dialed := time.Now()
		c := dialFrom(t, "127.0.0.1", addr)
		hdr := ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521")
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for _, b := range hdr {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		took := closedBeforeDialing(t, h, be, c, timeout+300*time.Millisecond, rejectProxyTimeout).Sub(dialed)
		if took < timeout {
			t.Fatalf("closed after %v, before the %v timeout: a slow but live header must get its time", took, timeout)
		}
	})
	t.Run("silent", func(t *testing.T) {
		dialed := time.Now()
		c := dialFrom(t, "127.0.0.1", addr)
		took := closedBeforeDialing(t, h, be, c, timeout+300*time.Millisecond, rejectProxyMissing).Sub(dialed)
		if took < timeout {
			t.Fatalf("closed after %v, before the timeout", took)
		}
	})
	t.Run("v1 split", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", addr)
		c.Write([]byte("PROXY TCP4 203.0.113.7 "))
		time.Sleep(50 * time.Millisecond)
		c.Write([]byte("192.0.2.1 5555 1521\r\n"))
		closedBeforeDialing(t, h, be, c, timeout, rejectProxyInvalid)
	})
	t.Run("v1 too long", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", addr)
		go c.Write(append([]byte("PROXY TCP4 "), bytes.Repeat([]byte("9"), 1<<20)...)) // 1 MiB, no CRLF
		closedBeforeDialing(t, h, be, c, 200*time.Millisecond, rejectProxyInvalid)
	})
	t.Run("v2 length 65535", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.1", addr)
		hdr := append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0xff, 0xff)
		go c.Write(append(hdr, make([]byte, 1<<20)...))
		closedBeforeDialing(t, h, be, c, 200*time.Millisecond, rejectProxyInvalid)
	})
}

// A load balancer (or anything on its address) that closes its side with a
// FIN part way into a header sent a header cut short: refused at once as
// proxy_invalid, as when it ends with a reset and as a v1 line cut short,
// whether the cut falls before the end of the signature (12 bytes for v2,
// "PROXY" for v1) or after it. It used to depend on where the cut fell: 10
// bytes of a v2 signature then a FIN counted as proxy_missing ("no PROXY
// header") on a required listener, and on an optional one went to the
// backend as the app's data, header bytes and all; 12 bytes or more
// counted as proxy_invalid.
func TestProxyHeaderCutByFIN(t *testing.T) {
	v2 := ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521")
	cuts := []struct {
		name  string
		bytes []byte
	}{
		{"v2 signature 10 of 12", v2[:10]},
		{"v2 signature 1 of 12", v2[:1]},
		{"v2 signature whole", v2[:12]},
		{"v2 address block half", v2[:20]},
		{"v1 PROX", []byte("PROX")},
		{"v1 line half", []byte("PROXY TCP4 203.0.113.7 192.0")},
	}
	for _, mode := range []string{"required", "optional"} {
		t.Run(mode, func(t *testing.T) {
			be, _ := ppBackend(t, false)
			h := startProxy(t, ppConfig(be.addr(), fmt.Sprintf(`proxy_protocol = %q
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "2s"`, mode), ""))
			for i, cut := range cuts {
				c := dialFrom(t, "127.0.0.1", h.addr("l"))
				if _, err := c.Write(cut.bytes); err != nil {
					t.Fatal(err)
				}
				c.CloseWrite()
				// At once: the header cannot be completed after a FIN.
				start := time.Now()
				c.SetReadDeadline(start.Add(3 * time.Second))
				b, _ := io.ReadAll(c)
				if len(b) > 0 {
					t.Fatalf("%s: the app read %q: the header's bytes went to the backend as data", cut.name, b)
				}
				if took := time.Since(start); took > time.Second {
					t.Errorf("%s: closed after %v; a header cut by a FIN cannot complete", cut.name, took)
				}
				waitFor(t, time.Second, cut.name+" counted", func() bool {
					return sumCounters(t, h.m.SessionsRejected) == float64(i+1)
				})
				if v := counter(h.m.SessionsRejected, "l", rejectProxyInvalid); v != float64(i+1) {
					t.Errorf("%s: rejected{proxy_invalid} = %v, want %d (proxy_missing %v)", cut.name, v, i+1,
						counter(h.m.SessionsRejected, "l", rejectProxyMissing))
				}
				if n := len(be.accepted()); n != 0 {
					t.Fatalf("%s: the backend was dialed %d times for a header cut short", cut.name, n)
				}
			}
		})
	}
}

// While headers are pending, memory per connection stays small and
// bounded: 200 connections each announce a 4 KiB v2 header (the most the
// library accepts), send half of it and stall. Measured: heap per pending
// connection (goroutine stacks are counted apart, they are not heap).
func TestProxyHeaderMemoryBounded(t *testing.T) {
	const conns = 200
	be, _ := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "10s"`, ""))
	addr := h.addr("l")
	hdr := append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0x10, 0x00) // PROXY TCP4, 4096 bytes follow
	hdr = append(hdr, 203, 0, 113, 7, 192, 0, 2, 1, 0x15, 0xb3, 0x05, 0xf1)
	hdr = append(hdr, make([]byte, 2000)...)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cs := make([]*net.TCPConn, conns)
	for i := range cs {
		cs[i] = dialFrom(t, "127.0.0.1", addr)
		if _, err := cs[i].Write(hdr); err != nil {
			t.Fatal(err)
		}
	}
	// Every connection has been read up to its stall point when the
	// kernel holds none of its bytes any more.
	time.Sleep(300 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := (int64(after.HeapInuse) - int64(before.HeapInuse)) / conns
	stack := (int64(after.StackInuse) - int64(before.StackInuse)) / conns
	t.Logf("%d connections with a pending 4 KiB v2 header: %d bytes of heap and %d bytes of stack each", conns, heap, stack)
	if heap > 16<<10 {
		t.Fatalf("%d bytes of heap per pending header: not bounded by the 4 KiB header limit", heap)
	}
	if n := len(be.accepted()); n != 0 {
		t.Fatalf("backend saw %d connections", n)
	}
	for _, c := range cs {
		c.Close()
	}
	waitFor(t, 2*time.Second, "all refused", func() bool {
		return counter(h.m.SessionsRejected, "l", rejectProxyInvalid) == conns
	})
}

// send_proxy_protocol v1 and v2: every backend connection starts with a
// correct header naming the app (the real one, when a trusted balancer
// sent a header in) and the address it connected to; then the app's bytes,
// unchanged.
func TestSendProxyProtocol(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			be, seen := ppBackend(t, true)
			h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1/32"]`, fmt.Sprintf("send_proxy_protocol = %q", version)))
			addr := h.addr("l")

			// Direct app (from the untrusted 127.0.0.2): its socket address.
			c := dialFrom(t, "127.0.0.2", addr)
			if got, err := exchange(c, []byte("direct"), 2*time.Second); err != nil || string(got) != "direct" {
				t.Fatalf("direct: %q, %v", got, err)
			}
			s := <-seen
			if s.err != nil {
				t.Fatalf("backend could not parse tnsguard's header: %v", s.err)
			}
			wantVersion := byte(1)
			if version == "v2" {
				wantVersion = 2
			}
			if s.hdr.Version != wantVersion || !s.hdr.Command.IsProxy() {
				t.Fatalf("header version %d command %v", s.hdr.Version, s.hdr.Command)
			}
			if got, want := s.hdr.SourceAddr.String(), c.LocalAddr().String(); got != want {
				t.Fatalf("header source %s, want the app's %s", got, want)
			}
			if got, want := s.hdr.DestinationAddr.String(), addr; got != want {
				t.Fatalf("header destination %s, want the listener %s", got, want)
			}
			if string(s.data) != "direct" {
				t.Fatalf("backend data after the header: %q", s.data)
			}

			// Through a trusted balancer: the header in is passed on.
			c = dialFrom(t, "127.0.0.1", addr)
			c.Write(ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521"))
			if got, err := exchange(c, []byte("chained"), 2*time.Second); err != nil || string(got) != "chained" {
				t.Fatalf("chained: %q, %v", got, err)
			}
			s = <-seen
			if s.err != nil || s.hdr.SourceAddr.String() != "203.0.113.7:5555" || s.hdr.DestinationAddr.String() != "192.0.2.1:1521" || string(s.data) != "chained" {
				t.Fatalf("chained: header %v -> %v, data %q, err %v", s.hdr.SourceAddr, s.hdr.DestinationAddr, s.data, s.err)
			}
		})
	}
}

// A re-dial sends the header again, then the replayed opening bytes.
func TestSendProxyProtocolOnRedial(t *testing.T) {
	type conn struct {
		hdr  *proxyproto.Header
		data string
	}
	got := make(chan conn, 4)
	var mu sync.Mutex
	n := 0
	be := newBackend(t, func(c *net.TCPConn) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		br := bufio.NewReader(c)
		hdr, err := proxyproto.Read(br)
		if err != nil {
			got <- conn{}
			return
		}
		b := make([]byte, 5)
		io.ReadFull(br, b)
		got <- conn{hdr, string(b)}
		if first {
			resetConn(c) // fails before its first byte: tnsguard re-dials
			return
		}
		c.Write([]byte("reply"))
	})
	h := startProxy(t, ppConfig(be.addr(), "", `send_proxy_protocol = "v2"`))
	c := h.dial("l")
	c.Write([]byte("hello"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatalf("app after the re-dial: %v", err)
	}
	for i := range 2 {
		g := <-got
		if g.hdr == nil || g.hdr.SourceAddr.String() != c.LocalAddr().String() || g.data != "hello" {
			t.Fatalf("backend connection %d: header %v, data %q; want a header for %s then hello", i+1, g.hdr, g.data, c.LocalAddr())
		}
	}
	if v := counter(h.m.Redials, "l", "b", "reset"); v != 1 {
		t.Fatalf("redials = %v", v)
	}
}

// 64 MiB after a PROXY header, in and out: the bytes that came with the
// header and the bulk after it arrive intact (the data path after the
// header is the bare, spliced socket pair).
func TestProxyProtocolBulk(t *testing.T) {
	size := 64 << 20
	if testing.Short() {
		size = 8 << 20
	}
	sums := make(chan []byte, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		br := bufio.NewReader(c)
		if _, err := proxyproto.Read(br); err != nil {
			sums <- nil
			return
		}
		sum := sha256.New()
		io.Copy(sum, br)
		sums <- sum.Sum(nil)
		c.CloseWrite()
	})
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`, `send_proxy_protocol = "v2"`))
	c := dialFrom(t, "127.0.0.1", h.addr("l"))
	sent := sha256.New()
	first := make([]byte, 300) // arrives with the header: read past it
	rand.Read(first)
	sent.Write(first)
	if _, err := c.Write(append(ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521"), first...)); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	start := time.Now()
	for n := len(first); n < size; n += len(chunk) {
		rand.Read(chunk)
		sent.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	c.CloseWrite()
	got := <-sums
	took := time.Since(start)
	if !bytes.Equal(got, sent.Sum(nil)) {
		t.Fatal("SHA-256 at the backend differs from what the app sent")
	}
	t.Logf("%d MiB after a PROXY header in %v", size>>20, took.Round(time.Millisecond))
}

// FuzzProxyHeader sends arbitrary bytes from a trusted source to an
// optional and a required listener whose backend gets a v2 header from
// tnsguard (so it can tell which client address tnsguard believed). For
// every input: no panic; the connection ends within the header timeout
// (plus slack); when the backend got a connection, the address it was
// told is either the socket's (and then it received all the input, or the
// input after a LOCAL header), or exactly the one of a valid header at the
// start of the input (and then it received what follows that header).
// Never a header's bytes as data, never an address from bytes that the
// library itself does not read as a header. On the required listener
// nothing without a valid header reaches the backend.
func FuzzProxyHeader(f *testing.F) {
	for _, seed := range [][]byte{
		ppHeader(f, 1, "203.0.113.7:5555", "192.0.2.1:1521"),
		append(ppHeader(f, 2, "203.0.113.7:5555", "192.0.2.1:1521"), "\x00\x3a\x00\x00\x01\x00"...),
		append(ppHeader(f, 2, "[2001:db8::7]:5555", "[2001:db8::1]:1521"), "after"...),
		[]byte("PROXY UNKNOWN\r\nafter"),
		[]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
		[]byte("\x00\x3a\x00\x00\x01\x00\x00\x00"),
		[]byte("PRO"),
		{},
	} {
		f.Add(seed)
	}
	ch := make(chan ppSeen, 16)
	be := fuzzBackend(f, ppServe(ch, true))
	p := fuzzProxy(f, fmt.Sprintf(`
[[listener]]
name = "opt"
listen = "127.0.0.1:0"
backend = "b"
proxy_protocol = "optional"
trusted_proxies = ["127.0.0.0/8"]
proxy_header_timeout = "300ms"
[[listener]]
name = "req"
listen = "127.0.0.2:0"
backend = "b"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.0/8"]
proxy_header_timeout = "300ms"
[[backend]]
name = "b"
send_proxy_protocol = "v2"
connect_timeout = "1s"
retry_on = []
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, be))

	f.Fuzz(func(t *testing.T, input []byte) {
		// What the library reads at the start of the input, alone.
		r := bytes.NewReader(input)
		br := bufio.NewReaderSize(r, headerBufSize)
		want, werr := proxyproto.Read(br)
		consumed := len(input) - r.Len() - br.Buffered()

		for _, name := range []string{"opt", "req"} {
			c, err := net.Dial("tcp", p.Addr(name).String())
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			c.SetDeadline(start.Add(3 * time.Second))
			c.Write(input)
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
			took := time.Since(start)
			c.Close()
			if took > 1300*time.Millisecond {
				t.Fatalf("%s: connection open %v after the input, header timeout 300ms", name, took)
			}
			var s ppSeen
			select {
			case s = <-ch:
			default:
				continue // closed before dialing: always safe
			}
			if s.err != nil {
				t.Fatalf("%s: backend: %v", name, s.err)
			}
			told := s.hdr.SourceAddr.(*net.TCPAddr).AddrPort()
			told = netip.AddrPortFrom(told.Addr().Unmap(), told.Port())
			self := c.LocalAddr().(*net.TCPAddr).AddrPort()
			switch {
			case told == self && werr == nil && want.Command.IsLocal():
				if !bytes.Equal(s.data, input[consumed:]) {
					t.Fatalf("%s: LOCAL header: backend got %q, want %q", name, s.data, input[consumed:])
				}
			case told == self:
				if name == "req" || !errors.Is(werr, proxyproto.ErrNoProxyProtocol) || !bytes.Equal(s.data, input) {
					t.Fatalf("%s: backend told the socket's address; library says %v; backend got %q of %q", name, werr, s.data, input)
				}
			default:
				if werr != nil {
					t.Fatalf("%s: backend told %s but the input has no valid header (%v)", name, told, werr)
				}
				src := want.SourceAddr.(*net.TCPAddr).AddrPort()
				if told != netip.AddrPortFrom(src.Addr().Unmap(), src.Port()) {
					t.Fatalf("%s: backend told %s, the header says %s", name, told, src)
				}
				if !bytes.Equal(s.data, input[consumed:]) {
					t.Fatalf("%s: backend got %q, want the %d bytes after the header %q", name, s.data, len(input)-consumed, input[consumed:])
				}
			}
		}
	})
}

// fuzzBackend and fuzzProxy are newBackend and startProxy for a *testing.F.
func fuzzBackend(f *testing.F, fn func(c *net.TCPConn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fn(c.(*net.TCPConn))
			}()
		}
	}()
	f.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func fuzzProxy(f *testing.F, toml string) *Proxy {
	cfg, _, err := config.Parse([]byte("[admin]\nlisten = \"127.0.0.1:0\"\n"+toml), "fuzz.toml")
	if err != nil {
		f.Fatal(err)
	}
	p := New(hclog.NewNullLogger(), metrics.New(prometheus.NewRegistry(), "test"))
	if err := p.Apply(cfg); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Shutdown(0, time.Second) })
	return p
}

// proxy_header_timeout = "0s" is accepted by check: it must not make the
// listener refuse every connection, even a trusted one whose header comes
// in one piece at once.
func TestProxyHeaderTimeoutZero(t *testing.T) {
	be, _ := ppBackend(t, false)
	h := startProxyUnlessRefused(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "0s"`, ""))
	if h == nil {
		return // check refuses the file
	}
	got, err := func() ([]byte, error) {
		c, err := net.Dial("tcp", h.addr("l"))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.Write(append(ppHeader(t, 2, "203.0.113.7:5555", "192.0.2.1:1521"), "hello"...))
		return exchange(c.(*net.TCPConn), []byte(" world"), 2*time.Second)
	}()
	if err != nil || string(got) != "hello world" {
		t.Fatalf("trusted client with a whole header: %q, %v; rejected as proxy_missing: %v", got, err,
			counter(h.m.SessionsRejected, "l", "proxy_missing"))
	}
}

// A load balancer's health check on a PROXY listener: HAProxy's `server ...
// send-proxy-v2 check` (or send-proxy: "PROXY UNKNOWN") opens a connection,
// sends a LOCAL header and resets it without a byte more, every 2 s; a
// tnsguard upstream's check does the same and closes with a FIN. It is not
// an app: no backend dial, no session, no reset counted or logged (a
// reset each interval filled the log's warnings and /api/resets with the
// balancer's address and fed TnsguardResetRateHigh). A LOCAL connection
// that does send bytes is the balancer's own traffic, and is served.
func TestProxyLocalHealthCheckIsNotASession(t *testing.T) {
	be, seen := ppBackend(t, false)
	h := startProxy(t, ppConfig(be.addr(), `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
proxy_header_timeout = "300ms"`, ""))
	addr := h.addr("l")
	v2Local := append(append([]byte{}, proxyproto.SIGV2...), 0x20, 0x00, 0x00, 0x00) // what HAProxy sends
	local := [][]byte{
		v2Local,
		[]byte("PROXY UNKNOWN\r\n"),
		append(append([]byte{}, proxyproto.SIGV2...), 0x20, 0x11, 0x00, 0x0c, 127, 0, 0, 1, 127, 0, 0, 1, 0x15, 0xb3, 0x05, 0xf1),
	}
	for _, hdr := range local {
		for _, reset := range []bool{true, false} { // HAProxy resets; a tnsguard upstream closes
			c := dialFrom(t, "127.0.0.1", addr)
			if _, err := c.Write(hdr); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // the header is read before the check ends
			if reset {
				c.SetLinger(0)
			}
			c.Close()
		}
	}
	time.Sleep(300 * time.Millisecond)
	waitFor(t, 2*time.Second, "no live session", func() bool { return len(h.p.liveSessions()) == 0 })
	if n := len(be.accepted()); n != 0 {
		t.Errorf("the backend was dialed %d times for %d health checks", n, 2*len(local))
	}
	if v := sumCounters(t, h.m.Resets); v != 0 {
		t.Errorf("tnsguard_resets_total = %v for health checks", v)
	}
	if v := sumCounters(t, h.m.SessionsTotal); v != 0 {
		t.Errorf("tnsguard_sessions_total = %v for health checks", v)
	}

	// The balancer's own traffic under a LOCAL header: bytes with the
	// header, after it, or after proxy_header_timeout (a protocol where
	// the server speaks first is dialed then) reach the backend as usual.
	for _, pause := range []time.Duration{0, 50 * time.Millisecond, 500 * time.Millisecond} {
		c := dialFrom(t, "127.0.0.1", addr)
		if pause > 0 {
			c.Write(v2Local)
			time.Sleep(pause)
			c.Write([]byte("own"))
		} else {
			c.Write(append(append([]byte{}, v2Local...), "own"...))
		}
		if got, err := exchange(c, nil, 2*time.Second); err != nil || string(got) != "own" {
			t.Fatalf("LOCAL connection with data after %v: %q, %v", pause, got, err)
		}
		if s := <-seen; string(s.data) != "own" {
			t.Fatalf("backend got %q", s.data)
		}
	}
}

// A PROXY v2 header for a transport tnsguard does not proxy is refused
// with its family and protocol in words: the log said "PROXY header for
// 49" for a UNIX stream socket.
func TestTransportNameSaysFamilyAndProtocol(t *testing.T) {
	for b, want := range map[byte]string{
		0x31: "a UNIX socket, stream",
		0x12: "IPv4, datagram",
		0x22: "IPv6, datagram",
		0x00: "an unspecified family, unspecified",
		0x47: "transport 0x47",
	} {
		if got := transportName(b); got != want {
			t.Errorf("transportName(0x%02x) = %q, want %q", b, got, want)
		}
	}
}
