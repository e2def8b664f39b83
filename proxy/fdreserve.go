package proxy

import (
	"sync"

	"golang.org/x/sys/unix"
)

// fdReserve is a few fds the proxy holds so that a dormant session can
// wake when sessions have taken every other one. A revive (dormant.go)
// needs up to reviveFDs more for a moment, and ends with as many as it
// began with: the bare fds it closes pay for the conns it makes. Without
// the reserve, an app that ran the fds out (a pool that leaks connections,
// a storm of them) reset every other app's idle session that had to wake
// while the shortage lasted, where a proxy that keeps its conns (HAProxy)
// loses none.
//
// Out of fds, the fd a close frees goes to whoever opens one first: the
// accept loops, the dials, the health checks. So the reserve frees its
// fds only while a revive runs, under its lock, and takes them back right
// after; one lost to such an open meanwhile is taken back once fds free up.
type fdReserve struct {
	mu     sync.Mutex
	fds    []int
	closed bool // the proxy has stopped: take none back
}

// reviveFDs is what a revive needs for a moment: the first conn, and for
// the second connFromFD's duplicate and net.FileConn's.
const reviveFDs = 3

func newFDReserve() *fdReserve {
	r := &fdReserve{}
	r.mu.Lock()
	r.refill()
	r.mu.Unlock()
	return r
}

// refill takes fds back up to reviveFDs, as far as the process has them
// (eventfds: they need no file system). Under r.mu.
func (r *fdReserve) refill() {
	for !r.closed && len(r.fds) < reviveFDs {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			return
		}
		r.fds = append(r.fds, fd)
	}
}

// spend runs f with the reserve's fds given back to the process, so that
// f's opens get them, then takes them back. It tells whether it ran f: not
// when the reserve holds no fd (spent, and not yet taken back).
func (r *fdReserve) spend(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refill() // one lost to another open earlier, if fds have freed up
	if len(r.fds) == 0 {
		return false
	}
	for _, fd := range r.fds {
		unix.Close(fd)
	}
	r.fds = r.fds[:0]
	f()
	r.refill()
	return true
}

// close gives the fds back for good (the proxy has stopped).
func (r *fdReserve) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, fd := range r.fds {
		unix.Close(fd)
	}
	r.fds, r.closed = nil, true
}
