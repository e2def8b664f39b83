package keepalive

import (
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Info is what the kernel counts for one TCP connection.
type Info struct {
	RTT          time.Duration // smoothed round-trip time
	RTTVar       time.Duration
	Retransmits  uint32 // segments retransmitted over the connection's life
	Lost         uint32
	BytesAcked   uint64 // sent and acknowledged (counts the SYN too)
	BytesRecv    uint64
	LastDataRecv time.Duration // since the last data arrived
	LastDataSent time.Duration
	LastAckRecv  time.Duration // since the last ACK arrived (ms resolution)
	DataSegsOut  uint32        // segments sent that carried data, retransmissions included
	SegsIn       uint32        // segments received, bare ACKs and keepalive probes included
	State        uint8
	// Retrying counts the retransmissions of the oldest unacknowledged
	// segment: non-zero while sent data goes unanswered, and still so after
	// the timeout that this ended the connection with (a keepalive death
	// leaves it at 0).
	Retrying uint8
}

// ReadInfo reads TCP_INFO. It also works on a socket that just got a reset
// and is not yet closed, so the counters of a dying connection can be read.
//
// getsockopt(TCP_INFO) never waits, so it is made without telling the
// scheduler (RawSyscall6): told of it, the Go runtime woke its monitor
// thread (sysmon) from its deep sleep, and then polled every 20 µs. A
// session reads TCP_INFO once or twice at its end (endOfStream, the link's
// retransmits), so that was a futex wake in about one session in 35 of the
// benchmark's connection loop (perf record, 2026-12-01). It also takes two
// allocations besides the RawConn where GetsockoptTCPInfo and the captured
// variables took four.
func ReadInfo(c syscall.Conn) (Info, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Info{}, err
	}
	r := new(infoRead)
	if err := rc.Control(r.read); err != nil {
		return Info{}, err
	}
	if r.errno != 0 {
		return Info{}, r.errno // as GetsockoptTCPInfo returned it
	}
	ti := &r.ti
	return Info{
		RTT:          time.Duration(ti.Rtt) * time.Microsecond,
		RTTVar:       time.Duration(ti.Rttvar) * time.Microsecond,
		Retransmits:  ti.Total_retrans,
		Lost:         ti.Lost,
		BytesAcked:   ti.Bytes_acked,
		BytesRecv:    ti.Bytes_received,
		LastDataRecv: time.Duration(ti.Last_data_recv) * time.Millisecond,
		LastDataSent: time.Duration(ti.Last_data_sent) * time.Millisecond,
		LastAckRecv:  time.Duration(ti.Last_ack_recv) * time.Millisecond,
		DataSegsOut:  ti.Data_segs_out,
		SegsIn:       ti.Segs_in,
		State:        ti.State,
		Retrying:     ti.Retransmits,
	}, nil
}

// infoRead is one TCP_INFO read: the buffer and its outcome.
type infoRead struct {
	ti    unix.TCPInfo
	errno syscall.Errno
}

func (r *infoRead) read(fd uintptr) {
	n := uint32(unsafe.Sizeof(r.ti))
	_, _, r.errno = unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&r.ti)), uintptr(unsafe.Pointer(&n)), 0)
}
