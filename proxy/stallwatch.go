package proxy

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stallWatchAfter is how long a direction waits for room in its
// destination before its source is watched for its end (stallWatch).
// Shorter waits are a bulk transfer's everyday pauses: watching each would
// cost two epoll_ctl calls per pause.
const stallWatchAfter = 100 * time.Millisecond

// stallWatch passes on at once the reset (or keepalive or user timeout) of
// a leg whose bytes wait for room in the other leg: a database that kills
// a session whose result set waits for an app that reads slowly, an app
// that resets while its upload waits for a database that stopped reading.
// Such a direction reads its source again only once the destination takes
// bytes, so nothing else sees the end. checkStalled looks at those sources
// once a second; this watches them in an epoll set of its own for EPOLLERR
// and EPOLLHUP only (no EPOLLIN: arriving bytes do not wake it), from
// stallWatchAfter into the wait until it ends.
type stallWatch struct {
	file    *os.File
	epfd    int
	rc      syscall.RawConn
	events  []unix.EpollEvent
	checkFn func(id uint64, flags uint32) // check, made once: no closure per dispatch

	mu      sync.Mutex
	next    uint64
	byID    map[uint64]*stallEntry
	byPump  map[*pump]*stallEntry
	stalled map[*pump]stallEntry // update's scratch, reused
}

// stallEntry is one watched source.
type stallEntry struct {
	id   uint64
	s    *session
	side Side // the source's leg
	conn *net.TCPConn
}

// startStallWatch runs the watch until ctx ends; nil when it cannot (no
// epoll): checkStalled still looks once a second.
func startStallWatch(ctx context.Context, wg *sync.WaitGroup) *stallWatch {
	f, fd, rc, err := newEpollSet("stalled-sources")
	if err != nil {
		return nil
	}
	w := &stallWatch{file: f, epfd: fd, rc: rc, events: make([]unix.EpollEvent, 32),
		byID: map[uint64]*stallEntry{}, byPump: map[*pump]*stallEntry{}, stalled: map[*pump]stallEntry{}}
	w.checkFn = w.check
	context.AfterFunc(ctx, func() { f.Close() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for w.rc.Read(w.dispatch) == nil {
		}
	}()
	return w
}

// dispatch drains the set (drainEpoll) and checks the sources of its
// events.
func (w *stallWatch) dispatch(fd uintptr) bool { return drainEpoll(fd, w.events, w.checkFn) }

// check ends the session of the source id when it holds an error. A FIN
// (EPOLLHUP once both ways are shut) is no error: the direction reads it
// once its destination takes its bytes.
func (w *stallWatch) check(id uint64, _ uint32) {
	w.mu.Lock()
	e := w.byID[id]
	w.mu.Unlock()
	if e == nil {
		return
	}
	rc, err := e.conn.SyscallConn()
	if err != nil {
		return
	}
	if failed := sockError(rc); failed != nil {
		go e.s.abort(e.side, e.s.phaseNow(e.side, failed), failed, "reset", nil)
	}
}

// update watches the sources of the directions that have waited
// stallWatchAfter or more for room, and stops watching those whose wait
// ended (or whose session did). Called every parkAfter by housekeeping; it
// tells whether a direction waits for room (watched or not yet): the next
// look must come.
func (w *stallWatch) update(sessions []*session, now time.Time) (waiting bool) {
	if w == nil {
		return false
	}
	clear(w.stalled)
	for _, s := range sessions {
		s.mu.Lock()
		if !s.dormant && !s.closing {
			for i, p := range s.pumps {
				if p == nil {
					continue
				}
				b := p.blockedAt.Load()
				if b != 0 {
					waiting = true
				}
				if b == 0 || now.UnixNano()-b < int64(stallWatchAfter) {
					continue
				}
				src, side := s.client, SideClient
				if i == 1 {
					src, side = s.conn, SideBackend
				}
				if src != nil {
					w.stalled[p] = stallEntry{s: s, side: side, conn: src}
				}
			}
		}
		s.mu.Unlock()
	}
	w.mu.Lock()
	for p, e := range w.byPump {
		if n, ok := w.stalled[p]; ok && n.conn == e.conn {
			continue
		}
		// The wait ended, or the session: a closed socket left the set
		// when it was closed (a dormant session's were forgotten before
		// theirs were), and Control fails on it.
		if rc, err := e.conn.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		}
		delete(w.byPump, p)
		delete(w.byID, e.id)
	}
	w.mu.Unlock()
	for p, n := range w.stalled {
		// Under the session's lock, as sleep (dormant.go) forgets its
		// sources before it closes their conns: a source added after that
		// would stay in the set under a closed fd number, while the
		// session's duplicate keeps the socket open.
		n.s.mu.Lock()
		w.mu.Lock()
		w.watch(p, n)
		w.mu.Unlock()
		n.s.mu.Unlock()
	}
	return waiting
}

// watch adds n, p's source, to the set unless it is there already or its
// session let go of it. Under n.s.mu and w.mu.
func (w *stallWatch) watch(p *pump, n stallEntry) {
	if _, ok := w.byPump[p]; ok {
		return
	}
	s := n.s
	if s.dormant || s.closing || (n.conn != s.client && n.conn != s.conn) {
		return
	}
	rc, err := n.conn.SyscallConn()
	if err != nil {
		return
	}
	w.next++
	e := &stallEntry{id: w.next, s: n.s, side: n.side, conn: n.conn}
	// Edge-triggered, so that a FIN, which stays, wakes it once. An
	// error that came before this is reported at once.
	ev := epollID(unix.EPOLLRDHUP|unix.EPOLLET, e.id)
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		if cerr == unix.EEXIST {
			// This socket, under this fd number, is in the set already:
			// left behind where its removal could not reach it. It is
			// this source now.
			cerr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		}
	}); err != nil || cerr != nil {
		return
	}
	w.byPump[p], w.byID[e.id] = e, e
}

// forget stops watching the sources of the session's pumps; sleep
// (dormant.go) calls it before it closes their conns, while the fds are
// still theirs: a socket that a duplicate keeps open stays in an epoll set
// after its fd is closed, where no EPOLL_CTL_DEL can reach it any more.
// Under the session's lock.
func (w *stallWatch) forget(pumps ...*pump) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range pumps {
		e := w.byPump[p]
		if e == nil {
			continue
		}
		if rc, err := e.conn.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
		}
		delete(w.byPump, p)
		delete(w.byID, e.id)
	}
}
