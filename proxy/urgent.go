package proxy

import (
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Urgent data. Oracle Net clients (python-oracledb thin, for one, as its
// source shows) interrupt a running call by sending one byte with TCP's
// urgent pointer (send with MSG_OOB), when the database granted urgent
// data in its ACCEPT, and recent ones check
// right after the listener's ACCEPT, with an urgent byte and a RESET
// marker, whether that byte reaches the database. Read as a stream, the
// byte never shows: read(2) skips it, and splice(2) stops in front of it
// (EAGAIN until a read(2) moves past). So tnsguard passes it on as urgent
// data, at its place in the stream:
//
//   - at the mark (SIOCATMARK: src's next byte is the urgent one, every
//     byte before it passed on) the pump takes the byte (recv MSG_OOB)
//     and run sends it to dst with MSG_OOB, before anything after it;
//   - a parked pump learns of it from the lot (EPOLLPRI in its entry), a
//     pump in bulk from a splice that stops short (EAGAIN at the mark),
//     and the app's direction, for its first reads after the backend's
//     first answer, looks before each read (the check's byte comes then,
//     followed at once by a marker, so nothing else would see it).
//
// An urgent byte alone wakes neither Go's poller nor a read (the kernel
// counts it as no readable byte), so a running pump sees it at its next
// idle deadline: it parks and the lot's entry reports it, or it looks for
// the mark before it reads again (lookForMark): within 2*parkAfter. A
// bulk round that ends looks too, since a read replaces its splice. Only a
// running pump that reads (not splices) and finds its urgent byte together
// with other bytes (behind them or followed by them) reads past it, and
// the byte is lost, as through any proxy.

// urgentWatchReads is how many reads of the app's direction, from the
// backend's first answer on, look for the mark first.
const urgentWatchReads = 4

// watchingMark tells whether tryRead looks for the mark before its read:
// the app's direction, while its session's urgentWatch lasts.
func (p *pump) watchingMark() bool { return p.up && p.sess != nil && p.sess.urgentWatch.Load() > 0 }

// takeUrgent takes src's urgent byte when it is src's next byte (inside
// tryRead), and tells whether it did: run then sends it (sendUrgent).
// Short of the mark it takes nothing; the read that follows stops at it.
func (p *pump) takeUrgent(fd uintptr) bool {
	if p.watchingMark() {
		p.sess.urgentWatch.Add(-1)
	}
	if !atMark(fd) {
		return false
	}
	p.urgent = false
	b, e := recvUrgent(fd)
	if e != 0 {
		// EINVAL: taken already, and its place is still to be read past
		// (the read that follows does); EAGAIN: the pointer came before
		// the byte, which the lot reports once it is here.
		return false
	}
	p.oob, p.hasOOB = b, true
	return true
}

// lookForMark tells tryRead to take src's urgent byte first when it is
// src's next byte. It is for a running pump about to read again with no
// wake to say so: after an idle deadline it does not park at, a lone
// urgent byte (which wakes no reader) may be waiting, and after a bulk
// round that ends (no pipe any more) a splice may have stopped at one;
// either way a plain read would skip it. One ioctl.
func (p *pump) lookForMark() {
	p.rc.Control(func(fd uintptr) {
		if atMark(fd) {
			p.urgent = true
		}
	})
}

// sendUrgent sends the byte takeUrgent took to dst as urgent data, waiting
// for room.
func (p *pump) sendUrgent() error {
	p.hasOOB = false
	if err := p.openDst(); err != nil {
		return err
	}
	return p.sendUrgentOn(p.dstRC)
}

// sendUrgentOn sends p.oob on rc's socket as urgent data and counts it.
func (p *pump) sendUrgentOn(rc syscall.RawConn) error {
	var e syscall.Errno
	err := rc.Write(func(fd uintptr) bool {
		e = sendUrgent(fd, p.oob)
		return e != syscall.EAGAIN
	})
	if err == nil && e != 0 {
		p.noteDstErr(e)
		err = os.NewSyscallError("send", e)
	}
	if err == nil {
		p.moved++
		p.onChunk(1)
		if s := p.sess; s != nil && s.l.log.IsDebug() {
			to := SideBackend
			if !p.up {
				to = SideClient
			}
			s.logger().Debug("urgent byte passed on (a break)", "server", s.serverShown(), "to", to) // s.mu is not held here
		}
	}
	return err
}

// sendUrgentTo is sendUrgent during the opening, where the pump has no dst
// yet: to the backend connection of the session.
func (p *pump) sendUrgentTo(c *net.TCPConn) error {
	p.hasOOB = false
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return p.sendUrgentOn(rc)
}

// atMark tells whether the socket's next byte to read is its urgent byte
// (or the place of one taken already).
//
// The ioctl goes through RawSyscall: it never waits, and a pump in bulk
// asks it before every wait for src. Through unix.IoctlGetInt (Syscall)
// each told the runtime of a system call, and one made after the process
// had gone idle woke the runtime's monitor (sysmon), which then slept in
// 20 us steps until every P was idle again: 1,540-1,820 of its sleeps and
// about 2,000 futex calls per GB of bulk backend->client, against 50-140
// and 60-150 with the raw call (README, data path).
func atMark(fd uintptr) bool {
	var n int32
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, unix.SIOCATMARK, uintptr(unsafe.Pointer(&n)))
		if e != syscall.EINTR {
			return e == 0 && n != 0
		}
	}
}

// recvUrgent takes the socket's urgent byte (recv MSG_OOB), never waiting.
func recvUrgent(fd uintptr) (byte, syscall.Errno) {
	var b [1]byte
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_OOB|unix.MSG_DONTWAIT, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e == 0 && n != 1 {
			e = syscall.EINVAL // the stream ended: no urgent byte
		}
		return b[0], e
	}
}

// sendUrgent sends b as urgent data (send MSG_OOB), never waiting.
func sendUrgent(fd uintptr, b byte) syscall.Errno {
	buf := [1]byte{b}
	for {
		_, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&buf[0])), 1, unix.MSG_OOB|unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		if e != syscall.EINTR {
			return e
		}
	}
}
