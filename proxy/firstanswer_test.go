package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
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
			err, _ := readErr(c, 3*time.Second)
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
// hole) resets it within connect_budget of its first bytes. It used to wait
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
	err, _ := readErr(c, 3*time.Second)
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
	err, _ := readErr(c, 3*time.Second)
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
