package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/keepalive"
)

// 256 MiB of random bytes go through tnsguard to an echo server and back,
// unchanged, with the half-close carried both ways: the app's FIN reaches
// the backend, and the backend's FIN comes back after the last byte.
func TestBulkEchoWithHalfClose(t *testing.T) {
	size := 256 << 20
	if testing.Short() {
		size = 16 << 20
	}
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")

	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 1<<20)
		for n := 0; n < size; n += len(chunk) {
			rand.Read(chunk)
			sent.Write(chunk)
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- c.CloseWrite() // app half-closes; the echo server then half-closes back
	}()
	got := sha256.New()
	n, err := io.Copy(got, c) // ends at the backend's FIN, carried through
	if err != nil {
		t.Fatalf("read back: %v after %d bytes", err, n)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != int64(size) {
		t.Fatalf("got %d bytes back, sent %d", n, size)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("SHA-256 of the echoed bytes differs from what was sent")
	}
	waitFor(t, 2*time.Second, "session recorded as ok", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 1
	})
	if v := counter(h.m.Bytes, "l", "b", "to_backend"); v != float64(size) {
		t.Errorf("tnsguard_bytes_total to_backend = %v, want %d", v, size)
	}
	if v := counter(h.m.Bytes, "l", "b", "to_client"); v != float64(size) {
		t.Errorf("tnsguard_bytes_total to_client = %v, want %d", v, size)
	}
}

// The backend half-closes first: the app reads EOF but can still send,
// and the backend still receives.
func TestHalfCloseFromBackend(t *testing.T) {
	got := make(chan []byte, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- b
		c.Close()
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "banner" {
		t.Fatalf("app read %q, %v; want banner then EOF", b, err)
	}
	if _, err := c.Write([]byte("after-fin")); err != nil {
		t.Fatalf("app write after backend FIN: %v", err)
	}
	c.CloseWrite()
	select {
	case b := <-got:
		if string(b) != "after-fin" {
			t.Fatalf("backend got %q", b)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("backend never saw the app's bytes and FIN")
	}
}

// A backend RST mid-session reaches the app as ECONNRESET (not EOF) within
// 100 ms, and is counted as side=backend cause=rst.
func TestBackendResetReachesApp(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write(buf)
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resetConn(be.accepted()[0])
	_, err := readErr(c, 2*time.Second)
	took := time.Since(start)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v, want ECONNRESET", err)
	}
	if took > 100*time.Millisecond {
		t.Fatalf("app saw the reset after %v, want within 100ms", took)
	}
	srv := be.addr()
	waitFor(t, time.Second, "reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", srv, "backend", "active", "rst") == 1
	})
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "reset"); v != 1 {
		t.Errorf("sessions_total{outcome=reset} = %v", v)
	}
	t.Logf("app saw ECONNRESET %v after the backend's RST", took)
}

// An app RST closes the backend leg within 100 ms, so the database does not
// keep a zombie session.
func TestAppResetClosesBackend(t *testing.T) {
	closed := make(chan time.Time, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("x"))
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				closed <- time.Now()
				return
			}
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resetConn(c)
	select {
	case at := <-closed:
		if d := at.Sub(start); d > 100*time.Millisecond {
			t.Fatalf("backend saw the close after %v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("backend leg still open 1s after the app's RST")
	}
	waitFor(t, time.Second, "client reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "rst") == 1
	})
}

// Keepalive and user timeout of both legs are read back from the sockets;
// after a reload that changes them, a new session has the new values (the
// app's leg inherits them from the listening socket, which the reload
// keeps).
func TestKeepaliveOnBothLegs(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	check := func(listener string, wantClient, wantBackend keepalive.Settings) {
		t.Helper()
		c := h.dial(listener)
		defer c.Close()
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		legSettings(t, sessionOf(t, h.p, c), wantClient, wantBackend)
	}
	check("l", keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second},
		keepalive.Settings{Idle: 11 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})

	next := strings.NewReplacer(`idle = "7s"`, `idle = "13s"`, `count = 5`, `count = 2`, `user_timeout = "31s"`, `user_timeout = "0s"`,
		`idle = "11s"`, `idle = "17s"`).Replace(oneBackendConfig(be.addr()))
	if err := h.p.Apply(mustParse(t, next)); err != nil {
		t.Fatal(err)
	}
	check("l", keepalive.Settings{Idle: 13 * time.Second, Interval: 3 * time.Second, Count: 2},
		keepalive.Settings{Idle: 17 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})

	// A renamed listener keeps its socket (handed over through a file
	// descriptor, reload.go); its sessions still get the configured values,
	// not Go's defaults for a listener made from a file.
	renamed := strings.Replace(listenerAt(next, h.addr("l")), `name = "l"`, `name = "m"`, 1)
	if err := h.p.Apply(mustParse(t, renamed)); err != nil {
		t.Fatal(err)
	}
	check("m", keepalive.Settings{Idle: 13 * time.Second, Interval: 3 * time.Second, Count: 2},
		keepalive.Settings{Idle: 17 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: 19 * time.Second})
}

// An app whose host speaks Multipath TCP (mptcpize, a Go client with
// GODEBUG=multipathtcp=1) still gets a plain TCP leg with the configured
// keepalive and user timeout. Go makes listeners MPTCP by default, and an
// MPTCP socket takes no TCP_USER_TIMEOUT (nor, on older kernels, keepalive
// timing): the leg ran on the kernel's defaults and every such connection
// logged a warning.
func TestMPTCPAppGetsATCPLegWithItsKeepalive(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 262) // IPPROTO_MPTCP
	if err != nil {
		t.Skipf("this kernel has no MPTCP: %v", err)
	}
	syscall.Close(fd)
	be := newBackend(t, echo)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
	var d net.Dialer
	d.SetMultipathTCP(true)
	nc, err := d.Dial("tcp", h.addr("l"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.TCPConn)
	echoed(t, c, "hello")
	want := keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second}
	sessionOf(t, h.p, c).withLegs(func(client, _ syscall.Conn) {
		if got, err := keepalive.Read(client); err != nil || got != want {
			t.Errorf("app leg of an MPTCP client: %+v (error %v), want %+v", got, err, want)
		}
	})
	if l := logs.lines("keepalive"); len(l) != 0 {
		t.Errorf("warned: %q", l)
	}
}

// With a backend leg's keepalive of LateFloor or more, a dial sets none of
// it: a session that ends within a second never pays those five system
// calls. One that lasts has the configured values within 2s, whether it is
// live or dormant, and keeps them.
func TestBackendKeepaliveSetOnceTheSessionLasts(t *testing.T) {
	be := newBackend(t, echoNoAlloc)
	cfg := strings.NewReplacer(`idle = "11s"`, `idle = "30s"`, `user_timeout = "19s"`, `user_timeout = "60s"`).Replace(oneBackendConfig(be.addr()))
	h := startProxy(t, cfg)
	appLeg := keepalive.Settings{Idle: 7 * time.Second, Interval: 3 * time.Second, Count: 5, UserTimeout: 31 * time.Second}
	dbLeg := keepalive.Settings{Idle: 30 * time.Second, Interval: 2 * time.Second, Count: 4, UserTimeout: time.Minute}

	live := h.dial("l")
	echoed(t, live, "hello")
	s := sessionOf(t, h.p, live)
	legSettings(t, s, appLeg, keepalive.Settings{}) // what a new socket has
	busy := strings.Repeat("busy", 5<<10)           // fills the read buffer: live (not dormant, not in the lot) all along
	for start := time.Now(); ; {
		echoed(t, live, busy)
		if s.isDormant() {
			t.Fatal("a busy session went dormant")
		}
		var got keepalive.Settings
		s.withLegs(func(_, backend syscall.Conn) { got, _ = keepalive.Read(backend) })
		if got == dbLeg {
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("backend leg after 3s: %+v, want %+v", got, dbLeg)
		}
		time.Sleep(20 * time.Millisecond)
	}

	parkSoon(t, h, 30*time.Millisecond)
	asleep := h.dial("l")
	echoed(t, asleep, "hello")
	d := sessionOf(t, h.p, asleep)
	waitFor(t, 2*time.Second, "the session dormant", d.isDormant)
	legSettings(t, d, appLeg, keepalive.Settings{})
	time.Sleep(2200 * time.Millisecond) // past keepaliveAfter and the next housekeeping round
	if !d.isDormant() {
		t.Fatal("setting keepalive woke the session")
	}
	legSettings(t, d, appLeg, dbLeg)
	echoed(t, asleep, "awake")
	legSettings(t, d, appLeg, dbLeg)
}

// A session re-dialing past keepaliveAfter (a switchover: REFUSE after
// REFUSE for seconds) closes each failed backend connection before it
// detaches it, and housekeeping can arm the keepalive in between, on the
// closed conn. That is no keepalive failure: it logged a warn line, "cannot
// set keepalive on the backend connection ... use of closed network
// connection" (two in a 20 s switchover of 400 go-ora and node-oracledb
// apps, refuse in retry_on). Here the session's backend is closed as
// dropBackend does, and housekeeping's call comes before detach.
func TestKeepaliveOnAClosedBackendIsNoWarning(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) }) // silent: the session stays in its opening
	cfg := strings.NewReplacer(`idle = "11s"`, `idle = "30s"`, `user_timeout = "19s"`, `user_timeout = "60s"`).Replace(oneBackendConfig(be.addr()))
	h, logs := startProxyLog(t, cfg)
	app := h.dial("l")
	if _, err := app.Write([]byte("opening")); err != nil {
		t.Fatal(err)
	}
	s := sessionOf(t, h.p, app)
	waitFor(t, 2*time.Second, "the backend attached", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.conn != nil
	})
	s.mu.Lock()
	if !s.kaLate {
		s.mu.Unlock()
		t.Fatal("the backend's keepalive is not left to housekeeping: the config does not test that")
	}
	s.conn.Close() // dropBackend, before detach
	s.mu.Unlock()
	s.armKeepalive(time.Now().Add(2 * keepaliveAfter))
	if l := logs.lines("cannot set keepalive"); len(l) != 0 {
		t.Fatalf("a warning about a connection tnsguard had just closed itself: %q", l)
	}
}

// A backend's last message and its end arrive together (written, then
// closed or reset at once): the app gets both at once. The read that
// returns the message also takes the FIN, so no readiness edge follows it;
// a pump that waited for one after a short read passed the end on only at
// its idle deadline, 100 ms later.
func TestLastMessageAndEndArriveTogether(t *testing.T) {
	lastMessageAndEnd(t, func(t *testing.T, h *harness) *net.TCPConn { // busy_test.go
		c := h.dial("l")
		pings(t, c, 2) // established, the pump running
		return c
	})
}

// A backend whose every server has weight 0 can take no session (weight 0
// is "never used"): check must not pass it, and /readyz must not say 200
// while every app is refused.
func TestAllServersWeightZero(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxyUnlessRefused(t, strings.Replace(oneBackendConfig(be.addr()), "address = ", "weight = 0\n  address = ", 1))
	if h == nil {
		return // check refuses the file
	}
	c := h.dial("l")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	err := roundTrip(c, []byte("hello"))
	if ok, _ := h.p.Ready(); ok && err != nil {
		t.Fatalf("ready, yet the app's session failed: %v (rejected no_backend: %v)", err,
			counter(h.m.SessionsRejected, "l", "no_backend"))
	}
}

// Keepalive values the kernel refuses (TCP_KEEPCNT above 127, TCP_KEEPIDLE
// or TCP_KEEPINTVL above 32767 s) pass check; they must not make every
// backend dial fail.
func TestKeepaliveOutOfKernelRange(t *testing.T) {
	be := newBackend(t, echo)
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  count = 4\n", "  count = 128\n", 1)
	h := startProxyUnlessRefused(t, cfg)
	if h == nil {
		return // check refuses the file
	}
	c := h.dial("l")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := roundTrip(c, []byte("hello")); err != nil {
		t.Fatalf("session with backend keepalive.count = 128 (accepted by check): %v; backend saw %d connections",
			err, len(be.accepted()))
	}
}

// startProxyUnlessRefused is startProxy, or nil when the file does not
// validate (then `tnsguard check` and start-up refuse it too).
func startProxyUnlessRefused(t *testing.T, toml string) *harness {
	t.Helper()
	if _, _, err := config.Parse([]byte(toml), "test.toml"); err != nil {
		t.Logf("refused: %v", err)
		return nil
	}
	return startProxy(t, toml)
}
