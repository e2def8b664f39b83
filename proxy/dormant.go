package proxy

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/keepalive"
)

// Dormant sessions. Once both directions of a session have parked, the
// session lets go of its two *net.TCPConn: it keeps a duplicate of each
// socket as a bare fd, closes the conns, and the lot waits on the bare fds.
// A conn costs what an idle session should not keep: Go's poll descriptor
// (about 550 bytes, allocated outside the heap and reused, never returned),
// the netFD and its two addresses (about 300 bytes of heap, twice that in
// RSS at the default GOGC). For 5,000 idle sessions that is about 2 KB a
// session (measured, see the README's data-path section).
//
// A small message to a dormant session is still passed on by the lot
// itself, on the bare fds. Anything that needs a goroutine (a busy session,
// bulk, a full destination, an error, the end) revives the session first:
// net.FileConn makes conns from the fds again, and the pumps go on as
// before; when both park again, the session sleeps again.
//
// The rules that keep this safe (a closed fd number is reused at once by the
// next accept):
//   - the state (dormant, the fds, s.client and s.conn) changes under s.mu;
//   - a session goes dormant only while it holds both pumps (taken from the
//     lot), so no goroutine uses the conns it closes;
//   - while dormant, every use of the bare fds (the lot's read and write,
//     parking, TCP_INFO, closing) is made under s.mu;
//   - whoever holds a pump syncs it with the session under s.mu before it
//     touches a socket (pump.sync), since a revive by the other direction
//     replaces the conns.

// rawSock is a bare socket fd as a syscall.Conn, for keepalive.ReadInfo and
// keepalive.Settings.Apply.
type rawSock int

func (r rawSock) SyscallConn() (syscall.RawConn, error) { return r, nil }

func (r rawSock) Control(f func(fd uintptr)) error { f(uintptr(r)); return nil }

func (r rawSock) Read(f func(fd uintptr) bool) error {
	if !f(uintptr(r)) {
		return syscall.EAGAIN
	}
	return nil
}

func (r rawSock) Write(f func(fd uintptr) bool) error { return r.Read(f) }

// sleep makes the session dormant if both its directions are parked; called
// after a pump parked. It does nothing when the session is busy, ending, or
// has no lot.
func (s *session) sleep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	up, down := s.pumps[0], s.pumps[1]
	if s.dormant || s.closing || !s.established || up == nil || down == nil || s.conn == nil || s.legs.Load() != 2 {
		return
	}
	lot := s.lot
	if !lot.takeBoth(up, down) {
		return // one of them is running
	}
	// Both pumps are ours now. One may still hold the bare fds of an
	// earlier dormancy (the other direction revived the session): bring
	// both up to date before their registrations are touched.
	up.sync()
	down.sync()
	// Duplicate the sockets first: on failure (EMFILE) the session simply
	// stays as it is.
	cfd, err1 := DupSocket(s.client)
	bfd, err2 := DupSocket(s.conn)
	if err1 != nil || err2 != nil {
		closeFD(cfd)
		closeFD(bfd)
		s.repark(up, down)
		return
	}
	// Their registrations are on the conns' fds: remove them, or the
	// epoll set would keep entries for the (still open) sockets.
	lot.unregister(up)
	lot.unregister(down)
	s.p.stalls.forget(up, down) // the stall watch's too, for the same reason
	s.client.Close()
	s.conn.Close()
	s.client, s.conn = nil, nil
	s.raw = [2]int{cfd, bfd}
	s.dormant = true
	for _, p := range []*pump{up, down} {
		p.dormant = true
		p.src, p.dst, p.rc, p.dstRC = nil, nil, nil, nil
	}
	busy := up.busy || down.busy
	s.repark(up, down)
	if !busy {
		// A burst of sessions that went quiet is what leaves memory
		// behind (trim.go); busy sessions come and go from the lot all the
		// time, and would keep forcing collections.
		lot.trim.noteDormant()
	}
}

// repark parks pumps the session holds again; one that cannot park goes on
// in a goroutine (which revives the session). Under s.mu.
func (s *session) repark(pumps ...*pump) {
	for _, p := range pumps {
		if !p.lot.park(p) {
			go p.resume()
		}
	}
}

// revive makes conns from a dormant session's fds again. Under s.mu, by a
// goroutine that holds one of its pumps. Out of fds (EMFILE), nothing
// changes and the caller may try again; after any other error the
// session's sockets are closed.
func (s *session) revive() error {
	if !s.dormant {
		return nil
	}
	if s.rawClosed {
		return net.ErrClosed
	}
	client, err := connFromFD(s.raw[0])
	if err != nil {
		return err
	}
	backend, err := connFromFD(s.raw[1])
	if err != nil {
		client.Close()
		return err
	}
	// Move the lot's entries from the bare fds to the new ones before the
	// bare fds are closed.
	lot := s.lot
	for _, p := range s.pumps {
		raw, c := s.raw[1], backend
		if p.up {
			raw, c = s.raw[0], client
		}
		if err := lot.move(p, raw, c); err != nil {
			client.Close()
			backend.Close()
			s.closeRaw(true, true) // the session is broken: neither peer may take this for a clean close
			return err
		}
	}
	unix.Close(s.raw[0])
	unix.Close(s.raw[1])
	s.raw = [2]int{-1, -1}
	s.client, s.conn = client, backend
	s.dormant = false
	return nil
}

// reviveRetryFor is how long a revive that finds no free fd tries again.
const reviveRetryFor = 2 * time.Second

// reviveFor revives the session for p's goroutine and syncs p. Out of fds
// (EMFILE, ENFILE: a revive needs reviveFDs more for a moment), it tries
// again on the proxy's reserve (fdreserve.go), and if the reserve is spent,
// for up to reviveRetryFor, since ending sessions free fds: the session
// loses nothing meanwhile (its bytes wait in the kernel, the other
// direction stays parked).
func (s *session) reviveFor(p *pump) error {
	deadline := time.Now().Add(reviveRetryFor)
	for tries := 0; ; tries++ {
		err := s.reviveAndSync(p)
		if failover.OutOfFDs(err) {
			s.p.reserve.spend(func() { err = s.reviveAndSync(p) })
		}
		if err == nil || !failover.OutOfFDs(err) || time.Now().After(deadline) {
			return err
		}
		if tries == 0 {
			s.logger().Warn("out of file descriptors: an idle session waits for one to wake", "server", s.serverShown(), "error", err, "waits_up_to", reviveRetryFor.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reviveAndSync revives the session and syncs p, under s.mu.
func (s *session) reviveAndSync(p *pump) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.revive()
	if err == nil {
		p.sync()
	}
	return err
}

// closeRaw closes a dormant session's fds, resetting the app's leg
// (rstApp) and the backend's (rstDB) first. Under s.mu.
func (s *session) closeRaw(rstApp, rstDB bool) {
	if s.rawClosed {
		return
	}
	for i, rst := range [2]bool{rstApp, rstDB} {
		if rst {
			unix.SetsockoptLinger(s.raw[i], unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
	}
	unix.Close(s.raw[0])
	unix.Close(s.raw[1])
	s.rawClosed = true
}

// bare is a dormant session's bare fd of the app's leg (client) or the
// backend's. Under s.mu.
func (s *session) bare(client bool) int {
	if client {
		return s.raw[0]
	}
	return s.raw[1]
}

// backendInfo reads the backend socket's TCP_INFO in either state.
func (s *session) backendInfo() (keepalive.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backendInfoLocked()
}

func (s *session) backendInfoLocked() (keepalive.Info, error) {
	if c := s.backendSockLocked(); c != nil {
		return keepalive.ReadInfo(c)
	}
	return keepalive.Info{}, net.ErrClosed
}

// legSockLocked is side's socket in either state: the bare fd while
// dormant, the conn otherwise; nil when there is none (closed, or not
// dialed yet). Under s.mu.
func (s *session) legSockLocked(side Side) syscall.Conn {
	conn := s.client
	if side == SideBackend {
		conn = s.conn
	}
	switch {
	case s.dormant && !s.rawClosed:
		return rawSock(s.raw[legIndex(side)])
	case !s.dormant && conn != nil:
		return conn
	}
	return nil
}

// backendSockLocked is legSockLocked(SideBackend).
func (s *session) backendSockLocked() syscall.Conn { return s.legSockLocked(SideBackend) }

// sync brings a pump the caller holds up to date with its session's state:
// the bare fds while dormant, the session's current conns otherwise (a
// revive by the other direction made new ones). Under s.mu.
func (p *pump) sync() {
	s := p.sess
	if s.dormant || !p.dormant {
		return
	}
	p.dormant = false
	p.src, p.dst = s.client, s.conn
	if !p.up {
		p.src, p.dst = s.conn, s.client
	}
	p.rc, _ = p.src.SyscallConn()
	p.dstRC = nil
}

// DupSocket duplicates the socket of a conn or listener as a bare,
// non-blocking, close-on-exec fd, without touching the original (its fd
// stays non-blocking and in Go's poller).
func DupSocket(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, os.NewSyscallError("fcntl", dupErr)
	}
	return nfd, nil
}

// connFromFD makes a conn from a duplicate of a bare socket fd; fd stays
// open. The socket keeps its own keepalive: net.FileConn turns Go's default
// on, which would replace the configured values (and turn it on for a
// backend leg whose keepalive is still to be set, or is off).
func connFromFD(fd int) (*net.TCPConn, error) {
	if ka, err := keepalive.Read(rawSock(fd)); err == nil {
		defer ka.Apply(rawSock(fd)) // after FileConn's defaults (keepalive on, 15 s, 15 s, 9)
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(nfd), "")
	defer f.Close() // FileConn holds a duplicate of its own
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a TCP socket")
	}
	return tc, nil
}

func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}
