package keepalive

import (
	"syscall"
	"time"

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
func ReadInfo(c syscall.Conn) (Info, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Info{}, err
	}
	var ti *unix.TCPInfo
	var infoErr error
	if err := rc.Control(func(fd uintptr) {
		ti, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return Info{}, err
	}
	if infoErr != nil {
		return Info{}, infoErr
	}
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
