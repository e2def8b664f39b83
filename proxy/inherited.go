package proxy

import (
	"fmt"
	"net"
	"os"
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
	mu       sync.Mutex
	lns      []*net.TCPListener
	order    []*net.TCPListener         // every socket as handed over, in the old process's order (Adjust)
	counted  int                        // how many of them came with a count (the listeners'; not the admin socket)
	sessions map[*net.TCPListener]int64 // the old process's sessions on each socket at the handover
	// Those counted against the listeners' max_sessions, by socket (hold),
	// until Release (nil then).
	held map[*net.TCPListener]*heldSessions
}

// heldSessions are the old process's sessions counted in a listener's slots.
type heldSessions struct {
	slots *admitted
	n     int64
}

// NewInherited makes listeners of files (their fds stay theirs: the caller
// closes them). Every file must be a listening TCP socket. sessions, when
// not nil, is how many sessions the old process had on each: they count
// against max_sessions until Release.
func NewInherited(files []*os.File, sessions []int64) (*Inherited, error) {
	h := &Inherited{sessions: map[*net.TCPListener]int64{}, held: map[*net.TCPListener]*heldSessions{}, counted: min(len(sessions), len(files))}
	for i, f := range files {
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
		if i < len(sessions) {
			h.sessions[tl] = sessions[i]
		}
	}
	return h, nil
}

// hold counts the old process's sessions on ln against slots (a listener's
// max_sessions) until Release.
func (h *Inherited) hold(ln *net.TCPListener, slots *admitted) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil { // released already
		return
	}
	n := h.sessions[ln]
	slots.active.Add(n)
	h.held[ln] = &heldSessions{slots, n} // also when none: Adjust may raise it
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
	if len(counts) != h.counted {
		return fmt.Errorf("%d counts for %d sockets", len(counts), h.counted)
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
		ln := h.order[i]
		h.sessions[ln] = n // for a hold still to come
		if x := h.held[ln]; x != nil {
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
	}
	return fds, h, nil
}

// HandedOver are the admission counts of the listeners whose sockets
// ListeningSockets duplicated, in its order.
type HandedOver struct{ slots []*admitted }

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
