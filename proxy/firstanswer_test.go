package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// The wait for a backend's first answer (firstAnswer) reports each failure
// as a read on the connection did: a reset before the first byte is
// ECONNRESET and re-dialed as a reset, a close is "backend closed before its
// first byte", silence until connect_budget an "i/o timeout" of a read.
func TestFirstAnswerFailuresAreReportedAsReads(t *testing.T) {
	cases := []struct {
		name   string
		fn     func(c *net.TCPConn)
		reason string // the re-dial's reason, "" for none
		words  []string
	}{
		{"reset", func(c *net.TCPConn) {
			b := make([]byte, 7)
			io.ReadFull(c, b)
			resetConn(c)
		}, "reset", []string{"read tcp", "connection reset by peer"}},
		{"close", func(c *net.TCPConn) {
			b := make([]byte, 7)
			io.ReadFull(c, b)
			time.Sleep(150 * time.Millisecond) // longer than silentAppGrace: not the app's silence
			c.Close()
		}, "reset", []string{"backend closed before its first byte: EOF"}},
		{"silent", func(c *net.TCPConn) { io.Copy(io.Discard, c) }, "", []string{"read tcp", "i/o timeout"}}, // the first read takes the whole budget
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := newServer(t, tc.fn)
			b := newServer(t, tc.fn)
			h, logs := startProxyLog(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "1s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", a.address), fmt.Sprintf("address = %q", b.address)))
			c := h.dial("l")
			c.Write([]byte("CONNECT"))
			_, err := readErr(c, 3*time.Second)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("app saw %v, want ECONNRESET", err)
			}
			waitFor(t, 2*time.Second, "no_backend counted", func() bool { return counter(h.m.SessionsRejected, "l", "no_backend") == 1 })
			if v := counter(h.m.Redials, "l", "b", tc.reason); tc.reason != "" && v < 1 {
				t.Errorf("redials{reason=%s} = %v, want at least 1", tc.reason, v)
			}
			if l := logs.lines(append([]string{"no backend for new session"}, tc.words...)...); len(l) != 1 {
				t.Errorf("want %q in the no-backend log line; log:\n%s", tc.words, logs)
			}
		})
	}
}

// A session waiting for its backend's first answer, with or without a
// deadline (an app that has spoken: connect_budget; one that has not: no
// deadline), ends at the drain timeout: the close of the backend's socket
// ends the wait on the poller.
func TestShutdownEndsSessionsWaitingForFirstAnswer(t *testing.T) {
	silent := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", silent.address)))
	spoke := h.dial("l")
	spoke.Write([]byte("CONNECT"))
	quiet := h.dial("l") // sends nothing: waits with no deadline once the budget's read timed out
	waitFor(t, 2*time.Second, "both dials at the server", func() bool {
		silent.mu.Lock()
		defer silent.mu.Unlock()
		return silent.accepted == 2
	})
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	shutdownClosesAll(t, h, 100*time.Millisecond, []*net.TCPConn{spoke, quiet})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown took %v", took)
	}
}

// An app that has not spoken is not cut off at connect_budget while its
// backend is silent (the wait goes on without a deadline), and the answer
// that follows its late bytes reaches it.
func TestSilentAppWaitsPastBudgetForFirstAnswer(t *testing.T) {
	be := newServer(t, func(c *net.TCPConn) {
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		c.Write([]byte("world"))
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "300ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", be.address)))
	c := h.dial("l")
	time.Sleep(700 * time.Millisecond)
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "world" {
		t.Fatalf("answer after a silent 700ms (budget 300ms): %q, %v", b, err)
	}
}

// An app that speaks only after connect_budget has passed is owed an answer
// as one that spoke at once: a backend that then stays silent (a black
// hole), the only server (answer_timeout cuts no wait with nowhere else to
// go), resets it within connect_budget of its first bytes. It used to wait
// with no limit: the app hung until its own timeout, if it had one.
func TestLateAppAgainstSilentBackendIsResetWithinBudget(t *testing.T) {
	silent := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "300ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", silent.address)))
	c := h.dial("l")
	time.Sleep(600 * time.Millisecond)
	c.Write([]byte("hello"))
	start := time.Now()
	_, err := readErr(c, 3*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app that spoke after the budget, silent backend: %v after %v; want ECONNRESET within the budget (300ms)", err, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("reset %v after the app spoke, want about connect_budget (300ms)", took)
	}
}

// An app that speaks just before connect_budget ends gives its backend the
// time to answer: the budget's end is no deadline for an answer to bytes
// that came after most of it. The answer used to be cut at the budget's
// end, the app reset and the healthy server blamed.
func TestAppSpeakingAtBudgetEndGetsItsAnswer(t *testing.T) {
	be := newServer(t, func(c *net.TCPConn) {
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		time.Sleep(150 * time.Millisecond) // a database's ordinary answer time
		c.Write([]byte("world"))
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "500ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", be.address)))
	c := h.dial("l")
	time.Sleep(420 * time.Millisecond)
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "world" {
		t.Fatalf("app that spoke 420ms into a 500ms budget, answer 150ms later: %q, %v", b, err)
	}
}

// An opening no server can answer (a TNS CONNECT cut short) is owed no
// answer: a client that starts it late gets no more time for it than one
// that starts at once. The session ends at connect_budget, not
// connect_budget after its first bytes (a slowloris would double its hold).
func TestLateCutShortConnectEndsAtTheBudget(t *testing.T) {
	silent := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "500ms"
[backend.health]
check = "tnsping"
interval = "1h"`, fmt.Sprintf("address = %q", silent.address)))
	c := h.dial("l")
	start := time.Now()
	time.Sleep(300 * time.Millisecond)
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect[:20]) // a CONNECT cut short, late
	_, err := readErr(c, 3*time.Second)
	if took := time.Since(start); err == nil || took > 800*time.Millisecond {
		t.Fatalf("a CONNECT cut short, begun 300ms into a 500ms budget: %v after %v; want the end at the budget (500ms), not 500ms after its first bytes", err, took.Round(time.Millisecond))
	}
}

// A listener that asks for the CONNECT again (RESEND, as most do for some
// drivers) owes the answer connect_budget after the app's first bytes too:
// an app that first spoke after the budget, or just before its end, is not
// failed while it sends its CONNECT again. Until the fix the wait after the
// RESEND took the opening for one no server can answer (the CONNECT owed
// again) and ended at the budget, already past: the app was reset the
// moment the RESEND reached it, as an app whose opening was cut short.
func TestLateAppGetsItsAnswerAfterAResend(t *testing.T) {
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app)(HOST=h)(USER=u))))")
	if err != nil {
		t.Fatal(err)
	}
	accept := tns.BuildAccept(315, "")
	for _, late := range []time.Duration{420 * time.Millisecond, 700 * time.Millisecond} {
		t.Run(late.String(), func(t *testing.T) {
			be := newServer(t, func(c *net.TCPConn) {
				if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
					return
				}
				c.Write(tns.BuildResend())
				if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
				c.Write(accept)
				io.Copy(io.Discard, c)
			})
			h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "500ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", be.address)))
			c := h.dial("l")
			time.Sleep(late)
			c.Write(connect)
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if p, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || p.Type != tns.TypeResend {
				t.Fatalf("app that spoke %v into a 500ms budget: read %v, %v; want the listener's RESEND", late, p.Type, err)
			}
			time.Sleep(100 * time.Millisecond) // an app farther away than the listener
			c.Write(connect)
			if p, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || p.Type != tns.TypeAccept {
				t.Fatalf("app that spoke %v into a 500ms budget, then sent its CONNECT again: read %v, %v; want the listener's ACCEPT", late, p.Type, err)
			}
		})
	}
}

// A server that accepts and reads but never answers (a hung listener, a
// load balancer forwarding into a black hole) holds a session for
// answer_timeout, not for the whole connect_budget, when another server can
// take it: the app's opening is replayed to the standby, which answers. The
// hung server is counted as a silent backend is (a re-dial for a timeout, a
// breaker failure), so its circuit opens after failures sessions and the
// next session goes to the standby at once. It passes its tcp checks all
// along. Until 2026-12-01 every session waited the whole budget and was
// reset, until the circuit opened.
func TestHungServerLosesTheSessionAfterAnswerTimeout(t *testing.T) {
	hung := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	standby := newServer(t, tagThenEcho("B"))
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "10s"
answer_timeout = "300ms"
[backend.health]
check = "tcp"
interval = "200ms"
timeout = "100ms"
[backend.breaker]
failures = 2`, fmt.Sprintf("address = %q;priority = 0", hung.address), fmt.Sprintf("address = %q;priority = 1", standby.address)))
	waitFor(t, 3*time.Second, "both servers up", func() bool {
		return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 1
	})
	for i := range 3 {
		c := h.dial("l")
		start := time.Now()
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(8 * time.Second))
		b := make([]byte, 6)
		_, err := io.ReadFull(c, b)
		took := time.Since(start)
		c.Close()
		if err != nil || string(b) != "Bhello" {
			t.Fatalf("session %d: %q, %v after %v; want the standby's answer (Bhello)", i+1, b, err, took.Round(time.Millisecond))
		}
		if took > 3*time.Second {
			t.Errorf("session %d answered after %v: want about answer_timeout (300ms), not connect_budget (10s)", i+1, took.Round(time.Millisecond))
		}
	}
	if v := counter(h.m.Redials, "l", "b", "timeout"); v != 2 {
		t.Errorf("redials{reason=timeout} = %v, want 2 (the hung server's two sessions)", v)
	}
	if v := gauge(h.m.BreakerState, "b", hung.address); v != metrics.BreakerOpen {
		t.Errorf("the hung server's breaker is %v, want open (%v) after 2 sessions it never answered", v, metrics.BreakerOpen)
	}
}

// With nowhere else to go (the only server, or the others down), a server
// slow to answer keeps the session to the budget's end, as before
// answer_timeout: cutting the wait would only add a connection to a
// database in a logon storm. The app is reset at connect_budget, not at
// answer_timeout.
func TestAnswerTimeoutNeedsSomewhereElseToGo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		other bool // a second server, whose check fails
	}{{"only server", false}, {"the other down", true}} {
		t.Run(tc.name, func(t *testing.T) {
			hung := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
			servers := []string{fmt.Sprintf("address = %q", hung.address)}
			var down string
			if tc.other {
				down = closedPort(t)
				servers = append(servers, fmt.Sprintf("address = %q;priority = 1", down))
			}
			h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "1500ms"
answer_timeout = "200ms"
[backend.health]
check = "tcp"
interval = "100ms"
timeout = "100ms"
fall = 1`, servers...))
			waitFor(t, 3*time.Second, "the checks done", func() bool {
				return gauge(h.m.BackendUp, "b", hung.address) == 1 && (!tc.other || gauge(h.m.BackendUp, "b", down) == 0)
			})
			c := h.dial("l")
			start := time.Now()
			c.Write([]byte("hello"))
			_, err := readErr(c, 5*time.Second)
			took := time.Since(start)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("app saw %v after %v, want ECONNRESET at connect_budget", err, took.Round(time.Millisecond))
			}
			if took < 1300*time.Millisecond {
				t.Errorf("app reset after %v: want connect_budget (1.5s); answer_timeout (200ms) cut a wait with nowhere else to go", took.Round(time.Millisecond))
			}
			if v := counter(h.m.Redials, "l", "b", "timeout"); v != 0 {
				t.Errorf("redials{reason=timeout} = %v, want 0", v)
			}
		})
	}
}

// A reload that takes out the server a session waits on for its first
// answer (the operator replaces a hung host) ends that wait: the session
// dials the new server at once, with its opening replayed, instead of
// holding the app until connect_budget ends on a server the config no
// longer has. The old server gets no verdict and no re-dial is counted.
// Until 2026-12-01 the wait ran on to the budget's end (20s here), and only
// then did the app learn of the new definition: by a reset.
func TestReloadEndsTheWaitOnAServerItTookOut(t *testing.T) {
	hung := newHungReader(t)
	body := `connect_timeout = "500ms"
connect_budget = "20s"
[backend.health]
check = "off"`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q", hung.address)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	hung.waitHeard(t)
	moved := newServer(t, tagThenEcho("N"))
	reloaded := time.Now()
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q", moved.address)))); err != nil {
		t.Fatal(err)
	}
	answeredSoonAfter(t, c, reloaded, "app waiting on the server the reload took out")
	if v := sumCounters(t, h.m.Redials); v != 0 {
		t.Errorf("redials = %v, want 0: no server failed", v)
	}
}

// A session that answer_timeout found with nowhere else to go waits on for
// its server's answer; a reload that then adds a server (the operator's
// fix for a hung database) gives it somewhere: the wait ends at the
// reload, and the added server gets the opening, replayed, not the hung
// one again first. Until 2026-12-01 such a session waited out its
// connect_budget (20s here) while new sessions reached the added server.
func TestReloadThatAddsAServerEndsAWaitWithNowhereElseToGo(t *testing.T) {
	hung := newHungReader(t)
	body := `connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "200ms"
[backend.health]
check = "off"`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	hung.waitHeard(t)
	time.Sleep(600 * time.Millisecond) // answer_timeout passes: nowhere else to go, the wait goes on
	added := newServer(t, tagThenEcho("N"))
	reloaded := time.Now()
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address),
		fmt.Sprintf("address = %q;priority = 1", added.address)))); err != nil {
		t.Fatal(err)
	}
	answeredSoonAfter(t, c, reloaded, "app waiting on a hung server when a reload added another")
	if n := hung.dialed.Load(); n != 1 {
		t.Errorf("the hung server was dialed %d times, want 1: the session waited it out, so the new plan dials it last", n)
	}
}

// hungReader is a server that reads an app's 5 bytes and never answers.
type hungReader struct {
	address string
	heard   chan struct{} // a connection's 5 bytes came
	dialed  atomic.Int32  // connections it accepted
}

func newHungReader(t *testing.T) *hungReader {
	h := &hungReader{heard: make(chan struct{}, 8)}
	h.address = newServer(t, func(c *net.TCPConn) {
		h.dialed.Add(1)
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err == nil {
			h.heard <- struct{}{}
		}
		io.Copy(io.Discard, c)
	}).address
	return h
}

// waitHeard returns once a connection's bytes came to the server.
func (h *hungReader) waitHeard(t *testing.T) {
	t.Helper()
	select {
	case <-h.heard:
	case <-time.After(5 * time.Second):
		t.Fatal("the hung server never got the app's bytes")
	}
}

// answeredSoonAfter fails the test unless c, an app that sent "hello",
// gets "Nhello" (a tagThenEcho("N") server's answer) within 3 s of
// reloaded (the reload, or the server's coming back); what says whose
// wait it is.
func answeredSoonAfter(t *testing.T, c net.Conn, reloaded time.Time, what string) {
	t.Helper()
	answeredWithin(t, c, reloaded, 3*time.Second, what)
}

// answeredWithin is answeredSoonAfter within limit of since.
func answeredWithin(t *testing.T, c net.Conn, since time.Time, limit time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(8 * time.Second))
	b := make([]byte, 6)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "Nhello" {
		t.Fatalf("%s: %q, %v after %v; want the new server's answer (Nhello)", what, b, err, time.Since(since).Round(time.Millisecond))
	}
	if took := time.Since(since); took > limit {
		t.Errorf("%s: the new server answered %v after it could take the session, want within %v (budget 20s)", what, took.Round(time.Millisecond), limit)
	}
}

// A CONNECT that arrives in pieces, slower than answer_timeout (a client on
// a slow link), is no hung server's fault: no server can answer it before
// its last byte. The wait is not cut at answer_timeout (the app would be
// reset as one whose opening is cut short), and the listener's answer to
// the whole CONNECT reaches the app.
func TestConnectSlowerThanAnswerTimeoutIsAnswered(t *testing.T) {
	first := inboundTimeoutListener(t, 5*time.Second)
	second := inboundTimeoutListener(t, 5*time.Second)
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "4s"
answer_timeout = "200ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q;priority = 0", first.addr()), fmt.Sprintf("address = %q;priority = 1", second.addr())))
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app)(HOST=h)(USER=u))))")
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	c.Write(connect[:20])
	time.Sleep(600 * time.Millisecond) // the app's slow link: three answer_timeouts
	c.Write(connect[20:])
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if p, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || p.Type != tns.TypeAccept {
		t.Fatalf("a CONNECT sent in two pieces 600ms apart (answer_timeout 200ms): %v, %v; want the listener's ACCEPT", p.Type, err)
	}
}

// slowAccepter is a database in a logon storm: its listener answers every
// CONNECT with ACCEPT, after delay (read at each CONNECT). It counts the
// CONNECTs it got: each one costs the database a server process, whether
// or not the app waited for its answer.
func slowAccepter(t *testing.T, delay *atomic.Int64) (string, *atomic.Int32) {
	return slowListener(t, func() time.Duration { return time.Duration(delay.Load()) }, tns.BuildAccept(318, ""), true)
}

// slowPrimaryConfig: a primary slower than answer_timeout, and a standby
// (Data Guard, not open) that refuses the service with ORA-12514; tcp
// checks pass for both, the breaker opens after 5 failures.
func slowPrimaryConfig(retryOn, primary, standby string) string {
	return strings.NewReplacer(`connect_budget = "2s"`, `connect_budget = "5s"`,
		`retry_on = ["connect", "reset", "refuse"]`, "retry_on = "+retryOn,
		`check = "off"`, "check = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"100ms\"").
		Replace(oracleConfig(`answer_timeout = "300ms"`, primary+";0", standby+";1"))
}

// oracleSession sends a CONNECT for SALES and returns the type of the
// first packet the app gets.
func oracleSession(t *testing.T, h *harness) (tns.PacketType, error) {
	t.Helper()
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))")
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	defer c.Close()
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := tns.ReadPacket(c, tns.Length16, 0)
	return p.Type, err
}

// A primary slow to answer (1s, over answer_timeout) in front of a standby
// that refuses the service, with "refuse" in retry_on: the first session
// is left at answer_timeout, refused by the standby, and comes back; the
// standby's refusal is remembered (it goes last for the service), so the
// sessions after it wait on the primary without being moved: one CONNECT
// each, not two, and the primary's circuit stays closed. Until 2026-12-01
// every session sent the slow primary two CONNECTs (a logon storm made
// worse by tnsguard) and its circuit opened after 5 sessions.
func TestSlowPrimaryIsNotLeftForAStandbyThatRefusedTheService(t *testing.T) {
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
	h := startProxy(t, slowPrimaryConfig(`["connect", "reset", "refuse"]`, primary, standby.Addr()))
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	for i := range 6 {
		if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
			t.Fatalf("session %d: %v, %v; want the slow primary's ACCEPT", i+1, typ, err)
		}
	}
	if n := connects.Load(); n != 7 {
		t.Errorf("the slow primary got %d CONNECTs for 6 apps, want 7 (the first app's twice)", n)
	}
	if v := gauge(h.m.BreakerState, "b", primary); v != metrics.BreakerClosed {
		t.Errorf("the slow primary's breaker is %v, want closed (%v): it answered every session", v, metrics.BreakerClosed)
	}
}

// The same without "refuse" in retry_on: the first session left at
// answer_timeout gets the standby's ORA-12514 (README, "Silent backend"),
// which is remembered all the same, so the sessions after it wait for the
// slow primary and get its ACCEPT; and the primary it left is no hung
// server, so its circuit stays closed: once the storm is over, the next app
// gets the primary's ACCEPT at once. Until 2026-12-01 every session of the
// storm got the standby's ORA-12514, and their timeouts opened the
// primary's circuit, so every new session went to the standby and got
// ORA-12514 for open_for after the primary was fast again.
func TestSlowPrimaryKeepsItsCircuitWhenTheStandbyRefuses(t *testing.T) {
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, _ := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
	h := startProxy(t, slowPrimaryConfig(`["connect", "reset"]`, primary, standby.Addr()))
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeRefuse {
		t.Fatalf("the first session during the storm: %v, %v; want the standby's REFUSE", typ, err)
	}
	for i := range 4 {
		if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
			t.Fatalf("session %d during the storm: %v, %v; want the slow primary's ACCEPT (the standby refused the service: it is nowhere to go)", i+2, typ, err)
		}
	}
	delay.Store(0) // the storm is over
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
		t.Fatalf("the first session after the storm: %v, %v; want the primary's ACCEPT", typ, err)
	}
	if v := gauge(h.m.BreakerState, "b", primary); v != metrics.BreakerClosed {
		t.Errorf("the primary's breaker is %v, want closed (%v)", v, metrics.BreakerClosed)
	}
}

// pingsAfter answers a tnsping health check (a CONNECT asking COMMAND=ping)
// after delay, as a listener does, and gives every other connection, with
// the bytes read so far, to fn.
func pingsAfter(delay time.Duration, fn func(c *net.TCPConn, first []byte)) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		b := make([]byte, 4096)
		n, err := c.Read(b)
		if err != nil {
			return
		}
		if n > tns.HeaderLen && tns.PacketType(b[4]) == tns.TypeConnect && strings.Contains(strings.ToLower(string(b[:n])), "command=ping") {
			time.Sleep(delay)
			c.Write(tns.BuildRefuse(0, 0, fmt.Sprintf("(DESCRIPTION=(TMP=)(VSNNUM=%d)(ERR=0)(ALIAS=LISTENER))", tnstest.DefaultVSNNUM)))
			return
		}
		fn(c, b[:n])
	}
}

// With health checks on (check = "tcp" by default) a server a reload adds
// is down until its first check, which takes a round trip or more (here a
// listener that answers tnsping in 500ms): the reload's wake came before
// it, found the added server not up, and the session waited on the hung
// one to connect_budget (ORA-12170 for the app) while new sessions reached
// the added server once its check passed. The wait is woken again when the
// reloaded backend's first checks are in.
func TestReloadThatAddsACheckedServerEndsAWaitOnceItsCheckPasses(t *testing.T) {
	heard := make(chan struct{}, 8)
	hung := newServer(t, pingsAfter(0, func(c *net.TCPConn, first []byte) {
		heard <- struct{}{}
		io.Copy(io.Discard, c)
	}))
	body := `connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "200ms"
[backend.health]
check = "tnsping"
interval = "1h"
timeout = "5s"`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address)))
	waitFor(t, 5*time.Second, "the first health check", func() bool { done, _ := h.p.FirstChecksDone(); return done })
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c := h.dial("l")
	c.Write(connect)
	select {
	case <-heard:
	case <-time.After(5 * time.Second):
		t.Fatal("the hung server never got the app's bytes")
	}
	time.Sleep(600 * time.Millisecond) // answer_timeout passes: nowhere else to go, the wait goes on
	added := newServer(t, pingsAfter(500*time.Millisecond, func(c *net.TCPConn, first []byte) {
		c.Write([]byte("N"))
		c.Write(first)
		echo(c)
	}))
	reloaded := time.Now()
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address),
		fmt.Sprintf("address = %q;priority = 1", added.address)))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1+len(connect))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "N"+string(connect) {
		t.Fatalf("app waiting on a hung server when a reload added a checked one: %q, %v after %v; want the added server's answer (N and the CONNECT) once its check passed", b, err, time.Since(reloaded).Round(time.Millisecond))
	}
}

// A reload during a logon storm (here one that gives the apps a longer
// connect_budget) wakes every session waiting for the slow primary's
// answer; those past answer_timeout, which had nowhere else to go because
// the standby refused the service, must go on waiting: without "refuse"
// in retry_on the reloaded backend forgets the standby's refusal (README,
// "After a switchover"), and until the fix every such session left the
// primary at the reload for the standby and its app got ORA-12514, though
// the primary would have answered it.
func TestReloadInALogonStormLeavesNoSessionToARefusingStandby(t *testing.T) {
	const apps = 300
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
	conf := slowPrimaryConfig(`["connect", "reset"]`, primary, standby.Addr())
	h := startProxy(t, conf)
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeRefuse {
		t.Fatalf("the first session during the storm: %v, %v; want the standby's REFUSE", typ, err)
	}
	delay.Store(int64(3 * time.Second))
	before := connects.Load()
	storm := startAppStorm(t, h, apps)
	waitFor(t, 10*time.Second, "every app's CONNECT at the slow primary", func() bool { return connects.Load()-before >= apps })
	time.Sleep(600 * time.Millisecond) // past answer_timeout (300ms): the waits have nowhere else to go
	reloaded := time.Now()
	if err := h.p.Apply(mustParse(t, strings.Replace(conf, `connect_budget = "5s"`, `connect_budget = "6s"`, 1))); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(reloaded); took > 2*time.Second {
		t.Errorf("the reload took %v with %d sessions waiting for a first answer", took.Round(time.Millisecond), apps)
	}
	refused := storm.notAccepted()
	if refused > 0 {
		t.Errorf("%d of %d apps waiting on the slow primary at a reload got no ACCEPT (the standby refuses the service); want every one the primary's", refused, apps)
	}
}

// The server a session waited out goes last in its later rounds, but not
// after a server that is down: a slow primary (a logon storm: it answers
// in 1s, over answer_timeout) left for a standby whose host is gone (its
// dial hangs until connect_timeout) is, in the next round, the only server
// up, and is dialed before the standby, as before 2026-12-01. Put after
// the down standby, each round waited connect_timeout on it first, and
// the app got ORA-12170 (its budget spent on dials of a dead host) from a
// primary that answers every CONNECT.
func TestWaitedOutServerGoesBeforeADownOne(t *testing.T) {
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, connects := slowAccepter(t, &delay)
	cfg := strings.NewReplacer(`connect_budget = "2s"`, `connect_budget = "4500ms"`, `connect_timeout = "1s"`, `connect_timeout = "2s"`).
		Replace(oracleConfig(`answer_timeout = "200ms"`, primary+";0", blackhole(t)+";1"))
	h := startProxy(t, cfg)
	start := time.Now()
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
		t.Fatalf("app behind a slow primary and a standby whose host is gone: %v, %v after %v; want the primary's ACCEPT", typ, err, time.Since(start).Round(time.Millisecond))
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("the slow primary got %d CONNECTs, want 2 (left once at answer_timeout, then waited for)", n)
	}
}

// Whether another server can take a session at answer_timeout is asked of
// the backend's running definition: a reload that took the standby out
// while a session waited for the slow primary leaves it nowhere else to
// go, and it waits on. Asked of the definition it began under, it left the
// primary for the standby that was gone, came back to the primary with a
// second CONNECT (a logon storm doubled) and its app waited that much
// longer.
func TestReloadThatTakesTheStandbyOutKeepsTheWaitOnThePrimary(t *testing.T) {
	var delay atomic.Int64
	delay.Store(int64(2 * time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	body := `connect_timeout = "1s"
connect_budget = "8s"
answer_timeout = "1s"
[backend.health]
check = "off"`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", primary), fmt.Sprintf("address = %q;priority = 1", standby.Addr())))
	storm := startAppStorm(t, h, 1)
	waitFor(t, 5*time.Second, "the app's CONNECT at the slow primary", func() bool { return connects.Load() == 1 })
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", primary)))); err != nil {
		t.Fatal(err)
	}
	if typ := <-storm.types; typ != tns.TypeAccept {
		t.Fatalf("app waiting on the slow primary when a reload took the standby out: %v; want the primary's ACCEPT", typ)
	}
	if n := connects.Load(); n != 1 {
		t.Errorf("the slow primary got %d CONNECTs, want 1: a reload left the session nowhere else to go", n)
	}
	if n := standby.Accepted(); n != 0 {
		t.Errorf("the standby the reload took out got %d connections, want 0", n)
	}
}

// A session waiting on a hung primary (it accepts the app's CONNECT and
// never answers) while the standby is down by its health check has nowhere
// else to go at answer_timeout, and waits on. When the standby's listener
// comes back (a Data Guard switchover: the standby up while the primary
// hangs), its check brings it up and the wait ends then: the app gets the
// standby's answer within a check interval or two (rise = 2, 100ms apart),
// not at connect_budget (20s), and not at the wait's next re-ask either
// (answer_timeout, 4s, after it got stuck). Until 2026-12-01 only a reload
// ended such a wait; the app got ORA-12170 at connect_budget while new
// sessions reached the standby at once.
func TestStandbyUpByItsCheckEndsAWaitWithNowhereElseToGo(t *testing.T) {
	hung := newHungReader(t)
	standby := newServer(t, tagThenEcho("N"))
	standby.down() // dials refused: its first check fails
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "4s"
[backend.health]
check = "tcp"
interval = "100ms"
timeout = "100ms"`, fmt.Sprintf("address = %q;priority = 0", hung.address), fmt.Sprintf("address = %q;priority = 1", standby.address)))
	waitFor(t, 5*time.Second, "the primary up, the standby down", func() bool {
		return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 0
	})
	c := h.dial("l")
	c.Write([]byte("hello"))
	hung.waitHeard(t)
	time.Sleep(4500 * time.Millisecond) // answer_timeout passes: the standby is down, the wait goes on
	standby.up()
	answeredWithin(t, c, time.Now(), 2500*time.Millisecond, "app waiting on a hung primary when the standby's check brought it up")
	if n := len(hung.heard); n != 0 {
		t.Errorf("the hung primary got the app's bytes %d more times, want once in all", n)
	}
	if v := counter(h.m.Redials, "l", "b", "timeout"); v != 1 {
		t.Errorf("redials{reason=timeout} = %v, want 1 (the hung primary left once)", v)
	}
	// The count that lets a server's return skip the walk of every
	// session is back to none once the wait has ended.
	waitFor(t, 5*time.Second, "no stuck wait counted", func() bool { return h.p.stuckWaits.Load() == 0 })
}

// The same with the standby shut out by its circuit (health checks off: a
// failed dial opens it, failures = 1), not by a check: no event says when
// open_for has passed, so a wait that had nowhere else to go asks again
// every answer_timeout, and leaves the hung primary for the standby once
// its open period is over (its listener came back meanwhile). Until
// 2026-12-01 it waited to connect_budget.
func TestStandbyWhoseCircuitOpenedTakesAStuckWaitAfterOpenFor(t *testing.T) {
	hung := newHungReader(t)
	standby := newServer(t, tagThenEcho("N"))
	standby.down()
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "300ms"
[backend.breaker]
failures = 1
open_for = "1s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q;priority = 0", standby.address), fmt.Sprintf("address = %q;priority = 1", hung.address)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	hung.waitHeard(t) // the standby refused the dial: its circuit is open, the session on the hung one
	opened := time.Now()
	if v := gauge(h.m.BreakerState, "b", standby.address); v != metrics.BreakerOpen {
		t.Fatalf("the standby's breaker is %v, want open (%v)", v, metrics.BreakerOpen)
	}
	standby.up()
	// open_for (1s) from its opening, then at most one answer_timeout
	// (300ms) to the wait's next re-ask.
	answeredWithin(t, c, opened, 3*time.Second, "app waiting on a hung server when the standby's open period ended")
	if n := hung.dialed.Load(); n != 1 {
		t.Errorf("the hung server was dialed %d times, want 1", n)
	}
}

// A Data Guard switchover seen from a session that waits on the hung old
// primary: the standby refused the service before (an app got its
// ORA-12514, remembered), so at answer_timeout the session has nowhere
// else to go. Once the standby's database opens and serves the service to
// a new session, the waiting one is woken and gets the standby's ACCEPT,
// not ORA-12170 at connect_budget (20s). Until the standby has served it,
// the refusal still counts for the waiting session, also once its memory
// (open_for, 1s) has run out: a wait re-asks every answer_timeout, and in
// a logon storm every waiting session would otherwise meet the standby's
// ORA-12514 at the end of the memory (TestStuckWaitsDoNotFollowAnExpiredRefusal).
func TestStandbyThatServesTheServiceTakesAWaitItRefusedBefore(t *testing.T) {
	primary := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	h := startProxy(t, stuckConfig(`["connect", "reset"]`, "20s", primary.Addr(), standby.Addr()))
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary.Addr()) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeRefuse {
		t.Fatalf("the first session: %v, %v; want the standby's REFUSE (it does not have the service yet)", typ, err)
	}
	waiting := h.dial("l")
	defer waiting.Close()
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))")
	waiting.Write(connect)
	answered := make(chan tns.PacketType, 1)
	go func() {
		waiting.SetReadDeadline(time.Now().Add(25 * time.Second))
		p, _ := tns.ReadPacket(waiting, tns.Length16, 0)
		answered <- p.Type
	}()
	time.Sleep(2 * time.Second) // past answer_timeout (300ms) and the refusal's memory (1s)
	select {
	case typ := <-answered:
		t.Fatalf("the waiting session got %v before the standby served the service; want it to wait on the primary", typ)
	default:
	}
	standby.SetServices("SALES") // the switchover: the standby's database opens
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
		t.Fatalf("a new session after the switchover: %v, %v; want the standby's ACCEPT", typ, err)
	}
	served := time.Now()
	select {
	case typ := <-answered:
		if typ != tns.TypeAccept {
			t.Fatalf("the waiting session got %v; want the standby's ACCEPT", typ)
		}
		if took := time.Since(served); took > 2*time.Second {
			t.Errorf("the waiting session got the standby's ACCEPT %v after the standby served a new one, want at once", took.Round(time.Millisecond))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting session got nothing 10s after the standby served the service; want its ACCEPT")
	}
}

// stuckConfig: a primary and a standby, answer_timeout 300ms, tcp checks
// every 200ms, a refusal remembered (and a circuit open) for 1s.
func stuckConfig(retryOn, budget, primary, standby string) string {
	return strings.NewReplacer(`connect_budget = "2s"`, fmt.Sprintf("connect_budget = %q", budget),
		`retry_on = ["connect", "reset", "refuse"]`, "retry_on = "+retryOn,
		"  [backend.health]", "  [backend.breaker]\n  open_for = \"1s\"\n  [backend.health]",
		`check = "off"`, "check = \"tcp\"\n  interval = \"200ms\"\n  timeout = \"100ms\"").
		Replace(oracleConfig(`answer_timeout = "300ms"`, primary+";0", standby+";1"))
}

// A logon storm on a slow primary (it answers in 3s), behind a standby
// that does not have the service and whose refusal is remembered for 1s:
// the sessions waiting past answer_timeout have nowhere else to go, and
// re-ask every answer_timeout; when the refusal's memory runs out they
// must not leave for the standby (it has not served the service since),
// or their apps get its ORA-12514 (without "refuse" in retry_on) instead of
// the primary's ACCEPT. In a first version of the re-ask, 3 to 53 of 200
// such apps did, as new sessions at that moment do.
func TestStuckWaitsDoNotFollowAnExpiredRefusal(t *testing.T) {
	const apps = 200
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
	h := startProxy(t, stuckConfig(`["connect", "reset"]`, "8s", primary, standby.Addr()))
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeRefuse {
		t.Fatalf("the first session during the storm: %v, %v; want the standby's REFUSE", typ, err)
	}
	delay.Store(int64(3 * time.Second))
	before := connects.Load()
	storm := startAppStorm(t, h, apps)
	refused := storm.notAccepted()
	if refused > 0 {
		t.Errorf("%d of %d apps waiting on the slow primary past the standby's refusal memory got no ACCEPT; want every one the primary's", refused, apps)
	}
	if n := connects.Load() - before; n != apps {
		t.Errorf("the slow primary got %d CONNECTs for %d apps, want one each", n, apps)
	}
}

// A Data Guard switchover under a hung primary: the primary's listener
// accepts and never answers, and the standby does not offer the service
// yet (health.service keeps it down), so a session's wait on the primary
// has nowhere else to go at answer_timeout. Once the standby's check finds
// the service registered, the wait must end and the CONNECT go to the
// standby, as it does when a reload adds a server. Until the fix only a
// reload asked again: in a drill with the real binary every app that came
// during the hang waited all of connect_budget (20 s) and got ORA-12170,
// the standby up and serving for the last part of it.
func TestStandbyWhoseCheckPassesEndsAWaitOnAHungPrimary(t *testing.T) {
	heard := make(chan struct{}, 1)
	hung := newServer(t, func(c *net.TCPConn) {
		b := make([]byte, 4096)
		if n, _ := c.Read(b); !strings.Contains(string(b[:n]), "tnsguard") && !strings.Contains(strings.ToLower(string(b[:n])), "command=ping") {
			heard <- struct{}{} // the app's CONNECT, not a health check's
		}
		io.Copy(io.Discard, c)
	})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	body := `connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "200ms"
retry_on = ["connect", "reset", "refuse"]
[backend.health]
check = "tnsping"
service = "SALES"
interval = "100ms"
timeout = "100ms"
rise = 2`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address),
		fmt.Sprintf("address = %q;priority = 1", standby.Addr())))
	waitFor(t, 5*time.Second, "the first health checks", func() bool { done, _ := h.p.FirstChecksDone(); return done })
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c := h.dial("l")
	c.Write(connect)
	select {
	case <-heard:
	case <-time.After(5 * time.Second):
		t.Fatal("the hung server never got the app's CONNECT")
	}
	time.Sleep(600 * time.Millisecond) // answer_timeout passes: the standby is down, the wait goes on
	switched := time.Now()
	standby.SetServices("SALES")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, tns.HeaderLen)
	if _, err := io.ReadFull(c, hdr); err != nil || tns.PacketType(hdr[4]) != tns.TypeAccept {
		t.Fatalf("app waiting on a hung primary when the standby's check found the service: %x, %v after %v; want the standby's ACCEPT once its check passed", hdr, err, time.Since(switched).Round(time.Millisecond))
	}
}

// refuser is a standby's listener whose database does not offer the
// service (Data Guard, not open): it answers every CONNECT with ORA-12514,
// 50ms after it (a standby across a WAN).
func refuser(c *net.TCPConn) {
	if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
		return
	}
	time.Sleep(50 * time.Millisecond)
	c.Write(tns.BuildRefuse(0x22, 0, fmt.Sprintf("(DESCRIPTION=(TMP=)(VSNNUM=%d)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))", tnstest.DefaultVSNNUM)))
}

// A logon storm on a slow primary (it answers in 5s) while the standby's
// listener is down: the waits past answer_timeout have nowhere else to go.
// When the standby's listener comes back its tcp check brings it up, but
// its database does not have the service (Data Guard, not open). The
// waits woken by its return must not all leave the primary for it at
// once: without "refuse" in retry_on every app that did got ORA-12514,
// though the primary would have answered it (and with it, sent the
// primary a second CONNECT). One goes first; its REFUSE is remembered
// and the rest wait on, as new sessions at answer_timeout do.
func TestStandbyUpByItsCheckTakesNoLogonStormEnMasse(t *testing.T) {
	const apps = 200
	var delay atomic.Int64
	delay.Store(int64(5 * time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := newServer(t, refuser)
	standby.down()
	h := startProxy(t, stuckConfig(`["connect", "reset"]`, "10s", primary, standby.address))
	waitFor(t, 3*time.Second, "the primary up, the standby down", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 0
	})
	storm := startAppStorm(t, h, apps)
	waitFor(t, 10*time.Second, "every app's CONNECT at the slow primary", func() bool { return connects.Load() >= apps })
	waitFor(t, 30*time.Second, "every wait past answer_timeout", func() bool { return h.p.stuckWaits.Load() >= apps })
	standby.up()
	refused := storm.notAccepted()
	if refused > 1 {
		t.Errorf("%d of %d apps waiting on the slow primary when the standby came up without the service got no ACCEPT; want at most the one that went first", refused, apps)
	}
	if n := connects.Load(); n > apps+1 {
		t.Errorf("the slow primary got %d CONNECTs for %d apps, want at most one more", n, apps)
	}
}

// The other side of TestStandbyUpByItsCheckTakesNoLogonStormEnMasse: a
// switchover under a hung primary, with many apps waiting on it. The
// standby that comes up serves the service; the first wait that goes
// there is answered, and the rest follow at once, not one answer_timeout
// (4s) after each other or at connect_budget.
func TestStandbyUpByItsCheckTakesEveryStuckWaitOnceItServes(t *testing.T) {
	const apps = 50
	primary := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	standby := newServer(t, func(c *net.TCPConn) {
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
			return
		}
		c.Write(tns.BuildAccept(318, ""))
		io.Copy(io.Discard, c)
	})
	standby.down()
	h := startProxy(t, strings.Replace(stuckConfig(`["connect", "reset"]`, "20s", primary.Addr(), standby.address),
		`answer_timeout = "300ms"`, `answer_timeout = "4s"`, 1))
	waitFor(t, 3*time.Second, "the primary up, the standby down", func() bool {
		return gauge(h.m.BackendUp, "b", primary.Addr()) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 0
	})
	storm := startAppStorm(t, h, apps)
	waitFor(t, 30*time.Second, "every wait past answer_timeout", func() bool { return h.p.stuckWaits.Load() >= apps })
	standby.up()
	up := time.Now()
	for i := range apps {
		if typ := <-storm.types; typ != tns.TypeAccept {
			t.Fatalf("app %d waiting on a hung primary when the standby came up serving the service: %v; want its ACCEPT", i, typ)
		}
	}
	if took := time.Since(up); took > 3*time.Second {
		t.Errorf("the %d apps got the standby's ACCEPT %v after it came up, want within 3s (answer_timeout 4s)", apps, took.Round(time.Millisecond))
	}
}

// A logon storm on a slow primary (it answers in 3s) while the standby's
// circuit is open (its listener was down: one failed dial opens it, checks
// off): the waits past answer_timeout have nowhere else to go and re-ask
// every answer_timeout, all at about the same moments (the storm came at
// once). When open_for has passed, the half-open circuit takes one
// session, its trial; the other waits must stay on the primary until the
// trial closes the circuit, not leave together and, finding the trial
// taken, come back to the primary with a second CONNECT each.
func TestStuckWaitsTakeAHalfOpenStandbyOneAtATime(t *testing.T) {
	const apps = 200
	var delay atomic.Int64
	delay.Store(int64(3 * time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := newServer(t, func(c *net.TCPConn) {
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
			return
		}
		c.Write(tns.BuildAccept(318, ""))
		io.Copy(io.Discard, c)
	})
	standby.down()
	cfg := strings.NewReplacer(`connect_budget = "2s"`, `connect_budget = "8s"`,
		"  [backend.health]", "  [backend.breaker]\n  failures = 1\n  open_for = \"1s\"\n  [backend.health]").
		Replace(oracleConfig(`answer_timeout = "300ms"`, standby.address+";0", primary+";1"))
	h := startProxy(t, cfg)
	delay.Store(0)
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
		t.Fatalf("the first session: %v, %v; want the primary's ACCEPT (the standby's dial refused)", typ, err)
	}
	if v := gauge(h.m.BreakerState, "b", standby.address); v != metrics.BreakerOpen {
		t.Fatalf("the standby's breaker is %v, want open (%v)", v, metrics.BreakerOpen)
	}
	delay.Store(int64(3 * time.Second))
	before := connects.Load()
	standby.up()
	storm := startAppStorm(t, h, apps)
	for range apps {
		if typ := <-storm.types; typ != tns.TypeAccept {
			t.Fatalf("an app of the storm got %v, want an ACCEPT", typ)
		}
	}
	if n := connects.Load() - before; n > apps {
		t.Errorf("the slow primary got %d CONNECTs for %d apps, want at most one each", n, apps)
	}
	if n := standby.accepts(); n == 0 {
		t.Errorf("no session went to the standby once its open period was over")
	}
}

// A logon storm on a slow primary (it answers in 5s) with health checks
// and the breaker off (failures = 0): the standby's listener is down and
// stays down, and its failed dial puts it last for open_for (3s). The
// waits past answer_timeout have nowhere else to go; when open_for has
// passed nothing says the standby is back, and a wait that left the
// primary for it found its dial refused and came back with a new CONNECT,
// its wait begun anew. Until the fix the primary got 206 or 207 CONNECTs
// for 200 apps (open_for 1s, 3s answers), and 2 of the apps got
// ORA-12170 at connect_budget (8s), their second wait too long for what
// was left. One stuck wait goes first, as to a half-open circuit, and the
// rest wait on the primary; the one that went does not go again.
func TestStuckWaitsDoNotLeaveForAStandbyWhoseDialFailedWithChecksOff(t *testing.T) {
	const apps = 200
	var delay atomic.Int64
	primary, connects := slowAccepter(t, &delay)
	standby := newServer(t, tagThenEcho("N"))
	standby.down()
	cfg := strings.NewReplacer(`connect_budget = "2s"`, `connect_budget = "12s"`,
		"  [backend.health]", "  [backend.breaker]\n  failures = 0\n  open_for = \"3s\"\n  [backend.health]").
		Replace(oracleConfig(`answer_timeout = "300ms"`, standby.address+";0", primary+";1"))
	h := startProxy(t, cfg)
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeAccept {
		t.Fatalf("the first session: %v, %v; want the primary's ACCEPT (the standby's dial refused)", typ, err)
	}
	delay.Store(int64(5 * time.Second))
	before := connects.Load()
	storm := startAppStorm(t, h, apps)
	failed := storm.notAccepted()
	if failed > 0 {
		t.Errorf("%d of %d apps waiting on the slow primary got no ACCEPT; want every one the primary's", failed, apps)
	}
	if n := connects.Load() - before; n > apps+1 {
		t.Errorf("the slow primary got %d CONNECTs for %d apps, want at most one more (the wait that went first)", n, apps)
	}
}

// The other side of TestStuckWaitsDoNotLeaveForAStandbyWhoseDialFailedWithChecksOff:
// the primary is hung, not slow, and the standby's listener came back.
// With checks and the breaker off, a stuck wait still goes to the standby
// once open_for is over (it is the first to go), and its app is answered
// there, not at connect_budget (20s).
func TestStandbyWhoseDialFailedTakesAStuckWaitAfterOpenForWithChecksOff(t *testing.T) {
	hung := newHungReader(t)
	standby := newServer(t, tagThenEcho("N"))
	standby.down()
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "300ms"
[backend.breaker]
failures = 0
open_for = "1s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q;priority = 0", standby.address), fmt.Sprintf("address = %q;priority = 1", hung.address)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	hung.waitHeard(t) // the standby refused the dial: the session is on the hung one
	failed := time.Now()
	waitFor(t, 5*time.Second, "the wait past answer_timeout", func() bool { return h.p.stuckWaits.Load() == 1 })
	standby.up()
	// open_for (1s) from the failed dial, then at most one answer_timeout
	// (300ms) to the wait's next re-ask.
	answeredWithin(t, c, failed, 3*time.Second, "app waiting on a hung server when the standby's open_for ended")
	if n := hung.dialed.Load(); n != 1 {
		t.Errorf("the hung server was dialed %d times, want 1", n)
	}
}

// TestStuckWaitsDoNotFollowAnExpiredRefusal with a reload (any: here
// connect_budget changes) once the refusal's memory (1s) has run out: the
// reload wakes the waits and each asks the new definition whether another
// server can take it. It must ask as a stuck wait does, counting the
// standby's refusal that no served session undid: until the fix it asked
// as at answer_timeout, where an expired refusal no longer counts, and
// every waiting app left the slow primary for the standby and got its
// ORA-12514 (without "refuse" in retry_on).
func TestReloadAfterAnExpiredRefusalLeavesNoStuckWaitToTheStandby(t *testing.T) {
	const apps = 200
	var delay atomic.Int64
	delay.Store(int64(time.Second))
	primary, connects := slowAccepter(t, &delay)
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
	conf := stuckConfig(`["connect", "reset"]`, "8s", primary, standby.Addr())
	h := startProxy(t, conf)
	waitFor(t, 3*time.Second, "both up", func() bool {
		return gauge(h.m.BackendUp, "b", primary) == 1 && gauge(h.m.BackendUp, "b", standby.Addr()) == 1
	})
	if typ, err := oracleSession(t, h); err != nil || typ != tns.TypeRefuse {
		t.Fatalf("the first session during the storm: %v, %v; want the standby's REFUSE", typ, err)
	}
	refused := time.Now()
	delay.Store(int64(3 * time.Second))
	before := connects.Load()
	storm := startAppStorm(t, h, apps)
	waitFor(t, 30*time.Second, "every wait past answer_timeout", func() bool { return h.p.stuckWaits.Load() >= apps })
	time.Sleep(time.Until(refused.Add(1500 * time.Millisecond))) // past the refusal's memory (1s)
	if err := h.p.Apply(mustParse(t, strings.Replace(conf, `connect_budget = "8s"`, `connect_budget = "9s"`, 1))); err != nil {
		t.Fatal(err)
	}
	failed := storm.notAccepted()
	if failed > 0 {
		t.Errorf("%d of %d apps waiting on the slow primary at a reload after the standby's refusal memory got no ACCEPT; want every one the primary's", failed, apps)
	}
	if n := connects.Load() - before; n != apps {
		t.Errorf("the slow primary got %d CONNECTs for %d apps, want one each", n, apps)
	}
}

// A stuck wait that went first to a standby whose dial then failed (checks
// and the breaker off) does not go there again, but only until the
// standby serves a session: a hung primary's wait, back on it with its
// opening, must follow a new session that the standby's returned
// listener served, not wait out connect_budget (20s).
func TestStuckWaitWhoseDialOfTheStandbyFailedFollowsItOnceItServes(t *testing.T) {
	hung := newHungReader(t)
	standby := newServer(t, tagThenEcho("N"))
	standby.down()
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "300ms"
[backend.breaker]
failures = 0
open_for = "1s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q;priority = 0", standby.address), fmt.Sprintf("address = %q;priority = 1", hung.address)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	// The standby refused the dial, the session waits on the hung one; once
	// open_for is over it goes to the standby, whose listener is still
	// down, and comes back.
	waitFor(t, 10*time.Second, "the wait back on the hung server", func() bool { return hung.dialed.Load() == 2 })
	standby.up()
	time.Sleep(1200 * time.Millisecond) // open_for (1s) after the failed dial: new sessions try the standby first
	n := h.dial("l")
	defer n.Close()
	n.Write([]byte("hello"))
	answeredWithin(t, n, time.Now(), 5*time.Second, "a new session once the standby's listener is back")
	answeredWithin(t, c, time.Now(), 2*time.Second, "app waiting on a hung primary when the standby served a new session")
}

// appStorm is a logon storm: apps that each open an Oracle session at once
// (oracleSession), and the type of the first packet each got.
type appStorm struct {
	n     int
	types chan tns.PacketType
}

// startAppStorm starts n apps on h's listener l.
func startAppStorm(t *testing.T, h *harness, n int) *appStorm {
	a := &appStorm{n: n, types: make(chan tns.PacketType, n)}
	for range n {
		go func() {
			typ, _ := oracleSession(t, h)
			a.types <- typ
		}()
	}
	return a
}

// notAccepted waits for every app and returns how many got no ACCEPT.
func (a *appStorm) notAccepted() int {
	missed := 0
	for range a.n {
		if typ := <-a.types; typ != tns.TypeAccept {
			missed++
		}
	}
	return missed
}
