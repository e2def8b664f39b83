package proxy

import (
	"net"
	"os"
	"testing"
)

// handedSockets listens on n loopback sockets and hands them over as an
// upgrade does (NewInherited, the old process's sessions on the first
// len(sessions)), returning their addresses.
func handedSockets(t *testing.T, n int, sessions []int64) (*Inherited, []string) {
	t.Helper()
	var files []*os.File
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		addrs = append(addrs, ln.Addr().String())
	}
	h, err := NewInherited(files, sessions)
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, addrs
}

// The old process's sessions on each socket, said again once it stopped
// accepting (Adjust), replace those at the handover in the listeners'
// counts: raised by the sessions it took while the new process started,
// lowered by those that ended; a socket it had none on at the handover
// counts too. Release takes them all back, the adjusted ones included;
// an Adjust after it, or one that does not match the sockets, changes
// nothing.
func TestInheritedAdjustCountsUntilRelease(t *testing.T) {
	h, addrs := handedSockets(t, 3, []int64{2, 0}) // the third: the admin socket, no count
	var a, b admitted
	for i, slots := range []*admitted{&a, &b} {
		ln := h.Take(addrs[i])
		if ln == nil {
			t.Fatalf("socket %s not taken", addrs[i])
		}
		defer ln.Close()
		h.hold(ln, slots)
	}
	check := func(what string, wantA, wantB int64) {
		t.Helper()
		if a.active.Load() != wantA || b.active.Load() != wantB {
			t.Errorf("%s: counts %d and %d, want %d and %d", what, a.active.Load(), b.active.Load(), wantA, wantB)
		}
	}
	check("at the handover", 2, 0)
	if err := h.Adjust([]int64{3, 1}); err != nil {
		t.Fatal(err)
	}
	check("once the old process stopped accepting", 3, 1)
	a.active.Add(1) // a session of the new process's own
	if err := h.Adjust([]int64{1, 1}); err != nil {
		t.Fatal(err)
	}
	check("a second adjust, two of its sessions ended", 2, 1)
	if err := h.Adjust([]int64{5}); err == nil {
		t.Error("an adjust of 1 count for 2 sockets was taken")
	}
	if err := h.Adjust([]int64{5, -1}); err == nil {
		t.Error("an adjust with a negative count was taken")
	}
	check("after adjusts refused", 2, 1)
	h.Release()
	check("after Release", 1, 0)
	if err := h.Adjust([]int64{3, 3}); err != nil {
		t.Fatal(err)
	}
	check("an adjust after Release", 1, 0)
	h.Release()
	check("a second Release", 1, 0)
}

// A connection that is let in while HandedOver counts moves from pending
// to active (handle: active first, then pending): the count takes it once
// or twice, never not at all, or the new process lets in one more than
// max_sessions. Sessions read active before pending: a connection let in
// between the two reads was in neither.
func TestHandedOverSessionsNeverMissAConnectionLetIn(t *testing.T) {
	const conns = 200000
	var a admitted
	a.pending.Store(conns) // accepted, not yet let in
	h := HandedOver{slots: []*admitted{&a}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range conns { // as handle lets each in
			a.active.Add(1)
			a.pending.Add(-1)
		}
	}()
	missed := 0
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if n := h.Sessions()[0]; n < conns {
			missed++
		}
	}
	if missed > 0 {
		t.Errorf("%d counts of %d connections took fewer (a connection let in between the reads counted in neither)", missed, conns)
	}
}
