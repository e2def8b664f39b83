package main

import (
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The admin listener is a plain TCP socket, as the proxy's listeners are.
// Go makes a listener Multipath TCP by default (go.mod 1.24 on), and the
// kernel's MPTCP getsockname gives a link-local address no scope: an admin
// listener on [fe80::1%eth0]:9521 was logged as "admin listening:
// address=[fe80::1]:9521", and named so in the messages of a reload onto
// its address, without the zone it needs.
func TestAdminListenerIsPlainTCP(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 262) // IPPROTO_MPTCP
	if err != nil {
		t.Skipf("this kernel has no MPTCP: %v", err)
	}
	syscall.Close(fd)
	admin := freePort(t)
	_, _, stop := startRun(t, admin)
	defer stop()
	want := netip.MustParseAddrPort(admin)
	found := false
	for fd := 0; fd < 4096; fd++ {
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
			continue
		}
		sa, err := unix.Getsockname(fd)
		in4, ok := sa.(*unix.SockaddrInet4)
		if err != nil || !ok || netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) != want {
			continue
		}
		found = true
		if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || proto != unix.IPPROTO_TCP {
			t.Errorf("the admin listener's protocol is %d (error %v), want %d (TCP; 262 is MPTCP)", proto, err, unix.IPPROTO_TCP)
		}
	}
	if !found {
		t.Fatalf("no listening socket of this process on %s", admin)
	}
}
