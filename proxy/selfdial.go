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
//   - A dial to another host that this host's own NAT sends back to a
//     listener (an iptables OUTPUT REDIRECT or DNAT of the server's port,
//     a transparent capture with no exclusion for tnsguard's own dials) is
//     noted only once a listener has seen this host's NAT send it a
//     connection to that server's address (arrived): the listener finds a
//     noted dial under the address it had before the NAT (dialOf). The
//     loop then stops at its second hop.
//
// A chain from one listener to another is served.
type selfDials struct {
	listeners atomic.Pointer[[]listenAddr] // the proxy's listening sockets (Apply)
	n         atomic.Int64                 // dials noted: accepts look up only while there are any
	// nat: the servers' addresses that this host's NAT sent to a listener
	// lately (arrived), at most maxNATRoutes; nil until one is seen: every
	// dial to one of them is noted, no other.
	nat atomic.Pointer[[]*natRoute]
	// sources: this host's addresses (not loopback) that the proxy's dials
	// came from, at most maxDialSources: a connection from one of them to
	// another address of this host may come through its NAT (a DNAT to
	// another address of the host), told with no system call.
	sources atomic.Pointer[[]netip.Addr]
	// quiet: how long a NAT route is kept after the last connection it
	// sent (unix ns; natQuiet when less): at least twice the longest
	// health check interval (checking), since a check that the NAT sends
	// to a listener keeps its route, and a check that finds none passes.
	quiet atomic.Int64

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
	// nat: the listener's address that this host's NAT sent the dial to
	// (the dial's own remote address is the one before the NAT), when the
	// listener found it so (ours, claim, markBack): the warning names it.
	nat netip.AddrPort
	// counted: the session of the accepted connection counted the loop as
	// its app's (claim): the accept and the session's own dial came
	// before its dialer noted it, so it could not tell that its app was
	// this dial. The dialer's session then counts nothing, so that one app
	// is one self_dial.
	counted bool
}

const selfDialKeep = 5 * time.Second

// natRoute is a server's address (orig) that this host's NAT sent to a
// listener at to, and when it last did (unix ns). Not the listener's name:
// a reload may rename the listener at to while the NAT keeps the route
// fresh (ownListener asks the listeners of the moment).
type natRoute struct {
	orig, to netip.AddrPort
	seen     atomic.Int64
}

const (
	// natQuiet is how long the proxy notes its dials to a server's address
	// after the last connection that this host's NAT sent from that
	// address to a listener. A loop re-arms it at its first hop (arrived),
	// so a shorter time would cost a loop no more hops; it is long enough
	// that health checks at any usual interval keep it (checkDial; a
	// longer interval keeps it for twice that: checking), and short
	// enough that one app sent there by mistake does not make every dial
	// to that server take a lock for long.
	natQuiet = time.Minute
	// maxNATRoutes bounds selfDials.nat: a capture of a few databases.
	maxNATRoutes = 16
	// maxDialSources bounds selfDials.sources: a host dials from a few
	// addresses, one an interface.
	maxDialSources = 16
)

// checking sets the longest health check interval of the proxy's
// backends (every reload): a NAT route is kept for twice that at least, so
// that checks at a longer interval than natQuiet still find it.
func (d *selfDials) checking(every time.Duration) {
	d.quiet.Store(int64(max(natQuiet, 2*every)))
}

// quietFor is how long a NAT route is kept after it was seen last (ns).
func (d *selfDials) quietFor() int64 { return max(int64(natQuiet), d.quiet.Load()) }

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
		if l := d.reachedListener(dst); l != nil && slices.Contains(l.backends, backend) &&
			(!l.addr.Addr().IsUnspecified() || hostAddress(dst.Addr())) {
			return l.name
		}
		// This host's NAT sent a connection to dst to a listener lately:
		// it may send the check there too, which checkDial tells. The
		// listener by the address the NAT sent it to, as now configured: a
		// reload may have renamed it, or given its port to another.
		if r := d.natRouteOf(dst); r != nil {
			if l := d.reachedListener(r.to); l != nil && slices.Contains(l.backends, backend) {
				return l.name
			}
		}
		return ""
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
//
// A dial to another address is noted only while a listener has lately
// seen this host's NAT send it a connection to that address (natRouteOf):
// the NAT may send the dial there too, where the listener finds it (ours).
// The loop is known then only once the listener has: a note that claim
// left for it, or the listener's reset (cameBack).
func (d *selfDials) add(c *net.TCPConn, chain []string, listener string) (loop []string, counted bool) {
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !local.IsValid() {
		return nil, false
	}
	d.dialedFrom(local.Addr())
	to := ""
	if thisHost(local, remote) {
		to = d.reached(remote)
	}
	if to == "" && d.natRouteOf(remote) == nil {
		return nil, false
	}
	if chain == nil {
		chain = []string{listener}
	}
	elsewhere := false
	if to != "" {
		loop = wayRound(chain, to)
		// The addresses alone cannot tell a loop from a dial that this
		// host's own NAT sent to another host (an iptables OUTPUT DNAT, a
		// ClusterIP that kube-proxy's IPVS mode put on kube-ipvs0, with
		// hostNetwork): the accepted side of a loop is a socket here, from
		// the SYN on. Asked outside the lock, and only for a loop.
		elsewhere = loop != nil && !acceptedHere(local, remote)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ageLocked()
	k := dialKey{local, remote}
	old := d.noteLocked(k) // claim's, when the accepted side was first
	// Noted even when NAT took it elsewhere: should the lookup ever miss
	// an accepted side, the listener still finds the dial (ours) and
	// resets it, and the session ends at that reset (cameBack).
	sd := &selfDial{chain: chain}
	if old != nil {
		sd.nat = old.nat
	}
	d.putLocked(k, sd)
	if to == "" { // sent back by the NAT, if at all: the listener tells
		if old != nil && old.back != nil {
			return old.back, old.counted
		}
		return nil, false
	}
	if loop == nil || elsewhere && (old == nil || old.back == nil) {
		return nil, false
	}
	return loop, old != nil && old.counted
}

// dialedFrom keeps a, the local address of one of the proxy's dials, in
// sources unless it is there (or loopback): a load and a compare per dial.
func (d *selfDials) dialedFrom(a netip.Addr) {
	if a.IsLoopback() {
		return
	}
	if src := d.sources.Load(); src != nil && (slices.Contains(*src, a) || len(*src) >= maxDialSources) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	src := d.sources.Load()
	if src != nil && (slices.Contains(*src, a) || len(*src) >= maxDialSources) {
		return
	}
	var more []netip.Addr
	if src != nil {
		more = slices.Clone(*src)
	}
	more = append(more, a)
	d.sources.Store(&more)
}

// mayBeNATed tells whether a connection from remote that a listener
// accepted at local may have come through this host's own NAT from
// another address: its source is this host's. Told with no system call:
//   - from a loopback address to a loopback address: no (see below);
//   - from the listener's own address (a DNAT to the address that the
//     dial came from; and any app on this host that connects to the
//     host's address);
//   - from another address to a loopback one, or the other way (a
//     REDIRECT: this host's own connections go to 127.0.0.1);
//   - from an address that the proxy's dials came from (a DNAT to
//     another address of the host).
//
// An app on another host is none of these. Loopback to loopback is left
// out: the apps of a sidecar, and the benchmark's, connect so, and a
// capture of a server on loopback (REDIRECT of 127.0.0.1:1521 to the
// listener) is the one loop this misses.
func (d *selfDials) mayBeNATed(local, remote netip.AddrPort) bool {
	la, ra := local.Addr(), remote.Addr()
	switch {
	case la.IsLoopback() && ra.IsLoopback():
		return false
	case la == ra, la.IsLoopback(), ra.IsLoopback():
		return true
	}
	src := d.sources.Load()
	return src != nil && slices.Contains(*src, ra)
}

// arrived asks, for c accepted by a listener, whether this host's NAT sent
// it there from another address (mayBeNATed, then SO_ORIGINAL_DST: one
// system call, only for a connection from this host), and if so notes the
// route (natRoute): the proxy's dials to that address are noted from then
// on (add), until natQuiet (quietFor) after the last such connection. The
// first hop of a loop through the NAT (the app, itself sent there, or the
// proxy's first dial) turns noting on; its session's dial is the second,
// and is found as the proxy's own.
func (d *selfDials) arrived(c *net.TCPConn) {
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !remote.IsValid() || !local.IsValid() || !d.mayBeNATed(local, remote) {
		return
	}
	orig := originalDst(c)
	if !orig.IsValid() || orig == local {
		return
	}
	now, quiet := time.Now().UnixNano(), d.quietFor()
	if rs := d.nat.Load(); rs != nil {
		for _, r := range *rs {
			if r.orig == orig && r.to == local {
				r.seen.Store(now)
				return
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var keep []*natRoute
	if rs := d.nat.Load(); rs != nil {
		for _, r := range *rs {
			if now-r.seen.Load() < quiet && !(r.orig == orig && r.to == local) {
				keep = append(keep, r)
			}
		}
	}
	if len(keep) >= maxNATRoutes {
		keep = keep[1:] // the oldest
	}
	r := &natRoute{orig: orig, to: local}
	r.seen.Store(now)
	keep = append(keep, r)
	d.nat.Store(&keep)
}

// natRouteOf is the route by which this host's NAT lately sent a
// connection to dst to a listener (arrived), or nil: without a lock or a
// system call, and a nil load while none was seen. Routes quiet for
// natQuiet (quietFor) are dropped here, so that noting stops.
func (d *selfDials) natRouteOf(dst netip.AddrPort) *natRoute {
	rs := d.nat.Load()
	if rs == nil {
		return nil
	}
	now, quiet, fresh := time.Now().UnixNano(), d.quietFor(), false
	var found *natRoute
	for _, r := range *rs {
		seen := r.seen.Load()
		if now-seen >= quiet {
			continue
		}
		fresh = true
		// The NAT sent dst to the listener at to last: after a change of
		// the rule, the route it took before goes quiet.
		if r.orig == dst && (found == nil || seen > found.seen.Load()) {
			found = r
		}
	}
	if !fresh {
		d.mu.Lock()
		// arrived may have made one fresh again since, with no lock.
		if d.nat.Load() == rs && !slices.ContainsFunc(*rs, func(r *natRoute) bool { return now-r.seen.Load() < quiet }) {
			d.nat.Store(nil)
		}
		d.mu.Unlock()
	}
	return found
}

// dialOf is the key under which the dial that made c (accepted by a
// listener) is noted, when c may be one (from this host), and the
// listener's address that this host's NAT sent it to when it came so: the
// accepted side has the addresses after the NAT, its dialer those before.
// By c's own addresses, unless no dial is noted by them, a NAT route was
// seen lately, and the kernel (SO_ORIGINAL_DST) tells that c was sent
// elsewhere before the NAT: a system call, only while a route is kept.
func (d *selfDials) dialOf(c *net.TCPConn) (k dialKey, nat netip.AddrPort, ok bool) {
	local, remote := addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())
	if !remote.IsValid() {
		return dialKey{}, netip.AddrPort{}, false
	}
	k = dialKey{remote, local}
	natted := d.nat.Load() != nil && d.mayBeNATed(local, remote)
	if !natted {
		return k, netip.AddrPort{}, thisHost(remote, local)
	}
	d.mu.Lock()
	noted := d.noteLocked(k) != nil
	d.mu.Unlock()
	if noted {
		return k, netip.AddrPort{}, true
	}
	if orig := originalDst(c); orig.IsValid() && orig != local {
		return dialKey{remote, orig}, local, true
	}
	return k, netip.AddrPort{}, true
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
	k, nat, ok := d.dialOf(c)
	if !ok {
		return nil, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sd := d.noteLocked(k)
	if sd == nil {
		// A health check's dial, noted by its port before its connect
		// (checkDial).
		sd = d.noteLocked(dialKey{netip.AddrPortFrom(unspecified(k.local.Addr()), k.local.Port()), k.dst})
	}
	if sd == nil {
		return nil, false
	}
	if loop = slices.Contains(sd.chain, listener); loop {
		sd.back = append(slices.Clip(sd.chain), listener)
		sd.nat = nat
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
	k, nat, ok := d.dialOf(c)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if sd := d.noteLocked(k); sd != nil {
		sd.back = loop
		if nat.IsValid() {
			sd.nat = nat
		}
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
	k, nat, ok := d.dialOf(c) // a note made here is keyed as its dialer's will be
	if !ok {
		return false // an app from elsewhere: no dial of this proxy's
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sd := d.noteLocked(k)
	if sd != nil && sd.chain != nil {
		sd.back, sd.nat = loop, nat // its dialer counts, and names the NAT
		return true
	}
	if sd == nil {
		sd = &selfDial{}
		d.putLocked(k, sd)
	}
	sd.back, sd.counted, sd.nat = loop, true, nat
	return false
}

// natOf is the listener's address that this host's NAT sent the dial c
// to, when a listener found c so (ours, claim, markBack); else invalid.
// Asked for a dial that came back only, for the warning.
func (d *selfDials) natOf(c *net.TCPConn) netip.AddrPort {
	k := dialKey{addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())}
	d.mu.Lock()
	defer d.mu.Unlock()
	if sd := d.noteLocked(k); sd != nil {
		return sd.nat
	}
	return netip.AddrPort{}
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
	local := addrPortOf(tc.LocalAddr())
	if r := d.natRouteOf(dst); r != nil {
		// A server's address that this host's NAT sent to the listener at
		// r.to: the check reached it if a socket there holds its other
		// end. No answer (no sock_diag) is no loop: the listener still
		// resets the check if it is there (ours), which the note tells.
		loop = acceptedAt(r.to, local)
	}
	if !loop && d.reachedListener(dst) != nil { // ownListener found it so
		loop = acceptedHere(local, addrPortOf(tc.RemoteAddr()))
	}
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
