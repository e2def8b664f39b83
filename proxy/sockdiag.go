package proxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// acceptedHere tells whether a dial from local to remote, both this
// host's, reached a socket of this host: whether the kernel holds a TCP
// socket whose local address is remote and whose remote is local (the
// accepted side, from the SYN on: a request socket until the handshake
// ends). A connection that this host's own NAT (an iptables OUTPUT DNAT,
// kube-proxy's IPVS on kube-ipvs0) sent to another host has no such socket
// here, though both its addresses are this host's. It asks sock_diag
// (NETLINK_SOCK_DIAG, inet_diag) for both ends by their exact addresses:
// the dial's own socket first, which exists, so that a kernel or a sandbox
// where sock_diag does not answer (no inet_diag, a seccomp filter) says
// "yes", a loop, as the addresses alone did before. The dial's socket is
// gone too when what it reached reset it at once (a server behind the NAT
// at its connection limit): then only an answer that names the listener on
// remote's port tells that sock_diag works and no socket here holds the
// dial's other end. A netlink socket and two lookups (six system calls),
// only for a dial that the addresses alone took for a loop.
func acceptedHere(local, remote netip.AddrPort) bool {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	dial, _, err := tcpSocketAt(fd, local, remote)
	if err != nil {
		return true // sock_diag cannot tell
	}
	found, listening, err := tcpSocketAt(fd, remote, local)
	if !dial {
		// Until 2026-12-01 a loop, whatever the answer: every app of a
		// server behind the NAT that reset at once was a self_dial, its
		// next server untried.
		return err != nil || !listening
	}
	return err != nil || found
}

// acceptedAt tells whether a socket of this host whose local address is at
// holds a connection from local: the accepted side of a dial from local
// that this host's NAT sent to at. false when sock_diag cannot tell.
func acceptedAt(at, local netip.AddrPort) bool {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	found, _, err := tcpSocketAt(fd, netip.AddrPortFrom(at.Addr().Unmap(), at.Port()), netip.AddrPortFrom(local.Addr().Unmap(), local.Port()))
	return err == nil && found
}

// tcpSocketAt asks sock_diag on fd for the TCP socket whose local address
// is local and whose peer is remote. An exact lookup that finds no such
// connection may answer with the listening socket on local's port (the
// kernel's lookup falls back to a listener, as for a SYN): that is no
// connection, nor is a TIME_WAIT left by an earlier one; listening tells
// that the answer was such a listener.
func tcpSocketAt(fd int, local, remote netip.AddrPort) (found, listening bool, err error) {
	const (
		inetDiagReqV2 = 56 // struct inet_diag_req_v2
		inetDiagMsg   = 72 // struct inet_diag_msg
		tcpTimeWait   = 6
		tcpListen     = 10
	)
	family := uint8(unix.AF_INET6)
	if local.Addr().Is4() {
		family = unix.AF_INET
	}
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // seq
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	src, dst := local.Addr().As16(), remote.Addr().As16()
	if family == unix.AF_INET {
		a, b := local.Addr().As4(), remote.Addr().As4()
		copy(src[:], a[:])
		copy(dst[:], b[:])
		clear(src[4:])
		clear(dst[4:])
	}
	copy(id[4:20], src[:])
	copy(id[20:36], dst[:])
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, false, err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return false, false, err
	}
	if n < unix.SizeofNlMsghdr || int(ne.Uint32(buf)) > n || ne.Uint32(buf) < unix.SizeofNlMsghdr {
		return false, false, errors.New("sock_diag: short answer")
	}
	d := buf[unix.SizeofNlMsghdr:ne.Uint32(buf)]
	switch ne.Uint16(buf[4:]) {
	case unix.NLMSG_ERROR:
		if len(d) < 4 {
			return false, false, errors.New("sock_diag: short error")
		}
		if e := unix.Errno(-int32(ne.Uint32(d))); e != unix.ENOENT {
			return false, false, e
		}
		return false, false, nil // no socket (or no inet_diag: then no listener answers either)
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(d) < inetDiagMsg {
			return false, false, errors.New("sock_diag: short answer")
		}
		state, got := d[1], d[4:]
		// A socket of a dual-stack listener answers in AF_INET6, its
		// IPv4 addresses mapped.
		gotLocal := netip.AddrPortFrom(diagAddr(d[0], got[4:20]), binary.BigEndian.Uint16(got[0:]))
		gotRemote := netip.AddrPortFrom(diagAddr(d[0], got[20:36]), binary.BigEndian.Uint16(got[2:]))
		if state == tcpListen {
			return false, gotLocal.Port() == local.Port(), nil
		}
		return gotLocal == local && gotRemote == remote && state != tcpTimeWait, false, nil
	}
	return false, false, errors.New("sock_diag: unexpected answer")
}

// diagAddr is an address of an inet_diag_sockid, unmapped.
func diagAddr(family uint8, b []byte) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b)).Unmap()
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h), which golang.org/x/sys/unix does not have: the same
// number as SO_ORIGINAL_DST, at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// originalDst is the address that c, an accepted connection, was sent to
// before this host's NAT rewrote it (an iptables REDIRECT or DNAT): what
// netfilter's conntrack holds for it (SO_ORIGINAL_DST, which also answers
// for an IPv4 connection on a dual-stack socket; IP6T_SO_ORIGINAL_DST for
// IPv6). It is c's own local address when no NAT rewrote it, and invalid
// when the kernel cannot tell (no conntrack entry: nf_conntrack not loaded,
// a NOTRACK rule). One system call.
func originalDst(c *net.TCPConn) netip.AddrPort {
	local := addrPortOf(c.LocalAddr())
	rc, err := c.SyscallConn()
	if err != nil || !local.IsValid() {
		return netip.AddrPort{}
	}
	var orig netip.AddrPort
	rc.Control(func(fd uintptr) {
		if local.Addr().Is4() {
			// A struct sockaddr_in (16 bytes) in a buffer of 20: its
			// family, port (network order) and address.
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if err != nil {
				return
			}
			b := m.Multiaddr
			orig = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			return
		}
		// A struct sockaddr_in6 (28 bytes) in a buffer of 32.
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSOOriginalDst)
		if err != nil {
			return
		}
		var port [2]byte
		binary.NativeEndian.PutUint16(port[:], m.Addr.Port) // as the kernel wrote it: network order
		orig = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr).Unmap(), binary.BigEndian.Uint16(port[:]))
	})
	return orig
}
