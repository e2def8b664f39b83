package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A middlebox that forgot an idle session resets it on the first bytes
// after the pause: that death is counted in the idle phase (not active),
// and the link logs, once, the keepalive that would have prevented it.
func TestIdleDeathAdvice(t *testing.T) {
	// The "database" answers the first message, then, like a load balancer
	// that forgot the flow, resets on the next bytes after a pause.
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		io.ReadFull(c, buf)
		resetConn(c)
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "idle = \"11s\"", "idle = \"2s\"", 1)
	h, logs := startProxyLog(t, cfg)
	for i := 0; i < 2; i++ {
		c := h.dial("l")
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		// Over a second, and shorter than the backend keepalive idle (2s):
		// no probe is answered in the pause, which the reset lost. (After
		// a probe answered in it, the path knew the flow after keepalive
		// idle, and its death is no advice's:
		// TestIdleDeathAfterAnAnsweredKeepaliveProbeGivesNoAdvice.)
		time.Sleep(1300 * time.Millisecond)
		c.Write([]byte("y"))
		if _, err := readErr(c, 2*time.Second); err == nil {
			t.Fatal("no reset")
		}
	}
	waitFor(t, time.Second, "idle-phase resets", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 2
	})
	advice := logs.lines("sessions on this link die while idle")
	if len(advice) != 1 {
		t.Fatalf("%d advice lines, want exactly 1 (at most once an hour):\n%s", len(advice), strings.Join(advice, "\n"))
	}
	for _, want := range []string{"path_idle_timeout=1s", "table=\"[backend.keepalive] of backend b\""} {
		if !strings.Contains(advice[0], want) {
			t.Errorf("advice lacks %s: %s", want, advice[0])
		}
	}
}

// The same death after a pause shorter than keepalive idle: a load balancer
// that forgets flows sooner than the keepalive refreshes them resets the
// first bytes after the pause. The pause lost the flow, so the end is
// idle, with the pause as its idle time, as when such a middlebox drops
// the bytes (phaseNow); until the fix a reset counted idle only after a
// pause of keepalive idle, so the advice never came for the keepalive
// idle that was too long.
func TestResetAfterAPauseShorterThanKeepaliveIsIdle(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		io.ReadFull(c, buf)
		resetConn(c)
	})
	h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // backend keepalive idle 11s
	c := h.dial("l")
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	c.Write([]byte("y"))
	if _, err := readErr(c, 2*time.Second); err == nil {
		t.Fatal("no reset")
	}
	waitFor(t, time.Second, "an idle-phase reset", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
	})
	waitFor(t, 2*time.Second, "the keepalive advice, shortest_idle_at_death=2s", func() bool {
		advice := logs.lines("sessions on this link die while idle")
		return len(advice) == 1 && strings.Contains(advice[0], "shortest_idle_at_death=2s")
	})
}

// resetOnSecond is a "database" that answers the first byte, then, like a
// load balancer that forgot the flow, resets on the next bytes.
func resetOnSecond(c *net.TCPConn) {
	buf := make([]byte, 1)
	io.ReadFull(c, buf)
	c.Write(buf)
	io.ReadFull(c, buf)
	resetConn(c)
}

// idleDeath sends a byte on c after pause and waits for the reset.
func idleDeath(t *testing.T, c *net.TCPConn, pause time.Duration) {
	t.Helper()
	time.Sleep(pause)
	c.Write([]byte("y"))
	if _, err := readErr(c, 2*time.Second); err == nil {
		t.Fatal("no reset")
	}
}

// The advice says the keepalive idle in force on the leg that died. A
// reload that changed [backend.keepalive] replaces the backend, and the
// sessions already open keep the one they began with (s.backend) while
// their socket and their idle/active call follow the reload (s.ka): until
// the fix the advice said keepalive_idle_now of the config before the
// reload, the very value the operator had just replaced.
func TestIdleDeathAdviceAfterReloadSaysTheKeepaliveInForce(t *testing.T) {
	be := newBackend(t, resetOnSecond)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // backend keepalive idle 11s
	c := h.dial("l")
	echoed(t, c, "x")
	reloaded := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"11s\"\n  interval = \"2s\"", "  idle = \"2s\"\n  interval = \"1s\"", 1)
	if err := h.p.Apply(mustParse(t, reloaded)); err != nil {
		t.Fatal(err)
	}
	// Shorter than the new idle: no probe is answered in the pause, which
	// the reset that ends it lost (a pause longer than the idle would have
	// its probe answered, and a death after that is no advice's: the path
	// knew the flow after keepalive idle, TestIdleDeathAfterAnAnsweredKeepaliveProbeGivesNoAdvice).
	idleDeath(t, c, 1500*time.Millisecond)
	waitFor(t, time.Second, "an idle-phase reset", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
	})
	waitFor(t, time.Second, "the advice", func() bool { // logged just after the count
		return len(logs.lines("sessions on this link die while idle")) > 0
	})
	advice := logs.lines("sessions on this link die while idle")
	if !strings.Contains(advice[0], "keepalive_idle_now=2s") {
		t.Errorf("advice does not give the keepalive idle in force (2s): %s", advice[0])
	}
}

// A session whose path was forgotten before a reload shortened keepalive
// dies after it (its next bytes, or the probe the retune sends), and the
// pause it died of began under the old keepalive. The advice derived from
// that pause asks for a longer idle than the one the reload just set
// (an operator who pasted tnsguard probe's values would be told to undo
// them), or for the very values the reload set. Neither is given.
func TestNoAdviceToLengthenTheReloadedKeepalive(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before time.Duration // the pause before the reload
	}{
		{"longer", 5 * time.Second},   // pause 6s: path_idle_timeout 6s, idle 2s
		{"the same", 2 * time.Second}, // pause 3s: path_idle_timeout 3s, what was set
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t, resetOnSecond)
			h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // backend keepalive idle 11s
			c := h.dial("l")
			echoed(t, c, "x")
			time.Sleep(tc.before) // the middlebox forgets the flow in here
			reloaded := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"11s\"\n  interval = \"2s\"\n  count = 4\n  user_timeout = \"19s\"",
				"  path_idle_timeout = \"3s\"", 1) // idle 1s, interval 1s, count 3
			if err := h.p.Apply(mustParse(t, reloaded)); err != nil {
				t.Fatal(err)
			}
			idleDeath(t, c, time.Second)
			waitFor(t, time.Second, "an idle-phase reset", func() bool {
				return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
			})
			time.Sleep(200 * time.Millisecond) // the advice is logged just after the count
			if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
				t.Errorf("advice against the keepalive just set (idle 1s, interval 1s, count 3):\n%s", strings.Join(advice, "\n"))
			}
		})
	}
}

// A database that stops reading a bulk load (its window closed, its TCP
// answering the zero-window probes) for longer than the backend leg's
// user_timeout is cut by the kernel all the same (Linux 5.11 and later:
// TCP_USER_TIMEOUT bounds zero-window probing too). Nothing was idle: the
// app was sending all along, so the end is active, with no keepalive
// advice. Until the fix no byte had moved for the user timeout, the leg had
// nothing to retransmit, and the end counted idle, with advice blaming a
// middlebox and asking for path_idle_timeout = the user timeout (a reload
// that sets a user_timeout shorter than such a wait does it to the live
// sessions: TestLabReloadedUserTimeoutAndLiveSessions).
func TestStalledUploadCutByUserTimeoutIsActive(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		time.Sleep(8 * time.Second) // busy: reads nothing
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"11s\"\n  interval = \"2s\"\n  count = 4\n  user_timeout = \"19s\"",
		"  idle = \"1s\"\n  interval = \"1s\"\n  count = 3\n  user_timeout = \"2s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	echoed(t, c, "x")
	go c.Write(make([]byte, 64<<20))
	if d, err := readErr(c, 7*time.Second); err == nil || d > 6*time.Second {
		t.Fatalf("the stalled upload was not cut by the user timeout: %v after %v", err, d)
	}
	waitFor(t, time.Second, "the reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "timeout")+
			counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "timeout") == 1
	})
	if n := counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "timeout"); n != 1 {
		t.Errorf("the cut upload counted idle, want active")
	}
	time.Sleep(200 * time.Millisecond) // the advice is logged just after the count
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice for a database that stopped reading:\n%s", strings.Join(advice, "\n"))
	}
}

// The same for an app that stops reading a result set for longer than its
// leg's user_timeout: cut by the kernel, counted active, no advice.
func TestStalledResultCutByUserTimeoutIsActive(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		io.ReadFull(c, buf)
		c.Write(make([]byte, 64<<20)) // a result set the app does not read
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"",
		"  idle = \"1s\"\n  interval = \"1s\"\n  count = 3\n  user_timeout = \"2s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	echoed(t, c, "x")
	c.Write([]byte("y"))
	waitFor(t, 8*time.Second, "the reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "timeout")+
			counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "timeout") == 1
	})
	if n := counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "timeout"); n != 1 {
		t.Errorf("the stalled result counted idle, want active")
	}
	time.Sleep(200 * time.Millisecond) // the advice is logged just after the count
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice for an app that stopped reading:\n%s", strings.Join(advice, "\n"))
	}
}

// With keepalive off on the leg (idle = "0s", as a reload may set it), a
// load balancer that forgot the flow in a pause and resets the bytes that
// resume it still lost the flow in the pause: the end is idle, and the
// advice comes (to turn keepalive on), as with keepalive on. Until the fix
// every end of a leg without keepalive counted active, so neither the idle
// panels, TnsguardIdleResets nor the advice ever said why the pool died.
func TestResetAfterAPauseWithKeepaliveOffIsIdle(t *testing.T) {
	be := newBackend(t, resetOnSecond)
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"11s\"\n  interval = \"2s\"\n  count = 4\n  user_timeout = \"19s\"",
		"  idle = \"0s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	echoed(t, c, "x")
	idleDeath(t, c, 2*time.Second)
	waitFor(t, time.Second, "the reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst")+
			counter(h.m.Resets, "l", "b", be.addr(), "backend", "active", "rst") == 1
	})
	if n := counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst"); n != 1 {
		t.Errorf("a reset after a 2s pause with keepalive off counted active, want idle")
	}
	// The advice is logged just after the count, by the session's goroutine:
	// on a loaded machine that can be well after the count is seen.
	waitFor(t, 2*time.Second, "the keepalive advice", func() bool {
		return len(logs.lines("sessions on this link die while idle")) > 0
	})
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 1 {
		t.Errorf("%d advice lines, want 1", len(advice))
	}
}

// A database that resets a session while its result set waits for an app
// that reads slowly (an app across a slow VPN, or one that stopped reading
// for a while): tnsguard had not read the backend for longer than its
// keepalive idle because the app's window was closed, not because the
// path was idle. The backend leg owed nothing and was never silent (its
// peer had bytes queued for tnsguard the whole time, so a middlebox on it
// saw zero-window probes), so the end is active, with no keepalive advice.
func TestBackendResetWhileResultWaitsForAppIsActive(t *testing.T) {
	c := resetWhileResultWaits(t, "waited for a slow app", func(c *net.TCPConn) { fillTowards(t, c) })
	if _, err := readErr(c, 5*time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app saw %v, want ECONNRESET", err)
	}
}

// resetWhileResultWaits has a database send a result (send) that the app
// does not read, and reset the session 2 s later, past the backend leg's
// keepalive idle (1 s): the reset must count active, with no keepalive
// advice. It returns the app's conn.
func resetWhileResultWaits(t *testing.T, what string, send func(*net.TCPConn)) *net.TCPConn {
	t.Helper()
	be := newBackend(t, func(c *net.TCPConn) {
		b := make([]byte, 1)
		io.ReadFull(c, b)
		send(c)                     // a result set the app does not read now
		time.Sleep(2 * time.Second) // longer than the backend leg's keepalive idle
		resetConn(c)
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"11s\"\n  interval = \"2s\"\n  count = 4\n  user_timeout = \"19s\"",
		"  idle = \"1s\"\n  interval = \"1s\"\n  count = 3\n  user_timeout = \"4s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	c.Write([]byte("q"))
	srv := be.addr()
	waitFor(t, 12*time.Second, "the backend's reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", srv, "backend", "active", "rst")+
			counter(h.m.Resets, "l", "b", srv, "backend", "idle", "rst") == 1
	})
	if n := counter(h.m.Resets, "l", "b", srv, "backend", "active", "rst"); n != 1 {
		t.Errorf("a backend reset while its result %s counted idle, want active", what)
	}
	time.Sleep(200 * time.Millisecond) // the advice is logged just after the count
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice for a result that %s:\n%s", what, strings.Join(advice, "\n"))
	}
	return c
}

// The same with a result that fits in the kernel's buffers between the
// proxy and the app (256 KiB: the app's receive buffer and the proxy's
// send buffer toward it, which Linux grows to 4 MiB): the backend's bytes
// all reached the proxy and were passed on, so no pump waited for room,
// but the app had not taken them when the database reset its session. The
// session owed delivery all the same; a review measured results of 256 KiB
// to 3 MiB, read by an app at 40 KB/s, counted idle, with the keepalive
// advice, and only larger ones active. On the app's side likewise: an
// upload that the database had not read when the app's leg failed.
func TestResetWhileBufferedBytesWaitForTheOtherSideIsActive(t *testing.T) {
	const size = 256 << 10
	fast := "  idle = \"1s\"\n  interval = \"1s\"\n  count = 3\n  user_timeout = \"4s\""
	t.Run("backend", func(t *testing.T) {
		resetWhileResultWaits(t, "waited in the buffers for the app", func(c *net.TCPConn) { c.Write(make([]byte, size)) })
	})
	t.Run("app", func(t *testing.T) {
		release := make(chan struct{})
		be := newBackend(t, func(c *net.TCPConn) {
			b := make([]byte, 1)
			io.ReadFull(c, b)
			c.Write(b)
			<-release // reads nothing more: the upload waits for it
		})
		t.Cleanup(func() { close(release) }) // before the backend's cleanup, which waits for its handlers
		cfg := strings.Replace(oneBackendConfig(be.addr()), "  idle = \"7s\"\n  interval = \"3s\"\n  count = 5\n  user_timeout = \"31s\"", fast, 1)
		h, logs := startProxyLog(t, cfg)
		c := h.dial("l")
		echoed(t, c, "q")
		if _, err := c.Write(make([]byte, size)); err != nil { // an upload the database does not read now
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // longer than the app leg's keepalive idle
		resetConn(c)
		srv := be.addr()
		waitFor(t, 5*time.Second, "the app's reset counted", func() bool {
			return counter(h.m.Resets, "l", "b", srv, "client", "active", "rst")+
				counter(h.m.Resets, "l", "b", srv, "client", "idle", "rst") == 1
		})
		if n := counter(h.m.Resets, "l", "b", srv, "client", "active", "rst"); n != 1 {
			t.Errorf("an app reset while its upload waited in the buffers for the database counted idle, want active")
		}
		time.Sleep(200 * time.Millisecond)
		if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
			t.Errorf("keepalive advice for an upload that waited for the database:\n%s", strings.Join(advice, "\n"))
		}
	})
}

// An app that gives up on its first answer and closes (its own timeout)
// before the answer comes: tnsguard writes the late answer into the closed
// socket, the app's kernel resets it, and that reset (EPIPE: it came after
// the app's FIN) is the app's close, not a middlebox that forgot an idle
// flow. Found under `ulimit -n 64` with pooled apps whose requests waited
// in the listen backlog, then for an fd for their backend dial, until the
// apps' 5 s socket timeout: until the fix each such session counted
// side=client phase=idle cause=rst (the pause was the wait for the first
// answer), fired TnsguardIdleResets and logged the keepalive advice,
// "a middlebox forgets them", with no middlebox on the path. The same
// happens without an fd shortage when the server's first answer is late,
// or any answer to an app that gives up within half a second (a call
// timeout) and closes.
func TestResetOfAnAppThatClosedBeforeItsAnswerIsNotIdle(t *testing.T) {
	for _, late := range []string{"out of fds", "slow answer", "slow answer, established"} {
		t.Run(late, func(t *testing.T) {
			release := make(chan struct{})
			// The "database" echoes the request (after 1.5 s when slow),
			// then keeps its connection until the test ends, as a server
			// that takes a moment to close after the app's FIN.
			be := newBackend(t, func(c *net.TCPConn) {
				buf := make([]byte, 5)
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if late == "slow answer, established" {
					c.Write(buf) // the first answer at once: the late one is the next
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
				}
				if late != "out of fds" {
					time.Sleep(1500 * time.Millisecond)
				}
				c.Write(buf)
				<-release
			})
			t.Cleanup(func() { close(release) }) // before the backend's cleanup, which waits for its handlers

			h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // app keepalive idle 7s, connect_budget 3s
			var hoard fdHoard
			defer hoard.free()
			if late == "out of fds" {
				// Every fd taken but two, the app's socket and its accept:
				// the backend dial fails (EMFILE) and is tried again
				// within connect_budget.
				hoard.grab(t)
				hoard.release(2)
			}
			c := h.dial("l")
			s := sessionOf(t, h.p, c)
			if late == "slow answer, established" {
				echoed(t, c, "hello")
			}
			c.Write([]byte("hello"))
			time.Sleep(200 * time.Millisecond)
			c.Close() // the app gives up: FIN, then its kernel resets what still comes
			if late == "out of fds" {
				time.Sleep(1500 * time.Millisecond)
				hoard.free()
			}
			waitFor(t, 5*time.Second, "the session ended", func() bool {
				for _, l := range h.p.liveSessions() {
					if l == s {
						return false
					}
				}
				return true
			})
			time.Sleep(100 * time.Millisecond) // the advice is logged after the books
			if v := counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "rst"); v != 0 {
				t.Errorf("resets{client,idle,rst} = %v: an app that closed is counted as an idle death (TnsguardIdleResets)", v)
			}
			if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
				t.Errorf("keepalive advice for an app that closed:\n%s", strings.Join(advice, "\n"))
			}
			// Its app left with an answer owed: counted as the app's
			// reset (active, as a result to an app that vanished) or,
			// had the database closed first, as an ordinary end.
			active := counter(h.m.Resets, "l", "b", be.addr(), "client", "active", "rst")
			ok := counter(h.m.SessionsTotal, "l", "b", "other", "ok")
			reset := counter(h.m.SessionsTotal, "l", "b", "other", "reset")
			if active+ok != 1 || reset != active {
				t.Errorf("resets{client,active,rst} = %v, sessions{ok} = %v, sessions{reset} = %v; want one session, ok or an active reset of the app's leg", active, ok, reset)
			}
			for _, l := range logs.lines("session reset") {
				t.Log(l)
			}
		})
	}
}

// The path a review suspected for the ends above, which holds: a dormant
// session out of fds (its reserve spent: fdreserve.go), whose app closes
// after a pause while the wake its FIN needs waits for an fd (dormant.go). The lot passes the database's late
// bytes to the closed socket on the bare fds and the app's kernel resets
// them; once the wake gets its fd, the read finds the FIN and the reset
// (endOfStream). The app's FIN came after the pause, so the app's leg was
// heard after it (TCP_INFO's last ACK): active, no advice.
func TestResetOfAnAppThatClosedWhileItsWakeWaitedIsNotIdle(t *testing.T) {
	release := make(chan struct{})
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(buf)
		}
		<-release
	})
	t.Cleanup(func() { close(release) })
	h, logs := startProxyLog(t, oneBackendConfig(be.addr())) // app keepalive idle 7s
	parkSoon(t, h, 30*time.Millisecond)
	c := h.dial("l")
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	waitFor(t, 2*time.Second, "the session dormant", s.isDormant)
	time.Sleep(1200 * time.Millisecond) // a pause of over a second
	var hoard fdHoard
	defer hoard.free()
	hoard.grabWithReserve(t, h.p) // the reserve too: the wake must wait
	c.Close()                     // FIN: the wake waits for an fd
	time.Sleep(100 * time.Millisecond)
	be.accepted()[0].Write([]byte("late")) // the lot writes it to the closed app: RST
	time.Sleep(300 * time.Millisecond)
	hoard.free() // the wake gets its fds within reviveRetryFor
	waitFor(t, 5*time.Second, "the session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	time.Sleep(100 * time.Millisecond)
	for _, l := range logs.lines("session reset") {
		t.Log(l)
	}
	if v := counter(h.m.Resets, "l", "b", be.addr(), "client", "idle", "rst"); v != 0 {
		t.Errorf("resets{client,idle,rst} = %v: an app that closed is counted as an idle death (TnsguardIdleResets)", v)
	}
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice for an app that closed:\n%s", strings.Join(advice, "\n"))
	}
}

// A database that closes a session (its server process exits: a restart,
// a shutdown, a killed session) sends a FIN, which tnsguard passes on to
// the app. The app's next query, after a pause, runs into the closed
// socket, whose host answers with a reset. That is no middlebox forgetting
// an idle flow: the database said goodbye first. Seen in a soak: each
// restart of a backend server counted its pooled sessions' next queries as
// idle-phase resets (TnsguardIdleResets) and logged keepalive advice to
// shorten the backend's idle to 2 s ("sessions on this link die while
// idle: a middlebox forgets them").
func TestQueryAfterTheDatabaseClosedIsNoIdleDeath(t *testing.T) {
	closed := make(chan struct{}, 4)
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		c.Close() // the server process ends: a FIN, no reset
		closed <- struct{}{}
	})
	cfg := strings.Replace(oneBackendConfig(be.addr()), "idle = \"11s\"", "idle = \"1s\"", 1)
	h, logs := startProxyLog(t, cfg)
	for i := 0; i < 2; i++ {
		c := h.dial("l")
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		<-closed
		time.Sleep(1300 * time.Millisecond) // longer than the backend keepalive idle (1s); the app does not read
		c.Write([]byte("y"))                // the pool's next query on the connection
		readErr(c, 2*time.Second)
		c.Close()
	}
	waitFor(t, 2*time.Second, "both sessions ended", func() bool {
		return gauge(h.m.SessionsActive, "l", "b") == 0
	})
	if n := counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst"); n != 0 {
		t.Errorf("%v backend idle-phase rst resets after the database closed the sessions itself", n)
	}
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice after the database closed the sessions itself:\n%s", strings.Join(advice, "\n"))
	}
}

// A session whose keepalive probe was answered in its silence, then reset
// (a firewall that lost its state table in a restart or failover resets
// each flow at its next packet; here the database resets it): keepalive
// kept the path, so the death says nothing of an idle timeout shorter
// than keepalive. It is still counted idle (nothing moved for keepalive
// idle), but the link must not log the advice to shorten keepalive.
// Until the fix the lab's firewall restart (conntrack -F) behind
// tnsguard probe's own recommendation (idle 6s for a 20 s firewall) drew
// "a middlebox forgets them before keepalive refreshes it ...
// path_idle_timeout=12s idle=4s" (TestLabFirewallRestartIsNoKeepaliveAdvice).
func TestIdleDeathAfterAnAnsweredKeepaliveProbeGivesNoAdvice(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		io.ReadFull(c, buf)
		c.Write(buf)
		time.Sleep(3 * time.Second) // tnsguard's probe at 2s is answered by this kernel
		resetConn(c)
	})
	cfg := oneBackendConfig(be.addr())
	cfg = strings.Replace(cfg, "idle = \"11s\"", "idle = \"2s\"", 1)
	cfg = strings.Replace(cfg, "interval = \"2s\"", "interval = \"1s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := readErr(c, 5*time.Second); err == nil {
		t.Fatal("no reset")
	}
	waitFor(t, time.Second, "an idle-phase reset", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
	})
	time.Sleep(100 * time.Millisecond)
	if advice := logs.lines("sessions on this link die while idle"); len(advice) != 0 {
		t.Errorf("keepalive advice for a session whose keepalive probe was answered before it was reset:\n%s", strings.Join(advice, "\n"))
	}
}

// A firewall that forgot a session answers its first keepalive probe with
// a reset (or drops it, and the user timeout runs out), keepalive idle into
// the silence as the kernel counts it: from the last bytes it saw. tnsguard
// counts the silence from when it moved them, a read's scheduling delay
// later, and under load measured 1.999 s against an idle of 2 s: the death
// counted active (no TnsguardIdleResets, no advice), and the lab's
// TestLabFirewallTimeoutCutBelowKeepaliveGivesAdvice failed once in four
// runs. Here the delay is set, not waited for: the silence tnsguard
// measured is put 40 ms short of keepalive idle (within probeSlack) just
// before the database's end resets, so the end is judged as at the probe,
// however loaded the machine (a late reset only lengthens the silence).
func TestResetAtTheFirstProbeAfterALateReadIsIdle(t *testing.T) {
	reset := make(chan struct{})
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(buf)
		<-reset
		resetConn(c)
	})
	const idle = 2 * time.Second
	cfg := strings.Replace(oneBackendConfig(be.addr()), "idle = \"11s\"", "idle = \"2s\"", 1)
	cfg = strings.Replace(cfg, "interval = \"2s\"", "interval = \"1s\"", 1)
	h := startProxy(t, cfg)
	c := h.dial("l")
	echoed(t, c, "x")
	s := sessionOf(t, h.p, c)
	late := probeSlack(idle) - 10*time.Millisecond // a read's scheduling delay
	s.lastActive.Store(int64(time.Since(s.start) - (idle - late)))
	close(reset)
	if _, err := readErr(c, 5*time.Second); err == nil {
		t.Fatal("the app's leg was not reset")
	}
	server := be.addr()
	waitFor(t, 5*time.Second, "the reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", server, "backend", "idle", "rst")+counter(h.m.Resets, "l", "b", server, "backend", "active", "rst") == 1
	})
	if v := counter(h.m.Resets, "l", "b", server, "backend", "idle", "rst"); v != 1 {
		t.Errorf("resets{backend,idle,rst} = %v, want 1: a reset at the first keepalive probe, %v into a silence tnsguard measured %v short of it, counted active", v, idle, late)
	}
}

// A firewall whose idle timeout was cut below keepalive (an operator's
// change, a new firewall in the path): the pooled sessions idle from before
// die at the probe after one that the old timeout still let through, and
// every session after them dies at its first probe, or on its first bytes
// after a pause (here, the database resets them after 1.3 s, under the 2 s
// keepalive idle). The first deaths are no samples (their probe was
// answered), but the later ones are the very deaths the advice is for:
// their silence began after the evidence that keepalive held, so it says
// nothing of them. Until the fix, the first session's answered probe hid
// them for an hour (any death after no longer a silence than it held).
func TestIdleDeathsAfterTheFirewallCutItsTimeoutGiveAdvice(t *testing.T) {
	var n atomic.Int32
	be := newBackend(t, func(c *net.TCPConn) {
		if n.Add(1) == 1 {
			// Idle from before the change: its probe at 2 s is answered,
			// then it dies (at its next probe, in the firewall's new regime).
			buf := make([]byte, 1)
			io.ReadFull(c, buf)
			c.Write(buf)
			time.Sleep(3 * time.Second)
			resetConn(c)
			return
		}
		resetOnSecond(c)
	})
	cfg := oneBackendConfig(be.addr())
	cfg = strings.Replace(cfg, "idle = \"11s\"", "idle = \"2s\"", 1)
	cfg = strings.Replace(cfg, "interval = \"2s\"", "interval = \"1s\"", 1)
	h, logs := startProxyLog(t, cfg)
	c := h.dial("l")
	echoed(t, c, "x")
	if _, err := readErr(c, 5*time.Second); err == nil {
		t.Fatal("no reset")
	}
	waitFor(t, time.Second, "an idle-phase reset", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 1
	})
	for i := 0; i < 2; i++ {
		c := h.dial("l")
		echoed(t, c, "x")
		idleDeath(t, c, 1300*time.Millisecond)
	}
	waitFor(t, time.Second, "idle-phase resets", func() bool {
		return counter(h.m.Resets, "l", "b", be.addr(), "backend", "idle", "rst") == 3
	})
	waitFor(t, time.Second, "the advice", func() bool {
		return len(logs.lines("sessions on this link die while idle")) > 0
	})
	if advice := logs.lines("sessions on this link die while idle"); !strings.Contains(advice[0], "path_idle_timeout=1s") {
		t.Errorf("advice does not follow the 1.3 s deaths: %s", advice[0])
	}
}
