package probe

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// The liveness check, at the socket level. Checked on Linux 6.18 (probe
// package tests and the network lab):
//
//   - With SO_KEEPALIVE switched on first and TCP_KEEPIDLE set to 1s after
//     it, the kernel sees the connection has been idle longer than that and
//     sends a keepalive probe at once (within a timer tick, a few ms). The
//     other order waits a whole second first.
//   - The probe is an empty segment with sequence number snd_una-1: below the
//     window, so the peer's TCP answers it with a bare ACK and hands nothing to
//     the application. That ACK resets tcpi_probes to 0 and tcpi_last_ack_recv
//     to about 0: alive.
//   - A stateful firewall that forgot the flow drops the probe (no ACK,
//     tcpi_probes climbs, and after TCP_KEEPCNT probes TCP_KEEPINTVL apart a
//     read fails with ETIMEDOUT) or answers it with a reset (read fails with
//     ECONNRESET within an RTT).
//
// Peers rate-limit ACKs to out-of-window segments (tcp_invalid_ratelimit,
// 500 ms); one probe per check, checks at least a second apart on a
// connection, stays below that.

// checkInterval is TCP_KEEPINTVL during a check: the kernel's smallest.
const checkInterval = time.Second

// startCheck makes the kernel send a keepalive probe on c now, and then
// every second until answered or probes have gone unanswered.
func startCheck(c *net.TCPConn, probes int) error {
	return setsockopts(c, []sockopt{
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(checkInterval / time.Second), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, probes, "TCP_KEEPCNT"},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		// After SO_KEEPALIVE: setting the idle on a connection with keepalive
		// on re-arms the timer from the time already idle, so it fires now.
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 1, "TCP_KEEPIDLE"},
	})
}

// keepaliveOff stops all keepalive probes on c, so it can sit idle again.
func keepaliveOff(c *net.TCPConn) error {
	return setsockopts(c, []sockopt{{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0, "SO_KEEPALIVE"}})
}

type sockopt struct {
	level, opt, value int
	name              string
}

func setsockopts(c *net.TCPConn, opts []sockopt) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var optErr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range opts {
			if err := unix.SetsockoptInt(int(fd), o.level, o.opt, o.value); err != nil {
				optErr = fmt.Errorf("%s: %w", o.name, err)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return optErr
}
