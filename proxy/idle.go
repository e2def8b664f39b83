package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Idle sessions hold no goroutine. A pump whose source has been silent for
// parkAfter hands the socket to the proxy's parking lot, one epoll set of
// its own (EPOLLIN|EPOLLPRI|EPOLLRDHUP, one-shot), and its goroutine exits. The lot's
// epoll set is itself waited on in Go's poller, so the lot holds no thread.
// When a parked socket wakes, the lot's goroutine reads it once: a small
// message that the destination takes at once is passed on right there and
// the pump parks again, so request/response traffic with pauses costs no
// goroutine either; anything else (end of stream, reset, error, a full
// buffer that starts a bulk transfer, a full destination, or a second
// message within parkAfter while the session still holds its conns: it is
// busy again) goes on in a new goroutine running the same pump.
//
// Busy sessions of small messages come here too: a pump that passed
// hotAfter of them in a row parks at the next EAGAIN (copy.go), and once
// both directions are here the session goes dormant (dormant.go). A
// dormant session's entries are edge-triggered (edgeEvents), so the lot
// reads each message once and re-parks it without an epoll_ctl, however
// busy the session is: per message one read and one write, as HAProxy and
// nginx make. The proxy has one lot per P (parkLots).
//
// Why (measured, see the README's data-path section): a goroutine parked in
// a read holds its stack (the session's first goroutine ran the dial, so its
// stack had grown) and its g; two per session made tnsguard hold 16.5 KB RSS
// per idle session where HAProxy holds 3.3 KB. 100 ms rather than seconds:
// when an app pool opens hundreds of sessions at once, the goroutines of all
// sessions opened within parkAfter exist at the same time, and the memory
// of their stacks stays with the process; waking a parked session costs a
// few system calls (epoll_wait, epoll_ctl), not a goroutine, for a small
// message.
//
// The pump notices the silence with a read deadline that is set once per
// parkAfter, not per chunk: when it fires, the pump parks if nothing moved
// since it was set, and sets it again otherwise.
const parkAfter = 100 * time.Millisecond

// errParked is what pump.run returns when it parked: the caller's goroutine
// may end; the copy's end is reported later through the pump's session.
var errParked = &pumpErr{err: errors.New("parked")}

// parkLot is the proxy's set of parked pumps.
type parkLot struct {
	file   *os.File        // the epoll instance
	epfd   int             // its fd (File.Fd would make it blocking)
	rc     syscall.RawConn // its fd, waited on in Go's poller
	after  atomic.Int64    // nanoseconds a source is silent before its pump parks (tests shorten it)
	epoch  time.Time       // for pump.inlineAt
	trim   *memTrim        // gives memory back after a burst of sessions went dormant (trim.go)
	events []unix.EpollEvent

	// dispatch's and wake's work (the dispatcher is one goroutine): no
	// closure per event or wake
	wakeFn func(id uint64, events uint32)
	readFn func(fd uintptr)
	rbuf   []byte
	rn     int
	rerr   syscall.Errno

	// park's and move's epoll_ctl, under mu: no closure per park
	ctlFn  func(fd uintptr)
	ctlEv  unix.EpollEvent
	ctlOp  int
	ctlErr error

	mu     sync.Mutex
	next   uint64
	parked map[uint64]*pump
}

// newParkLot makes the epoll set; run dispatches its events.
func newParkLot(trim *memTrim) (*parkLot, error) {
	f, fd, rc, err := newEpollSet("parked-sessions")
	if err != nil {
		return nil, err
	}
	l := &parkLot{file: f, epfd: fd, rc: rc, epoch: time.Now(), events: make([]unix.EpollEvent, 128), parked: map[uint64]*pump{}, trim: trim}
	l.after.Store(int64(parkAfter))
	l.wakeFn = func(id uint64, events uint32) {
		if p := l.take(id); p != nil {
			l.wake(p, events)
		}
	}
	l.readFn = func(fd uintptr) { l.rn, l.rerr = rawRead(fd, l.rbuf) }
	l.ctlFn = func(fd uintptr) {
		l.ctlErr = unix.EpollCtl(l.epfd, l.ctlOp, int(fd), &l.ctlEv)
		if l.ctlErr == unix.ENOENT {
			l.ctlErr = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &l.ctlEv)
		}
	}
	return l, nil
}

// lotMinBusy is how many sessions must be busy at once (moved a byte
// within parkAfter, counted every parkAfter by housekeeping) before busy
// sessions of small messages move to the lot. The lot pays off when many
// sessions contend for the Ps: at 32 connections it lifted rps from 0.85x
// to 0.96-1.00x the best peer's. A lone busy session is faster on its own
// goroutines: at 1 connection p50 was 85 us on them and 88-169 us through
// the lot, in one interleaved run of the two builds (9 rounds).
const lotMinBusy = 8

// lotCrowded tells whether busy sessions go to the lot now.
func (p *Proxy) lotCrowded() bool {
	return p.busySessions.Load() >= p.lotMinBusy.Load()
}

// parkLots are the proxy's lots, one per P (GOMAXPROCS at start): the
// busy sessions of small messages that a lot carries (see wake) are spread
// over them, so that this traffic uses every core, as the pumps' goroutines
// do. A session keeps the lot it was given.
type parkLots struct {
	all  []*parkLot
	trim *memTrim
	next atomic.Uint32
}

// startParkLots runs n lots until ctx ends (Shutdown cancels it once every
// session has ended); without a lot (no epoll), sessions simply keep their
// goroutines while idle.
func startParkLots(ctx context.Context, wg *sync.WaitGroup, log hclog.Logger, n int) *parkLots {
	ls := &parkLots{trim: newMemTrim(log)}
	for range max(n, 1) {
		l, err := newParkLot(ls.trim)
		if err != nil {
			log.Warn("idle sessions will keep their goroutines", "error", err)
			for _, l := range ls.all {
				l.file.Close()
			}
			return nil
		}
		ls.all = append(ls.all, l)
	}
	context.AfterFunc(ctx, func() {
		ls.trim.stop()
		for _, l := range ls.all {
			l.file.Close()
		}
	})
	for _, l := range ls.all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	return ls
}

// pick is the lot for a new session, in turn; nil without lots.
func (ls *parkLots) pick() *parkLot {
	if ls == nil {
		return nil
	}
	return ls.all[int(ls.next.Add(1))%len(ls.all)]
}

// setAfter sets how long a source is silent before its pump parks (tests).
func (ls *parkLots) setAfter(d time.Duration) {
	for _, l := range ls.all {
		l.after.Store(int64(d))
	}
}

// count is the number of parked pumps in every lot (tests).
func (ls *parkLots) count() int {
	n := 0
	for _, l := range ls.all {
		n += l.count()
	}
	return n
}

// run waits for parked sockets to wake and resumes their pumps, until the
// lot is closed.
func (l *parkLot) run() {
	for l.rc.Read(l.dispatch) == nil {
	}
}

// dispatch drains the epoll set and wakes the pumps of its events.
func (l *parkLot) dispatch(fd uintptr) bool { return drainEpoll(fd, l.events, l.wakeFn) }

// newEpollSet makes an epoll instance that Go's poller waits on (rc.Read
// with drainEpoll): non-blocking, in an os.File named name.
func newEpollSet(name string) (f *os.File, fd int, rc syscall.RawConn, err error) {
	fd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, 0, nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, 0, nil, os.NewSyscallError("setnonblock", err)
	}
	f = os.NewFile(uintptr(fd), name) // non-blocking: Go's poller waits on it
	if rc, err = f.SyscallConn(); err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, fd, rc, nil
}

// drainEpoll reads the epoll set fd's events into events until it is
// drained, and calls each with every event's id (epollID) and flags. It
// returns false, which waits in Go's poller until the set has events again
// (the set is drained each time, so none is lost).
func drainEpoll(fd uintptr, events []unix.EpollEvent, each func(id uint64, flags uint32)) bool {
	for {
		n, err := epollPoll(fd, events)
		if err == unix.EINTR {
			continue
		}
		if n <= 0 {
			return false
		}
		for _, ev := range events[:n] {
			each(uint64(uint32(ev.Fd))|uint64(uint32(ev.Pad))<<32, ev.Events)
		}
		if n < len(events) {
			// Drained: every event from now on wakes the set's waiters
			// again (ep_poll_callback), so Go's poller reports it.
			return false
		}
	}
}

// epollID is an epoll entry for flags keyed by id, which drainEpoll gives
// back.
func epollID(flags uint32, id uint64) unix.EpollEvent {
	return unix.EpollEvent{Events: flags, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
}

// epollPoll is epoll_wait(2) with a zero timeout, made without telling the
// scheduler (RawSyscall6): it never blocks. unix.EpollWait goes through
// Syscall6, and a lot that found its P in a system call when the runtime's
// monitor looked had the P handed to another thread, with the context
// switches that takes, several times per millisecond while busy.
func epollPoll(fd uintptr, events []unix.EpollEvent) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	return int(r), e
}

// wake moves what a parked pump's source holds, when that is one small
// read that the destination takes at once, and parks the pump again:
// request/response traffic with pauses longer than parkAfter goes on without
// a goroutine, and so does a dormant session's traffic of small messages
// however busy it is. Anything else (end of stream, an error, a full buffer
// that starts a bulk transfer, a destination that cannot take it all) goes
// on in a new goroutine, with what was read. events are the epoll flags the
// wake came with.
func (l *parkLot) wake(p *pump, events uint32) {
	live := true
	if s := p.sess; s != nil {
		s.mu.Lock()
		if s.dormant {
			defer s.mu.Unlock() // a dormant session's bare fds are used under its mu only
			if s.rawClosed {
				go p.resume() // it sees the session ended
				return
			}
			live = false
		} else {
			p.sync()
			s.mu.Unlock()
		}
	}
	now := time.Since(l.epoch)
	switch {
	case events&unix.EPOLLPRI != 0:
		// Urgent data (urgent.go): the goroutine takes the byte at its
		// mark, after what comes before it; a read here would skip it.
		p.urgent = true
		go p.resume()
		return
	case !live && events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0:
		// The end of the stream, or an error: the goroutine reads it (and
		// any message before it) until EAGAIN. The edge-triggered entry
		// reports these flags with the edge, which is what lets the read
		// below stop after a short read.
		go p.resume()
		return
	case !live && p.busy && !p.sess.p.lotCrowded():
		// It came here because it was busy, and few sessions are busy
		// now: its own goroutines answer faster then (lotMinBusy).
		go p.resume()
		return
	}
	if live && !p.busy && now-p.inlineAt < time.Duration(l.after.Load()) {
		// Busy again on its conns after it parked for idleness: its own
		// goroutine is cheaper than a one-shot entry re-armed per message,
		// and than Go's poller and the lot both waking for each message.
		// A pump that came here because it was busy stays: its session
		// goes dormant as soon as the other direction is parked too.
		go p.resume()
		return
	}
	buf := p.pool.get()
	l.rbuf = *buf
	err := p.control(l.readFn) // Control: the idle deadline has passed, and this never waits
	n, rerr := l.rn, errOrNil(l.rerr)
	l.rbuf = nil
	if err == nil && l.rerr == syscall.EAGAIN { // nothing after all
		p.pool.put(buf)
		if !l.park(p) {
			go p.resume()
		}
		return
	}
	if err != nil {
		rerr, n = err, 0
	}
	w := 0
	if rerr == nil && n > 0 && n < len(*buf) {
		p.buf, p.n = buf, n
		var werr error
		w, werr = p.write(0, true)
		if werr != nil {
			// The destination failed (a reset, a keepalive timeout): this
			// write took its error, and a second write would only see EPIPE.
			p.buf = nil
			p.pool.put(buf)
			p.writeErr, p.pending = werr, true
			go p.resume()
			return
		}
		if w == n {
			p.buf = nil
			p.pool.put(buf)
			p.inlineAt = now
			p.moved++
			p.bulk = false
			p.onChunk(n)
			if !l.park(p) {
				go p.resume()
			} else if live && p.sess != nil {
				p.sess.sleep()
			}
			return
		}
	}
	n = max(n, 0)
	p.buf, p.n, p.readErr, p.off, p.toSplice, p.pending = buf, n, rerr, w, false, true
	go p.resume()
}

// park registers p's source, one-shot. False when it cannot (the socket is
// closed, say): the caller keeps its goroutine.
func (l *parkLot) park(p *pump) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.parkID == 0 {
		l.next++
		p.parkID = l.next
	}
	if !p.edge {
		l.ctlEv = parkEvent(p.parkID)
		l.ctlOp = unix.EPOLL_CTL_MOD // re-arm: a one-shot entry stays registered, disabled
		if !p.registered {
			l.ctlOp = unix.EPOLL_CTL_ADD
		}
		if p.dormant && !p.registered {
			l.ctlEv.Events = edgeEvents
		}
		err := p.control(l.ctlFn) // holds the fd: it cannot be closed and reused meanwhile
		if err != nil || l.ctlErr != nil {
			return false
		}
		p.registered, p.edge = true, p.dormant
	}
	l.parked[p.parkID] = p
	return true
}

// take removes a parked pump; nil when it is not parked (any more). Whoever
// takes a pump resumes it: exactly one goroutine goes on with it.
func (l *parkLot) take(id uint64) *pump {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.parked[id]
	delete(l.parked, id)
	return p
}

// takeBack is take for a pump its session holds.
func (l *parkLot) takeBack(p *pump) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.parkID == 0 || l.parked[p.parkID] != p {
		return false
	}
	delete(l.parked, p.parkID)
	return true
}

// takeBoth takes a session's two pumps if both are parked (dormant.go).
func (l *parkLot) takeBoth(a, b *pump) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a.parkID == 0 || b.parkID == 0 || l.parked[a.parkID] != a || l.parked[b.parkID] != b {
		return false
	}
	delete(l.parked, a.parkID)
	delete(l.parked, b.parkID)
	return true
}

// unregister removes the entry of a pump the caller holds from the epoll
// set (its socket is about to be closed while a duplicate stays open).
func (l *parkLot) unregister(p *pump) {
	if !p.registered {
		return
	}
	p.control(func(fd uintptr) { unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	p.registered, p.edge = false, false
}

// move moves a pump's entry from the bare fd of a dormant session to conn,
// the socket's new conn (dormant.go: revive, under the session's mu). A
// pump parked now is registered on conn at once; one held elsewhere
// registers when it parks again (MOD finds no entry, so it adds one).
func (l *parkLot) move(p *pump, rawFD int, conn *net.TCPConn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, rawFD, nil) // ENOENT: it never parked while dormant
	p.edge = false
	if p.parkID == 0 || l.parked[p.parkID] != p {
		return nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	l.ctlEv, l.ctlOp = parkEvent(p.parkID), unix.EPOLL_CTL_ADD
	if err := rc.Control(l.ctlFn); err != nil {
		return err
	}
	return l.ctlErr
}

// parkEvent is a parked pump's one-shot epoll entry, keyed by its parkID.
// EPOLLPRI: urgent data, which alone makes no EPOLLIN (urgent.go).
func parkEvent(id uint64) unix.EpollEvent {
	return epollID(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLONESHOT, id)
}

// edgeEvents are the flags of a dormant session's entries: edge-triggered
// and left armed while the session is dormant, so re-parking after a
// message costs no epoll_ctl. An edge comes with each arrival, and with
// the end of the stream (EPOLLRDHUP) whether or not bytes were read
// meanwhile; so a short read that came without EPOLLRDHUP took everything,
// and no second read is needed to see an end that came with it.
//
// No wake is lost while the entry stays armed and the pump is elsewhere:
// every path that takes a dormant pump from the lot either gives it back
// after reading (wake, a single goroutine: an arrival after its read makes
// a new edge) or goes on in a goroutine that revives the session, which
// removes the entry and reads the conn before waiting (resume); and an
// entry added (sleep, move) reports a socket that is readable already.
const edgeEvents = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLET

// count is the number of parked pumps (tests).
func (l *parkLot) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.parked)
}

// The session's side: its two directions end in whichever goroutine runs
// them last, and the last one ends the session.

// parkable lets p park while idle; its end is then reported to s. The
// app -> backend pump starts in the opening, where it does not park and
// waits with no idle deadline: establish arms it, and when it fires the
// opening loop sees the session established and the pump takes over.
func (s *session) parkable(p *pump, up bool) {
	p.lot, p.owner, p.up = s.lot, s, up
	if p.lot != nil {
		p.sess = s
	}
	s.mu.Lock()
	if up {
		s.pumps[0] = p
	} else {
		s.pumps[1] = p
	}
	s.mu.Unlock()
}

// unpark resumes the session's parked pumps, so that they see their closed
// sockets and end; called when the session is aborted.
func (s *session) unpark() {
	s.mu.Lock()
	pumps := s.pumps
	s.mu.Unlock()
	for _, p := range pumps {
		if p != nil && p.lot != nil && p.lot.takeBack(p) {
			go p.resume()
		}
	}
}

// directionEnded closes one direction: up is app -> backend.
func (s *session) directionEnded(up bool, pe *pumpErr) {
	if pe == nil {
		src := SideBackend
		if up {
			src = SideClient
		}
		pe = s.endOfStream(src) // a reset whose error a write took
		if pe == nil {
			s.peerFIN[legIndex(src)].CompareAndSwap(0, max(1, int64(time.Since(s.start))))
		}
	}
	if pe == nil && s.legs.Load() == 1 {
		// The other direction is over: closing both sockets (legEnded)
		// sends this FIN, as HAProxy does; a shutdown first would be one
		// more system call per session.
		s.legEnded()
		return
	}
	if up {
		s.directionDone(pe, SideClient, SideBackend)
	} else {
		s.directionDone(pe, SideBackend, SideClient)
	}
	s.legEnded()
}

// legEnded counts down the session's directions (a direction that never
// started counts too); the last one closes the books and frees the
// listener's slot.
func (s *session) legEnded() {
	if s.legs.Add(-1) > 0 {
		return
	}
	s.finish()
	s.cancelOpening()
	s.l.sessionEnded(s.source())
}
