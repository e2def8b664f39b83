package main

import (
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// goloop is a reference design, not a product: one Go thread running one
// epoll loop on raw fds (accept4, non-blocking connect, read, write,
// shutdown, close), no net package, no goroutine per connection, no
// features. It answers "what does Go reach on this machine when it works
// the way HAProxy and nginx do", next to gocopy ("what Go's net package
// gives") in the same run. Opt-in: -systems ...,goloop.
//
// Each direction reads until EAGAIN (edge-triggered registrations) and
// writes on at once; what the destination cannot take waits in a buffer,
// and reading that direction stops until EPOLLOUT drains it.
const (
	roleLoop  = "goloop"
	roleLoop2 = "goloop2"
)

type loopConn struct {
	peer    int
	eof     bool   // this fd's reading side has ended
	pending []byte // bytes for this fd that it could not take yet
}

type eventLoop struct {
	ep     int
	ln     map[int]unix.Sockaddr // listening fd -> its target
	conns  map[int]*loopConn
	buf    []byte
	events []unix.EpollEvent
}

// runLoop serves one listener per target until the process is killed, on
// loops epoll loops, each on a thread of its own with its own listening
// socket per target (SO_REUSEPORT on one port: the kernel spreads the
// connections), as nginx's workers do. goloop runs one loop, goloop2 two.
func runLoop(targets []string, loops int, out io.Writer) error {
	ls := make([]*eventLoop, loops)
	ports := make([]int, len(targets))
	for i := range ls {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return err
		}
		l := &eventLoop{ep: ep, ln: map[int]unix.Sockaddr{}, conns: map[int]*loopConn{},
			buf: make([]byte, 16<<10), events: make([]unix.EpollEvent, 256)}
		for j, t := range targets {
			ap, err := netip.ParseAddrPort(t)
			if err != nil {
				return err
			}
			fd, port, err := listenRaw(ports[j])
			if err != nil {
				return err
			}
			ports[j] = port
			l.ln[fd] = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
			if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
				return err
			}
		}
		ls[i] = l
	}
	addrs := make([]string, len(ports))
	for j, port := range ports {
		addrs[j] = fmt.Sprintf("127.0.0.1:%d", port)
	}
	fmt.Fprintf(out, "ready %s\n", strings.Join(addrs, " "))
	errc := make(chan error, loops)
	for _, l := range ls {
		go func() { errc <- l.run() }()
	}
	return <-errc // the process ends here; the other loops go with it
}

// run waits for events and handles them until epoll fails.
func (l *eventLoop) run() error {
	runtime.LockOSThread()
	for {
		n, err := unix.EpollWait(l.ep, l.events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range l.events[:n] {
			fd := int(ev.Fd)
			if target, ok := l.ln[fd]; ok {
				l.accept(fd, target)
				continue
			}
			l.event(fd, ev.Events)
		}
	}
}

// listenRaw is a non-blocking listening socket on 127.0.0.1:port (0: any),
// with SO_REUSEPORT so that each loop can have its own on one port; it
// returns the port.
func listenRaw(port int) (int, int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return -1, 0, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return -1, 0, err
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return -1, 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1, 0, err
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}

// accept takes every pending connection and starts its backend connect.
func (l *eventLoop) accept(lfd int, target unix.Sockaddr) {
	for {
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN; EMFILE and the like: the next event retries
		}
		bfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(cfd)
			continue
		}
		unix.SetsockoptInt(bfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.Connect(bfd, target); err != nil && err != unix.EINPROGRESS {
			unix.Close(cfd)
			unix.Close(bfd)
			continue
		}
		l.conns[cfd] = &loopConn{peer: bfd}
		l.conns[bfd] = &loopConn{peer: cfd}
		for _, fd := range []int{cfd, bfd} {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
			if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				l.closePair(cfd)
				break
			}
		}
	}
}

// event handles readiness of one side of a pair: room to flush what waits
// for it (then its peer may be read again), and bytes or an end to pass on.
func (l *eventLoop) event(fd int, events uint32) {
	c := l.conns[fd]
	if c == nil {
		return // its pair was closed earlier in this batch
	}
	if events&unix.EPOLLERR != 0 {
		l.closePair(fd)
		return
	}
	if events&unix.EPOLLOUT != 0 && len(c.pending) > 0 {
		if !l.flush(fd, c) {
			return
		}
		if len(c.pending) == 0 && !l.pass(c.peer) {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		l.pass(fd)
	}
}

// flush writes what waits for fd; false when the pair was closed.
func (l *eventLoop) flush(fd int, c *loopConn) bool {
	w, err := unix.Write(fd, c.pending)
	if err != nil && err != unix.EAGAIN {
		l.closePair(fd)
		return false
	}
	c.pending = c.pending[max(w, 0):]
	if len(c.pending) == 0 {
		c.pending = nil
		if l.conns[c.peer].eof {
			unix.Shutdown(fd, unix.SHUT_WR) // the end that waited behind the bytes
			return !l.closeIfDone(fd)
		}
	}
	return true
}

// closeIfDone closes the pair once both directions ended and delivered
// everything; true when it did.
func (l *eventLoop) closeIfDone(fd int) bool {
	c := l.conns[fd]
	p := l.conns[c.peer]
	if c.eof && p.eof && len(c.pending) == 0 && len(p.pending) == 0 {
		l.closePair(fd)
		return true
	}
	return false
}

// pass reads from fd and writes to its peer until fd is drained, the peer
// is full, or fd ends; false when the pair was closed.
func (l *eventLoop) pass(fd int) bool {
	c := l.conns[fd]
	if c == nil || c.eof {
		return true
	}
	dst := l.conns[c.peer]
	for len(dst.pending) == 0 {
		r, err := unix.Read(fd, l.buf)
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			l.closePair(fd)
			return false
		}
		if r == 0 {
			c.eof = true
			unix.Shutdown(c.peer, unix.SHUT_WR)
			return !l.closeIfDone(fd)
		}
		w, err := unix.Write(c.peer, l.buf[:r])
		if err == unix.EAGAIN {
			w = 0
		} else if err != nil {
			l.closePair(fd)
			return false
		}
		if w < r {
			dst.pending = append([]byte(nil), l.buf[w:r]...)
			return true
		}
		// Read again even after a short read: a FIN that came with the
		// bytes brings no edge of its own.
	}
	return true
}

func (l *eventLoop) closePair(fd int) {
	c := l.conns[fd]
	if c == nil {
		return
	}
	delete(l.conns, fd)
	delete(l.conns, c.peer)
	unix.Close(fd)
	unix.Close(c.peer)
}
