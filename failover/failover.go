// Package failover chooses which server a new session dials: balance
// policy, retry budget, backoff between rounds, per-server circuit breakers
// and active health checks. It knows nothing of sessions; the proxy asks it
// for a Plan per session and reports how each dial went.
//
// Typical use:
//
//	b := failover.New(cfg, logger, m)
//	b.Start(ctx)      // health checks
//	defer b.Stop()
//	plan := b.NewPlan(time.Now())
//	defer plan.Done()            // least_sessions counts the server being dialed until then
//	for {
//		srv, err := plan.Next(ctx)   // waits a backoff between rounds
//		if err != nil { break }      // budget exhausted or ctx done
//		conn, err := srv.Dial(ctx)
//		...
//	}
package failover

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
)

// ErrBudgetExhausted means connect_budget ran out before a server answered.
var ErrBudgetExhausted = errors.New("connect_budget exhausted")

// ErrOwnListener means a connection to a server's address reached a
// listener of this tnsguard whose sessions dial the server's backend: the
// address is the proxy itself, not a database.
var ErrOwnListener = errors.New("a listener of this tnsguard whose sessions dial this backend (a loop)")

// Backend is the live state of one [[backend]]: its servers, their health
// and breakers.
type Backend struct {
	Config  *config.Backend
	Servers []*Server

	log     hclog.Logger
	metrics *metrics.Metrics
	rr      atomic.Uint64
	// KeepaliveLate: dials leave the backend leg's keepalive to the caller,
	// who sets it on connections that last (keepalive.Settings.Late: the
	// configured values allow it). Otherwise dials set it.
	KeepaliveLate bool

	// dialer dials every server: connect_timeout, and unless KeepaliveLate
	// the backend leg's keepalive set before connect (Control), so a dial
	// costs no system call after it. Safe for concurrent use. It dials one
	// address at a time: a server's name is resolved by lookup, at every
	// dial and check (addresses may change while tnsguard runs).
	dialer net.Dialer
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)

	// OwnListener, set by the proxy before Start, names the listener of
	// the proxy that a dial to an address would reach (a listener's
	// address, or this host's on a wildcard listener's port) when that
	// listener's sessions dial this backend, else "". A health check of
	// such an address checks the proxy itself: it fails undialed, or the
	// server (a name pointed at the proxy, the host's own address) would
	// be up and /readyz 200 while every session loops back and ends.
	OwnListener func(addr netip.AddrPort) string
	// DialOwn, set by the proxy with OwnListener, connects a health check
	// to addr, an address that OwnListener named listener for: loop when
	// the connection reached that listener (closed then; the listener
	// counts it nowhere), else the connection, which this host's own NAT
	// sent on (a ClusterIP on kube-ipvs0, an OUTPUT DNAT): the address is
	// checked as any other. Without it such an address fails undialed.
	DialOwn func(ctx context.Context, addr netip.AddrPort, listener string) (c net.Conn, loop bool, err error)
	// ServerBack, set by the proxy before Start, is told (on a goroutine
	// of its own: a health check or a session must not wait on it; one
	// call at a time, the changes that come during one told by the next) that
	// a server may take sessions it could not take before: its health
	// check brought it up, or its circuit closed, or the check ended its
	// open period early, or it served a service it had refused lately
	// (ServedService). The proxy wakes the sessions whose wait for a
	// first answer had nowhere else to go (answer_timeout passed with no
	// other server up): until 2026-12-01 they waited on a hung primary to
	// the end of connect_budget while new sessions reached the standby
	// that had come up (a Data Guard switchover). Nil: nobody is told.
	ServerBack func()
	backs      atomic.Int32 // changes not yet told to ServerBack (back)

	// refusals are the servers that refused a service lately (refusals.go),
	// shared with the backend a reload replaced (Inherit).
	refusals *refusals

	wg     sync.WaitGroup
	cancel context.CancelFunc
	// Between Start and Stop the backend owns its servers' gauges. A
	// backend that a reload replaced (or that never started: the reload
	// failed) writes none: a session still opening on it must not bring
	// back the series of a removed server, nor overwrite the new backend's.
	reporting atomic.Bool
	stopped   atomic.Bool // Stop was called: a reload replaced the backend (serverLog)

	// firstChecks is closed once every server has had its first health
	// check (FirstChecks, Checked).
	firstChecks     chan struct{}
	firstChecksOnce sync.Once
}

// FirstChecks is closed once every server of the backend has had its first
// health check, so that Up says what the checks found (at Start with checks
// off, or when all were checked before a reload: Inherit), or when Stop
// ended the checks. A reload's wake of the sessions awaiting a first
// answer comes before the first check of a server it added (a round trip
// at least), which then still counts as down: the proxy wakes them again
// here (Proxy.wakeAtFirstChecks).
func (b *Backend) FirstChecks() <-chan struct{} { return b.firstChecks }

func (b *Backend) closeFirstChecks() { b.firstChecksOnce.Do(func() { close(b.firstChecks) }) }

// back tells ServerBack that s may take sessions now; not once Stop was
// called (the reload's new definition tells of its own servers). The
// changes that come while ServerBack runs are told once, after it: with
// checks off every success after a failed dial is one (a server failing
// one dial in two), and each call goes through every session.
func (s *Server) back() {
	b := s.backend
	if b.ServerBack == nil || b.stopped.Load() || b.backs.Add(1) > 1 {
		return // or the running call tells it again
	}
	go func() {
		for {
			n := b.backs.Load()
			b.ServerBack()
			if b.backs.Add(-n) == 0 {
				return
			}
		}
	}()
}

// serverLog is the log of what happens to the backend's servers (circuit,
// up and down), silent once Stop was called. A replaced backend's sessions
// that were opening still fail and succeed on its servers, but no new
// session reads its breakers: its lines beside the new backend's, for the
// same server, would say the circuit opened twice, for two open periods,
// or closed while the new backend's breaker is open.
func (b *Backend) serverLog() hclog.Logger {
	if b.stopped.Load() {
		return hclog.NewNullLogger()
	}
	return b.log
}

// Server is one address of a backend.
type Server struct {
	Address  string
	Priority int
	Weight   int

	host    string     // Address's host: a name, resolved at every dial, or an IP (ip)
	port    uint16     // Address's port
	ip      netip.Addr // the host when it is an IP address
	addrMu  sync.Mutex
	addrBad map[netip.Addr]addrFailure // addresses of a name whose last dial failed, and when
	nAddrs  atomic.Int32               // how many addresses the name had at its last lookup

	checkRTT atomic.Pointer[rttSample] // the last successful health check's (CheckRTT)

	backend   *Backend
	breaker   *breaker
	gaugeMu   sync.Mutex          // orders publish's reads and writes (and Stop after them)
	connectOK prometheus.Observer // the connect-time series of successful dials, resolved once (Start)
	up        atomic.Bool
	failedAt  atomic.Int64  // with checks off: when a dial to it last failed (unix ns), 0 after a success
	dialOpen  atomic.Int64  // when its circuit last opened on a failed dial (unix ns), 0 when on anything else (checkLoop)
	checked   atomic.Bool   // a health check has given a result (carried over a reload: Inherit)
	sessions  *atomic.Int64 // shared with the server a reload replaced (Inherit)
	opening   *atomic.Int64 // sessions dialing it or awaiting its first answer (Plan.Next to Plan.Done); shared as sessions is
	version   atomic.Value  // string: listener version from tnsping
	// serviceOK is when the listener last said health.service is
	// registered and takes sessions (unix nanoseconds; 0: not since the
	// last failed check or failed service answer). Written by the health
	// check goroutine; carried over a reload (Inherit).
	serviceOK atomic.Int64
	// heard is when a session last got the server's first answer (unix
	// ns; an ACCEPT, a REFUSE, any first bytes): a server that answers
	// someone is slow, not hung (HeardSince).
	heard atomic.Int64

	// scout gates the stuck waits' move to a server its health check
	// brought up (ElsewhereAgain, takeScout): 0, none; scoutOpen, one wait
	// may go; else when the one that went left (unix ns). A check that
	// passes says the listener is there, not that its database serves
	// the service: a logon storm's waits on a slow primary, woken at once
	// when the standby came up, all left for it, and each app got its
	// ORA-12514 (200 of 200 without "refuse" in retry_on). The first
	// session it serves ends the gate (Answered) and wakes the rest. A
	// half-open circuit is gated the same way for the waits' re-asks.
	scout atomic.Int64
}

// New builds a backend from its configuration. With health checks on,
// servers start down until their first check says otherwise (at once at
// Start, within health.timeout): a server never seen up must not make the
// proxy ready. Down servers are still dialed, after the up ones, so the
// sessions of those first milliseconds are served. With checks off, servers
// start up and each dial's result sets it.
func New(cfg *config.Backend, log hclog.Logger, m *metrics.Metrics) *Backend {
	ka := cfg.Keepalive.Settings()
	b := &Backend{Config: cfg, log: log.With("backend", cfg.Name), metrics: m, KeepaliveLate: ka.Late(),
		dialer: net.Dialer{Timeout: cfg.ConnectTimeout.Duration, KeepAlive: -1},
		lookup: lookupAddrs, refusals: &refusals{}, firstChecks: make(chan struct{})}
	b.dialer.SetMultipathTCP(false) // plain TCP whatever GODEBUG says: MPTCP takes no TCP_USER_TIMEOUT
	if !b.KeepaliveLate {
		b.dialer.Control = ka.Control
	}
	for _, sc := range cfg.Servers {
		s := &Server{
			Address: sc.Address, Priority: sc.Priority, Weight: *sc.Weight, backend: b,
			breaker: newBreaker(*cfg.Breaker.Failures, cfg.Breaker.OpenFor.Duration, cfg.Breaker.MaxOpenFor.Duration, cfg.ConnectBudget.Duration),
		}
		s.splitAddress()
		s.up.Store(cfg.Health.Check == "off")
		s.sessions = new(atomic.Int64)
		s.opening = new(atomic.Int64)
		b.Servers = append(b.Servers, s)
	}
	return b
}

// Inherit carries each server that old has too (same address) over a
// reload that changed the backend (which rebuilds it), as if no reload had
// happened:
//   - its live sessions, which least_sessions counts and which end on
//     old's servers;
//   - a health check's verdict, when both check: a server known down takes
//     no session and does not show as up, and its checks go on with rise
//     and fall, so one failed check right after the reload does not mark
//     an up server down. A server no check had judged yet starts as New
//     starts it (down until its first check, or up with checks off);
//   - with checks off in both, the last dial's result, and when it failed;
//   - with tnsping in both, its listener's version, whose series a new
//     one replaces (with tnsping off, the series is gone: forgetRemoved);
//   - the services it refused lately (RefusedService): a reload does not
//     send every session of a service back to the old primary that
//     refuses it. The memory is shared with old, whose sessions still
//     opening add to it; the refusals of servers b lacks are dropped, and
//     all of them when b no longer re-dials ORA-12514 and ORA-12505.
//
// The weighted rotation goes on where it was, too: begun again at each
// reload, it gave the first server more than its share when reloads came
// more often than a turn of it.
//
// Before Start.
func (b *Backend) Inherit(old *Backend) {
	b.rr.Store(old.rr.Load())
	// Only a backend that still re-dials a service's REFUSE takes the
	// memory over: without that, the REFUSE of the server dialed first
	// goes to the app, and a remembered refusal would send every session
	// of the service first to a server that may refuse it now (the
	// standby after a switch back), until the memory's time ran out.
	if b.Config.Retries("refuse") && (slices.Contains(b.Config.RefuseErrors, 12514) || slices.Contains(b.Config.RefuseErrors, 12505)) {
		b.refusals = old.refusals
		addrs := make([]string, len(b.Servers))
		for i, s := range b.Servers {
			addrs[i] = s.Address
		}
		b.refusals.keepOnly(addrs)
	}
	checks, oldChecks := b.Config.Health.Check != "off", old.Config.Health.Check != "off"
	tnsping := b.Config.Health.Check == "tnsping" && old.Config.Health.Check == "tnsping"
	for _, s := range b.Servers {
		o := old.ServerAt(s.Address)
		if o == nil {
			continue
		}
		s.sessions, s.opening = o.sessions, o.opening
		switch {
		case checks && oldChecks && o.checked.Load():
			s.up.Store(o.Up())
			s.checked.Store(true)
		case !checks && !oldChecks:
			s.up.Store(o.Up())
			s.failedAt.Store(o.failedAt.Load()) // still last for open_for (its own)
		}
		if v, ok := o.version.Load().(string); ok && tnsping {
			s.version.Store(v)
		}
		if tnsping && b.Config.Health.Service == old.Config.Health.Service {
			// Asked again only after service_interval, as without the
			// reload: each answer costs the database a server process.
			s.serviceOK.Store(o.serviceOK.Load())
		}
		s.checkRTT.Store(o.checkRTT.Load()) // the path's RTT is the path's
		s.heard.Store(o.heard.Load())       // a slow server answered before the reload too
		// A name's addresses that failed still go last (and are not
		// said to have failed again): without them, the first
		// sessions after the reload waited connect_timeout on an
		// address known silent.
		o.addrMu.Lock()
		s.addrBad = maps.Clone(o.addrBad)
		o.addrMu.Unlock()
		s.nAddrs.Store(o.nAddrs.Load())
	}
}

// Counts are a server's live sessions and sessions opening on it, which
// least_sessions weighs. The servers that reloads build for one backend and
// address share them (Inherit, ShareCounts): the sessions on a server
// count on it whichever configuration they were opened under.
type Counts struct{ sessions, opening *atomic.Int64 }

// Counts returns the counts s shares.
func (s *Server) Counts() Counts { return Counts{s.sessions, s.opening} }

// Live tells whether sessions still count on c.
func (c Counts) Live() bool { return c.sessions.Load() != 0 || c.opening.Load() != 0 }

// ShareCounts makes s count its sessions on c: those of a server of the
// same address that an earlier reload took out of the backend, and whose
// sessions live on. Before Start.
func (s *Server) ShareCounts(c Counts) { s.sessions, s.opening = c.sessions, c.opening }

// ServerAt is the backend's server of that address (config refuses a
// server defined twice), or nil.
func (b *Backend) ServerAt(address string) *Server {
	for _, s := range b.Servers {
		if s.Address == address {
			return s
		}
	}
	return nil
}

// Up reports whether any server that takes sessions (weight > 0) is up.
func (b *Backend) Up() bool {
	for _, s := range b.Servers {
		if s.Weight > 0 && s.Up() {
			return true
		}
	}
	return false
}

// Checked tells whether every server's health has been checked at least
// once (so Up says what the checks found, not the start's "down"); true
// with checks off.
func (b *Backend) Checked() bool {
	if b.Config.Health.Check == "off" {
		return true
	}
	for _, s := range b.Servers {
		if !s.checked.Load() {
			return false
		}
	}
	return true
}

// Up reports the server's health (the last dial's result when checks are off).
func (s *Server) Up() bool { return s.up.Load() }

// OneAddress tells a server that is an IP address, or a name that had one
// address at its last lookup: a dial of it that failed failed there.
func (s *Server) OneAddress() bool { return s.ip.IsValid() || s.nAddrs.Load() == 1 }

// Sessions is the number of sessions on the server now.
func (s *Server) Sessions() int64 { return s.sessions.Load() }

// Opening is the number of sessions dialing the server or awaiting its
// first answer now (Plan.Next to Plan.Done).
func (s *Server) Opening() int64 { return s.opening.Load() }

// Acquire and Release count a session on the server (for least_sessions).
func (s *Server) Acquire() { s.sessions.Add(1) }

// Release undoes Acquire.
func (s *Server) Release() { s.sessions.Add(-1) }

// BreakerState is metrics.BreakerClosed, BreakerOpen or BreakerHalfOpen.
func (s *Server) BreakerState() int { return s.breaker.current(time.Now()) }

// ListenerVersion is the Oracle listener version last seen by tnsping, or "".
func (s *Server) ListenerVersion() string {
	v, _ := s.version.Load().(string)
	return v
}

// Backend returns the backend the server belongs to.
func (s *Server) Backend() *Backend { return s.backend }

// Dial connects to the server within connect_timeout (and ctx), applies the
// backend leg's keepalive options and records the connect time by result.
func (s *Server) Dial(ctx context.Context) (*net.TCPConn, error) {
	c, _, err := s.dial(ctx, nil)
	return c, err
}

// DialRedirected connects to an address a server's TNS REDIRECT named
// ("host:port"), within connect_timeout and ctx, with the backend leg's
// options as a dial to a server has them. It is no server of the backend:
// nothing is counted for it.
func (b *Backend) DialRedirected(ctx context.Context, address string) (*net.TCPConn, error) {
	c, err := b.dialer.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dial connects to the server: to each address of its name in turn (a name
// is resolved at every dial: a redeploy may move it), each within its own
// connect_timeout, until one takes the connection. Addresses whose last
// dial failed (within open_for) go after the others, and so do those in
// tried (addresses this session already reached, whose connection then
// failed), so that one dead address of a RAC SCAN or a DNS round robin
// neither costs every session a timeout nor, when it takes TCP and resets,
// every re-dial of the session. It returns the address it reached.
func (s *Server) dial(ctx context.Context, tried []netip.Addr) (*net.TCPConn, netip.Addr, error) {
	start := time.Now()
	var c net.Conn
	var a netip.Addr
	var err error
	if s.ip.IsValid() || s.port == 0 {
		// An IP address (or an address Go parses its own way): one dial, with
		// ctx's deadline already the earlier of connect_timeout and the
		// budget's (Plan.Dial), so the dialer adds no context of its own.
		c, err = s.backend.dialer.DialContext(ctx, "tcp", s.Address)
		a = s.ip
	} else {
		c, a, err = s.dialName(ctx, tried)
	}
	if err != nil {
		s.backend.metrics.ConnectDuration.WithLabelValues(s.backend.Config.Name, s.Address, DialResult(err)).Observe(time.Since(start).Seconds())
		return nil, netip.Addr{}, err
	}
	s.connectOK.Observe(time.Since(start).Seconds())
	return c.(*net.TCPConn), a, nil
}

// dialName resolves the server's name and dials its addresses (dial).
func (s *Server) dialName(ctx context.Context, tried []netip.Addr) (net.Conn, netip.Addr, error) {
	timeout := s.backend.Config.ConnectTimeout.Duration
	addrs, err := s.resolve(ctx, timeout)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	var firstErr error
	for _, a := range s.dialOrder(addrs, tried) {
		began := time.Now()
		c, err := s.backend.dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(a, s.port).String())
		if err == nil {
			s.addrSucceeded(a)
			return c, a, nil
		}
		if firstErr == nil {
			firstErr = err // the first address's error is the telling one, as Go's dialer says
		}
		if ended, byBudget := budgetEnded(ctx); ended {
			// The budget's end or the app's: no verdict on the address,
			// unless the budget ended a dial that had gone unanswered for
			// half of connect_timeout. With connect_budget at (or just
			// over) connect_timeout that is how every dial of a silent
			// first address ends, and without a verdict every session
			// would dial it first again, and fail. The addresses after
			// it are not dialed (nor blamed) past the budget.
			if byBudget && time.Since(began) >= timeout/2 {
				s.addrFailed(a, err, len(addrs))
			}
			break
		}
		s.addrFailed(a, err, len(addrs))
	}
	return nil, netip.Addr{}, firstErr
}

// budgetEnded tells whether ctx is over, and whether by its deadline (the
// budget's) rather than by a cancel (the app left, a drain). A dial ends at
// the deadline by the poller's own timer, which may come before the
// context's: its Err is nil for a moment after the deadline has passed.
func budgetEnded(ctx context.Context) (ended, byBudget bool) {
	switch err := ctx.Err(); {
	case err != nil:
		return true, errors.Is(err, context.DeadlineExceeded)
	default:
		d, ok := ctx.Deadline()
		return ok && !time.Now().Before(d), true
	}
}

// splitAddress sets host, port and ip from Address (validated host:port).
func (s *Server) splitAddress() {
	host, port, err := net.SplitHostPort(s.Address)
	if err != nil {
		return
	}
	n, err := strconv.Atoi(port) // as check reads it: "+1521" too
	if err != nil || n < 0 || n > 65535 {
		n = 0
	}
	s.host, s.port = host, uint16(n)
	if ip, err := netip.ParseAddr(host); err == nil {
		s.ip = ip
	} else if host == "" {
		s.ip = netip.IPv4Unspecified() // ":1521" is this host, as Go dials it (IPv4 0.0.0.0)
	}
}

// lookupAddrs is host's addresses as Go's dialer finds them. Not
// LookupNetIP: it drops the zone that /etc/hosts may give a link-local
// address (fe80::7%eth0 db), which cannot be dialed without it.
func lookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip.IP); ok {
			addrs = append(addrs, a.WithZone(ip.Zone))
		}
	}
	return addrs, nil
}

// resolve returns the server's addresses: its IP, or its name's addresses
// now (within timeout), in the resolver's order (RFC 6724 for DNS).
func (s *Server) resolve(ctx context.Context, timeout time.Duration) ([]netip.Addr, error) {
	if s.ip.IsValid() {
		return []netip.Addr{s.ip}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addrs, err := s.backend.lookup(ctx, s.host)
	if err == nil && len(addrs) == 0 {
		err = &net.DNSError{Err: "no such host", Name: s.host, IsNotFound: true}
	}
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	s.nAddrs.Store(int32(len(addrs)))
	s.forgetGone(addrs)
	return addrs, nil
}

// forgetGone drops the failures of addresses that left the name (not in
// addrs, its answer now) once they no longer put them last (badFor): a
// name whose addresses change (a cloud load balancer's, a headless service
// across rollouts) would otherwise keep every address that ever failed, for
// the process's life. One that comes back is dialed as a new address.
func (s *Server) forgetGone(addrs []netip.Addr) {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	if len(s.addrBad) == 0 {
		return
	}
	now, badFor := time.Now(), s.badFor()
	for a, f := range s.addrBad {
		if now.Sub(f.at) >= badFor && !slices.Contains(addrs, a) {
			delete(s.addrBad, a)
		}
	}
}

// dialOrder is addrs in the resolver's order, except that addresses tried
// (by this session) go last, and before them those whose last dial failed
// less than badFor ago.
func (s *Server) dialOrder(addrs, tried []netip.Addr) []netip.Addr {
	if len(addrs) < 2 {
		return addrs
	}
	now := time.Now()
	badFor := s.badFor()
	rank := make(map[netip.Addr]int, len(addrs))
	s.addrMu.Lock()
	for _, a := range addrs {
		if f, bad := s.addrBad[a]; bad && now.Sub(f.at) < badFor {
			rank[a]++
		}
		if slices.Contains(tried, a) {
			rank[a] += 2
		}
	}
	s.addrMu.Unlock()
	out := slices.Clone(addrs)
	slices.SortStableFunc(out, func(a, b netip.Addr) int { return rank[a] - rank[b] })
	return out
}

// badFor is how long an address whose dial failed goes after the others:
// open_for, as a server's failed dial with checks off (shunned); with
// checks on, at least until the next check has dialed it again.
func (s *Server) badFor() time.Duration {
	d := s.backend.Config.Breaker.OpenFor.Duration
	if h := s.backend.Config.Health; h.Check != "off" {
		d = max(d, 2*h.Interval.Duration+h.Timeout.Duration)
	}
	return d
}

// addrFailed notes that a dial to a, one of the server's n addresses,
// failed: later dials try the name's other addresses first. Logged once
// until it succeeds again, and only for a name of several addresses (the
// breaker and the checks speak for a single one).
func (s *Server) addrFailed(a netip.Addr, err error, n int) {
	if OutOfResources(err) {
		return
	}
	s.addrMu.Lock()
	if s.addrBad == nil {
		s.addrBad = map[netip.Addr]addrFailure{}
	}
	f := s.addrBad[a]
	warn := !f.logged && n > 1
	s.addrBad[a] = addrFailure{at: time.Now(), logged: f.logged || warn, looped: errors.Is(err, ErrOwnListener)}
	s.addrMu.Unlock()
	if warn {
		s.backend.serverLog().Warn("server address failed: dials try the name's other addresses first", "server", s.Address, "address", a.String(), "error", err)
	}
}

// addrFailure is when a dial of an address failed last, whether "server
// address failed" was logged of it, and whether it failed by leading back
// to this tnsguard (ErrOwnListener).
type addrFailure struct {
	at     time.Time
	logged bool
	looped bool
}

// addrSucceeded notes that a took a connection. An address that led back
// to this tnsguard lately is not cleared by it: that connection is to the
// proxy itself (Looped, or the check, will say so again), and clearing it
// logged "answers again" and "failed" in turn at every re-dial.
func (s *Server) addrSucceeded(a netip.Addr) {
	s.addrMu.Lock()
	f := s.addrBad[a]
	if f.looped && time.Since(f.at) < s.badFor() {
		s.addrMu.Unlock()
		return
	}
	delete(s.addrBad, a)
	s.addrMu.Unlock()
	if f.logged { // only of an address said to have failed
		s.backend.serverLog().Info("server address answers again", "server", s.Address, "address", a.String())
	}
}

// OutOfResources tells an error of tnsguard's own want of fds or memory
// (EMFILE when apps hold every fd). Its cause is "proxy". A dial that failed
// so is not the server's failure: it opens no breaker, marks no address of
// a name failed and, with health checks off, marks no server down, and is
// retried within connect_budget as fds free. A session cut so resets both
// legs (proxy's abort).
func OutOfResources(err error) bool {
	return OutOfFDs(err) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// OutOfFDs tells the process's (EMFILE) or the system's (ENFILE) want of
// fds, the part of OutOfResources that freeing an fd cures: the admin
// listener's spare fds and the proxy's reserve for waking sessions are
// spent on it.
func OutOfFDs(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// DialResult names a dial error for metrics and logs: ok, refused,
// timeout, unreachable, canceled or error.
func DialResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case Unreachable(err):
		return "unreachable"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "error"
}

// Unreachable tells a dial or a leg that a router (or a firewall) said the
// host cannot be reached: EHOSTUNREACH or ENETUNREACH, and EACCES, which is
// how Linux reports an ICMPv6 "administratively prohibited" (firewalld's
// default reject, ip6tables' icmp6-adm-prohibited) where the same reject
// over IPv4 (ICMP code 13) is EHOSTUNREACH.
func Unreachable(err error) bool {
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EACCES)
}

// Succeeded tells the breaker (and, with health checks off, the up state)
// that a session got a working connection from the server.
func (s *Server) Succeeded() { s.succeeded(s.breaker.success()) }

// succeeded is Succeeded once the breaker has been told; closed tells
// whether that closed the circuit.
func (s *Server) succeeded(closed bool) {
	if closed {
		s.backend.serverLog().Info("circuit closed", "server", s.Address)
		s.publish()
		s.back()
	}
	if s.backend.Config.Health.Check == "off" {
		s.failedAt.Store(0)
		s.setUp(true)
	}
}

// Failed counts a failure (dial error, reset or refuse before the first
// byte) against the server's breaker.
func (s *Server) Failed(cause error) { s.failed(cause, anyEpoch) }

// failed is Failed for a dial that began at breaker epoch e. With checks
// off, one begun before the circuit last opened or closed does not mark
// the server down either: after a trial that passed, the late failures of
// the outage's dials shunned the server that was back for open_for.
func (s *Server) failed(cause error, e uint64) {
	if s.countFailure(cause, e) {
		return
	}
	if s.backend.Config.Health.Check == "off" {
		s.failedAt.Store(time.Now().UnixNano())
		s.setUp(false)
	}
}

// shunned tells a server whose dial failed less than open_for ago, with
// checks off: it goes after the others (order), whether or not its breaker
// counts failures. After that it takes its turn again, so that a failure
// neither keeps it last for good (nothing would dial it to find it back)
// nor, with the breaker off (failures = 0), costs every session a dial.
func (s *Server) shunned(now time.Time) bool {
	at := s.failedAt.Load()
	return at != 0 && now.Sub(time.Unix(0, at)) < s.backend.Config.Breaker.OpenFor.Duration
}

// Refused records a listener's REFUSE as the server's answer: the server
// is up (it answered), so it is never marked down. A refusal of what the
// app asked for (serviceOnly: a service or SID the listener does not know)
// gets no verdict, since one app with a wrong name would otherwise open
// every circuit; one about the instance (no handler, blocked) counts
// against the breaker as a failure does.
func (s *Server) Refused(cause error, serviceOnly bool, t Trial) {
	s.refused(cause, serviceOnly, t, anyEpoch)
}

func (s *Server) refused(cause error, serviceOnly bool, t Trial, e uint64) {
	if serviceOnly {
		s.Abandoned(t)
		return
	}
	s.countFailure(cause, e)
}

// countFailure counts a failure against the server's breaker; it reports
// whether the breaker ignored it as stale (breaker.failureSince).
func (s *Server) countFailure(cause error, e uint64) (stale bool) {
	opened, openFor, stale := s.breaker.failureSince(time.Now(), e)
	if opened {
		// A circuit opened on dials the health check makes too (refused,
		// timed out): a check that passes after it says the server is back
		// (checkLoop). Not one opened on what came after the connect (a
		// reset, a REFUSE, a REDIRECT's node): a check that connects passed
		// then too.
		if oe := (*net.OpError)(nil); errors.As(cause, &oe) && oe.Op == "dial" {
			s.dialOpen.Store(time.Now().UnixNano())
		} else {
			s.dialOpen.Store(0)
		}
		s.backend.serverLog().Warn("circuit opened: new sessions skip this server", "server", s.Address, "open_for", openFor.String(), "error", cause)
		s.publish()
		// The gauge turns half-open when the open period ends, whether or
		// not a session comes then (publish reads the state at that time;
		// after Stop it writes nothing).
		time.AfterFunc(openFor, s.publish)
	}
	return stale
}

// Heard notes that a session got the server's first answer now.
func (s *Server) Heard() { s.heard.Store(time.Now().UnixNano()) }

// HeardSince tells whether some session got the server's first answer at
// or after t. An app that gave up on the server's silence from t on is
// no evidence of a hung server if it answered other sessions meanwhile: a
// database in a logon storm answers late, but answers (proxy: an
// abandoned session's verdict).
func (s *Server) HeardSince(t time.Time) bool { return s.heard.Load() >= t.UnixNano() }

// Abandoned tells the breaker that a dial it allowed has no verdict (the
// app left first): when the dial was the half-open trial t (Plan.Trial),
// the next session may try.
func (s *Server) Abandoned(t Trial) { s.breaker.abandon(t) }

func (s *Server) setUp(up bool) {
	// Sessions that failed on it while the checks had not yet seen it down
	// may have opened its circuit: fail back now, through a half-open trial,
	// rather than after open_for. Not at the first check (it starts down
	// without a check having said so): that says nothing about what the
	// sessions saw. The open period ends before the server is marked up, so
	// that no session sees it up and still shut out (checkLoop is the only
	// writer of up while it runs).
	expired := up && !s.up.Load() && s.backend.Config.Health.Check != "off" && s.checked.Load() && s.breaker.expire(time.Now())
	changed := s.up.Swap(up) != up
	if changed {
		log := s.backend.serverLog()
		if up {
			log.Info("server up", "server", s.Address)
			if expired {
				log.Info("circuit open period ended early: the health check says the server is back", "server", s.Address)
			}
		} else {
			log.Warn("server down", "server", s.Address)
		}
	}
	if !changed && !expired {
		// The gauges show this already (Start published them, and every
		// change publishes), and the breaker publishes its own changes.
		// With checks off every session's success comes here: two label
		// lookups per session for nothing.
		return
	}
	s.publish()
	if up {
		if s.backend.Config.Health.Check != "off" {
			// Up by its check, not by a session it served (checks
			// off): one stuck wait goes first (scout).
			s.scout.Store(scoutOpen)
		}
		s.back()
	}
}

// unproven tells a server that nothing has shown back since it failed:
// its circuit is half-open (open_for passed, or a check ended it early).
// Stuck waits try it one at a time (takeScout).
func (s *Server) unproven(now time.Time) bool {
	return s.breaker.current(now) != metrics.BreakerClosed
}

// scoutOpen is Server.scout when one stuck wait may go to the server.
const scoutOpen = -1

// takeScout tells whether a stuck wait (ElsewhereAgain) may go to s at
// now: s is not gated, or no wait went ahead yet (that one goes), or the
// one that went has had a dial and an answer's time (connect_timeout and
// answer_timeout) without being served: its dial failed, or it was
// refused (remembered, which keeps the others away), or its app left.
//
// trial (s is unproven) gates s as its check did: only one of the waits
// that ask again at the same moment (a logon storm's, stuck together)
// may go; the others, finding the half-open trial taken, came back to
// the slow primary with a second CONNECT each.
func (s *Server) takeScout(now time.Time, trial bool) bool {
	cfg := s.backend.Config
	for {
		g := s.scout.Load()
		if g == 0 && !trial {
			return true
		}
		if g != scoutOpen && now.UnixNano()-g < int64(cfg.ConnectTimeout.Duration+cfg.AnswerTimeout.Duration) {
			return false
		}
		if s.scout.CompareAndSwap(g, now.UnixNano()) {
			return true
		}
	}
}

// Answered tells s that it gave a session its first answer, no REFUSE: a
// gate on the stuck waits (scout) ends, and they are woken to come.
func (s *Server) Answered() {
	if s.scout.Load() != 0 && s.scout.Swap(0) != 0 {
		s.back()
	}
}

// publish sets the server's up and breaker gauges to what they are now,
// while its backend reports. State changes under its own locks and is
// logged after, so two changes can cross (a session's success closing the
// circuit while another's failure is still writing its warning); writing
// the state as read under gaugeMu, rather than the value each change made,
// leaves the gauges at the last state, not at whichever writer came last.
func (s *Server) publish() {
	s.gaugeMu.Lock()
	defer s.gaugeMu.Unlock()
	if !s.backend.reporting.Load() {
		return
	}
	up := 0.0
	if s.up.Load() {
		up = 1
	}
	s.backend.metrics.BackendUp.WithLabelValues(s.backend.Config.Name, s.Address).Set(up)
	s.backend.metrics.BreakerState.WithLabelValues(s.backend.Config.Name, s.Address).Set(float64(s.breaker.current(time.Now())))
}

// order returns the servers to try in one round, best first: usable ones
// (breaker allows, health up) by the balance policy, then those whose health
// check says down but whose breaker allows (a check may lag a restart).
// Servers with an open breaker are left out while any other server is
// usable, with two exceptions for a server that is a session's only chance
// (Plan.Next). When every circuit is open they are tried all the same
// (last resort): a breaker steers sessions to the other servers, it never
// makes a backend unavailable on its own, and a single server that came
// back is found by the next dial instead of after open_for. Weight 0
// servers are never used.
func (b *Backend) order(now time.Time) (servers []*Server, lastResort bool) {
	var healthy, down, open []*Server
	for _, s := range b.Servers {
		switch {
		case s.Weight == 0:
		case !s.breaker.usable(now):
			open = append(open, s)
		case b.healthy(s, now):
			// With checks off, up is the last dial's result: a server that
			// failed one dial would be put last until every other failed, and
			// no dial would find it back. It goes last for open_for only.
			healthy = append(healthy, s)
		default:
			down = append(down, s)
		}
	}
	// One turn of the rotation per round, shared by every group, so that
	// each group's rotation advances by exactly one per session.
	turn := b.rr.Add(1) - 1
	if len(healthy)+len(down) == 0 {
		b.sortByPolicy(open, turn)
		return open, len(open) > 0
	}
	b.sortByPolicy(healthy, turn)
	b.sortByPolicy(down, turn)
	return append(healthy, down...), false
}

// Elsewhere tells whether a session waiting on srv has another server to
// go to now: one with weight, whose breaker lets it be dialed, whose check
// passes (with checks off: that no dial failed within open_for), and that
// passed does not list (servers that refused the session, or that it
// waited out already). A session that would only come back to srv, or to
// servers that failed it, keeps waiting on srv instead (proxy: a hung
// listener's wait is cut short only when another server can take the
// session). Nor is a server that refused service lately (RefusedService):
// a slow primary's sessions were moved to a standby that does not have the
// service yet, one refusal each, for as long as the primary was slow.
func (b *Backend) Elsewhere(srv *Server, service string, passed ...[]*Server) bool {
	return b.elsewhere(srv, service, again{}, passed)
}

// ElsewhereAgain is Elsewhere asked again for a session that found
// nowhere else to go at answer_timeout (proxy: a stuck wait), with these
// differences:
//   - a server that refused service, and has not served it since, is still
//     nowhere to go once the refusal's memory has run out: every waiting
//     session asks again every answer_timeout, and at the end of the memory
//     a slow primary's waits in a logon storm left for a standby without the
//     service before its REFUSE was remembered again (3 to 53 of 200 waiting apps
//     got its ORA-12514, where new sessions send one app there). A session
//     that it serves (ServedService) tells of it (ServerBack).
//   - unless trial, only servers whose circuit is closed: a half-open
//     circuit takes one session, its trial. Every waiting session is woken
//     at once when a server comes back (ServerBack), and a health check
//     that ended an open period early would send them all to the server,
//     one to its trial and the rest back where they came from (a slow
//     primary, with a second CONNECT each). The waits' own re-asks take
//     the trial (trial), one wait at a time (takeScout: a logon storm's
//     waits re-ask together); its success closes the circuit and tells
//     them.
//   - a server its health check brought up takes one wait first
//     (takeScout), the rest once it has answered a session (Answered).
//   - with checks off, a server whose last dial failed takes one wait at
//     a time too (unprovenDialFailure), until a session it serves shows
//     it back.
func (b *Backend) ElsewhereAgain(srv *Server, service string, trial bool, passed ...[]*Server) bool {
	return b.elsewhere(srv, service, again{on: true, trial: trial}, passed)
}

// again is how ElsewhereAgain differs from Elsewhere; the zero value is
// Elsewhere.
type again struct{ on, trial bool }

func (b *Backend) elsewhere(srv *Server, service string, a again, passed [][]*Server) bool {
	now := time.Now()
	for _, s := range b.Servers {
		if s == srv || s.Weight == 0 || !s.breaker.usable(now) || b.refusals.has(s.Address, service, now) {
			continue
		}
		if a.on && (!a.trial && s.breaker.current(now) != metrics.BreakerClosed || b.refusals.kept(s.Address, service)) {
			continue
		}
		if !b.healthy(s, now) {
			continue
		}
		if slices.ContainsFunc(passed, func(l []*Server) bool { return slices.Contains(l, s) }) {
			continue
		}
		if a.on && !s.takeScout(now, s.unproven(now) || b.unprovenDialFailure(s, now)) {
			continue // one went ahead: it tells (Answered)
		}
		return true
	}
	return false
}

// unprovenDialFailure tells, with health checks off, a server whose last
// dial failed, that has served no session since and whose circuit is
// closed (no half-open trial to gate: failures = 0, or fewer failures than
// it): its open_for (shunned) is over, so new sessions try it again, but
// nothing says it is back. Stuck waits try it one at a time (takeScout),
// as a half-open circuit: until 2026-12-01 every stuck wait of a logon
// storm on a slow primary left for it when open_for ended, its dial was
// refused (the standby's listener down throughout), and it came back to
// the primary with a new CONNECT, its wait begun anew; 2 of 200 apps got
// ORA-12170 at connect_budget. A session it serves ends it (succeeded),
// ends the gate (Answered) and wakes the waits (back).
func (b *Backend) unprovenDialFailure(s *Server, now time.Time) bool {
	return b.Config.Health.Check == "off" && s.failedAt.Load() != 0 && s.breaker.current(now) == metrics.BreakerClosed
}

// DialFailing tells, with health checks off, that the last dial of s
// failed and no session has got a connection from it since.
func (s *Server) DialFailing() bool { return s.failedAt.Load() != 0 }

// healthy tells whether s counts as up in a round planned at now: its
// health check passes, or, with checks off, no dial of it failed within
// open_for (shunned).
func (b *Backend) healthy(s *Server, now time.Time) bool {
	if b.Config.Health.Check == "off" {
		return !s.shunned(now)
	}
	return s.Up()
}

// openCircuits returns the servers whose circuit is open now (not a
// half-open trial that is out: a dial beside it would decide the trial),
// whose health check passes (any, with checks off), and that skip does not
// name, in the balance policy's order.
func (b *Backend) openCircuits(now time.Time, skip map[*Server]bool) []*Server {
	var open []*Server
	for _, s := range b.Servers {
		if s.Weight != 0 && !skip[s] && s.breaker.current(now) == metrics.BreakerOpen &&
			(s.Up() || b.Config.Health.Check == "off") {
			open = append(open, s)
		}
	}
	b.sortByPolicy(open, b.rr.Load())
	return open
}

func (b *Backend) sortByPolicy(list []*Server, turn uint64) {
	if len(list) < 2 {
		return
	}
	switch b.Config.Balance {
	case "least_sessions":
		// A server's sessions include those still dialing it or awaiting
		// its first answer: counted only once it answered, a burst of new
		// sessions went to whichever server had not answered yet, and a
		// server slow to connect or answer (SYNs dropped, an overloaded
		// listener) drew every new session for as long as it was slow.
		// Ties go round, by weight. The counts are read once: they change
		// while the list is sorted.
		rotateWeighted(list, turn)
		type load struct {
			s *Server
			n int64
		}
		loads := make([]load, len(list))
		for i, s := range list {
			loads[i] = load{s, s.Sessions() + s.opening.Load()}
		}
		sort.SliceStable(loads, func(i, j int) bool {
			// Compare sessions/weight without division.
			return loads[i].n*int64(loads[j].s.Weight) < loads[j].n*int64(loads[i].s.Weight)
		})
		for i, l := range loads {
			list[i] = l.s
		}
	case "round_robin":
		rotateWeighted(list, turn)
	default: // priority: lowest value first; servers of one priority share by weight
		sort.SliceStable(list, func(i, j int) bool { return list[i].Priority < list[j].Priority })
		for i := 0; i < len(list); {
			j := i
			for j < len(list) && list[j].Priority == list[i].Priority {
				j++
			}
			rotateWeighted(list[i:j], turn)
			i = j
		}
	}
}

// rotateWeighted orders list for turn n of a weighted rotation: first the
// server whose turn it is (turn n of the cycle of total weight), then the
// others ordered the same way among themselves, so that the sessions a
// failing first choice passes on (its dial failed, it reset) spread over
// the others by weight too. Putting the others in list order after it gave
// a dead server's whole share to the server listed after it: with weights
// 1:2:3 and the third dead, the first took 40 of 60 sessions and the second
// 20, against the 1:2 the weights say.
func rotateWeighted(list []*Server, n uint64) {
	for len(list) > 1 {
		total := 0
		for _, s := range list {
			total += s.Weight
		}
		if total == 0 {
			return
		}
		slot := int(n % uint64(total))
		first := 0
		for i, s := range list {
			if slot < s.Weight {
				first = i
				break
			}
			slot -= s.Weight
		}
		// Move the chosen server to the front, keeping the others in order.
		chosen := list[first]
		copy(list[1:first+1], list[:first])
		list[0] = chosen
		list = list[1:]
	}
}

// Plan is one session's way through the servers: every usable server once
// per round, a growing pause with jitter between rounds, all within
// connect_budget.
type Plan struct {
	b        *Backend
	deadline time.Time
	queue    []*Server
	rounds   int
	backoff  time.Duration
	// lastResort: every circuit was open when the round was planned, so
	// the round dials them without asking their breakers.
	lastResort bool
	trial      Trial                    // the half-open trial of the server Next returned last, or 0
	refused    map[*Server]bool         // servers that refused this session (Refused)
	bypassed   map[*Server]bool         // open circuits it tried once for that (one dial each)
	reached    map[*Server][]netip.Addr // addresses of each server this session reached (Dial)
	last       netip.Addr               // the address the last Dial reached
	looped     map[*Server][]netip.Addr // addresses of each server whose dial came back to the proxy (Looped)
	opening    *Server                  // the server Next returned last, counted as opening until the next Next or Done
	epoch      uint64                   // the breaker epoch of the server Next returned last, read before it was allowed (Succeeded)
	service    string                   // the service the session asks for, "" while unknown (ForService)
	waited     []string                 // servers' addresses whose answer_timeout the session waited out (WaitedOut)
}

// WaitedOut tells the plan that its session left the server at address at
// answer_timeout (it held the app's opening unanswered): in the plan's
// later rounds it goes after the other servers. By address, so that a plan
// that a reload makes anew (new Server objects) is told too: the session
// moved there because the reload gave it another server, and dialing the
// hung one first again cost it another answer_timeout.
func (p *Plan) WaitedOut(address string) {
	if !slices.Contains(p.waited, address) {
		p.waited = append(p.waited, address)
	}
}

// waitedLast is queue with the servers the session waited out (WaitedOut)
// after the other servers that are up (usable breaker, health as order
// sees it), each part in its order; one that is down itself goes to the
// end. Not after the servers that are down: a slow primary left for a
// standby whose host is gone is, in the next round, the only server up,
// and until the fix the session waited connect_timeout on the dead host
// first, each round, and its budget ran out (ORA-12170) with the primary
// answering every CONNECT.
func (p *Plan) waitedLast(queue []*Server, now time.Time) []*Server {
	if len(p.waited) == 0 || len(queue) < 2 {
		return queue
	}
	up := func(s *Server) bool { return s.breaker.usable(now) && p.b.healthy(s, now) }
	out := make([]*Server, 0, len(queue))
	var waitedUp, waitedDown []*Server
	at := 0 // where the waited-out servers that are up go: after the last other server up
	for _, s := range queue {
		switch {
		case !slices.Contains(p.waited, s.Address):
			out = append(out, s)
			if up(s) {
				at = len(out)
			}
		case up(s):
			waitedUp = append(waitedUp, s)
		default:
			waitedDown = append(waitedDown, s)
		}
	}
	out = slices.Insert(out, at, waitedUp...)
	return append(out, waitedDown...)
}

// Refused tells the plan that s refused this session (a listener's REFUSE).
//
// A round tries the servers whose circuit is open too, first, when they are
// the session's only chance: every other server it would try has refused
// the session, or has a failing health check. A listener restart shorter
// than the check's fall opens a circuit the check never saw, while the
// standby refuses the service or fails its check (its service is not open
// yet): waiting out open_for would keep sessions off the server that is
// back. Only open circuits whose check passes (any, with checks off), not a
// half-open one whose trial is out (the dial would decide another
// session's trial), and each once per session: a server that takes TCP
// but fails every session is not dialed every round while its breaker is
// open, nor a dead host waited on (TryAgain makes an exception).
func (p *Plan) Refused(s *Server) {
	if p.refused == nil {
		p.refused = map[*Server]bool{}
	}
	p.refused[s] = true
}

// TryAgain lets a later round try s as an only chance again: its dial was
// refused at once (a listener restarting), which costs nothing, and it may
// be back within the session's budget.
func (p *Plan) TryAgain(s *Server) { delete(p.bypassed, s) }

// NewPlan starts a session's plan; the budget runs from start (when the
// session began to wait: what it spent before its first dial is part of
// the budget).
func (b *Backend) NewPlan(start time.Time) *Plan {
	return &Plan{b: b, deadline: start.Add(b.Config.ConnectBudget.Duration), backoff: b.Config.Backoff.Duration}
}

// Trial is the half-open trial the server Next returned last was handed
// for, or 0: what the session passes to Abandoned and Refused about it.
func (p *Plan) Trial() Trial { return p.trial }

// Deadline is when the session's connect budget ends.
func (p *Plan) Deadline() time.Time { return p.deadline }

// Next returns the next server to dial. Within a round, servers that
// lately refused the plan's service (ForService, Server.RefusedService) go
// after the others. When a round is over it pauses
// before the next: a pause drawn from [backoff/2, backoff), backoff doubling
// each round up to backoff_max. A pause that would outlast the budget is cut
// short so that one last round still runs just before the deadline (if at
// least backoff/2 is left); after that Next returns ErrBudgetExhausted. It
// returns ctx's error at once when ctx ends.
func (p *Plan) Next(ctx context.Context) (*Server, error) {
	p.Done() // the attempt before this one is over
	for {
		if len(p.queue) > 0 && !time.Now().Before(p.deadline) {
			// No budget left to dial: a dial now would fail at once and be
			// held against a server that was never given a chance.
			p.queue = nil
			return nil, ErrBudgetExhausted
		}
		for len(p.queue) > 0 {
			s := p.queue[0]
			p.queue = p.queue[1:]
			epoch := s.breaker.epoch()
			if ok, changed, trial := s.breaker.allowTrial(time.Now()); ok || p.lastResort {
				p.opening = s
				s.opening.Add(1)
				p.trial, p.epoch = trial, epoch
				if changed {
					p.b.serverLog().Info("circuit half-open: one session tries the server", "server", s.Address)
					s.publish()
				}
				return s, nil
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if p.rounds > 0 {
			wait, ok := p.pause(time.Until(p.deadline))
			if !ok {
				return nil, ErrBudgetExhausted
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
		if !time.Now().Before(p.deadline) {
			return nil, ErrBudgetExhausted
		}
		p.rounds++
		now := time.Now()
		p.queue, p.lastResort = p.b.order(now)
		p.queue = p.b.refusals.last(p.queue, p.service, now) // servers that refused the service lately go last
		p.queue = p.waitedLast(p.queue, now)                 // and those this session waited out, after them (up)
		if !p.lastResort && (p.allRefused(p.queue) || p.b.Config.Health.Check != "off" && allDown(p.queue)) {
			if open := p.b.openCircuits(now, p.bypassed); len(open) > 0 {
				if p.bypassed == nil {
					p.bypassed = map[*Server]bool{}
				}
				for _, s := range open {
					p.bypassed[s] = true
				}
				p.queue, p.lastResort = append(open, p.queue...), true
			}
		}
	}
}

// Done ends the plan's claim on the server Next returned last: its session
// has its answer (and counts among the server's sessions), or failed, or
// gave up. least_sessions counts a server's sessions from Next on, so that
// sessions dialing it at once do not all take it for the least loaded. A
// session calls it when its opening ends, whatever the end; Next calls it
// first, for the attempt before. Calling it again does nothing.
func (p *Plan) Done() {
	if p.opening != nil {
		p.opening.opening.Add(-1)
		p.opening = nil
	}
}

// allDown tells whether every server in queue has a failing health check.
func allDown(queue []*Server) bool {
	for _, s := range queue {
		if s.Up() {
			return false
		}
	}
	return len(queue) > 0
}

// allRefused tells whether every server in queue refused this session.
func (p *Plan) allRefused(queue []*Server) bool {
	if len(p.refused) == 0 {
		return false
	}
	for _, s := range queue {
		if !p.refused[s] {
			return false
		}
	}
	return true
}

// doubled is 2d, at most limit: d*2 of a huge duration (backoff = "1500000h")
// would wrap negative and panic rand.N.
func doubled(d, limit time.Duration) time.Duration {
	if d > limit/2 {
		return limit
	}
	return d * 2
}

// pause is the wait before the next round, given the budget left: jitter in
// [backoff/2, backoff) spreads a herd of sessions. ok is false when not even
// the shortest pause (the first backoff/2) fits before the deadline.
func (p *Plan) pause(left time.Duration) (wait time.Duration, ok bool) {
	b := p.backoff
	wait = b/2 + rand.N(b-b/2) // b >= 1ns (validated > 0), so the range is never empty
	p.backoff = doubled(p.backoff, p.b.Config.BackoffMax.Duration)
	minPause := p.b.Config.Backoff.Duration / 2
	if left <= minPause {
		return 0, false
	}
	return min(wait, left-minPause), true
}

// Dial dials srv for this plan: each address of its name within
// connect_timeout, and never past the budget's deadline, so that a dial
// started late cannot stretch the wait beyond connect_budget. A re-dial of
// a server whose name has several addresses tries first those this session
// has not reached yet: a connection that failed after the dial (a reset, a
// REFUSE) moves the session on to the name's next address, as an Oracle
// client does with a SCAN name, rather than back to the same one.
func (p *Plan) Dial(ctx context.Context, srv *Server) (*net.TCPConn, error) {
	deadline := p.deadline
	if t := time.Now().Add(p.b.Config.ConnectTimeout.Duration); t.Before(deadline) && srv.ip.IsValid() {
		deadline = t // one context for both limits (Server.dial adds none then)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, a, err := srv.dial(ctx, p.reached[srv])
	p.last = a
	if err == nil {
		if p.reached == nil {
			p.reached = map[*Server][]netip.Addr{}
		}
		if !slices.Contains(p.reached[srv], a) {
			p.reached[srv] = append(p.reached[srv], a)
		}
	}
	return c, err
}

// Looped notes that the connection this plan's last Dial of srv made
// reached tnsguard itself (a listener whose sessions would dial srv again).
// For a name of several addresses (a database's name moved to the proxy on
// one address family first, or a round robin that holds the proxy) that
// address goes after the others, as a failed one does, and when the name
// has an address this session has not reached yet srv is the next server
// to dial, at once (true): the other addresses may be the database. Back
// at an address that led back before (the others did not connect), srv is
// dialed again at the plan's next round (true, not re-queued). An IP
// address, or a name whose every address led back, is the proxy (false).
func (p *Plan) Looped(srv *Server) bool {
	a := p.last
	if srv.ip.IsValid() || !a.IsValid() {
		return false
	}
	n := int(srv.nAddrs.Load())
	srv.addrFailed(a, ErrOwnListener, n)
	if len(p.reached[srv]) >= n {
		return false
	}
	if slices.Contains(p.looped[srv], a) {
		// Back at an address that came back before: the re-dial tried
		// the name's other addresses first (dialOrder) and none
		// connected (a database down or restarting). They are dialed
		// again at the plan's next round, after its pause, as any failed
		// server; re-queued at once, the session would dial itself in a
		// loop for all of connect_budget.
		return true
	}
	if p.looped == nil {
		p.looped = map[*Server][]netip.Addr{}
	}
	p.looped[srv] = append(p.looped[srv], a)
	p.queue = append([]*Server{srv}, p.queue...)
	return true
}

// Succeeded tells srv that this plan's dial of it got a working connection
// (Server.Succeeded). A dial begun before srv's circuit last opened does
// not close it, nor one begun before it last closed reset its failure
// count (breaker.successSince). With checks off such a dial does not mark
// the server up either, as its failure does not mark it down (failed): it
// is not the last dial's result. A late answer to a dial begun before the
// circuit opened marked the server up with its circuit open, and the late
// failures after it no longer marked it down again.
func (p *Plan) Succeeded(srv *Server) {
	closed, stale := srv.breaker.successSince(p.epoch)
	if stale {
		return
	}
	srv.succeeded(closed)
}

// Failed tells srv that this plan's dial of it failed (Server.Failed). A
// dial begun before srv's circuit last opened or closed does not decide
// its half-open trial nor count toward opening it (breaker.failureSince).
func (p *Plan) Failed(srv *Server, cause error) { srv.failed(cause, p.epoch) }

// RefusedBy tells srv that it refused this plan's session
// (Server.Refused), with the same care as Failed.
func (p *Plan) RefusedBy(srv *Server, cause error, serviceOnly bool) {
	srv.refused(cause, serviceOnly, p.trial, p.epoch)
}
