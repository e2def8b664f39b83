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
	sessions map[*net.TCPListener]int64 // the old process's sessions on each socket at the handover
	held     []heldSessions             // those counted against the listeners' max_sessions (Release)
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
	h := &Inherited{sessions: map[*net.TCPListener]int64{}}
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
	if n := h.sessions[ln]; n > 0 {
		slots.active.Add(n)
		h.held = append(h.held, heldSessions{slots, n})
	}
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
	h.held = nil
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
func (p *Proxy) ListeningSockets() ([]int, []int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var fds []int
	var sessions []int64
	for _, l := range p.listeners {
		fd, err := DupSocket(l.ln)
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			return nil, nil, err
		}
		fds = append(fds, fd)
		sessions = append(sessions, l.active.Load())
	}
	return fds, sessions, nil
}
