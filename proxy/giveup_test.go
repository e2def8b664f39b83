package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns"
)

// giveUpConfig: a hung primary (accepts, reads, never answers: a listener
// whose process is stopped) before a standby, tcp checks that pass for
// both, answer_timeout at its default of 5 s, the breaker opening after 2
// failures.
func giveUpConfig(primary, standby string) string {
	return backendTOML(`connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "5s"
[backend.health]
check = "tcp"
interval = "200ms"
timeout = "100ms"
[backend.breaker]
failures = 2`, fmt.Sprintf("address = %q;priority = 0", primary), fmt.Sprintf("address = %q;priority = 1", standby))
}

// hungListener accepts and reads, and never answers; heard counts the
// CONNECTs it got whole.
func hungListener(t *testing.T) (*server, *atomic.Int32) {
	var heard atomic.Int32
	return newServer(t, func(c *net.TCPConn) {
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err == nil {
			heard.Add(1)
		}
		io.Copy(io.Discard, c)
	}), &heard
}

// givingUpApp sends a CONNECT for SALES and waits for the first answer at
// most wait (its driver's connect timeout), then closes (FIN), as
// node-oracledb's NJS-510 and go-ora's context deadline do. It returns the
// type of the packet it got, 0 for none.
func givingUpApp(t *testing.T, h *harness, wait time.Duration) tns.PacketType {
	t.Helper()
	typ, err := appWaiting(h, wait)
	if err != nil {
		t.Fatal(err)
	}
	return typ
}

// appWaiting is givingUpApp for any goroutine.
func appWaiting(h *harness, wait time.Duration) (tns.PacketType, error) {
	return appWaitingOn(h, "l", wait)
}

// appWaitingOn is appWaiting on the listener named listener.
func appWaitingOn(h *harness, listener string, wait time.Duration) (tns.PacketType, error) {
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))")
	if err != nil {
		return 0, err
	}
	c, err := net.Dial("tcp", h.addr(listener))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(wait))
	p, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, fmt.Errorf("app waiting for its first answer: %w, want its own timeout", err)
		}
		return 0, nil
	}
	return p.Type, nil
}

// An Oracle app whose connect timeout is shorter than answer_timeout gives
// up on a hung listener before tnsguard would leave it for the standby.
// Its session counts as abandoned, not ok, with one warning naming the
// listener, backend and server and how long the app waited; and, as the
// app waited over 2 s on a server that answered no one and the standby
// could have taken it, as a failure of the hung server: after failures = 2
// such sessions its circuit opens, and the next app gets the standby's
// ACCEPT at once. Until 2026-12-01 each such session counted
// outcome="ok", logged nothing, and the hung server's circuit never
// opened: every app with a short connect timeout failed (8 of 8 knex
// queries with connect_timeout=3, NJS-510, the standby up).
func TestAppThatGivesUpOnAHungServerOpensItsCircuit(t *testing.T) {
	hung, heard := hungListener(t)
	standby, answered := slowListener(t, func() time.Duration { return 0 }, tns.BuildAccept(318, ""), true)
	h, logs := startProxyLog(t, giveUpConfig(hung.address, standby))
	waitFor(t, 3*time.Second, "both servers up", func() bool {
		return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby) == 1
	})
	for i := range 2 {
		if typ := givingUpApp(t, h, 2300*time.Millisecond); typ != 0 {
			t.Fatalf("app %d got a %v within its 2.3 s connect timeout; want nothing (the hung server holds it for answer_timeout, 5 s)", i+1, typ)
		}
		waitFor(t, 3*time.Second, "the abandoned session counted", func() bool {
			return counter(h.m.SessionsTotal, "l", "b", "other", "abandoned") == float64(i+1)
		})
	}
	if n := heard.Load(); n != 2 {
		t.Errorf("the hung server got %d CONNECTs, want 2", n)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); v != 0 {
		t.Errorf("sessions_total{outcome=ok} = %v for apps that gave up on a silent server, want 0", v)
	}
	if v := sumCounters(t, h.m.Resets); v != 0 {
		t.Errorf("resets_total = %v: an app's close is no reset", v)
	}
	waitFor(t, 3*time.Second, "a warning per app, naming the hung server", func() bool {
		return len(logs.lines("app gave up waiting for the server's first answer", "counted as its failure",
			"listener=l", "backend=b", "server="+hung.address, "waited=", "server_silent=", "answer_timeout=5s")) == 2
	})
	if v := gauge(h.m.BreakerState, "b", hung.address); v != metrics.BreakerOpen {
		t.Fatalf("the hung server's breaker is %v, want open (%v) after 2 apps gave up on it; log:\n%s", v, metrics.BreakerOpen, logs)
	}
	start := time.Now()
	if typ := givingUpApp(t, h, 2300*time.Millisecond); typ != tns.TypeAccept {
		t.Fatalf("the app after the circuit opened got %v; want the standby's ACCEPT", typ)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the standby answered after %v, want at once (the hung server's circuit is open)", took.Round(time.Millisecond))
	}
	if n, m := heard.Load(), answered.Load(); n != 2 || m != 1 {
		t.Errorf("CONNECTs: hung server %d, standby %d; want 2 and 1", n, m)
	}
}

// Apps that give up after a second (a pool's aggressive connect timeout)
// say nothing of the server: the sessions count as abandoned, with their
// warnings, but the server's circuit stays closed. So does a server in a
// logon storm that answers other sessions while the impatient apps give
// up on it.
func TestAppsThatGiveUpSoonOrOnASlowServerAreNoVerdict(t *testing.T) {
	t.Run("after a second", func(t *testing.T) {
		hung, _ := hungListener(t)
		standby, answered := slowListener(t, func() time.Duration { return 0 }, tns.BuildAccept(318, ""), true)
		h, logs := startProxyLog(t, giveUpConfig(hung.address, standby))
		waitFor(t, 3*time.Second, "both servers up", func() bool {
			return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby) == 1
		})
		for i := range 3 {
			if typ := givingUpApp(t, h, time.Second); typ != 0 {
				t.Fatalf("app %d got a %v; want nothing within its 1 s", i+1, typ)
			}
			waitFor(t, 3*time.Second, "the abandoned session counted", func() bool {
				return counter(h.m.SessionsTotal, "l", "b", "other", "abandoned") == float64(i+1)
			})
		}
		if v := gauge(h.m.BreakerState, "b", hung.address); v != metrics.BreakerClosed {
			t.Errorf("breaker %v after 3 apps gave up after 1 s, want closed (%v)", v, metrics.BreakerClosed)
		}
		waitFor(t, 3*time.Second, "a warning per app", func() bool {
			return len(logs.lines("app gave up waiting", "server="+hung.address, "waited=")) == 3
		})
		if l := logs.lines("counted as its failure"); len(l) != 0 {
			t.Errorf("apps that gave up after 1 s were held against the server:\n%s", strings.Join(l, "\n"))
		}
		if n := answered.Load(); n != 0 {
			t.Errorf("the standby got %d CONNECTs, want 0", n)
		}
	})
	t.Run("slow server answers others", func(t *testing.T) {
		var delay atomic.Int64
		delay.Store(int64(3 * time.Second)) // slower than the impatient apps, within answer_timeout
		slow, _ := slowAccepter(t, &delay)
		standby, answered := slowListener(t, func() time.Duration { return 0 }, tns.BuildAccept(318, ""), true)
		h, _ := startProxyLog(t, giveUpConfig(slow, standby))
		waitFor(t, 3*time.Second, "both servers up", func() bool {
			return gauge(h.m.BackendUp, "b", slow) == 1 && gauge(h.m.BackendUp, "b", standby) == 1
		})
		// Patient apps, two a second, all along: the slow server answers
		// each after 3 s, so it answers one every 500 ms from 3 s on.
		patient := startPatientApps(t, h, "l", "a patient app")
		// Impatient apps, 4 at once, that give up together: their ends
		// come in a row, with no answer between them to reset the
		// breaker's count, though the server answered others all along.
		impatient := make(chan error, 4)
		for range 4 {
			go func() {
				typ, err := appWaiting(h, 2500*time.Millisecond)
				if err == nil && typ != 0 {
					err = fmt.Errorf("an impatient app got a %v; want nothing within its 2.5 s", typ)
				}
				impatient <- err
			}()
		}
		for range 4 {
			if err := <-impatient; err != nil {
				t.Error(err)
			}
		}
		patient.stop()
		waitFor(t, 3*time.Second, "the abandoned sessions counted", func() bool {
			return counter(h.m.SessionsTotal, "l", "b", "other", "abandoned") == 4
		})
		if v := gauge(h.m.BreakerState, "b", slow); v != metrics.BreakerClosed {
			t.Errorf("the slow server's breaker is %v, want closed (%v): it answered other sessions meanwhile", v, metrics.BreakerClosed)
		}
		if n := answered.Load(); n != 0 {
			t.Errorf("the standby got %d CONNECTs, want 0", n)
		}
	})
}

// A load balancer's port check (connect, then close without a byte) that
// tnsguard dialed a hung listener for is an ordinary end, with no line and
// no verdict, as it is against a listener that closes; its session ends at
// connect_budget at the latest. Until 2026-12-01 it waited on the hung
// listener for as long as that lived: each check held two fds and a
// session (tnsguard_sessions_active grew by one per check).
func TestPortCheckOnAHungListenerEndsAtTheBudget(t *testing.T) {
	hung, _ := hungListener(t)
	standby, answered := slowListener(t, func() time.Duration { return 0 }, tns.BuildAccept(318, ""), true)
	h, logs := startProxyLog(t, strings.Replace(giveUpConfig(hung.address, standby), `connect_budget = "20s"`, `connect_budget = "1500ms"`, 1))
	waitFor(t, 3*time.Second, "both servers up", func() bool {
		return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby) == 1
	})
	for range 3 {
		check := h.dial("l")
		check.Close()
	}
	waitFor(t, 10*time.Second, "the port checks' sessions ended", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 3
	})
	if n := len(h.p.liveSessions()); n != 0 {
		t.Errorf("%d sessions live after the checks ended", n)
	}
	if v := gauge(h.m.BreakerState, "b", hung.address); v != metrics.BreakerClosed {
		t.Errorf("breaker %v after port checks, want closed (%v)", v, metrics.BreakerClosed)
	}
	if v := sumCounters(t, h.m.Resets) + counter(h.m.SessionsTotal, "l", "b", "other", "abandoned"); v != 0 {
		t.Errorf("port checks counted as resets or abandoned sessions: %v", v)
	}
	if l := logs.lines("WARN"); len(l) != 0 {
		t.Errorf("warnings for port checks:\n%s", strings.Join(l, "\n"))
	}
	if n := answered.Load(); n != 0 {
		t.Errorf("the standby got %d CONNECTs, want 0", n)
	}
}

// A script that sends a CONNECT and half-closes at once to read the answer
// (socat or nc -N with the CONNECT on stdin, a Python check's
// shutdown(SHUT_WR)) has not given up: it gets the listener's answer, its
// session counts ok, with no warning. The FIN comes before tnsguard dials
// or while the listener (300 ms to answer) holds the CONNECT: both ended
// the session at once. From 2026-12-01 until this fix such a script got an
// end of stream and no answer, from a listener that was fine.
func TestHalfCloseRightAfterTheConnectStillGetsTheAnswer(t *testing.T) {
	t.Run("listener answers", func(t *testing.T) {
		srv, _ := slowListener(t, func() time.Duration { return 300 * time.Millisecond }, tns.BuildAccept(318, ""), true)
		halfClosingScripts(t, giveUpConfig(srv, closedPort(t)))
	})
	// Also after a re-dial: the first server refuses the connection
	// (checks off: the first app's session dials it), the next one gets
	// the CONNECT and the FIN, and answers.
	t.Run("after a re-dial", func(t *testing.T) {
		srv, _ := slowListener(t, func() time.Duration { return 300 * time.Millisecond }, tns.BuildAccept(318, ""), true)
		halfClosingScripts(t, strings.Replace(giveUpConfig(closedPort(t), srv), `check = "tcp"`, `check = "off"`, 1))
	})
}

// halfClosingScripts sends two CONNECTs, each followed at once by a
// half-close, and wants the server's ACCEPT for each.
func halfClosingScripts(t *testing.T, cfg string) {
	h, logs := startProxyLog(t, cfg)
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		c := h.dial("l")
		c.Write(connect)
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		p, err := tns.ReadPacket(c, tns.Length16, 0)
		c.Close()
		if err != nil || p.Type != tns.TypeAccept {
			t.Fatalf("app %d, half-closed after its CONNECT, got %v, %v; want the listener's ACCEPT", i+1, p.Type, err)
		}
		waitFor(t, 3*time.Second, "the session counted ok", func() bool {
			return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == float64(i+1)
		})
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "abandoned"); v != 0 {
		t.Errorf("sessions_total{outcome=abandoned} = %v, want 0", v)
	}
	if l := logs.lines("app gave up"); len(l) != 0 {
		t.Errorf("warnings for apps that got their answer:\n%s", strings.Join(l, "\n"))
	}
}

// twoBackendsConfig: listener l to backend b (the slow server first, a
// standby second) and listener l2 to backend b2 (the same slow server
// only), as for a batch and an OLTP pool on one database.
func twoBackendsConfig(slow, standby string) string {
	body := `connect_timeout = "500ms"
connect_budget = "20s"
answer_timeout = "5s"
[backend.health]
check = "tcp"
interval = "200ms"
timeout = "100ms"
[backend.breaker]
failures = 2`
	return fmt.Sprintf(`
[log]
level = "info"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
[[listener]]
name = "l2"
listen = "127.0.0.1:0"
backend = "b2"
[[backend]]
name = "b"
%s
[[backend.server]]
address = %q
priority = 0
[[backend.server]]
address = %q
priority = 1
[[backend]]
name = "b2"
%s
[[backend.server]]
address = %q
`, body, slow, standby, body, slow)
}

// A database listener in a logon storm that two backends share (a batch
// pool's apps, which give up after 2.5 s, on listener l; an OLTP pool's,
// which wait, on l2) answers l2's sessions after 3 s all along: the batch
// apps that give up on it are no verdict on it either, though none of
// b's own sessions got an answer. Its circuit in b stays closed and the
// batch apps never reach b's standby. Until 2026-12-01 the second batch
// app that gave up opened it, and the third got the standby's ACCEPT
// (a standby that may not have the service yet).
func TestAppsThatGiveUpOnAServerAnsweringAnotherBackendAreNoVerdict(t *testing.T) {
	var delay atomic.Int64
	delay.Store(int64(3 * time.Second))
	slow, _ := slowAccepter(t, &delay)
	standby, answered := slowListener(t, func() time.Duration { return 0 }, tns.BuildAccept(318, ""), true)
	h, logs := startProxyLog(t, twoBackendsConfig(slow, standby))
	waitFor(t, 3*time.Second, "the servers up", func() bool {
		return gauge(h.m.BackendUp, "b", slow) == 1 && gauge(h.m.BackendUp, "b", standby) == 1 && gauge(h.m.BackendUp, "b2", slow) == 1
	})
	patient := startPatientApps(t, h, "l2", "an OLTP app")
	// The batch apps, one after another: each waits on b's slow server,
	// which answers only l2's sessions meanwhile.
	for i := range 3 {
		if typ, err := appWaitingOn(h, "l", 2500*time.Millisecond); err != nil || typ != 0 {
			t.Errorf("batch app %d got %v, %v; want nothing within its 2.5 s", i+1, typ, err)
		}
	}
	patient.stop()
	waitFor(t, 3*time.Second, "the abandoned sessions counted", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "abandoned") == 3
	})
	if v := gauge(h.m.BreakerState, "b", slow); v != metrics.BreakerClosed {
		t.Errorf("the slow server's breaker in b is %v, want closed (%v): it answered b2's sessions meanwhile; log:\n%s", v, metrics.BreakerClosed, logs)
	}
	if n := answered.Load(); n != 0 {
		t.Errorf("the standby got %d CONNECTs, want 0", n)
	}
}

// patientApps are apps that wait for a slow server's answer, two a second
// from startPatientApps on, each for up to 10 s: the answers the server
// gives them all along (it answers one every 500 ms once its delay has
// passed).
type patientApps struct {
	t        *testing.T
	errs     chan error
	quit     chan struct{}
	finished chan struct{}
	launched int
}

// startPatientApps starts them on listener and returns once the slow
// server has answered the first; who names them in errors.
func startPatientApps(t *testing.T, h *harness, listener, who string) *patientApps {
	t.Helper()
	p := &patientApps{t: t, errs: make(chan error, 64), quit: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(p.finished)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-tick.C:
			}
			p.launched++
			go func() {
				typ, err := appWaitingOn(h, listener, 10*time.Second)
				if err == nil && typ != tns.TypeAccept {
					err = fmt.Errorf("%s got %v, want the slow server's ACCEPT", who, typ)
				}
				p.errs <- err
			}()
		}
	}()
	waitFor(t, 10*time.Second, "the slow server's first answer", func() bool { return len(p.errs) > 0 })
	return p
}

// stop launches no more, and fails the test for each app that did not
// get the slow server's ACCEPT.
func (p *patientApps) stop() {
	p.t.Helper()
	close(p.quit)
	<-p.finished // launched is final
	for range p.launched {
		if err := <-p.errs; err != nil {
			p.t.Error(err)
		}
	}
}

// tlsRecord reads one TLS record (its 5-byte header and body) from c.
func tlsRecord(c net.Conn) ([]byte, error) {
	rec := make([]byte, 5)
	if _, err := io.ReadFull(c, rec); err != nil {
		return nil, err
	}
	rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
	_, err := io.ReadFull(c, rec[5:])
	return rec, err
}

// hungTLSListener is a TCPS listener that accepts, reads and never answers
// (its process stopped); hellos counts the ClientHello records it got
// whole.
func hungTLSListener(t *testing.T) (*server, *atomic.Int32) {
	var hellos atomic.Int32
	return newServer(t, func(c *net.TCPConn) {
		if rec, err := tlsRecord(c); err == nil && rec[0] == 0x16 {
			hellos.Add(1)
		}
		io.Copy(io.Discard, c)
	}), &hellos
}

// readFirst is a conn whose first reads return bytes already read from it.
type readFirst struct {
	*net.TCPConn
	r io.Reader
}

func (c *readFirst) Read(b []byte) (int, error) { return c.r.Read(b) }

// tlsStandby is a TCPS listener that counts the ClientHello records it
// gets (hellos), completes the handshake and echoes; the health checks'
// connections (no byte) are not counted.
func tlsStandby(t *testing.T, cert tls.Certificate) (*server, *atomic.Int32) {
	var hellos atomic.Int32
	return newServer(t, func(c *net.TCPConn) {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rec, err := tlsRecord(c)
		if len(rec) == 0 {
			return
		}
		hellos.Add(1)
		if err != nil || rec[0] != 0x16 {
			io.Copy(io.Discard, c)
			return
		}
		tc := tls.Server(&readFirst{c, io.MultiReader(bytes.NewReader(rec), c)}, &tls.Config{Certificates: []tls.Certificate{cert}})
		if tc.Handshake() != nil {
			return
		}
		tc.SetDeadline(time.Time{})
		io.Copy(tc, tc)
		tc.CloseWrite()
	}), &hellos
}

// givingUpTLSApp dials a TLS session for serverName (SNI) through
// listener l with Go's crypto/tls and a connect timeout of wait
// (tls.Dialer: dial and handshake), as go-ora with SSL=true and a connect
// timeout does. It returns the session when the handshake completed, nil
// when the app's own timeout ran out first; anything else fails the test.
func givingUpTLSApp(t *testing.T, h *harness, serverName string, wait time.Duration) *tls.Conn {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: wait}, Config: &tls.Config{ServerName: serverName, InsecureSkipVerify: true}}
	c, err := d.Dial("tcp", h.addr("l"))
	if err != nil {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("TLS app waiting for the ServerHello: %v, want its own timeout", err)
		}
		return nil
	}
	t.Cleanup(func() { c.Close() })
	return c.(*tls.Conn)
}

// A TLS (tcps) app whose connect timeout is shorter than answer_timeout
// gives up on a hung TCPS listener that holds its ClientHello, as an
// Oracle app does on one that holds its CONNECT: its session ends at once,
// counted abandoned, with the warning naming the server, and its
// ClientHello goes nowhere else. As each app waited over 2 s on a server
// that answered no one and the standby could have taken it, each counts
// against the hung server: after failures = 2 its circuit opens, and the
// third app gets the standby's ServerHello at once. Until 2026-12-01 such
// a session waited on to answer_timeout, then dialed the standby and
// replayed the gone app's ClientHello there, counted ok, with no line:
// TLS apps with short connect timeouts never got past a hung primary.
// Checked with an ordinary ClientHello and one whose byte 4 is 1, which
// starts like a TNS CONNECT header (helloCases).
func TestTLSAppThatGivesUpOnAHungServerIsAbandoned(t *testing.T) {
	cert := selfSigned(t)
	for _, hc := range helloCases(t) {
		t.Run(hc.name, func(t *testing.T) {
			hung, heard := hungTLSListener(t)
			standby, hellos := tlsStandby(t, cert)
			h, logs := startProxyLog(t, giveUpConfig(hung.address, standby.address))
			waitFor(t, 3*time.Second, "both servers up", func() bool {
				return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 1
			})
			for i := range 2 {
				if c := givingUpTLSApp(t, h, hc.serverName, 2300*time.Millisecond); c != nil {
					t.Fatalf("TLS app %d completed its handshake within its 2.3 s; want its own timeout (the hung server holds it for answer_timeout, 5 s)", i+1)
				}
				waitFor(t, 3*time.Second, "the abandoned session counted, and ended", func() bool {
					return counter(h.m.SessionsTotal, "l", "b", "other", "abandoned") == float64(i+1) && len(h.p.liveSessions()) == 0
				})
			}
			if n, m := heard.Load(), hellos.Load(); n != 2 || m != 0 {
				t.Errorf("ClientHellos: hung server %d, standby %d; want 2 and 0 (the apps had gone)", n, m)
			}
			if v := counter(h.m.SessionsTotal, "l", "b", "other", "ok"); v != 0 {
				t.Errorf("sessions_total{outcome=ok} = %v for TLS apps that gave up on a silent server, want 0", v)
			}
			if v := sumCounters(t, h.m.Resets); v != 0 {
				t.Errorf("resets_total = %v: an app's close is no reset", v)
			}
			waitFor(t, 3*time.Second, "a warning per app, naming the hung server", func() bool {
				return len(logs.lines("app gave up waiting for the server's first answer", "counted as its failure",
					"listener=l", "backend=b", "server="+hung.address, "waited=", "server_silent=", "answer_timeout=5s")) == 2
			})
			if v := gauge(h.m.BreakerState, "b", hung.address); v != metrics.BreakerOpen {
				t.Fatalf("the hung server's breaker is %v, want open (%v) after 2 TLS apps gave up on it; log:\n%s", v, metrics.BreakerOpen, logs)
			}
			start := time.Now()
			c := givingUpTLSApp(t, h, hc.serverName, 2300*time.Millisecond)
			if c == nil {
				t.Fatal("the TLS app after the circuit opened timed out; want the standby's handshake")
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("the standby's handshake took %v, want at once (the hung server's circuit is open)", took.Round(time.Millisecond))
			}
			if n, m := heard.Load(), hellos.Load(); n != 2 || m != 1 {
				t.Errorf("ClientHellos: hung server %d, standby %d; want 2 and 1", n, m)
			}
		})
	}
}

// A TLS app that closes with its ClientHello cut short, in its record or
// with a record still to come (a ClientHello in two records, as openssl
// s_client -split_send_frag sends it), gave no server an opening it could
// answer: no abandoned session and no warning, though it closed after the
// 2 s that blame a silent server; and no server's failure. It ends at
// connect_budget as a bad opening (reset, on the app's side), its bytes
// sent to no other server. Until 2026-12-01 a first record whole was
// taken for the whole ClientHello (abandoned, the hung server counted
// failed for the app's close), and a record cut short was replayed to the
// standby at answer_timeout, whose close without a byte was its failure:
// one such app opened the standby's circuit (failures = 2), and the apps
// after it got the hung primary.
func TestTLSClientHelloCutShortIsNoAbandonedSession(t *testing.T) {
	hello := fullClientHello(t)
	for _, c := range []struct {
		name    string
		opening []byte
	}{
		{"record cut short", hello[:len(hello)-10]},
		{"a record still to come", helloInRecords(hello, 256)[:5+256]},
	} {
		t.Run(c.name, func(t *testing.T) {
			cert := selfSigned(t)
			hung, _ := hungTLSListener(t)
			standby, hellos := tlsStandby(t, cert)
			h, logs := startProxyLog(t, strings.Replace(giveUpConfig(hung.address, standby.address), `connect_budget = "20s"`, `connect_budget = "8s"`, 1))
			waitFor(t, 3*time.Second, "both servers up", func() bool {
				return gauge(h.m.BackendUp, "b", hung.address) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 1
			})
			app := h.dial("l")
			app.Write(c.opening)
			time.Sleep(2300 * time.Millisecond) // the app's handshake timeout, past abandonedVerdictAfter (and halfCloseGrace)
			app.Close()
			waitFor(t, 20*time.Second, "the session's end", func() bool { return len(h.p.liveSessions()) == 0 })
			if v := counter(h.m.SessionsTotal, "l", "b", "other", "abandoned"); v != 0 {
				t.Errorf("sessions_total{outcome=abandoned} = %v for a ClientHello cut short, want 0", v)
			}
			if l := logs.lines("app gave up"); len(l) != 0 {
				t.Errorf("warnings for an opening no server could answer:\n%s", strings.Join(l, "\n"))
			}
			if v := counter(h.m.SessionsTotal, "l", "b", "other", "reset"); v != 1 {
				t.Errorf("sessions_total{outcome=reset} = %v, want 1: a bad opening; log:\n%s", v, logs)
			}
			if n := hellos.Load(); n != 0 {
				t.Errorf("the standby got %d openings cut short of an app that had gone, want 0", n)
			}
			for _, srv := range []string{hung.address, standby.address} {
				if v := gauge(h.m.BreakerState, "b", srv); v != metrics.BreakerClosed {
					t.Errorf("server %s: breaker %v, want closed (%v): an app's opening cut short is no server's failure; log:\n%s", srv, v, metrics.BreakerClosed, logs)
				}
			}
		})
	}
}

// fullClientHello is the first TLS record Go's client sends.
func fullClientHello(t testing.TB) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: "db.test", InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(2 * time.Second))
	rec, err := tlsRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// helloInRecords is the ClientHello of hello (one record) in two records,
// the first with k bytes of it, as openssl s_client -split_send_frag k
// sends it.
func helloInRecords(hello []byte, k int) []byte {
	msg := hello[5:]
	out := append([]byte{0x16, hello[1], hello[2], byte(k >> 8), byte(k)}, msg[:k]...)
	rest := len(msg) - k
	return append(append(out, 0x16, hello[1], hello[2], byte(rest>>8), byte(rest)), msg[k:]...)
}

// wholeClientHello takes a TLS opening for one a server answers only with
// the ClientHello's first record whole, and nothing else for one.
func TestTLSWholeClientHello(t *testing.T) {
	hello := fullClientHello(t)
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	if err != nil {
		t.Fatal(err)
	}
	withType := func(b []byte, i int, v byte) []byte {
		b = bytes.Clone(b)
		b[i] = v
		return b
	}
	for _, c := range []struct {
		name  string
		b     []byte
		whole bool
	}{
		{"Go's ClientHello", hello, true},
		{"and the bytes after it", append(bytes.Clone(hello), 0x14, 0x03, 0x03, 0, 1, 1), true},
		{"cut short by a byte", hello[:len(hello)-1], false},
		{"its header only", hello[:5], false},
		{"its header and type", hello[:6], false},
		{"an alert record", withType(hello, 0, 0x15), false},
		{"a handshake message other than a ClientHello", withType(hello, 5, 2), false},
		{"a record longer than TLS allows", append([]byte{0x16, 0x03, 0x01, 0x48, 0x01, 0x01}, make([]byte, 0x4801)...), false},
		{"a ClientHello in two records", helloInRecords(hello, 256), true},
		{"its first record of two", helloInRecords(hello, 256)[:5+256], false},
		{"a ClientHello in two records, the second cut short", helloInRecords(hello, 256)[:len(hello)+4], false},
		{"in two records, its header split between them", helloInRecords(hello, 2), true},
		{"a record of a ClientHello, then an alert", append(helloInRecords(hello, 256)[:5+256], 0x15, 0x03, 0x03, 0, 2, 2, 40), false},
		{"a TNS CONNECT", connect, false},
		{"HTTP", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
	} {
		if got := wholeClientHello(c.b); got != c.whole {
			t.Errorf("%s: wholeClientHello = %v, want %v", c.name, got, c.whole)
		}
	}
}

// A TLS app that gives up during an outage (every dial refused, its
// handshake timeout runs out) is not re-dialed for, as an Oracle client is
// not (TestOracleClientThatGaveUpIsNotRedialedFor): its session ends
// before the next dial, and the database, once back, does not get the
// ClientHello and FIN of an app that has gone. Until 2026-12-01 the
// session re-dialed for the rest of connect_budget, and a database back
// in time got them.
func TestTLSAppThatGaveUpDuringAnOutageIsNotRedialedFor(t *testing.T) {
	noRedialForAGoneTLSApp(t, func(h *harness) {
		if c := givingUpTLSApp(t, h, "db.test", 400*time.Millisecond); c != nil {
			t.Fatal("the TLS app completed its handshake with no server up")
		}
	})
}

// The same for a TLS app that closed with its ClientHello cut short: no
// server can answer it, and nothing more comes. Until 2026-12-01 its
// session was re-dialed for to the end of connect_budget, and the server,
// once back, got the gone app's bytes.
func TestTLSAppThatClosedOnAHelloCutShortDuringAnOutageIsNotRedialedFor(t *testing.T) {
	hello := fullClientHello(t)
	noRedialForAGoneTLSApp(t, func(h *harness) {
		c := h.dial("l")
		c.Write(hello[:len(hello)-10])
		time.Sleep(400 * time.Millisecond) // past halfCloseGrace: a close, not a half-close
		c.Close()
	})
}

// noRedialForAGoneTLSApp runs leave (a TLS app that sends its opening
// and closes) against a backend whose only server refuses dials, and
// checks that the session ends within a second of the close and that the
// server, once back, takes no connection for the app.
func noRedialForAGoneTLSApp(t *testing.T, leave func(h *harness)) {
	srv := newServer(t, echo)
	srv.down()
	h := startProxy(t, backendTOML(`connect_timeout = "300ms"
connect_budget = "5s"
backoff = "50ms"
backoff_max = "100ms"
[backend.health]
check = "off"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q", srv.address)))
	leave(h)
	closed := time.Now()
	waitFor(t, 3*time.Second, "the session's end", func() bool { return len(h.p.liveSessions()) == 0 })
	took := time.Since(closed)
	srv.up()
	time.Sleep(300 * time.Millisecond)
	if n := srv.accepts(); n != 0 {
		t.Errorf("the server, back %v after the TLS app left, took %d connections for it", took.Round(time.Millisecond), n)
	}
	if took > time.Second {
		t.Errorf("the session went on %v after its TLS app left (backoff_max 100ms)", took.Round(time.Millisecond))
	}
}
