package proxy

import (
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
)

// handedSockets listens on n loopback sockets and hands them over as an
// upgrade does (NewInherited, the old process's sessions on the first
// len(sessions), and its listeners' names there unless nil), returning
// their addresses.
func handedSockets(t *testing.T, n int, sessions []int64, names []string) (*Inherited, []string) {
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
	h, err := NewInherited(files, sessions, names)
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
	h, addrs := handedSockets(t, 3, []int64{2, 0}, nil) // the third: the admin socket, no count
	var a, b admitted
	for i, slots := range []*admitted{&a, &b} {
		ln := h.Take(addrs[i])
		if ln == nil {
			t.Fatalf("socket %s not taken", addrs[i])
		}
		defer ln.Close()
		h.hold(fmt.Sprint(i), ln, func(string) bool { return true }, slots)
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

// The old process's sessions go to the new process's listener of the same
// name, as across a reload (slotsFor), wherever its configuration puts it:
// onto the other listener's socket (a swap), onto a new address (its old
// socket closed); a listener that takes over the socket of one its
// configuration does not name (a rename) takes that one's; one that takes
// over the socket of a listener it does name takes none of them. From a
// version before the names (nil), they go by socket as they did.
func TestInheritedSessionsFollowTheirListenersName(t *testing.T) {
	// A listener of the new configuration: its name, the old socket it
	// takes over (-1: a new address), and the old sessions it should count.
	type heir struct {
		name string
		sock int
		want int64
	}
	for _, c := range []struct {
		what  string
		names []string
		news  []heir
	}{
		{"swapped, and moved onto a new address", []string{"a", "b"}, []heir{{"b", 0, 5}, {"c", 1, 0}, {"a", -1, 2}}},
		{"renamed", []string{"a", "b"}, []heir{{"x", 0, 2}, {"b", 1, 5}}},
		{"from a version before the names", nil, []heir{{"b", 0, 2}, {"a", 1, 5}}},
	} {
		t.Run(c.what, func(t *testing.T) {
			h, addrs := handedSockets(t, 3, []int64{2, 5}, c.names)
			named := func(name string) bool {
				return slices.ContainsFunc(c.news, func(l heir) bool { return l.name == name })
			}
			slots := make([]admitted, len(c.news))
			for i, l := range c.news {
				var ln *net.TCPListener
				if l.sock >= 0 {
					if ln = h.Take(addrs[l.sock]); ln == nil {
						t.Fatalf("socket %s not taken", addrs[l.sock])
					}
					defer ln.Close()
				}
				h.hold(l.name, ln, named, &slots[i])
			}
			for i, l := range c.news {
				if got := slots[i].active.Load(); got != l.want {
					t.Errorf("listener %q counts %d of the old process's sessions, want %d", l.name, got, l.want)
				}
			}
			h.Release()
			for i, l := range c.news {
				if got := slots[i].active.Load(); got != 0 {
					t.Errorf("listener %q counts %d after Release", l.name, got)
				}
			}
		})
	}
}

// The new process's log line of the old process's counts names each
// listener when the old process handed the names over: the bare list is in
// the old process's socket order, which says nothing of which is which.
func TestInheritedDescribeNamesTheCounts(t *testing.T) {
	h, _ := handedSockets(t, 3, []int64{2, 5}, []string{"orders", "reports"})
	if got, want := h.Describe([]int64{1, 0}), "orders=1 reports=0"; got != want {
		t.Errorf("with names: %q, want %q", got, want)
	}
	old, _ := handedSockets(t, 3, []int64{2, 5}, nil)
	if got, want := old.Describe([]int64{1, 0}), "[1 0]"; got != want {
		t.Errorf("from a version before the names: %q, want %q", got, want)
	}
}
