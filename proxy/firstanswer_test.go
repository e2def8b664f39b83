package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
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
