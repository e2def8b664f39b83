package proxy

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Inherited is the listening sockets a process was handed at start by the
// process it replaces (an upgrade: SIGUSR2, cmd/tnsguard/upgrade.go). The
// new process serves on the very sockets the old one listened on, so their
// queues of connections carry over and no app is refused while the two
// change places. Each socket is taken by the address a listener (or the
// admin listener) asks for; the rest are closed.
type Inherited struct {
	mu    sync.Mutex
	lns   []*net.TCPListener
	order []*net.TCPListener // every socket as handed over, in the old process's order (Adjust)
	// The old process's sessions on each socket at the handover, and the
	// name of its listener there, for the first count (nil names: a
	// version before names were handed over, the sessions go by socket);
	// one for each of the first sockets of order (the listeners'; not the
	// admin socket).
	sessions []int64
	names    []string
	// Those counted against the listeners' max_sessions, by index in
	// sessions (hold), until Release (nil then).
	held map[int]*heldSessions
}

// heldSessions are the old process's sessions counted in a listener's slots.
type heldSessions struct {
	slots *admitted
	n     int64
}

// NewInherited makes listeners of files (their fds stay theirs: the caller
// closes them). Every file must be a listening TCP socket. sessions, when
// not nil, is how many sessions the old process had on each: they count
// against max_sessions until Release. names, when not nil, is the name of
// the old process's listener on each (as many as sessions; otherwise it is
// ignored): the sessions then go to the listener of that name (hold).
func NewInherited(files []*os.File, sessions []int64, names []string) (*Inherited, error) {
	sessions = slices.Clone(sessions[:min(len(sessions), len(files))]) // Adjust writes to it
	if len(names) != len(sessions) {
		names = nil
	}
	h := &Inherited{sessions: sessions, names: names, held: map[int]*heldSessions{}}
	for _, f := range files {
		ln, err := net.FileListener(f)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("inherited socket %s: %w", f.Name(), err)
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			h.Close()
			return nil, fmt.Errorf("inherited socket %s: not TCP (%s)", f.Name(), ln.Addr().Network())
		}
		h.lns = append(h.lns, tl)
		h.order = append(h.order, tl)
	}
	return h, nil
}

// hold counts the old process's sessions of the listener name of the new
// configuration (which has listener, its names) against slots (its
// max_sessions) until Release; ln is the socket it took over, or nil.
// Sessions go with their listener's name, as across a reload (slotsFor):
// those of the old process's listener of that name, on whatever socket,
// or, when the configuration has no listener of the old name, those of the
// socket it took over (a rename); else none. A listener that moves in the
// same change (an upgrade that also swaps two listeners' addresses) keeps
// its own sessions, not those of the listener whose socket it takes over.
// From a version before names were handed over, those of the socket.
// Called by the first Apply only.
func (h *Inherited) hold(name string, ln *net.TCPListener, listener func(string) bool, slots *admitted) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil { // released already
		return
	}
	i := -1
	if h.names != nil {
		i = slices.Index(h.names, name)
	}
	if i < 0 && ln != nil {
		i = slices.Index(h.order[:len(h.sessions)], ln)
		if i >= 0 && h.names != nil && listener(h.names[i]) {
			i = -1 // the listener of that name holds them
		}
	}
	if i < 0 || h.held[i] != nil {
		return
	}
	n := h.sessions[i]
	slots.active.Add(n)
	h.held[i] = &heldSessions{slots, n} // also when none: Adjust may raise it
}

// Describe is counts (one per socket, in the order handed over, as Adjust
// takes them) for a log line: "orders=2 reports=0" when the old process
// named its listeners, else the bare list ("[2 0]"), whose order is the
// old process's and says nothing of which listener is which.
func (h *Inherited) Describe(counts []int64) string {
	if h == nil || h.names == nil || len(counts) != len(h.names) {
		return fmt.Sprint(counts)
	}
	parts := make([]string, len(counts))
	for i, n := range counts {
		parts[i] = fmt.Sprintf("%s=%d", h.names[i], n)
	}
	return strings.Join(parts, " ")
}

// Adjust sets the old process's sessions on each socket to counts (in the
// order of the sessions given to NewInherited): those it had once it
// stopped accepting, after the handover. Until then both processes accepted
// on the sockets; the sessions it took meanwhile count too, until Release.
// Sessions that ended meanwhile no longer do. Nothing changes after
// Release, or when counts do not match the sockets (an error).
func (h *Inherited) Adjust(counts []int64) error {
	if h == nil {
		return nil
	}
	if len(counts) != len(h.sessions) {
		return fmt.Errorf("%d counts for %d sockets", len(counts), len(h.sessions))
	}
	for _, n := range counts {
		if n < 0 {
			return fmt.Errorf("negative count %d", n)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		return nil // the old process has ended, and its sessions with it
	}
	for i, n := range counts {
		h.sessions[i] = n // for a hold still to come
		if x := h.held[i]; x != nil {
			x.slots.active.Add(n - x.n)
			x.n = n
		}
	}
	return nil
}

// Release stops counting the old process's sessions (it has ended, and
// they with it) against the listeners' max_sessions.
func (h *Inherited) Release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, x := range h.held {
		x.slots.active.Add(-x.n)
	}
	h.held = nil // no hold or Adjust counts any more
}

// Take removes and returns the inherited socket bound where listen asks, or
// nil (also on a nil Inherited).
func (h *Inherited) Take(listen string) *net.TCPListener {
	if h == nil {
		return nil
	}
	want, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil || want.Port == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, ln := range h.lns {
		if have, ok := ln.Addr().(*net.TCPAddr); ok && sameBind(have, want) {
			h.lns = append(h.lns[:i], h.lns[i+1:]...)
			return ln
		}
	}
	return nil
}

// Close closes the sockets no one took and returns their addresses.
func (h *Inherited) Close() []string {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var addrs []string
	for _, ln := range h.lns {
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	h.lns = nil
	return addrs
}

// sameBind tells whether a socket bound to have is the one a listen address
// resolving to want would bind. Go binds every unspecified address
// (":1521", "0.0.0.0:1521", "[::]:1521") as one socket, dual-stack [::]
// where the host has IPv6: any two of them are the same socket.
func sameBind(have, want *net.TCPAddr) bool {
	if have.Port != want.Port {
		return false
	}
	anyAddr := len(want.IP) == 0 || want.IP.IsUnspecified()
	return have.IP.Equal(want.IP) || (anyAddr && have.IP.IsUnspecified())
}

// ListeningSockets duplicates the sockets the listeners accept on
// (close-on-exec fds, in the sockets' own non-blocking mode), for a process
// that is to take them over, with the sessions admitted on each (which go
// on in this process while it drains); the caller closes the fds. Bare fds,
// not files: os.File.Fd (which os/exec calls on ExtraFiles) would switch
// each socket to blocking mode under the running accept loops (see
// dupListener).
func (p *Proxy) ListeningSockets() ([]int, HandedOver, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var fds []int
	var h HandedOver
	for _, l := range p.listeners {
		fd, err := DupSocket(l.ln)
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			return nil, HandedOver{}, err
		}
		fds = append(fds, fd)
		h.slots = append(h.slots, l.admitted)
		h.names = append(h.names, l.name)
	}
	return fds, h, nil
}

// HandedOver are the admission counts of the listeners whose sockets
// ListeningSockets duplicated, and their names, in its order.
type HandedOver struct {
	slots []*admitted
	names []string
}

// Names are the names of the listeners whose sockets were handed over, in
// the order of Sessions: the new process counts each one's sessions for
// the listener of that name (Inherited.hold), wherever its configuration
// puts it.
func (h HandedOver) Names() []string { return slices.Clone(h.names) }

// Sessions are the sessions admitted on each socket now, and the
// connections accepted there that are not yet let in or turned away; those
// of the processes older than this one that it counts (Inherited)
// included: at the handover, and again once this process has stopped
// accepting (Retire).
func (h HandedOver) Sessions() []int64 {
	n := make([]int64, len(h.slots))
	for i, s := range h.slots {
		// pending read first: handle counts a connection it lets in as
		// active before it takes it from pending, so one let in between
		// the two reads counts twice at worst, never not at all.
		pending := s.pending.Load()
		n[i] = pending + s.active.Load()
	}
	return n
}

// Pending are the connections accepted on the sockets that are not yet let
// in or turned away (a PROXY header awaited), in all.
func (h HandedOver) Pending() int64 {
	var n int64
	for _, s := range h.slots {
		n += s.pending.Load()
	}
	return n
}
