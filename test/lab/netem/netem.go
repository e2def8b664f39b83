// Package netem is a userspace netem for the network lab: a netfilter queue
// (NFQUEUE) client that holds each queued packet for a fixed delay and drops a
// fraction of them, so the kernel's TCP sees real latency and loss (smoothed RTT,
// retransmissions) where tc netem is not available.
//
// It speaks the nfnetlink_queue protocol directly over a NETLINK_NETFILTER socket
// (bind the queue, copy-packet mode, receive NFQNL_MSG_PACKET, answer
// NFQNL_MSG_VERDICT). Packets are released in arrival order, so the delay does not
// reorder a flow.
//
// Typical use, in the namespace whose iptables send packets to the queue:
//
//	q, err := netem.Open(netem.Config{Queue: 7, Delay: 50 * time.Millisecond, Loss: 0.01})
//	go q.Run(ctx)
//	// iptables -I FORWARD 1 -p tcp --dport 1521 -j NFQUEUE --queue-num 7 --queue-bypass
//
// The socket belongs to the network namespace of the thread that calls Open.
package netem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h); x/sys/unix does not
// define them.
const (
	msgPacket  = 0 // NFQNL_MSG_PACKET
	msgVerdict = 1 // NFQNL_MSG_VERDICT
	msgConfig  = 2 // NFQNL_MSG_CONFIG

	attrCfgCmd    = 1 // NFQA_CFG_CMD
	attrCfgParams = 2 // NFQA_CFG_PARAMS
	attrCfgMaxLen = 3 // NFQA_CFG_QUEUE_MAXLEN

	attrPacketHdr  = 1  // NFQA_PACKET_HDR
	attrVerdictHdr = 2  // NFQA_VERDICT_HDR
	attrPayload    = 10 // NFQA_PAYLOAD

	cmdBind    = 1 // NFQNL_CFG_CMD_BIND
	cmdUnbind  = 2 // NFQNL_CFG_CMD_UNBIND
	copyPacket = 2 // NFQNL_COPY_PACKET

	nfDrop   = 0 // NF_DROP
	nfAccept = 1 // NF_ACCEPT

	// copyRange is enough for the IPv4 and TCP headers with options: the payload
	// itself is never needed, only whether there is one.
	copyRange = 128
	maxQueued = 16384
)

// Config says what happens to queued packets.
type Config struct {
	// Queue is the NFQUEUE number (iptables --queue-num).
	Queue uint16
	// Delay holds every packet this long before accepting it.
	Delay time.Duration
	// Loss is the fraction of TCP packets carrying payload that are dropped, spread
	// evenly (1 in 1/Loss) so that a short test sees the loss it asked for. SYNs and
	// pure ACKs are never dropped.
	Loss float64
}

// Stats counts what a queue did.
type Stats struct {
	Packets  uint64 // received from the kernel
	Dropped  uint64 // answered NF_DROP
	Accepted uint64 // answered NF_ACCEPT
	// MaxLate is the longest a packet was held past its release time: the queue's
	// own error on top of Delay.
	MaxLate time.Duration
	// MeanHeld is how long accepted packets were held on average: the delay the
	// network really added (Delay plus the queue's lateness on a busy machine).
	MeanHeld time.Duration
}

// Queue is a bound netfilter queue.
type Queue struct {
	cfg      Config
	fd       int
	file     *os.File        // fd, registered with the runtime poller after Open
	raw      syscall.RawConn // waits on the poller instead of blocking a thread
	seq      atomic.Uint32
	packets  atomic.Uint64
	dropped  atomic.Uint64
	accepted atomic.Uint64
	maxLate  atomic.Int64
	heldSum  atomic.Int64 // nanoseconds held, over accepted packets

	closeOnce sync.Once
}

// Open creates the netlink socket in the calling thread's network namespace and binds
// queue cfg.Queue in copy-packet mode.
func Open(cfg Config) (*Queue, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netem: netlink socket: %w", err)
	}
	q := &Queue{cfg: cfg, fd: fd}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netem: bind netlink: %w", err)
	}
	// Room for bursts: an overrun loses packets we did not mean to lose.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	// Configuration answers come at once; a timeout keeps a silent kernel from hanging Open.
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netem: SO_RCVTIMEO: %w", err)
	}

	cmd := []byte{cmdBind, 0, 0, 0} // command, pad, pf (unused by BIND)
	params := make([]byte, 5)
	binary.BigEndian.PutUint32(params, copyRange)
	params[4] = copyPacket
	maxLen := binary.BigEndian.AppendUint32(nil, maxQueued)
	for _, a := range []struct {
		typ uint16
		val []byte
	}{{attrCfgCmd, cmd}, {attrCfgParams, params}, {attrCfgMaxLen, maxLen}} {
		if err := q.request(msgConfig, unix.NLM_F_ACK, attr(a.typ, a.val)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netem: configure queue %d: %w", cfg.Queue, err)
		}
	}
	// From here on the fd is non-blocking and waited on by the runtime poller: a
	// thread parked in recvfrom would hold a P, and the release of held packets must
	// not wait for the scheduler to notice (that showed as 20-500 ms of extra delay).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netem: non-blocking: %w", err)
	}
	q.file = os.NewFile(uintptr(fd), "nfqueue")
	raw, err := q.file.SyscallConn()
	if err != nil {
		q.file.Close()
		return nil, fmt.Errorf("netem: %w", err)
	}
	q.raw = raw
	return q, nil
}

// send writes one netlink message, waiting on the poller if the socket is full.
func (q *Queue) send(msg []byte) error {
	var serr error
	err := q.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

// attr encodes one netlink attribute, padded to 4 bytes.
func attr(typ uint16, val []byte) []byte {
	n := 4 + len(val)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], val)
	return b
}

// message builds an nfnetlink message for this queue.
func (q *Queue) message(typ uint16, flags uint16, attrs ...[]byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN+4, 64)
	binary.NativeEndian.PutUint16(b[4:], unix.NFNL_SUBSYS_QUEUE<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(b[8:], q.seq.Add(1))
	// nfgenmsg: family AF_UNSPEC, version 0, resource id = queue number (big-endian).
	b[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	b[unix.NLMSG_HDRLEN+1] = unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(b[unix.NLMSG_HDRLEN+2:], q.cfg.Queue)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	return b
}

// request sends a message that asks for an acknowledgement and waits for it.
func (q *Queue) request(typ uint16, flags uint16, attrs ...[]byte) error {
	msg := q.message(typ, flags, attrs...)
	seq := binary.NativeEndian.Uint32(msg[8:])
	if err := unix.Sendto(q.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || m.Header.Seq != seq || len(m.Data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}

type held struct {
	id      uint32
	verdict uint32
	arrived time.Time
	release time.Time
}

// Run receives packets and answers them until ctx ends, then unbinds and closes the
// queue (packets still held are dropped by the kernel).
func (q *Queue) Run(ctx context.Context) error {
	defer q.Close()
	ctx, cancel := context.WithCancel(ctx)
	line := make(chan held, maxQueued)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); q.release(ctx, line) }()
	defer wg.Wait()
	defer cancel()

	// A past read deadline wakes the reader when ctx ends.
	go func() {
		<-ctx.Done()
		_ = q.file.SetReadDeadline(time.Unix(1, 0))
	}()
	buf := make([]byte, 1<<20)
	var lossAcc float64
	for ctx.Err() == nil {
		var n int
		var rerr error
		err := q.raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
				continue
			}
			return fmt.Errorf("netem: receive: %w", err)
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return fmt.Errorf("netem: parse: %w", err)
		}
		now := time.Now()
		for _, m := range msgs {
			if m.Header.Type != unix.NFNL_SUBSYS_QUEUE<<8|msgPacket || len(m.Data) < 4 {
				continue
			}
			id, payload, ok := parsePacket(m.Data[4:])
			if !ok {
				continue
			}
			q.packets.Add(1)
			verdict := uint32(nfAccept)
			if q.cfg.Loss > 0 && hasTCPPayload(payload) {
				lossAcc += q.cfg.Loss
				if lossAcc >= 1 {
					lossAcc--
					verdict = nfDrop
				}
			}
			select {
			case line <- held{id: id, verdict: verdict, arrived: now, release: now.Add(q.cfg.Delay)}:
			case <-ctx.Done():
				return nil
			}
		}
	}
	return nil
}

// parseMessages splits what one recvfrom returned into netlink messages. The
// kernel does not pad a queued packet's message to 4 bytes (its nlmsg_len is
// the unpadded size when the copied packet's length is not a multiple of 4,
// e.g. a segment of 6 bytes of data), and syscall.ParseNetlinkMessage refuses
// a last message whose aligned length runs past the buffer (EINVAL): the queue
// ended at the first such packet, and with --queue-bypass the flows went on
// undelayed, so a test of small messages measured no delay at all.
func parseMessages(b []byte) ([]syscall.NetlinkMessage, error) {
	if pad := (4 - len(b)%4) % 4; pad != 0 {
		b = append(b[:len(b):len(b)], make([]byte, pad)...)
	}
	return syscall.ParseNetlinkMessage(b)
}

// release answers held packets in arrival order, each at its release time.
func (q *Queue) release(ctx context.Context, line <-chan held) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var h held
		select {
		case h = <-line:
		case <-ctx.Done():
			return
		}
		if d := time.Until(h.release); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return
			}
		}
		if late := time.Since(h.release); late > time.Duration(q.maxLate.Load()) {
			q.maxLate.Store(int64(late))
		}
		if err := q.verdict(h.id, h.verdict); err == nil {
			if h.verdict == nfDrop {
				q.dropped.Add(1)
			} else {
				q.accepted.Add(1)
				q.heldSum.Add(int64(time.Since(h.arrived)))
			}
		}
	}
}

func (q *Queue) verdict(id, verdict uint32) error {
	v := make([]byte, 8)
	binary.BigEndian.PutUint32(v[0:], verdict)
	binary.BigEndian.PutUint32(v[4:], id)
	return q.send(q.message(msgVerdict, 0, attr(attrVerdictHdr, v)))
}

// parsePacket finds the packet id and the (copied part of the) payload in the
// attributes of an NFQNL_MSG_PACKET.
func parsePacket(b []byte) (id uint32, payload []byte, ok bool) {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff // without NLA_F_NESTED/BYTEORDER
		if n < 4 || n > len(b) {
			break
		}
		val := b[4:n]
		switch typ {
		case attrPacketHdr:
			if len(val) >= 4 {
				id, ok = binary.BigEndian.Uint32(val), true
			}
		case attrPayload:
			payload = val
		}
		step := (n + 3) &^ 3
		if step > len(b) {
			break
		}
		b = b[step:]
	}
	return id, payload, ok
}

// hasTCPPayload reports whether an IPv4 packet is TCP carrying data, from its headers
// (the total length field, not the copied length).
func hasTCPPayload(p []byte) bool {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
		return false
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:]))
	if len(p) < ihl+13 {
		return false
	}
	doff := int(p[ihl+12]>>4) * 4
	return total > ihl+doff
}

// Stats returns the counts so far.
func (q *Queue) Stats() Stats {
	st := Stats{Packets: q.packets.Load(), Dropped: q.dropped.Load(), Accepted: q.accepted.Load(), MaxLate: time.Duration(q.maxLate.Load())}
	if st.Accepted > 0 {
		st.MeanHeld = time.Duration(q.heldSum.Load() / int64(st.Accepted))
	}
	return st
}

// Close unbinds the queue and closes the socket. Run calls it when it returns; call it
// yourself only for a queue that was never Run.
func (q *Queue) Close() error {
	var err error
	q.closeOnce.Do(func() {
		_ = q.send(q.message(msgConfig, 0, attr(attrCfgCmd, []byte{cmdUnbind, 0, 0, 0})))
		err = q.file.Close()
	})
	return err
}
