package proxy

import (
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
)

// A reconnect storm (every pool refilling at once after a restart, a
// network blip or a failover) meets a database that is slow to answer: its
// listener takes each CONNECT, then answers seconds later. Sessions waiting
// for that first answer hold no read buffer, as sessions waiting for the
// app do: until 2026-11-29 each held a pooled 16 KiB buffer through the
// wait, so 6,000 sessions waiting 3 s took the live heap to 109 MB and the
// RSS to 157 MB (the shipped Kubernetes limit is 256 MiB). Measured: heap
// per waiting session (stacks are counted apart).
func TestSessionsWaitingForFirstAnswerHoldNoBuffer(t *testing.T) {
	const conns = 300
	release := make(chan struct{})
	be := newBackend(t, func(c *net.TCPConn) {
		var b [64]byte
		c.Read(b[:]) // the app's opening; the answer comes later
		select {
		case <-release:
			c.Write([]byte("hello"))
			io.Copy(io.Discard, c)
		case <-time.After(20 * time.Second):
		}
	})
	h := startProxy(t, strings.Replace(oneBackendConfig(be.addr()), `connect_budget = "3s"`, `connect_budget = "20s"`, 1))
	addr := h.addr("l")

	cs, heap, stack := heapPerWaitingSession(t, conns, func(c net.Conn) {
		if _, err := c.Write([]byte("opening")); err != nil {
			t.Fatal(err)
		}
	}, func() {
		waitFor(t, 5*time.Second, "every opening at the backend", func() bool { return len(be.accepted()) == conns })
		time.Sleep(200 * time.Millisecond) // every session is in its wait for the first answer
	}, addr)
	t.Logf("%d sessions waiting for the backend's first answer: %d bytes of heap and %d bytes of stack each", conns, heap, stack)
	if heap > 12<<10 {
		t.Errorf("%d bytes of heap per session waiting for its first answer: it holds a read buffer", heap)
	}

	close(release)
	for _, c := range cs {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
			t.Fatalf("first answer: %q, %v", b, err)
		}
	}
}

// The same storm against a listener that asks for the CONNECT again first
// (RESEND, then the slow answer to the CONNECT sent again): the wait for
// that answer held the buffer the RESEND was read into, 16 KiB a session.
func TestSessionsWaitingAfterResendHoldNoBuffer(t *testing.T) {
	const conns = 300
	release := make(chan struct{})
	be := newBackend(t, func(c *net.TCPConn) {
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
			return
		}
		c.Write(tns.BuildResend())
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil { // the CONNECT again; the answer comes later
			return
		}
		select {
		case <-release:
			c.Write(tns.BuildAccept(314, ""))
			io.Copy(io.Discard, c)
		case <-time.After(20 * time.Second):
		}
	})
	h := startProxy(t, strings.Replace(oneBackendConfig(be.addr()), `connect_budget = "3s"`, `connect_budget = "20s"`, 1))
	addr := h.addr("l")
	connect := goodConnect(t, "SALES")

	cs, heap, _ := heapPerWaitingSession(t, conns, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(connect); err != nil {
			t.Fatal(err)
		}
		if pkt, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || pkt.Type != tns.TypeResend {
			t.Fatalf("got %v %v, want RESEND", pkt.Type, err)
		}
		if _, err := c.Write(connect); err != nil {
			t.Fatal(err)
		}
	}, func() {
		time.Sleep(300 * time.Millisecond) // every session is in its wait for the answer to its second CONNECT
	}, addr)
	t.Logf("%d sessions waiting for the answer after a RESEND: %d bytes of heap each", conns, heap)
	if heap > 12<<10 {
		t.Errorf("%d bytes of heap per session waiting for the answer after a RESEND: it holds a read buffer", heap)
	}

	close(release)
	for _, c := range cs {
		if pkt, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || pkt.Type != tns.TypeAccept {
			t.Fatalf("answer: %v, %v", pkt.Type, err)
		}
	}
}

// heapPerWaitingSession opens conns apps to addr, each begun by open, lets
// settle bring every session to its wait, and returns the apps' connections
// (closed when the test ends) and the heap and the stack per session.
func heapPerWaitingSession(t *testing.T, conns int, open func(net.Conn), settle func(), addr string) (cs []net.Conn, heap, stack int64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&before)
	cs = make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		open(c)
		cs[i] = c
	}
	settle()
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap = (int64(after.HeapInuse) - int64(before.HeapInuse)) / int64(conns)
	stack = (int64(after.StackInuse) - int64(before.StackInuse)) / int64(conns)
	return cs, heap, stack
}
