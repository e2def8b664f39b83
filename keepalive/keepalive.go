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
	"net"
	"syscall"
	"time"

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

// Apply sets the options on a live connection.
func (s Settings) Apply(c *net.TCPConn) error {
	if err := c.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable:   s.Idle > 0,
		Idle:     s.Idle,
		Interval: s.Interval,
		Count:    s.Count,
	}); err != nil {
		return fmt.Errorf("keepalive: %w", err)
	}
	return setUserTimeout(c, s.UserTimeout)
}

// DetectionTime is the longest a dead peer can go unnoticed on an idle
// connection with these settings: idle + interval*count, cut short by the
// user timeout when that is smaller (and set).
func (s Settings) DetectionTime() time.Duration {
	if s.Idle == 0 {
		return s.UserTimeout
	}
	d := s.Idle + s.Interval*time.Duration(s.Count)
	if s.UserTimeout > 0 && s.UserTimeout < d {
		return s.UserTimeout
	}
	return d
}

func setUserTimeout(c syscall.Conn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var optErr error
	err = rc.Control(func(fd uintptr) {
		optErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
	})
	if err != nil {
		return err
	}
	if optErr != nil {
		return fmt.Errorf("TCP_USER_TIMEOUT: %w", optErr)
	}
	return nil
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
// unit), at least 1s.
func FromPathIdle(pathIdle time.Duration) Settings {
	sec := func(d time.Duration) time.Duration {
		d = d.Truncate(time.Second)
		if d < time.Second {
			return time.Second
		}
		return d
	}
	s := Settings{Idle: sec(pathIdle / 3), Interval: sec(pathIdle / 9), Count: 3}
	s.UserTimeout = s.Idle + s.Interval*time.Duration(s.Count)
	return s
}
