package keepalive

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// loopbackConn is a client conn to a listener that never accepts: both
// closed at the test's end.
func loopbackConn(t *testing.T) *net.TCPConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestApplyAndReadBack(t *testing.T) {
	tc := loopbackConn(t)
	for _, want := range []Settings{
		{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: time.Minute},
		{Idle: time.Second, Interval: time.Second, Count: 1, UserTimeout: 1500 * time.Millisecond},
		{UserTimeout: 0}, // keepalive off
	} {
		if err := want.Apply(tc); err != nil {
			t.Fatal(err)
		}
		got, err := Read(tc)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("read back %+v, applied %+v", got, want)
		}
	}
	info, err := ReadInfo(tc)
	if err != nil {
		t.Fatal(err)
	}
	if info.RTT <= 0 || info.State != 1 { // TCP_ESTABLISHED
		t.Errorf("TCP_INFO of a live loopback conn: %+v", info)
	}
}

// What tnsguard does per leg: the app's leg inherits from the listening
// socket (plus the user timeout, which Linux does not copy), the backend's
// leg is set before connect. Both must read back exactly as applied.
func TestListenerAndDialRoutes(t *testing.T) {
	for _, want := range []Settings{
		{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: time.Minute},
		{Idle: 2 * time.Second, Interval: time.Second, Count: 5},
		{UserTimeout: 2500 * time.Millisecond}, // keepalive off, user timeout on
		{},
	} {
		lc := net.ListenConfig{KeepAlive: -1}
		l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln := l.(*net.TCPListener)
		// A listener that had other settings first: the last ones count.
		if err := (Settings{Idle: time.Hour, Interval: time.Hour, Count: 9}).ApplyListener(ln); err != nil {
			t.Fatal(err)
		}
		if err := want.ApplyListener(ln); err != nil {
			t.Fatal(err)
		}
		d := net.Dialer{KeepAlive: -1, Control: want.Control}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		if err := want.ApplyAccepted(a); err != nil {
			t.Fatal(err)
		}
		for name, conn := range map[string]*net.TCPConn{"dialed": c.(*net.TCPConn), "accepted": a} {
			got, err := Read(conn)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: read back %+v, want %+v", name, got, want)
			}
		}
		c.Close()
		a.Close()
		ln.Close()
	}
}

// The derivation the README's table is made from.
func TestFromPathIdle(t *testing.T) {
	for _, tc := range []struct {
		path time.Duration
		want Settings
	}{
		{4 * time.Minute, Settings{Idle: 80 * time.Second, Interval: 26 * time.Second, Count: 3, UserTimeout: 158 * time.Second}},    // Azure LB
		{350 * time.Second, Settings{Idle: 116 * time.Second, Interval: 38 * time.Second, Count: 3, UserTimeout: 230 * time.Second}}, // AWS NLB
		{5 * time.Minute, Settings{Idle: 100 * time.Second, Interval: 33 * time.Second, Count: 3, UserTimeout: 199 * time.Second}},   // NAT gateways
		{10 * time.Minute, Settings{Idle: 200 * time.Second, Interval: 66 * time.Second, Count: 3, UserTimeout: 398 * time.Second}},  // GCP
		{20 * time.Minute, Settings{Idle: 400 * time.Second, Interval: 133 * time.Second, Count: 3, UserTimeout: 799 * time.Second}}, // Cloud NAT
		{time.Hour, Settings{Idle: 20 * time.Minute, Interval: 400 * time.Second, Count: 3, UserTimeout: 2400 * time.Second}},        // firewall default
		{5 * time.Second, Settings{Idle: time.Second, Interval: time.Second, Count: 3, UserTimeout: 4 * time.Second}},                // lab
		{time.Second, Settings{Idle: time.Second, Interval: time.Second, Count: 3, UserTimeout: 4 * time.Second}},                    // floor
		{120 * time.Hour, Settings{Idle: MaxTimer, Interval: MaxTimer, Count: 3, UserTimeout: 4 * MaxTimer}},                         // conntrack default: the kernel's ceiling
	} {
		got := FromPathIdle(tc.path)
		if got != tc.want {
			t.Errorf("FromPathIdle(%v) = %+v, want %+v", tc.path, got, tc.want)
		}
		// Whatever the path, the first two probes land inside it when it is
		// long enough for whole-second probes at all.
		if tc.path >= 3*time.Second && got.Idle+got.Interval >= tc.path {
			t.Errorf("FromPathIdle(%v): idle+interval %v does not fit", tc.path, got.Idle+got.Interval)
		}
	}
}

// A user timeout beyond what TCP_USER_TIMEOUT holds (an int of ms) is an
// error: it was cut to 32 bits and wrapped, so 1200h became about 7h.
func TestUserTimeoutBeyondTheKernelIsAnError(t *testing.T) {
	c := loopbackConn(t)
	if err := (Settings{UserTimeout: MaxUserTimeout}).Apply(c); err != nil {
		t.Errorf("the largest user timeout: %v", err)
	}
	if err := (Settings{UserTimeout: 1200 * time.Hour}).Apply(c); err == nil {
		got, _ := Read(c)
		t.Errorf("1200h applied without an error; the kernel has %v", got.UserTimeout)
	}
}

// Late holds for values long enough that a couple of seconds' delay does
// not change them (off counts as long), and for nothing shorter.
func TestLate(t *testing.T) {
	for _, c := range []struct {
		s    Settings
		want bool
	}{
		{Settings{}, true},
		{Settings{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: time.Minute}, true},
		{Settings{Idle: LateFloor}, true},
		{Settings{Idle: LateFloor - time.Second}, false},
		{Settings{Idle: time.Minute, UserTimeout: 5 * time.Second}, false},
		{Settings{UserTimeout: 19 * time.Second}, false},
		{FromPathIdle(5 * time.Minute), true},
		{FromPathIdle(time.Minute), true},       // idle 20s
		{FromPathIdle(30 * time.Second), false}, // idle 10s
	} {
		if got := c.s.Late(); got != c.want {
			t.Errorf("%+v: Late() = %v, want %v", c.s, got, c.want)
		}
	}
}

// The kernel takes idle and interval in whole seconds, rounded up, and
// what it does is reckoned from InKernel (check's warnings, the
// user_timeout derived from path_idle_timeout): InKernel is what a socket
// reads back.
func TestInKernelIsWhatTheSocketTakes(t *testing.T) {
	tc := loopbackConn(t)
	for _, s := range []Settings{
		{Idle: 1500 * time.Millisecond, Interval: 1500 * time.Millisecond, Count: 2, UserTimeout: 5 * time.Second},
		{Idle: 9500 * time.Millisecond, Interval: 1001 * time.Millisecond, Count: 3},
		{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3},
	} {
		if err := s.Apply(tc); err != nil {
			t.Fatal(err)
		}
		got, err := Read(tc)
		if err != nil {
			t.Fatal(err)
		}
		if want := s.InKernel(); got != want {
			t.Errorf("applied %+v: read back %+v, InKernel says %+v", s, got, want)
		}
	}
	if off := (Settings{UserTimeout: time.Second}); off.InKernel() != off {
		t.Errorf("keepalive off: InKernel %+v", off.InKernel())
	}
	if got := (Settings{Idle: 1500 * time.Millisecond, Interval: 1500 * time.Millisecond, Count: 2}).InKernel().ProbeSpan(); got != 6*time.Second {
		t.Errorf("span of 1.5s + 1.5s*2 in the kernel: %v, want 6s", got)
	}
}

// ReadInfo reads the socket's own counters (bytes both ways, the state),
// and a socket that has no TCP_INFO fails with the kernel's errno, as
// x/sys/unix's GetsockoptTCPInfo returned it.
func TestReadInfoCountsAndFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	info, err := ReadInfo(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	// BytesAcked counts the SYN too.
	if info.BytesRecv != 300 || info.BytesAcked < 1000 || info.BytesAcked > 1001 || info.State != 1 {
		t.Errorf("TCP_INFO after 1000 bytes out and 300 in: %+v", info)
	}

	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_, err = ReadInfo(u.(*net.UDPConn))
	var errno syscall.Errno
	if !errors.As(err, &errno) || errno == 0 {
		t.Errorf("ReadInfo of a UDP socket: %v (%T), want the kernel's errno", err, err)
	}
}

// A session reads TCP_INFO at its end (proxy: endOfStream, the link's
// retransmits): two allocations besides the RawConn, where x/sys/unix's
// GetsockoptTCPInfo and a closure with captured results took four.
func TestReadInfoAllocations(t *testing.T) {
	tc := loopbackConn(t)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ReadInfo(tc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 3 {
		t.Errorf("ReadInfo: %.0f allocations, want at most 3", allocs)
	}
}
