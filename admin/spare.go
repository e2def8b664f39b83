package admin

import (
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/failover"
)

// spareFDs is a few fds (of /dev/null) that the admin listener holds so
// that it still answers when sessions have taken every other fd. Out of
// fds, accept fails with EMFILE whether or not a client waits, and each fd
// a session gives back goes to whoever asks first: the proxy's accept
// loops and dials, or the admin listener backing off (up to 1 s) between
// tries. Out of fds, /healthz then went unanswered for seconds, and a
// Kubernetes liveness probe restarted the process, dropping every session.
type spareFDs struct {
	mu     sync.Mutex
	fds    []int
	closed bool // the admin listener is closed: take none back
}

// spareCount is the fds held: one per admin connection accepted out of
// fds (more than one: a freed fd that a session takes first is lost until
// fds free up).
const spareCount = 4

func newSpareFDs() *spareFDs {
	s := &spareFDs{}
	s.refill()
	return s
}

// refill takes fds back up to spareCount, as far as the process has them.
func (s *spareFDs) refill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && len(s.fds) < spareCount {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		s.fds = append(s.fds, fd)
	}
}

// release gives one fd back to the process for the caller's next open; it
// tells whether there was one to give.
func (s *spareFDs) release() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fds) == 0 {
		return false
	}
	unix.Close(s.fds[len(s.fds)-1])
	s.fds = s.fds[:len(s.fds)-1]
	return true
}

func (s *spareFDs) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds, s.closed = nil, true
}

// pollStep bounds each wait of acceptSpare for a client: a Close of the
// listener waits for it.
const pollStep = 100 // ms

// acceptSpare accepts from ln when the process is out of fds (Accept said
// acceptErr): it waits until a client is waiting, frees a spare fd and
// accepts at once, so the fd goes to the admin connection. used tells that
// a spare went into c. With no spare left it returns acceptErr (net/http
// backs off, as before); once fds are free again, it is Accept.
func acceptSpare(ln net.Listener, spare *spareFDs, acceptErr error) (c net.Conn, used bool, err error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, false, acceptErr
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false, acceptErr
	}
	// Wait for a pending connection: with none, a freed spare would only
	// go to a session. A listener's RawConn has no Read (it says EINVAL),
	// so poll here, in steps.
	for {
		ready := false
		if cerr := rc.Control(func(fd uintptr) {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(p, pollStep)
			ready = n > 0 && p[0].Revents&unix.POLLIN != 0
		}); cerr != nil {
			return nil, false, acceptErr // closed
		}
		if ready {
			break
		}
		spare.refill() // take back spares lost to a race, as fds free up
		// No client yet: has the shortage passed, or the listener closed?
		if c, err := ln.Accept(); err == nil || !failover.OutOfFDs(err) {
			return c, false, err
		}
	}
	if !spare.release() {
		return nil, false, acceptErr
	}
	c, err = ln.Accept()
	if err != nil {
		spare.refill()
		return nil, false, err
	}
	return c, true, nil
}

// spareConn gives its fd back to the spares when it closes: out of fds,
// the lowest free fd, which the close just freed, is what the next open
// gets, so the spare is taken back before a session can take it.
type spareConn struct {
	net.Conn
	spare *spareFDs
	once  sync.Once
}

func (c *spareConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.spare.refill)
	return err
}
