package proxy

import (
	"errors"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/config"
)

// Data path. One pump per direction moves bytes between two bare
// *net.TCPConn; nothing wraps the conns. Each round:
//
//  1. park on the poller until src is readable, holding no buffer and no
//     pipe (the read callback takes a pooled buffer only for the read
//     syscall itself and gives it back on EAGAIN);
//  2. small reads are written straight on from that buffer, and the socket
//     is read again until EAGAIN (tryRead says why not only until a short
//     read);
//  3. once a read fills the buffer the stream is bulk: the pump takes a
//     pipe, and each time src is readable it splices src into the pipe
//     and the pipe into dst until src is empty (spliceBulk). A round that
//     moves less than a chunk ends the bulk, and the pipe goes back; an
//     idle pump holds none.
//
// Go's own io.Copy would splice too, but it takes a pipe pair before it
// waits for data, so every idle session would hold two pipes (four fds);
// and its splice system calls go through the scheduler (spliceBulk says
// what that cost). See the README's data-path section for measurements.
const (
	chunkSize = 16 << 10
	// pipeSize is the pipe a pump in bulk splices through (F_SETPIPE_SZ;
	// the kernel's default maximum, as Go's own splice asks for).
	pipeSize = 1 << 20
	// freePipes is how many empty pipes the proxy keeps for the next bulk.
	freePipes = 8
	// copyBuffers is how many 1 MiB copy buffers (bulk to this host) may be
	// mapped at once: 64 MiB. A pump in bulk keeps its buffer while its
	// destination is full, so apps that read a large result slowly would
	// otherwise hold 1 MiB each, without bound; past this, bulk to this host
	// splices too.
	copyBuffers = 64
	// passesPerWait bounds the messages tryRead passes on in one
	// RawConn.Read (see tryRead).
	passesPerWait = 16
	// hotAfter is how many small messages in a row a running pump passes
	// on before it hands its socket to the lot at the next EAGAIN instead
	// of waiting on Go's poller (idle.go: busy sessions).
	hotAfter = 64
)

// pumpErr says which end of a direction failed.
type pumpErr struct {
	err     error
	atWrite bool // the destination failed (write or splice out), not the source
}

// bufPool holds what pumps borrow: 16 KiB buffers for reads, and pipes
// (or copy buffers, for a destination on this host) for bulk, at most
// freePipes of each kept while bulk goes on.
type bufPool struct {
	p sync.Pool

	// spliceLocal: bulk to a destination on this host is spliced too, not
	// copied (bulkCopies); for tests of the splice path, which run on
	// loopback.
	spliceLocal atomic.Bool

	// made counts the pipes open (held by pumps, or kept); bound, when
	// not negative, is the most there may be (setPipeBound): each holds
	// two fds, which the sessions max_sessions admits must not lack.
	made, bound atomic.Int64
	// mapped counts the copy buffers mapped (held by pumps, or kept), at
	// most maxMapped (copyBuffers; tests set less).
	mapped, maxMapped atomic.Int64

	kept func() // a pipe was kept where none was: dropIdlePipes has one to drop (Proxy.nudge)

	mu     sync.Mutex
	pipes  []pipePair // empty pipes for the next bulk, at most freePipes
	bufs   []pipePair // empty copy buffers for the next bulk to this host, at most freePipes
	taken  uint64     // getPipe calls so far
	lastAt uint64     // taken at the last dropIdlePipes
	closed bool       // the proxy has stopped: pipes given back are closed
}

// pipePair is what a pump in bulk moves its bytes through: a pipe it
// splices through, or, with buf, a buffer it copies through (a
// destination on this host: bulkCopies).
type pipePair struct {
	r, w int
	n    int    // bytes in it
	buf  []byte // the copy buffer (pipeSize, mapped apart from Go's heap); nil for a pipe
	off  int    // where in buf the n bytes begin
}

// getPipe is an empty pipe, or with copied an empty copy buffer (a pipe
// when maxMapped are mapped already); false when none can be made (out of
// fds or memory, or as many pipes open as the bound allows): the pump then
// copies through its 16 KiB buffer.
func (bp *bufPool) getPipe(copied bool) (pipePair, bool) {
	bp.mu.Lock()
	bp.taken++
	if copied {
		if pp, ok := popLast(&bp.bufs); ok {
			bp.mu.Unlock()
			return pp, true
		}
		bp.mu.Unlock()
		if pp, ok := bp.mapBuffer(); ok {
			return pp, true
		}
		bp.mu.Lock() // maxMapped are mapped: a pipe, then
	}
	if pp, ok := popLast(&bp.pipes); ok {
		bp.mu.Unlock()
		return pp, true
	}
	bp.mu.Unlock()
	if n, b := bp.made.Add(1), bp.bound.Load(); b >= 0 && n > b {
		bp.made.Add(-1)
		return pipePair{}, false
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		bp.made.Add(-1)
		return pipePair{}, false
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize) // a smaller pipe works too, in more calls
	return pipePair{r: fds[0], w: fds[1]}, true
}

// popLast takes the last of the kept pipes or buffers in s, if any.
func popLast(s *[]pipePair) (pipePair, bool) {
	k := len(*s)
	if k == 0 {
		return pipePair{}, false
	}
	pp := (*s)[k-1]
	*s = (*s)[:k-1]
	return pp, true
}

// mapBuffer maps a new copy buffer, unless maxMapped are mapped already.
// Mapped, not made: unmapped when dropped, its memory goes back at once
// rather than when the garbage collector and the scavenger get to it.
func (bp *bufPool) mapBuffer() (pipePair, bool) {
	if bp.mapped.Add(1) > bp.maxMapped.Load() {
		bp.mapped.Add(-1)
		return pipePair{}, false
	}
	b, err := unix.Mmap(-1, 0, pipeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		bp.mapped.Add(-1)
		return pipePair{}, false
	}
	return pipePair{buf: b}, true
}

// putPipe keeps an empty pipe (or copy buffer) for the next bulk, or
// closes it.
func (bp *bufPool) putPipe(pp pipePair) {
	if pp.buf != nil {
		pp.n, pp.off = 0, 0 // what is left in a buffer goes nowhere, as in a pipe that is closed
	}
	if pp.n == 0 {
		bp.mu.Lock()
		kept := &bp.pipes
		if pp.buf != nil {
			kept = &bp.bufs
		}
		if len(*kept) < freePipes && !bp.closed {
			*kept = append(*kept, pp)
			first := len(bp.pipes)+len(bp.bufs) == 1
			bp.mu.Unlock()
			if first && bp.kept != nil {
				bp.kept()
			}
			return
		}
		bp.mu.Unlock()
	}
	bp.closePipe(pp)
}

// closePipe closes a pipe of the pool's making, or unmaps a copy buffer.
func (bp *bufPool) closePipe(pp pipePair) {
	if pp.buf != nil {
		unix.Munmap(pp.buf)
		bp.mapped.Add(-1)
		return
	}
	pp.close()
	bp.made.Add(-1)
}

// pipeBound is how many splice pipes bulk may hold at once under cfg: the
// open-files limit less what the sessions of every listener's
// max_sessions need (config.FileNeed, as `run`'s warning sizes it), two fds
// a pipe. A pump whose destination
// is full keeps its pipe, so bulk that is not read held up to six fds a
// session, and the sessions max_sessions admits ran the fds out. No bound
// (-1) when a listener has no max_sessions, or the limit is unknown.
func pipeBound(cfg *config.Config) int64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY || lim.Cur > math.MaxInt64 {
		return -1
	}
	need, _, all := cfg.FileNeed()
	if !all {
		return -1
	}
	if need >= lim.Cur {
		return 0
	}
	return int64((lim.Cur - need) / 2)
}

// setPipeBound bounds the pipes open at once to n; n < 0: no bound.
func (bp *bufPool) setPipeBound(n int64) { bp.bound.Store(n) }

func (pp pipePair) close() {
	unix.Close(pp.r)
	unix.Close(pp.w)
}

// dropIdlePipes closes the kept pipes when no bulk took one since the last
// call (housekeeping: once a second), so that a proxy without bulk holds
// no pipe; with stop, at once and for good (the proxy has stopped). It
// says whether it still keeps pipes: it must be called again.
func (bp *bufPool) dropIdlePipes(stop bool) (kept bool) {
	bp.mu.Lock()
	if !stop && bp.taken != bp.lastAt {
		bp.lastAt = bp.taken
		kept = len(bp.pipes)+len(bp.bufs) > 0
		bp.mu.Unlock()
		return kept
	}
	pipes, bufs := bp.pipes, bp.bufs
	bp.pipes, bp.bufs, bp.closed = nil, nil, bp.closed || stop
	bp.mu.Unlock()
	for _, pp := range append(pipes, bufs...) {
		bp.closePipe(pp)
	}
	return false
}

func newBufPool() *bufPool {
	bp := &bufPool{p: sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}}
	bp.bound.Store(-1)
	bp.maxMapped.Store(copyBuffers)
	return bp
}

func (bp *bufPool) get() *[]byte  { return bp.p.Get().(*[]byte) }
func (bp *bufPool) put(b *[]byte) { bp.p.Put(b) }

// pump carries one direction; it allocates once per direction, not per
// chunk. onChunk is called after every chunk written (counters, activity).
type pump struct {
	src, dst  *net.TCPConn
	rc, dstRC syscall.RawConn // dstRC: made on first write
	pool      *bufPool
	onChunk   func(n int)
	readFn    func(fd uintptr) bool
	writeFn   func(fd uintptr) bool

	sp *splicer // made at its first bulk, kept while it runs: its pipe while the stream is bulk

	// parking while idle (idle.go); lot nil: never parks
	lot      *parkLot
	owner    pumpOwner     // told how the direction ended after a park
	sess     *session      // the session, when it may go dormant (dormant.go); nil in tests
	parkID   uint64        // the lot's key, under lot.mu
	inlineAt time.Duration // when the lot last moved a chunk itself (since lot.epoch)

	// blockedAt is when run began a write or splice that may wait for
	// room in dst (UnixNano; 0: none): while it waits, nobody reads src, so
	// the session's housekeeping looks for a source that failed meanwhile
	// (session.checkStalled).
	blockedAt atomic.Int64
	// failedWaiting is how long the write that failed had waited for room
	// in dst (nanoseconds; 0: none failed): a peer that had closed its
	// window was alive and not reading, not idle (session.waitedForRoom).
	failedWaiting atomic.Int64

	// read and write state
	buf      *[]byte
	readErr  error
	writeErr error  // a write inside tryRead failed
	n        int    // bytes read into buf
	off      int    // write's progress; while pending, what the lot wrote
	moved    uint32 // chunks so far (compared for equality only)
	armedAt  uint32 // moved when the idle deadline was set

	up         bool   // app -> backend
	dormant    bool   // src and dst are the bare fds (dormant.go)
	registered bool   // src is in the lot's epoll set (maybe disabled)
	noWait     bool   // the lot's write: never wait for room
	pending    bool   // the lot read for run: buf, n, readErr hold the result
	direct     bool   // running (run): tryRead writes short reads on itself
	again      bool   // tryRead returned after passesPerWait messages, with nothing for run
	toLot      bool   // tryRead found src empty after hotAfter small messages: run parks
	edge       bool   // src's entry in the lot is a bare fd's, edge-triggered (idle.go)
	hot        uint32 // small messages tryRead passed on in a row
	busy       bool   // parked because it was busy (toLot), not idle
	written    int    // of the chunk tryRead returns, what it wrote already (dst was full)
	bulk       bool   // the last read filled the buffer
	toSplice   bool   // src is readable in bulk: spliceBulk moves it

	// Urgent data (TCP's urgent pointer, MSG_OOB: Oracle Net's breaks; see
	// urgent.go).
	urgent bool // src has an urgent byte pending: tryRead takes it at its mark
	oob    byte // the urgent byte taken from src, for run to send
	hasOOB bool // oob is still to be sent
}

// pumpOwner is the session (tests use others): a pump that parked reports
// its direction's end to it.
type pumpOwner interface {
	directionEnded(up bool, pe *pumpErr)
}

// newPump prepares a direction from src; dst may be set later, before run.
func newPump(src, dst *net.TCPConn, pool *bufPool, onChunk func(int)) (*pump, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	p := &pump{src: src, dst: dst, rc: rc, pool: pool, onChunk: onChunk}
	p.readFn = p.tryRead
	return p, nil
}

// tryRead runs inside RawConn.Read: returning false parks the goroutine on
// the poller until the socket is readable again.
//
// While the pump runs (direct), a short read is written on from here and
// the socket is read again at once, inside the same RawConn.Read: until
// EAGAIN, not until a short read. A message and the end of its stream (FIN
// or RST) that arrive together make one readiness edge, and the read that
// returns the message takes the FIN too; waiting for the next edge after a
// short read passed the end on only at the idle deadline (parkAfter later).
// After passesPerWait messages it returns to run (again), so that a close
// of src, which waits for this callback, is not held up by a steady stream
// of small messages; run then enters RawConn.Read anew, which reads first.
func (p *pump) tryRead(fd uintptr) bool {
	// spare is the buffer of the message just passed on, kept for the
	// next read of this callback: one pool get and put per wake rather
	// than per read (the read until EAGAIN doubled them). It goes back to
	// the pool before the callback returns, so a pump waiting on the
	// poller still holds no buffer.
	var spare *[]byte
	for i := 0; ; i++ {
		if i == passesPerWait {
			p.putSpare(spare)
			p.again = true
			return true
		}
		p.toSplice = false
		if p.splicing() && !p.urgent { // in bulk: the first splice in of a round, and spliceBulk goes on
			p.putSpare(spare)
			spare = nil
			if p.trySpliceIn(fd); p.sp.err != syscall.EAGAIN {
				p.toSplice = true
				return true
			}
			if !p.sp.stoppedAtMark(fd) {
				if p.lot == nil {
					p.dropPipe() // no lot, no idle deadline: it would keep the pipe while idle
				}
				return false // the pipe stays until the idle deadline parks the pump
			}
			p.urgent = true // splice stops at an urgent byte: take it, and read past it
		}
		if p.urgent || p.watchingMark() {
			if p.takeUrgent(fd) {
				p.putSpare(spare)
				return true // run sends it
			}
		}
		buf := spare
		if spare = nil; buf == nil {
			buf = p.pool.get()
		}
		n, err := rawRead(fd, *buf)
		if err == syscall.EAGAIN {
			p.pool.put(buf)
			if p.hot >= hotAfter && p.direct && p.sess != nil && p.sess.p.lotCrowded() {
				p.toLot = true // a busy session of small messages: see idle.go
				return true
			}
			return false
		}
		if !p.direct || err != 0 || n == 0 || n == len(*buf) {
			p.buf, p.n, p.readErr = buf, max(n, 0), errOrNil(err) // for the caller: opening bytes, EOF, an error, bulk
			return true
		}
		p.buf, p.n = buf, n
		w, werr := p.write(0, true) // never waits for room here: see below
		if werr != nil {
			p.pool.put(buf)
			p.buf = nil
			p.writeErr = werr
			return true
		}
		if w < n {
			// dst is full: run writes the rest, waiting for room outside
			// this callback. A wait in here would hold src's read lock, and
			// closing src waits for it: a session aborted while its
			// destination had stalled could not close its sockets, so the
			// wait would last until dst's user timeout.
			p.readErr, p.written = nil, w
			return true
		}
		spare, p.buf = buf, nil // all written: the next read may take it
		p.bulk = false
		p.moved++
		p.hot++
		p.onChunk(n)
	}
}

// putSpare gives tryRead's spare buffer back, if it holds one.
func (p *pump) putSpare(b *[]byte) {
	if b != nil {
		p.pool.put(b)
	}
}

// wait parks until src is readable, then reads: p.buf holds p.n bytes
// (n == 0 with no error is EOF, p.readErr a read error), or, in bulk mode,
// toSplice: src is readable, to splice. The error is the poller's (a
// closed conn).
func (p *pump) wait() error {
	p.buf = nil
	return p.rc.Read(p.readFn)
}

// take hands the read buffer over to the caller, who gives it back with
// p.pool.put.
func (p *pump) take() (*[]byte, int, error) {
	buf := p.buf
	p.buf = nil
	return buf, p.n, p.readErr
}

// run copies until src ends. A clean EOF returns nil; otherwise the error
// and which end it came from. Or errParked: src was idle and the pump
// parked (idle.go); the copy then goes on in resume.
func (p *pump) run() *pumpErr {
	pe := p.copyLoop()
	if pe != errParked { // a parked pump gave its pipe back before it parked, and may run elsewhere already
		p.dropPipe()
	}
	return pe
}

func (p *pump) copyLoop() *pumpErr {
	p.arm()
	p.direct, p.busy = true, false
	for {
		from := 0 // of the chunk read, what is written already
		if p.pending {
			p.pending, from = false, p.off
		} else if err := p.wait(); err != nil {
			if !p.isIdleDeadline(err) {
				return &pumpErr{err: err}
			}
			if p.moved == p.armedAt && p.park() {
				return errParked
			}
			p.arm()
			p.lookForMark() // the next read would skip a lone urgent byte (urgent.go)
			continue
		} else {
			from, p.written = p.written, 0
		}
		if p.writeErr != nil {
			return &pumpErr{err: p.writeErr, atWrite: true}
		}
		if p.hasOOB {
			if err := p.sendUrgent(); err != nil {
				return &pumpErr{err: err, atWrite: true}
			}
			continue
		}
		if p.again {
			p.again = false
			continue
		}
		if p.toLot {
			p.toLot, p.hot, p.busy = false, 0, true
			if p.park() {
				return errParked
			}
			p.busy = false
			continue
		}
		p.hot = 0 // bulk, or a destination that was full: not the lot's kind of traffic
		if p.toSplice {
			eof, pe := p.spliceBulk()
			if pe != nil {
				return pe
			}
			if eof {
				return nil
			}
			continue
		}
		buf, n, rerr := p.take()
		if rerr != nil {
			p.pool.put(buf)
			return &pumpErr{err: rerr}
		}
		if n == 0 {
			p.pool.put(buf)
			return nil // EOF
		}
		p.buf = buf
		p.blockedAt.Store(time.Now().UnixNano())
		_, werr := p.write(from, false)
		if werr != nil {
			p.failedWaiting.Store(time.Now().UnixNano() - p.blockedAt.Load())
		}
		p.blockedAt.Store(0)
		p.buf = nil
		p.bulk = n == len(*buf)
		if p.bulk && !p.splicing() {
			p.startSplice()
		} else if !p.bulk {
			p.dropPipe()
		}
		p.pool.put(buf)
		if werr != nil {
			return &pumpErr{err: werr, atWrite: true}
		}
		p.moved++
		p.onChunk(n)
	}
}

// splicer is what a running pump needs to splice: the pipe while its
// stream is bulk (held), and its callbacks. It is made at the pump's first
// bulk and kept while the pump runs, so that bulk that starts again after
// small messages allocates nothing; a pump that parks lets it go, so that
// an idle session carries only a nil pointer.
type splicer struct {
	pipe    pipePair
	held    bool                  // pipe is the pump's
	in, out func(fd uintptr) bool // spliceInOrWait, trySpliceOut
	n       int                   // what the last splice in moved
	err     syscall.Errno         // the last splice's error
	round   int                   // moved since this wake (spliceBulk)
	waited  bool                  // spliceInOrWait waited for src: a deadline then means idle
	marked  bool                  // a copy's fill found src at its urgent mark (stoppedAtMark)
}

// splicing tells whether the pump holds a pipe: its stream is bulk.
func (p *pump) splicing() bool { return p.sp != nil && p.sp.held }

// startSplice gives the pump a pipe for its bulk; without one (out of
// fds) the bulk is copied through the pump's buffer.
func (p *pump) startSplice() {
	pipe, ok := p.pool.getPipe(p.bulkCopies())
	if !ok {
		return
	}
	if p.sp == nil {
		p.sp = &splicer{in: p.spliceInOrWait, out: p.trySpliceOut}
	}
	p.sp.pipe, p.sp.held = pipe, true
}

// bulkCopies tells whether the pump's bulk goes through a copy buffer
// rather than a pipe: when its destination is on this host (a loopback
// address, or the socket's own), as an app beside tnsguard is. Into a
// loopback socket a read and a write of up to 1 MiB moved 12-21% more than
// a splice; into a socket to another host (veth) the splice moved as much
// at 28-40% less CPU per GB (README: "Data path").
func (p *pump) bulkCopies() bool {
	if p.pool.spliceLocal.Load() || p.dst == nil {
		return false
	}
	r, ok := p.dst.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	if r.IP.IsLoopback() {
		return true
	}
	l, ok := p.dst.LocalAddr().(*net.TCPAddr)
	return ok && r.IP.Equal(l.IP)
}

// dropPipe gives the pump's pipe back (closed if bytes are left in it).
func (p *pump) dropPipe() {
	if p.splicing() {
		p.pool.putPipe(p.sp.pipe)
		p.sp.pipe, p.sp.held = pipePair{}, false
	}
}

// spliceBulk moves what src holds to dst through the pump's pipe, after
// tryRead's splice in found bytes, and returns once src is empty (to wait
// on the poller), at src's end of stream (eof), or with an error. A round
// (from a wake until src is empty) that moved less than a chunk ends the
// bulk: the pipe goes back, and small reads are copied again.
//
// Both splices are made without telling the scheduler (rawSplice): neither
// waits. Through Syscall, as Go's own splice makes them, the runtime's
// monitor handed the P on during the long splice out (loopback runs the
// receiver's TCP in the sender's call), and woke every 20 us meanwhile:
// 6,514 of its sleeps and 12,179 context switches in 3 s of bulk, against
// 1,714 and 8,473 now (see the README's data-path section).
//
// While the stream stays bulk, the pump waits for src inside the same
// RawConn.Read as its splice in that found src empty (spliceInOrWait), and
// goes on splicing when woken. Returning to copyLoop to wait there made
// every wake cost a second splice in that found nothing: RawConn.Read
// forgets the poller's readiness before it calls its function, so the
// wait there has to splice first, lest bytes that came in between wait
// for the idle deadline.
func (p *pump) spliceBulk() (eof bool, pe *pumpErr) {
	sp := p.sp
	sp.round, sp.waited = 0, false
	for {
		switch { // the last splice in: tryRead's, then this loop's
		case sp.err == syscall.EAGAIN:
			if sp.round < chunkSize {
				p.bulk = false
				p.dropPipe()
				// The splice may have stopped at an urgent byte, which
				// the read that replaces it would skip (urgent.go).
				p.lookForMark()
			} else {
				// The pump waits holding its pipe: the idle deadline
				// counts from here, so that a stream that stops now
				// parks, and gives the pipe back, parkAfter from now
				// (not up to twice that, as with the deadline set once
				// per parkAfter).
				p.arm()
			}
			return false, nil
		case sp.err != 0:
			return false, &pumpErr{err: os.NewSyscallError(sp.call("splice", "read"), sp.err)}
		case sp.n == 0:
			// A splice stops in front of an urgent byte, with EAGAIN; but
			// once the peer's FIN is in too (the byte, what follows it and
			// the close sent at once) it returns 0 there, as at the end of
			// the stream. That is no end: tryRead takes the byte and reads
			// past it. Taken for the end, the byte and every byte behind
			// it were dropped, and the FIN passed on after a stream cut
			// short.
			if p.lookForMark(); p.urgent {
				return false, nil
			}
			return true, nil
		}
		sp.round += sp.n
		sp.pipe.n += sp.n
		p.blockedAt.Store(time.Now().UnixNano()) // may wait for room in dst (session.checkStalled)
		err := p.flushPipe()                     // counts what it moves as it moves it (trySpliceOut)
		if err != nil {
			p.failedWaiting.Store(time.Now().UnixNano() - p.blockedAt.Load())
		}
		p.blockedAt.Store(0)
		if err != nil {
			return false, &pumpErr{err: err, atWrite: true}
		}
		for {
			err := p.rc.Read(sp.in)
			if err == nil {
				break
			}
			if !p.isIdleDeadline(err) {
				return false, &pumpErr{err: err}
			}
			if sp.waited {
				// src was silent for the idle delay: copyLoop's wait
				// finds the deadline passed, and parks the pump (or
				// arms again, if bytes moved since it was set).
				return false, nil
			}
			p.arm() // the deadline passed while bytes moved: go on
		}
	}
}

// spliceInOrWait runs inside src's RawConn.Read for spliceBulk: one splice
// into the empty pipe. When src is empty after a wake that moved a chunk
// or more (the stream is still bulk) and not at an urgent mark, it waits
// for src right there (false) and splices again when woken, counting a new
// wake; otherwise spliceBulk sees the EAGAIN and ends the bulk, finds the
// mark, or (no lot) returns to copyLoop, whose wait gives the pipe back.
func (p *pump) spliceInOrWait(fd uintptr) bool {
	sp := p.sp
	sp.waited = false
	sp.n, sp.err = sp.fill(fd)
	if sp.err != syscall.EAGAIN || sp.round < chunkSize || p.lot == nil || sp.stoppedAtMark(fd) {
		return true // without a lot there is no idle deadline: tryRead gives the pipe back
	}
	// The idle deadline counts from here, so that a stream that stops
	// now parks, and gives the pipe back, parkAfter from now (not up to
	// twice that, as with the deadline set once per parkAfter).
	p.arm()
	sp.round, sp.waited = 0, true
	return false
}

// flushPipe splices everything in the pipe to dst, waiting for room.
func (p *pump) flushPipe() error {
	if err := p.openDst(); err != nil {
		return err
	}
	p.sp.err = 0
	if err := p.dstRC.Write(p.sp.out); err != nil {
		return err
	}
	if p.sp.err != 0 {
		return os.NewSyscallError(p.sp.call("splice", "write"), p.sp.err)
	}
	return nil
}

// trySpliceIn runs inside src's RawConn.Read: one splice into the empty
// pipe, which never waits.
func (p *pump) trySpliceIn(fd uintptr) bool {
	sp := p.sp
	sp.n, sp.err = sp.fill(fd)
	return true
}

// trySpliceOut runs inside dst's RawConn.Write: it empties the pipe into
// dst; false waits for room.
func (p *pump) trySpliceOut(fd uintptr) bool {
	sp := p.sp
	for sp.pipe.n > 0 {
		n, e := sp.empty(fd)
		if e == syscall.EAGAIN {
			p.waitsForRoom()
			return false
		}
		if e != 0 {
			sp.err = e
			p.noteDstErr(e)
			return true
		}
		if n == 0 { // never seen (the pipe holds sp.pipe.n bytes): an error rather than a spin
			sp.err = syscall.EIO
			return true
		}
		sp.pipe.n -= n
		sp.pipe.off += n
		// Counted now, not once the pipe is empty: a flush that waits
		// for room and then fails (the destination's user timeout) would
		// otherwise mark bytes as moving at the failure, and the session's
		// end would look like bytes lost after a pause (phaseNow).
		p.moved++
		p.onChunk(n)
	}
	return true
}

// fill moves what src holds into the empty pipe (or copy buffer), never
// waiting. A read would take the bytes up to an urgent byte and, when the
// byte is next, skip it and go on (its place in the stream lost), where a
// splice stops in front of it: a copy stops there too (EAGAIN), and the
// pump finds the mark as after a splice.
func (sp *splicer) fill(fd uintptr) (int, syscall.Errno) {
	if sp.pipe.buf == nil {
		return rawSplice(fd, uintptr(sp.pipe.w), pipeSize)
	}
	if sp.marked = atMark(fd); sp.marked {
		return 0, syscall.EAGAIN
	}
	sp.pipe.off = 0
	return rawRead(fd, sp.pipe.buf)
}

// stoppedAtMark tells, after a fill that found nothing (EAGAIN), whether
// src is at its urgent mark rather than empty. A splice stops in front of
// the mark with the EAGAIN of an empty socket, so it asks (SIOCATMARK); a
// copy looked before it read, and a read that found src empty leaves an
// urgent byte that comes after it to the wake its arrival makes. A copy
// waits with one ioctl less: 1.00 instead of 1.26 per read on the
// benchmark's loopback, at 1.4 us each on its VM (README, "Bulk to this
// host is copied").
func (sp *splicer) stoppedAtMark(fd uintptr) bool {
	if sp.pipe.buf == nil {
		return atMark(fd)
	}
	return sp.marked
}

// call names the system call that moves bulk: splice through a pipe, or
// copied (the read or write of a copy buffer).
func (sp *splicer) call(spliced, copied string) string {
	if sp.pipe.buf != nil {
		return copied
	}
	return spliced
}

// empty moves what the pipe (or copy buffer) holds into dst, never waiting.
func (sp *splicer) empty(fd uintptr) (int, syscall.Errno) {
	if sp.pipe.buf == nil {
		return rawSplice(uintptr(sp.pipe.r), fd, sp.pipe.n)
	}
	return rawWrite(fd, sp.pipe.buf[sp.pipe.off:sp.pipe.off+sp.pipe.n])
}

// rawSplice is splice(2) of up to max bytes from in to out, non-blocking,
// made without telling the scheduler (RawSyscall6), again after EINTR.
func rawSplice(in, out uintptr, max int) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, in, 0, out, 0, uintptr(max), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// arm sets the idle deadline on src, parkAfter from now.
func (p *pump) arm() {
	if p.lot != nil {
		p.armedAt = p.moved
		p.src.SetReadDeadline(time.Now().Add(time.Duration(p.lot.after.Load())))
	}
}

// isIdleDeadline tells the idle deadline from a real error.
func (p *pump) isIdleDeadline(err error) bool {
	return p.lot != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

// park hands src to the lot; false (keep going) when it cannot. Once both
// directions are parked, the session goes dormant.
func (p *pump) park() bool {
	p.dropPipe() // an idle pump holds no pipe
	p.sp = nil
	if !p.lot.park(p) {
		return false
	}
	if p.sess != nil {
		p.sess.sleep()
	}
	return true
}

// control runs f on src's fd: the bare fd while dormant (under the
// session's mu), else through the conn.
func (p *pump) control(f func(fd uintptr)) error {
	if p.dormant {
		f(uintptr(p.sess.bare(p.up)))
		return nil
	}
	return p.rc.Control(f)
}

// resume goes on with a parked pump in a new goroutine and reports the
// direction's end to the session. A dormant session is revived first.
func (p *pump) resume() {
	if s := p.sess; s != nil {
		if err := s.reviveFor(p); err != nil {
			p.owner.directionEnded(p.up, &pumpErr{err: err})
			return
		}
	}
	if pe := p.run(); pe != errParked {
		p.owner.directionEnded(p.up, pe)
	}
}

// write writes (*p.buf)[from:p.n] to dst and returns where it got to: p.n,
// or less after an error or, with noWait, when dst's buffer is full (it
// then returns instead of waiting for room).
func (p *pump) write(from int, noWait bool) (int, error) {
	if p.dormant { // the lot's write on the bare fd (under the session's mu): never waits
		p.off, p.noWait, p.writeErr = from, true, nil
		p.tryWrite(uintptr(p.sess.bare(!p.up)))
		w, err := p.off, p.writeErr
		p.off, p.writeErr = 0, nil
		return w, err
	}
	if err := p.openDst(); err != nil {
		return from, err
	}
	p.off, p.noWait, p.writeErr = from, noWait, nil
	err := p.dstRC.Write(p.writeFn)
	if err == nil {
		err = p.writeErr
	}
	w := p.off
	p.off, p.writeErr = 0, nil
	return w, err // err: dst closed, or the write's
}

// openDst makes dstRC, dst's RawConn, on the first write or splice out
// (and again after a revive gave the pump new conns: sync).
func (p *pump) openDst() error {
	if p.dstRC != nil {
		return nil
	}
	rc, err := p.dst.SyscallConn()
	if err != nil {
		return err
	}
	p.dstRC, p.writeFn = rc, p.tryWrite
	return nil
}

// tryWrite runs inside dst's RawConn.Write: false waits for room.
func (p *pump) tryWrite(fd uintptr) bool {
	for p.off < p.n {
		m, err := rawWrite(fd, (*p.buf)[p.off:p.n])
		if err == syscall.EAGAIN {
			if !p.noWait {
				p.waitsForRoom()
			}
			return p.noWait
		}
		if err != 0 {
			p.writeErr = os.NewSyscallError("write", err)
			p.noteDstErr(err)
			return true
		}
		p.off += m
	}
	return true
}

// waitsForRoom tells housekeeping that the pump waits for room in dst: it
// looks for stalled directions until the wait ends (Proxy.activity).
func (p *pump) waitsForRoom() {
	if p.sess != nil {
		p.sess.p.bump()
	}
}

// noteDstErr tells the session which error a write to dst took
// (session.endOfStream).
func (p *pump) noteDstErr(e syscall.Errno) {
	if p.sess == nil || e == syscall.EAGAIN {
		return
	}
	leg := 0 // dst is the app's leg
	if p.up {
		leg = 1
	}
	p.sess.noteWriteErr(leg, e)
}

// rawRead and rawWrite are read(2) and write(2) made without telling the
// scheduler (RawSyscall): on a non-blocking socket neither waits, a read
// only copies what the socket holds and a write only what fits.
//
// Told of each write (Syscall), the runtime woke its monitor (sysmon),
// which then polled every 20 us and could hand the P to another thread
// during the write: at 1 connection that was 0.2-1.0 futex calls, 0.3-1.4
// nanosleeps and 2.7-3.9 context switches per round trip, against 0.02,
// 0.01-0.04 and 2.1-2.2 now, and 450-800 instructions more (README, "A
// round trip, counted"). The write went through Syscall from c1e8ccf on,
// when every busy session ran on goroutines and p99 at 32 connections was
// 1.5-2x the best peer's with a raw write; busy sessions at that load run
// on the lot now, whose write was raw already (two paired runs at 32
// connections: +1.5% and +3% rps, p99 no worse).
func rawRead(fd uintptr, b []byte) (int, syscall.Errno) { return rawIO(syscall.SYS_READ, fd, b) }

func rawWrite(fd uintptr, b []byte) (int, syscall.Errno) { return rawIO(syscall.SYS_WRITE, fd, b) }

// rawIO is read(2) or write(2) (trap) on b through RawSyscall, again after
// EINTR.
func rawIO(trap, fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// errOrNil makes a read's errno an error: nil for none.
func errOrNil(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return os.NewSyscallError("read", e)
}

// sockError is the error a socket holds (reset, timeout), without taking
// any of its bytes; nil while it is healthy, or only at its end of stream.
func sockError(rc syscall.RawConn) error {
	var failed error
	_ = rc.Control(func(fd uintptr) {
		if failed = soError(fd); failed != nil {
			return
		}
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			failed = os.NewSyscallError("read", err)
		}
	})
	return failed
}

// soError is the error the socket fd holds (SO_ERROR, which taking clears),
// as a read's error; nil for none.
func soError(fd uintptr) error {
	soerr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil || soerr == 0 {
		return nil
	}
	return os.NewSyscallError("read", syscall.Errno(soerr))
}
