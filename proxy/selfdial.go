package proxy

import (
	"cmp"
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// selfDials remembers tnsguard's own recent dials to its own listeners,
// so that a listener can tell an accepted connection that one of the
// proxy's sessions dialed, and through which listeners that session's app
// came. A server that is a listener of this tnsguard (this host's own
// address on the listener's port, or a name that resolves to it: check
// cannot see either) makes each session dial the listener again, in a loop
// that runs on by itself until the fds run out.
//   - The dialing session knows where its dial went: a dial that reached
//     its own listener, or one its app came through, ends the session at
//     once, with no re-dial (add).
//   - The listener knows a connection it accepted from the dial's address
//     (kept 5 to 10 s, two generations, ample for its accept on this host):
//     one whose chain of listeners holds it already is reset (ours), and
//     the session of one that does not carries the chain on, so that a
//     loop through two listeners is caught too. The accept may come before
//     the dial is noted; the session asks again before it dials.
//
// A chain from one listener to another is served.
type selfDials struct {
	listeners atomic.Pointer[[]listenAddr] // the proxy's listening sockets (Apply)
	n         atomic.Int64                 // dials noted: accepts look up only while there are any

	keep time.Duration // selfDialKeep when 0 (tests shorten it)

	mu        sync.Mutex
	cur, prev map[dialKey]*selfDial // by the dial's two addresses
	swapped   time.Time
}

// listenAddr is a listener's socket address (its IP unspecified for a
// wildcard), name, and the backends its sessions dial (default and routes).
type listenAddr struct {
	addr     netip.AddrPort
	name     string
	backends []string
}

// dialKey is a dial's local address and the address it reached: Linux
// shares one local port between connections to different destinations, so
// the local address alone may stand for several dials at once.
type dialKey struct{ local, dst netip.AddrPort }

// selfDial is the listeners a dial's session's app came through, the
// session's own last.
type selfDial struct {
	chain []string
	back  []string // set once the dial was found to have come back: the way round
	// counted: the session of the accepted connection counted the loop as
	// its app's (claim): the accept and the session's own dial came
	// before its dialer noted it, so it could not tell that its app was
	// this dial. The dialer's session then counts nothing, so that one app
	// is one self_dial.
	counted bool
}

const selfDialKeep = 5 * time.Second

// keepFor is how long a generation of notes is kept: selfDialKeep unless
// a test set keep.
func (d *selfDials) keepFor() time.Duration {
	if d.keep > 0 {
		return d.keep
	}
	return selfDialKeep
}

// ageLocked drops the notes older than selfDialKeep (those of the previous
// generation) to twice that: at every look, not only at the next note, so
// that a note outlives its loop by 10 s at most, not until the next loop.
func (d *selfDials) ageLocked() {
	now := time.Now()
	switch age := now.Sub(d.swapped); {
	case d.cur == nil:
		d.cur, d.swapped = map[dialKey]*selfDial{}, now
	case age > 2*d.keepFor():
		d.n.Add(-int64(len(d.prev) + len(d.cur)))
		d.prev, d.cur, d.swapped = nil, map[dialKey]*selfDial{}, now
	case age > d.keepFor():
		d.n.Add(-int64(len(d.prev)))
		d.prev, d.cur, d.swapped = d.cur, map[dialKey]*selfDial{}, now
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// thisHost tells a connection whose two ends are both this host: its peer
// is a loopback address, or its own.
func thisHost(local, remote netip.AddrPort) bool {
	return remote.Addr().IsLoopback() || remote.Addr() == local.Addr()
}

// listening sets the proxy's listening sockets (every reload).
func (d *selfDials) listening(ls []listenAddr) { d.listeners.Store(&ls) }

// reached is the listener of the proxy that a connection to dst on this
// host reached, or "".
func (d *selfDials) reached(dst netip.AddrPort) string {
	if l := d.reachedListener(dst); l != nil {
		return l.name
	}
	return ""
}

func (d *selfDials) reachedListener(dst netip.AddrPort) *listenAddr {
	ls := d.listeners.Load()
	if ls == nil {
		return nil
	}
	for i, l := range *ls {
		if l.addr.Port() == dst.Port() && (l.addr.Addr().IsUnspecified() || l.addr.Addr() == dst.Addr()) {
			return &(*ls)[i]
		}
	}
	return nil
}

// ownListener is failover.Backend.OwnListener for backend: the listener
// that a dial to dst would reach, when that listener's sessions dial
// backend, else "". A wildcard listener is reached at any address of this
// host (loopback, unspecified, or an interface's).
func (d *selfDials) ownListener(backend string) func(dst netip.AddrPort) string {
	return func(dst netip.AddrPort) string {
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		l := d.reachedListener(dst)
		if l == nil || !slices.Contains(l.backends, backend) {
			return ""
		}
		if l.addr.Addr().IsUnspecified() && !hostAddress(dst.Addr()) {
			return ""
		}
		return l.name
	}
}

// hostAddress tells whether a is an address of this host.
func hostAddress(a netip.Addr) bool {
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.WithZone("") {
				return true
			}
		}
	}
	return false
}

// add notes a backend connection that a session of listener made, whose
// app came through chain (nil for an app of its own), and tells when it
// reached that listener or one of chain (a loop): the way round, that
// listener again last. Only a dial to one of
// the proxy's listeners can come back to it: the common case, a server on
// another host or on another port, costs no lock.
func (d *selfDials) add(c *net.TCPConn, chain []string, listener string) (loop []string, counted bool) {
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !local.IsValid() || !thisHost(local, remote) {
		return nil, false
	}
	to := d.reached(remote)
	if to == "" {
		return nil, false
	}
	if chain == nil {
		chain = []string{listener}
	}
	loop = wayRound(chain, to)
	// The addresses alone cannot tell a loop from a dial that this host's
	// own NAT sent to another host (an iptables OUTPUT DNAT, a ClusterIP
	// that kube-proxy's IPVS mode put on kube-ipvs0, with hostNetwork):
	// the accepted side of a loop is a socket here, from the SYN on.
	// Asked outside the lock, and only for a loop.
	elsewhere := loop != nil && !acceptedHere(local, remote)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ageLocked()
	k := dialKey{local, remote}
	old := d.noteLocked(k) // claim's, when the accepted side was first
	// Noted even when NAT took it elsewhere: should the lookup ever miss
	// an accepted side, the listener still finds the dial (ours) and
	// resets it, and the session ends at that reset (cameBack).
	d.putLocked(k, &selfDial{chain: chain})
	if loop == nil || elsewhere && (old == nil || old.back == nil) {
		return nil, false
	}
	return loop, old != nil && old.counted
}

// wayRound is chain with to last when to is in chain (a loop), else nil.
func wayRound(chain []string, to string) []string {
	if !slices.Contains(chain, to) {
		return nil
	}
	return append(slices.Clip(chain), to)
}

// resetLoop tells, for a dial that failed with a reset before connect
// returned, the way round when it went to this listener or one that the
// session's app came through (chain): a dial that a listener of the proxy
// accepted and reset at once. Its accept came before the dial could be
// noted (add), so that accept's session took it for an app, dialed itself,
// counted the loop for it (claim) and reset it. Without this the dialer
// took the reset for the server's: a re-dial after each backoff, each one
// another such session counted as an app's (4 self_dial for one app with
// the real binary), and the server marked down and its circuit opened
// (check = "off"). nil for any other address, and on the common path (no
// listener at dst) without a lock or a system call.
//
// The address alone does not tell: this host's own NAT may send dst to a
// database on another host (see add), and one that resets a connection as
// its handshake ends (at its connection limit, a load balancer with no
// backend) resets the dial before connect returns too. The listener's
// session that reset the dial noted the loop first (claim, markBack): a
// reset with no such note for dst is the server's, and the dial failed.
// Until 2026-12-01 every app of such a server ended as a self_dial, its
// next server untried.
func (d *selfDials) resetLoop(addr net.Addr, chain []string, listener string) []string {
	dst := addrPortOf(addr)
	if !dst.IsValid() {
		return nil
	}
	to := d.reached(dst)
	if to == "" || !hostAddress(dst.Addr()) {
		return nil
	}
	if chain == nil {
		chain = []string{listener}
	}
	if loop := wayRound(chain, to); loop != nil && d.loopedAt(dst) {
		return loop
	}
	return nil
}

// loopedAt tells whether a loop was found lately through a dial to dst:
// a note of such a dial with its way round.
func (d *selfDials) loopedAt(dst netip.AddrPort) bool {
	if d.n.Load() == 0 {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ageLocked()
	for _, notes := range []map[dialKey]*selfDial{d.cur, d.prev} {
		for k, sd := range notes {
			if k.dst == dst && sd.back != nil {
				return true
			}
		}
	}
	return false
}

// ours tells, for c accepted by listener, the chain of listeners that
// c's dialer came through when c is a dial of one of the proxy's own
// sessions (nil otherwise), and whether listener is in it: a loop.
func (d *selfDials) ours(c *net.TCPConn, listener string) (chain []string, loop bool) {
	if d.n.Load() == 0 {
		return nil, false
	}
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !remote.IsValid() || !thisHost(remote, local) {
		return nil, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sd := d.noteLocked(dialKey{remote, local})
	if sd == nil {
		// A health check's dial, noted by its port before its connect
		// (checkDial).
		sd = d.noteLocked(dialKey{netip.AddrPortFrom(unspecified(remote.Addr()), remote.Port()), local})
	}
	if sd == nil {
		return nil, false
	}
	if loop = slices.Contains(sd.chain, listener); loop {
		sd.back = append(slices.Clip(sd.chain), listener)
	}
	return sd.chain, loop
}

// markBack notes that the session whose app is c (when c is one of the
// proxy's own dials) is part of loop: that dial's session ends rather than
// re-dial (cameBack).
func (d *selfDials) markBack(c *net.TCPConn, loop []string) {
	if d.n.Load() == 0 {
		return
	}
	k := dialKey{addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr())}
	d.mu.Lock()
	defer d.mu.Unlock()
	if sd := d.noteLocked(k); sd != nil {
		sd.back = loop
	}
}

// cameBack tells, for a backend connection a session dialed that failed
// before its first byte, whether it came back to the proxy round a loop
// (ours or markBack found it), and the way round.
// counted tells that the session of the accepted side counted the loop
// (claim).
func (d *selfDials) cameBack(c *net.TCPConn) (back []string, counted bool) {
	if d.n.Load() == 0 {
		return nil, false
	}
	k := dialKey{addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())}
	d.mu.Lock()
	defer d.mu.Unlock()
	if sd := d.noteLocked(k); sd != nil {
		return sd.back, sd.counted
	}
	return nil, false
}

// claim decides which session of a loop counts it, when session's app
// (c, accepted by the proxy) may be one of the proxy's own dials that its
// dialer has not noted yet: the accept, the session and its own dial can all
// come first. Under the lock that add takes: when c is a noted dial of the
// proxy's, its note gets the way round (as markBack) and claim says so
// (ownDial: its dialer counts); when it is not, c's session counts, and a
// note for c tells its dialer, if it is one, to count nothing (add).
func (d *selfDials) claim(c *net.TCPConn, loop []string) (ownDial bool) {
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !remote.IsValid() || !thisHost(remote, local) {
		return false // an app from elsewhere: no dial of this proxy's
	}
	k := dialKey{remote, local}
	d.mu.Lock()
	defer d.mu.Unlock()
	sd := d.noteLocked(k)
	if sd != nil && sd.chain != nil {
		sd.back = loop
		return true
	}
	if sd == nil {
		sd = &selfDial{}
		d.putLocked(k, sd)
	}
	sd.back, sd.counted = loop, true
	return false
}

// putLocked makes sd the note of the dial k in the current generation.
// n counts the notes of both generations, as ageLocked takes them off: one
// more when the current one had none for k. Under d.mu.
func (d *selfDials) putLocked(k dialKey, sd *selfDial) {
	if d.cur[k] == nil {
		d.n.Add(1)
	}
	d.cur[k] = sd
}

// noteLocked is the note of the dial k (in either generation), or nil.
// Under d.mu.
func (d *selfDials) noteLocked(k dialKey) *selfDial {
	d.ageLocked()
	if sd := d.cur[k]; sd != nil {
		return sd
	}
	return d.prev[k]
}

// checkDial is failover.Backend.DialOwn: a health check's connection to
// dst, an address that ownListener took for listener, which this host's
// own NAT may send to a database on another host (a ClusterIP on
// kube-ipvs0, an OUTPUT DNAT). Its socket is bound to a port of its own
// and noted before its connect, so that the listener, if the connection
// reaches it, resets it as the proxy's own dial, counting nothing (ours).
// loop tells that it reached this host's listener (the connection is
// closed then): its accepted side is a socket here, or the listener has
// already found and reset it.
func (d *selfDials) checkDial(ctx context.Context, dst netip.AddrPort, listener string) (c net.Conn, loop bool, err error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	var note *selfDial
	dialer := net.Dialer{Control: func(network, _ string, rc syscall.RawConn) error {
		var port int
		var err error
		cerr := rc.Control(func(fd uintptr) {
			var sa unix.Sockaddr = &unix.SockaddrInet4{}
			if network == "tcp6" {
				sa = &unix.SockaddrInet6{}
			}
			if err = unix.Bind(int(fd), sa); err != nil {
				return
			}
			sa, err = unix.Getsockname(int(fd))
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				port = a.Port
			case *unix.SockaddrInet6:
				port = a.Port
			}
		})
		if err = cmp.Or(cerr, err); err != nil {
			return err
		}
		note = d.noteCheck(netip.AddrPortFrom(unspecified(dst.Addr()), uint16(port)), dst, listener)
		return nil
	}}
	conn, err := dialer.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, false, err
	}
	tc := conn.(*net.TCPConn)
	loop = acceptedHere(addrPortOf(tc.LocalAddr()), addrPortOf(tc.RemoteAddr()))
	if !loop {
		d.mu.Lock()
		loop = note.back != nil // reset by the listener before the lookup
		d.mu.Unlock()
	}
	if loop {
		tc.SetLinger(0)
		tc.Close()
		return nil, true, nil
	}
	return conn, false, nil
}

// noteCheck notes a health check's dial to dst from port local (its
// address unspecified: the kernel picks it at connect) as a dial of
// listener's, and returns the note.
func (d *selfDials) noteCheck(local, dst netip.AddrPort, listener string) *selfDial {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ageLocked()
	sd := &selfDial{chain: []string{listener}}
	d.putLocked(dialKey{local, dst}, sd)
	return sd
}

// unspecified is the unspecified address of a's family.
func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}
