// Package keepalive sets and reads the TCP options that keep a connection
// alive through stateful middleboxes and notice when its peer is gone:
// keepalive idle/interval/count, TCP_USER_TIMEOUT, and TCP_INFO.
//
// Typical use, right after accept or dial:
//
//	s := keepalive.Settings{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: time.Minute}
//	if err := s.Apply(conn); err != nil { ... }
package keepalive

import (
	"errors"
	"fmt"
	"math"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Settings are one leg's keepalive options. Idle 0 turns keepalive off;
// UserTimeout 0 leaves the kernel's default (about 15 minutes of
// retransmissions before unacknowledged data gives up).
type Settings struct {
	Idle        time.Duration
	Interval    time.Duration
	Count       int
	UserTimeout time.Duration
}

// Apply sets the options on a live connection (a *net.TCPConn, or any
// syscall.Conn over a TCP socket).
func (s Settings) Apply(c syscall.Conn) error {
	return onSocket(c, func(fd uintptr) error {
		if err := s.setKeepalive(fd); err != nil {
			return err
		}
		return s.setUserTimeout(fd) // even 0: it may replace an earlier value
	})
}

// ApplyListener sets the options that Linux copies from a listening socket
// to every connection it accepts: keepalive on/off, idle, interval and
// count. Accepted connections then need only ApplyAccepted, one system call
// instead of five. Connections already in the accept queue keep what was set
// when their handshake completed.
func (s Settings) ApplyListener(l *net.TCPListener) error {
	return onSocket(l, s.setKeepalive)
}

// ApplyAccepted completes ApplyListener on an accepted connection: the
// kernel does not copy TCP_USER_TIMEOUT from the listening socket.
func (s Settings) ApplyAccepted(c syscall.Conn) error {
	if s.UserTimeout == 0 {
		return nil // what a new socket has
	}
	return onSocket(c, s.setUserTimeout)
}

// Control sets every option on a socket that is not connected yet; it has
// the signature of net.Dialer.Control, so a dial needs no system call after
// connect for keepalive.
func (s Settings) Control(_, _ string, rc syscall.RawConn) error {
	return onRawConn(rc, func(fd uintptr) error {
		if err := s.setKeepalive(fd); err != nil || s.UserTimeout == 0 {
			return err // a user timeout of 0 is what a new socket has
		}
		return s.setUserTimeout(fd)
	})
}

// LateFloor is the shortest Idle and UserTimeout that Late accepts.
const LateFloor = 20 * time.Second

// Late tells whether the options may be set up to a few seconds after the
// connection was made without changing what they do, which spares the
// short-lived connections their system calls (five per connection).
// Setting TCP_KEEPIDLE on a connected socket with keepalive on re-arms the
// timer for Idle counted from the last segment received, so the first probe
// leaves when it would have if set at connect, as long as less than Idle of
// silence has passed; the user timeout counts from the first
// unacknowledged transmission, whenever it is set. LateFloor keeps Idle
// and UserTimeout well above the 2s that a caller may take. Shorter values
// (a lab, a middlebox that forgets within a minute) are set at connect.
func (s Settings) Late() bool {
	return (s.Idle == 0 || s.Idle >= LateFloor) && (s.UserTimeout == 0 || s.UserTimeout >= LateFloor)
}

// onSocket runs set on c's file descriptor.
func onSocket(c syscall.Conn, set func(fd uintptr) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return onRawConn(rc, set)
}

func onRawConn(rc syscall.RawConn, set func(fd uintptr) error) error {
	var setErr error
	if err := rc.Control(func(fd uintptr) { setErr = set(fd) }); err != nil {
		return err
	}
	return setErr
}

// The kernel's limits: TCP_KEEPIDLE and TCP_KEEPINTVL (the keepalive
// timers) at most 32767 s, TCP_KEEPCNT at most 127 (net/ipv4/tcp.c:
// MAX_TCP_KEEPIDLE, ...), and TCP_USER_TIMEOUT an int of milliseconds.
const (
	MaxTimer       = 32767 * time.Second
	MaxCount       = 127
	MaxUserTimeout = math.MaxInt32 * time.Millisecond
)

// MinRTO is the kernel's shortest retransmission timeout (TCP_RTO_MIN). The
// kernel looks at TCP_USER_TIMEOUT only when a retransmission times out, so
// a user timeout under it gives up later than written (measured in the
// network lab: a cut ended sessions of "1ms" 0.22 to 0.5 s in), and ends a
// session whose retransmission is not acknowledged within it.
const MinRTO = 200 * time.Millisecond

func (s Settings) setUserTimeout(fd uintptr) error {
	if s.UserTimeout > MaxUserTimeout { // as an int32 it would wrap to some other timeout
		return fmt.Errorf("keepalive: TCP_USER_TIMEOUT %v: the kernel takes at most %v", s.UserTimeout, MaxUserTimeout)
	}
	return setInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(s.UserTimeout/time.Millisecond), "TCP_USER_TIMEOUT")
}

// setKeepalive sets SO_KEEPALIVE and, when on, idle, interval and count as
// net.TCPConn.SetKeepAliveConfig does: whole seconds rounded up, an
// interval of 0 meaning 15s and a count of 0 meaning 9.
func (s Settings) setKeepalive(fd uintptr) error {
	if s.Idle <= 0 {
		return setInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0, "SO_KEEPALIVE")
	}
	secs := func(d time.Duration) int { return int(wholeSeconds(d) / time.Second) }
	interval, count := s.Interval, s.Count
	if interval <= 0 {
		interval = 15 * time.Second
	}
	if count <= 0 {
		count = 9
	}
	for _, o := range []struct {
		level, opt, value int
		name              string
	}{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(s.Idle), "TCP_KEEPIDLE"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(interval), "TCP_KEEPINTVL"},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, count, "TCP_KEEPCNT"},
	} {
		if err := setInt(fd, o.level, o.opt, o.value, o.name); err != nil {
			return err
		}
	}
	return nil
}

// setInt is setsockopt without the scheduler's bookkeeping for a blocking
// call: setting an option never blocks.
func setInt(fd uintptr, level, opt, value int, name string) error {
	v := int32(value)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&v)), 4, 0)
	if e != 0 {
		return fmt.Errorf("keepalive: %s: %w", name, e)
	}
	return nil
}

// wholeSeconds is d as the kernel takes TCP_KEEPIDLE and TCP_KEEPINTVL:
// rounded up to whole seconds, at least 1s.
func wholeSeconds(d time.Duration) time.Duration {
	return max((d+time.Second-1)/time.Second, 1) * time.Second
}

// InKernel is s with idle and interval as Apply sets them, rounded up to
// whole seconds: "1.5s" is 2s. What the kernel does (ProbeSpan) is
// reckoned from these. Keepalive off (idle 0) stays off.
func (s Settings) InKernel() Settings {
	if s.Idle > 0 {
		s.Idle = wholeSeconds(s.Idle)
		if s.Interval > 0 {
			s.Interval = wholeSeconds(s.Interval)
		}
	}
	return s
}

// ProbeSpan is idle + interval*count: when the last unanswered probe of an
// idle connection gives up on its peer (of InKernel's values, for what the
// kernel does).
func (s Settings) ProbeSpan() time.Duration {
	return s.Idle + s.Interval*time.Duration(s.Count)
}

// Read returns the options in force on a connection, read back from the
// kernel.
func Read(c syscall.Conn) (Settings, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Settings{}, err
	}
	var s Settings
	var errs []error
	err = rc.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := unix.GetsockoptInt(int(fd), level, opt)
			errs = append(errs, err)
			return v
		}
		on := get(unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle := get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		intvl := get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		cnt := get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		ut := get(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		if on != 0 {
			s = Settings{Idle: time.Duration(idle) * time.Second, Interval: time.Duration(intvl) * time.Second, Count: cnt}
		}
		s.UserTimeout = time.Duration(ut) * time.Millisecond
	})
	if err != nil {
		return Settings{}, err
	}
	return s, errors.Join(errs...)
}

// FromPathIdle derives keepalive settings for a path whose middlebox forgets
// a connection after pathIdle of silence: the first probe goes out at a
// third of it, and with an interval of a ninth the second and third probes
// (sent only when one is lost) still land inside it. The user timeout is
// when the last probe would give up, so a black-holed peer is found within
// about two thirds of pathIdle. Values are whole seconds (the kernel's
// unit), at least 1s and at most MaxTimer (a path that forgets after
// days is kept alive by probes every 9 hours all the same).
func FromPathIdle(pathIdle time.Duration) Settings {
	sec := func(d time.Duration) time.Duration {
		return min(max(d.Truncate(time.Second), time.Second), MaxTimer)
	}
	s := Settings{Idle: sec(pathIdle / 3), Interval: sec(pathIdle / 9), Count: 3}
	s.UserTimeout = s.ProbeSpan()
	return s
}
