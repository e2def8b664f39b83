package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func withListenerKeys(cfg, keys string) string {
	return strings.Replace(cfg, "backend = \"b\"\n  [listener.keepalive]", "backend = \"b\"\n"+keys+"\n  [listener.keepalive]", 1)
}

// A session over max_sessions is closed at once (reset) and counted; the
// ones inside the limit are untouched.
func TestMaxSessions(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, withListenerKeys(oneBackendConfig(be.addr()), "max_sessions = 2\nmax_sessions_per_source = 0"))
	a, b := h.dial("l"), h.dial("l")
	for _, c := range []io.ReadWriter{a, b} {
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// The reset may come before the dial even returns.
	start := time.Now()
	over, err := net.Dial("tcp", h.addr("l"))
	took := time.Since(start)
	if err == nil {
		defer over.Close()
		took, err = readErr(over, 2*time.Second)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Fatalf("third session: %v, want it closed at once", err)
	}
	if took > 500*time.Millisecond {
		t.Fatalf("third session closed after %v", took)
	}
	waitFor(t, time.Second, "rejection counted", func() bool {
		return counter(h.m.SessionsRejected, "l", "max_sessions") == 1
	})
	a.Write([]byte("y"))
	if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
		t.Fatalf("a session inside the limit broke: %v", err)
	}
}

// refusedPerSource checks that a new session to listener "l" is closed at
// once, and counted as the first refusal for max_sessions_per_source.
func refusedPerSource(t *testing.T, h *harness, what string) {
	t.Helper()
	over, err := net.Dial("tcp", h.addr("l")) // the reset may come before the dial returns
	if err == nil {
		defer over.Close()
		_, err = readErr(over, 2*time.Second)
	}
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: %v, want refused", what, err)
	}
	waitFor(t, time.Second, "rejection counted", func() bool {
		return counter(h.m.SessionsRejected, "l", "max_sessions_per_source") == 1
	})
}

func TestMaxSessionsPerSource(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, withListenerKeys(oneBackendConfig(be.addr()), "max_sessions_per_source = 1"))
	a := h.dial("l")
	a.Write([]byte("x"))
	io.ReadFull(a, make([]byte, 1))
	refusedPerSource(t, h, "second session from the same address")
	a.Close()
	l := h.p.listeners["l"]
	waitFor(t, 2*time.Second, "slot freed", func() bool { return l.active.Load() == 0 })
	c := h.dial("l")
	c.Write([]byte("z"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("after the first closed, a new session from the source failed: %v", err)
	}
}

// A reload that sets max_sessions_per_source enforces it at once on the
// sessions already open: a source with three sessions gets no fourth under
// a limit of three, and gets one again once one of its sessions ends.
func TestMaxSessionsPerSourceSetByReload(t *testing.T) {
	be := newBackend(t, echo)
	cfg := oneBackendConfig(be.addr())
	h := startProxy(t, cfg)
	var open []*net.TCPConn
	for range 3 {
		c := h.dial("l")
		echoed(t, c, "x")
		open = append(open, c)
	}
	limited := withListenerKeys(cfg, "max_sessions_per_source = 3") // the same listen text: the same socket
	if err := h.p.Apply(mustParse(t, limited)); err != nil {
		t.Fatal(err)
	}
	refusedPerSource(t, h, "fourth session from a source with three, after the reload set a limit of 3")
	open[0].Close()
	l := h.p.listeners["l"]
	waitFor(t, 2*time.Second, "a slot freed", func() bool { return l.active.Load() == 2 })
	echoed(t, h.dial("l"), "again")
}

// An app that is not in allow is refused before any backend dial.
func TestAllowList(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, withListenerKeys(oneBackendConfig(be.addr()), `allow = ["10.0.0.0/8"]`))
	// The reset may come before the dial even returns.
	c, err := net.Dial("tcp", h.addr("l"))
	if err == nil {
		defer c.Close()
		_, err = readErr(c, 2*time.Second)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app outside allow: %v, want ECONNRESET", err)
	}
	if n := len(be.accepted()); n != 0 {
		t.Fatalf("backend saw %d connections from a refused app", n)
	}
	if v := counter(h.m.SessionsRejected, "l", "not_allowed"); v != 1 {
		t.Fatalf("rejected{not_allowed} = %v", v)
	}
}

// idle_timeout ends sessions that moved nothing for that long, with a reset
// to the app and its own cause.
func TestIdleTimeout(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, withListenerKeys(oneBackendConfig(be.addr()), `idle_timeout = "1s"`))
	busy, idle := h.dial("l"), h.dial("l")
	for _, c := range []io.ReadWriter{busy, idle} {
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
	}
	stop := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(stop) { // the busy session keeps moving bytes
		busy.Write([]byte("y"))
		if _, err := io.ReadFull(busy, make([]byte, 1)); err != nil {
			t.Fatalf("busy session ended: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := readErr(idle, time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("idle session: %v, want ECONNRESET", err)
	}
	waitFor(t, time.Second, "idle_timeout counted", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "idle_timeout") == 1
	})
}

// A refused connection's debug line names the app as a session's lines
// do: its address and port (several apps share a host), and the load
// balancer that sent its PROXY header.
func TestRejectedLineNamesTheApp(t *testing.T) {
	be := newBackend(t, echo)
	logs := &logBuffer{}
	debug := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
	h := startProxyWith(t, ppConfig(be.addr(), `proxy_protocol = "optional"
trusted_proxies = ["127.0.0.1/32"]
allow = ["192.0.2.0/24"]`, ""), debug)
	refused := func(hdr []byte) *net.TCPConn {
		c := h.dial("l")
		c.Write(append(hdr, 'x'))
		if _, err := readErr(c, 2*time.Second); err == nil {
			t.Fatal("a source outside allow was served")
		}
		return c
	}
	direct := refused(nil)
	line := func(want string) {
		t.Helper()
		waitFor(t, 2*time.Second, "the rejected line", func() bool {
			return len(logs.lines("connection rejected", "reason=not_allowed", want)) == 1
		})
	}
	line("client=" + direct.LocalAddr().String())
	if got := logs.lines("connection rejected", "via="); len(got) != 0 {
		t.Errorf("a connection with no PROXY header named a load balancer: %s", got[0])
	}
	refused(ppHeader(t, 2, "203.0.113.7:40123", "198.51.100.1:1521"))
	line("client=203.0.113.7:40123 via=127.0.0.1")
}
