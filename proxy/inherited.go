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
	mu  sync.Mutex
	lns []*net.TCPListener
}

// NewInherited makes listeners of files (their fds stay theirs: the caller
// closes them). Every file must be a listening TCP socket.
func NewInherited(files []*os.File) (*Inherited, error) {
	h := &Inherited{}
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
	}
	return h, nil
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
// that is to take them over; the caller closes them. Bare fds, not files:
// os.File.Fd (which os/exec calls on ExtraFiles) would switch each socket
// to blocking mode under the running accept loops (see dupListener).
func (p *Proxy) ListeningSockets() ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var fds []int
	for _, l := range p.listeners {
		fd, err := DupSocket(l.ln)
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			return nil, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}
