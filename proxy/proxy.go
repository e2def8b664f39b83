// Package proxy owns tnsguard's listeners and sessions: accept, checks,
// dialing through failover, replay of the opening bytes, the spliced data
// path, and the classification of every session's end.
//
// Typical use (cmd/tnsguard does this):
//
//	p := proxy.New(logger, m)
//	if err := p.Apply(cfg); err != nil { ... } // binds listeners; also the reload path
//	...
//	p.Shutdown(ctx)                             // drain
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/metrics"
)

// Proxy runs the listeners of one configuration at a time; Apply swaps in
// a new one without dropping sessions.
type Proxy struct {
	log     hclog.Logger
	metrics *metrics.Metrics
	pool    *bufPool
	reserve *fdReserve  // fds a dormant session wakes on when sessions took every other one (fdreserve.go)
	parking *parkLots   // idle and busy sessions' sockets, waited on without goroutines (idle.go)
	stalls  *stallWatch // sources of directions that wait for room, watched for their end (stallwatch.go)

	ctx    context.Context // parent of every session and dial
	cancel context.CancelFunc

	applyMu   sync.Mutex // one Apply at a time, retuning included
	mu        sync.Mutex
	cfg       *config.Config
	listeners map[string]*listener
	backends  map[string]*failover.Backend
	// backendsGen counts the reloads that replaced backends (under mu
	// with them): a session awaiting a first answer looks for the server
	// it waits on in the running config only when it moved (firstAnswer).
	backendsGen atomic.Uint64
	// stuckWaits counts the first-answer waits that answer_timeout
	// found with nowhere else to go (answerBound.stuck): serverBack walks
	// the sessions only while there are some. With checks off a server
	// that fails one dial in two comes back at every other session, and a
	// walk of tens of thousands of idle sessions for each would be spent
	// on nothing.
	stuckWaits atomic.Int64
	draining   atomic.Bool
	retired    atomic.Bool   // Retire: another process serves on the sockets; the service is not draining
	hurry      chan struct{} // closed by Hurry: the drain ends now
	hurryOnce  sync.Once

	sessMu   sync.Mutex
	sessions map[*session]struct{}
	sessWG   sync.WaitGroup
	loopWG   sync.WaitGroup

	advice keepaliveAdvice // advice.go

	// replayHeld is what sessions keep of their openings for a re-dial,
	// all together (the capacity of their buffers); replayBudget, when not
	// negative, the most they may keep (replay.go); replayWarned when the
	// budget was last logged as spent (unix nanoseconds).
	replayHeld, replayBudget, replayWarned atomic.Int64

	// busySessions is how many sessions moved a byte within parkAfter, as
	// housekeeping last counted (every parkAfter); lotMinBusy is how many it takes before
	// busy sessions move to the parking lot (idle.go, lotCrowded).
	busySessions atomic.Int32
	lotMinBusy   atomic.Int32
	// activity counts what may make a session busy or stalled where
	// housekeeping's last look saw none: a new session, bytes after a
	// pause of parkAfter or more (touch), a write that found its
	// destination full (pump.waitsForRoom). While it stays and that look
	// found nothing busy or stalled, there is no look every parkAfter:
	// housekeeping sleeps until bump wakes it or its walk is due.
	activity atomic.Uint64
	// changes counts what may change the walk's results before the moment
	// the last walk said it must come again (walkSessions): a session
	// begun or ended, a configuration applied, a log window that dropped
	// its first line, a pipe kept for the next bulk (nudge).
	changes atomic.Uint64
	// wake rouses housekeeping from a quiet sleep (asleep set) when
	// activity or changes move. One pending wake is enough.
	wake   chan struct{}
	asleep atomic.Bool

	linksMu sync.Mutex
	links   map[linkKey]*link

	forensics *forensics // reset events, windows, rate-limited log (events.go)
	selfDials selfDials  // recent dials to its own ports, to refuse a listener dialing itself (selfdial.go)

	// counts are the session counts of servers that reloads took out of
	// their backend while sessions lived on them, until those end or the
	// server is put back (reload.go: keepCounts, shareCounts). Under mu.
	counts map[serverKey]failover.Counts

	// removed are the session counts of listeners that reloads removed
	// while their sessions lived, by name, until those end or a listener
	// of that name comes back and takes them (reload.go: slotsFor). Under mu.
	removed map[string]*admitted

	inherited *Inherited  // sockets of the process this one replaced, until the first Apply takes them (Adopt); nil after it
	alsoOwn   []ownSocket // other listening sockets of this process (AlsoListens), for bindHint

	evidenceWindow time.Duration // outlived.go; tests shorten it before sessions start
	rttFresh       time.Duration // links.go; tests shorten it before sessions start
}

// New returns a proxy with no listeners; Apply gives it its configuration.
func New(log hclog.Logger, m *metrics.Metrics) *Proxy { return newProxy(log, m, true) }

// newProxy is New; without stallWatch, the sources of directions that wait
// for room are looked at by housekeeping alone (checkStalled), as when the
// watch's epoll set cannot be made.
func newProxy(log hclog.Logger, m *metrics.Metrics, stallWatch bool) *Proxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		log: log, metrics: m, pool: newBufPool(), ctx: ctx, cancel: cancel, hurry: make(chan struct{}),
		listeners: map[string]*listener{}, backends: map[string]*failover.Backend{},
		sessions: map[*session]struct{}{}, links: map[linkKey]*link{}, counts: map[serverKey]failover.Counts{},
		removed: map[string]*admitted{}, wake: make(chan struct{}, 1),
		forensics: newForensics(log.Named("proxy"), m.ConnectDuration), evidenceWindow: defaultEvidenceWindow, rttFresh: defaultRTTFresh,
	}
	p.forensics.connect.keep = p.configuredServer
	p.forensics.dropping = p.nudge
	p.pool.kept = p.nudge
	p.reserve = newFDReserve()
	p.parking = startParkLots(ctx, &p.loopWG, p.log, runtime.GOMAXPROCS(0))
	if stallWatch {
		p.stalls = startStallWatch(ctx, &p.loopWG)
	}
	p.lotMinBusy.Store(lotMinBusy)
	p.loopWG.Add(1)
	go func() { // after every field it reads is set
		defer p.loopWG.Done()
		p.housekeeping(ctx)
	}()
	return p
}

// Adopt gives the proxy the listening sockets of the process it replaces:
// the first Apply serves on those bound where its listeners ask, instead of
// binding anew. Call it before the first Apply.
func (p *Proxy) Adopt(h *Inherited) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inherited = h
}

// configuredServer tells whether k is a server of a running backend.
func (p *Proxy) configuredServer(k serverKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg != nil && hasServer(p.cfg, k.backend, k.server)
}

// Apply makes cfg the running configuration. The first call binds every
// listener; later calls (reloads) bind new listeners, keep the sockets of
// listeners whose address did not change, stop accepting on removed ones
// (their sessions go on), and replace changed backends for new sessions.
// If any new address cannot be bound, nothing changes and the error says
// which.
func (p *Proxy) Apply(cfg *config.Config) error {
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	// Before apply: the first one starts the listeners, and a session that
	// read its opening before this line saw a budget of 0 (every opening
	// sent on without a copy, and "reached their memory budget" logged):
	// the connections an upgrade's new process finds queued on the sockets
	// handed over are accepted at once. The budget is not the file's.
	p.replayBudget.Store(replayBudgetFor())
	fresh, err := p.apply(cfg)
	if err != nil {
		return err
	}
	p.pool.setPipeBound(pipeBound(cfg))
	p.nudge() // pairs to show at 0 or to drop, idle_timeout changed
	// Outside p.mu, which every accepted connection takes (current):
	// retuning tens of thousands of sessions would hold accepts for the
	// hundreds of milliseconds it takes.
	p.retuneSessions()
	for _, b := range fresh {
		go p.wakeAtFirstChecks(b)
	}
	return nil
}

// wakeAtFirstChecks wakes again, once b's servers have had their first
// health check, the sessions of b's name that await a first answer
// (session.wakeAwaiting): a server the reload added counts as down until
// then, and the reload's wake (retuneSessions) came before its check. A
// wait that answer_timeout found with nowhere else to go ends now if the
// added server is up (answerBound.reloadedElsewhere). Until 2026-12-01 it
// went on to connect_budget with health checks on (the default), while
// new sessions reached the added server.
func (p *Proxy) wakeAtFirstChecks(b *failover.Backend) {
	select {
	case <-b.FirstChecks():
	case <-p.ctx.Done():
		return
	}
	if p.backend(b.Config.Name) != b {
		return // replaced (or removed) meanwhile: the later reload wakes them
	}
	for _, s := range p.liveSessions() {
		s.mu.Lock()
		name := s.backend.Config.Name
		s.mu.Unlock()
		if name == b.Config.Name {
			s.wakeAwaiting(b)
		}
	}
}

// serverBack wakes the sessions of the backend named name that await a
// server's first answer, when one of its servers may take sessions it
// could not before (failover.Backend.ServerBack: up by its health check,
// its circuit closed): a wait whose answer_timeout passed with nowhere
// else to go asks again and moves there (answerBound.elsewhereSince); any
// other wait goes on. By name: a session that began under a definition a
// reload replaced asks the running one. The sessions are listed under
// sessMu and each woken under its own lock, neither held while another
// is: with 500 sessions awaiting, a wake holds a lock for microseconds.
func (p *Proxy) serverBack(name string) {
	if p.stuckWaits.Load() == 0 {
		return // a wait that gets stuck later asks before it waits
	}
	for _, s := range p.liveSessions() {
		s.mu.Lock()
		if s.awaiting != nil && s.backend.Config.Name == name {
			s.awaiting.SetReadDeadline(time.Now())
		}
		s.mu.Unlock()
	}
}

func (p *Proxy) apply(cfg *config.Config) (fresh []*failover.Backend, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining.Load() {
		return nil, errors.New("shutting down")
	}

	backends := map[string]*failover.Backend{}
	for i := range cfg.Backends {
		bc := &cfg.Backends[i]
		if old, ok := p.backends[bc.Name]; ok && reflect.DeepEqual(old.Config, bc) {
			backends[bc.Name] = old
			continue
		}
		b := failover.New(bc, p.log.Named("failover"), p.metrics)
		b.OwnListener = p.selfDials.ownListener(bc.Name)
		b.DialOwn = p.selfDials.checkDial
		b.ServerBack = func() { p.serverBack(bc.Name) }
		backends[bc.Name] = b
		fresh = append(fresh, b)
	}

	listeners := map[string]*listener{}
	var bound []*listener
	taken := map[*listener]*listener{} // running sockets handed over, to the listener that took each (reload.go)
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		if old, ok := p.listeners[lc.Name]; ok && old.cfg().Listen == lc.Listen {
			listeners[lc.Name] = old
			continue
		}
		l, err := p.bind(cfg, lc, taken)
		if err != nil {
			for _, b := range bound {
				b.ln.Close()
			}
			return nil, fmt.Errorf("listener %q: %w", lc.Name, err)
		}
		listeners[lc.Name] = l
		bound = append(bound, l)
	}

	// Commit: nothing below can fail.
	// The listening sockets first: the new backends' first health checks,
	// at Start, must know them (failover.Backend.OwnListener).
	addrs := make([]listenAddr, 0, len(listeners))
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		addrs = append(addrs, listenAddr{addrPortOf(listeners[lc.Name].ln.Addr()), lc.Name, lc.Backends()})
	}
	p.selfDials.listening(addrs) // before the new listeners accept
	var every time.Duration
	for i := range cfg.Backends {
		if h := cfg.Backends[i].Health; h.Check != "off" {
			every = max(every, h.Interval.Duration)
		}
	}
	p.selfDials.checking(every) // the NAT routes that checks keep
	// The backends replaced stop first: their health checks end, so what
	// the new ones inherit is final, and no gauge of theirs lands over the
	// new ones' (same backend and server labels).
	for name, old := range p.backends {
		if backends[name] != old {
			old.Stop()
		}
	}
	for _, b := range fresh {
		if old, ok := p.backends[b.Config.Name]; ok {
			b.Inherit(old) // health and session counts go on as before the reload
		}
		p.shareCounts(b) // a server put back while its sessions live (reload.go)
		b.Start(p.ctx)
	}
	p.keepCounts(backends)
	for i := range cfg.Listeners {
		lc := &cfg.Listeners[i]
		l := listeners[lc.Name]
		// Accepted connections inherit keepalive from the listening
		// socket (handle adds the user timeout): four system calls fewer
		// per session. Set before the new config is visible.
		if prev := l.cfg(); prev == nil || prev.Keepalive.Settings() != lc.Keepalive.Settings() {
			l.kaChangedAt.Store(time.Now().UnixNano()) // before the new config is visible
		}
		if err := lc.Keepalive.Settings().ApplyListener(l.ln); err != nil {
			l.log.Warn("cannot set keepalive on the listening socket; sessions get it one by one", "error", err)
			l.perConnKeepalive.Store(true)
		} else {
			l.perConnKeepalive.Store(l.goKeepalive)
		}
		l.backs.Store(&backends)
		l.conf.Store(lc)
		l.admitted.holder.Store(l)
		p.metrics.MaxSessions.WithLabelValues(lc.Name).Set(float64(lc.MaxSessions))
		p.zeroSeries(cfg, lc, l)
	}
	for _, l := range bound {
		p.loopWG.Add(1)
		go func() {
			defer p.loopWG.Done()
			l.serve(p.ctx)
		}()
		l.log.Info("listening", "address", l.ln.Addr().String(), "backend", l.cfg().Backend)
	}
	for name, old := range p.listeners {
		if listeners[name] == old {
			continue
		}
		old.ln.Close()
		switch heir, now := taken[old], listeners[name]; {
		case heir == nil && now != nil:
			old.log.Info("moved: stopped accepting on its old address; its sessions go on", "address", old.ln.Addr().String(), "now", now.ln.Addr().String())
		case heir == nil:
			old.log.Info("stopped accepting; its sessions go on")
		case heir.name == old.name:
			// Same name and socket: only the address was re-spelled
			// ([::]:1521 for :1521); the socket accepts on, as "listening" said.
		case now != nil: // a swap, or a move onto an address another listener leaves
			old.log.Info("moved: its old address goes on as another listener's socket; its sessions go on as this listener's", "address", old.ln.Addr().String(), "now", now.ln.Addr().String(), "socket_to", heir.name)
		case heir.admitted == old.admitted:
			old.log.Info("renamed: its socket and sessions go on", "as", heir.name)
		default: // removed, and a listener that moved took its address
			old.log.Info("stopped accepting; its sessions go on; its socket goes on as another listener's", "socket_to", heir.name)
		}
	}
	p.keepRemoved(listeners)
	p.forgetRemoved(cfg, p.backends)
	p.cfg, p.listeners, p.backends = cfg, listeners, backends
	p.backendsGen.Add(1)
	// The first Apply took the sockets handed over and counted the old
	// process's sessions; a reload's listeners take theirs from the running
	// ones (slotsFor), not again from the old process (its untaken sockets
	// are closed once this process serves).
	p.inherited = nil
	return fresh, nil
}

// retuneSessions gives the open sessions of each listener and backend that
// the reload kept the keepalive it has now (session.retune): a listener's
// sessions follow the one that has its admission counts now (of its name,
// moved or not, or its heir after a rename: slotsFor), a backend's the one
// of its name. Sessions of a removed listener keep their app leg's (until
// a listener of its name is put back); of a removed backend, their
// database leg's. Under applyMu, after the config is in
// place: a session that starts meanwhile retunes itself (newSession).
func (p *Proxy) retuneSessions() {
	p.mu.Lock()
	holder := make(map[*admitted]*listener, len(p.listeners))
	for _, l := range p.listeners {
		holder[l.admitted] = l
	}
	backends := p.backends
	p.mu.Unlock()
	for _, s := range p.liveSessions() {
		if l := holder[s.l.admitted]; l != nil {
			s.retune(SideClient, l.cfg().Keepalive.Settings())
		}
		s.mu.Lock()
		name := s.backend.Config.Name
		s.mu.Unlock()
		if b := backends[name]; b != nil {
			s.retune(SideBackend, b.Config.Keepalive.Settings())
			s.wakeAwaiting(b)
		}
	}
}

// bind makes the listener of lc on its socket: one a running listener or
// the process this one replaces holds at that address, or a new one. Its
// admission counts are those of the listener it is to its users (slotsFor).
func (p *Proxy) bind(cfg *config.Config, lc *config.Listener, taken map[*listener]*listener) (*listener, error) {
	ln, old, err := p.inherit(cfg, lc, taken) // the socket of a renamed or moved listener (reload.go)
	var handed *net.TCPListener
	if ln == nil && err == nil {
		if tl := p.inherited.Take(lc.Listen); tl != nil {
			ln, handed = tl, tl // the socket of the process this one replaces (inherited.go)
		}
	}
	fromFile := ln != nil
	if ln == nil && err == nil {
		lcfg := net.ListenConfig{KeepAlive: -1} // tnsguard sets keepalive itself, per leg
		// Plain TCP, even for an app that offers MPTCP (Go's listeners
		// accept it by default): an MPTCP socket takes no TCP_USER_TIMEOUT
		// and, on older kernels, no keepalive timing or TCP_INFO.
		lcfg.SetMultipathTCP(false)
		ln, err = lcfg.Listen(p.ctx, "tcp", lc.Listen)
		err = p.bindHint(err, lc.Listen)
	}
	if err != nil {
		return nil, err
	}
	slots := p.slotsFor(cfg, lc.Name, old) // its sessions still count against the limits (reload.go)
	// The old process's sessions, while it drains: those of its listener
	// of this name, or of the socket taken over (inherited.go).
	p.inherited.hold(lc.Name, handed, func(name string) bool { return hasListener(cfg, name) }, slots)
	l := &listener{
		p: p, name: lc.Name, ln: ln.(*net.TCPListener), done: make(chan struct{}),
		log: p.log.Named("proxy").With("listener", lc.Name), admitted: slots,
		// Go gives connections accepted on a listener made from a file
		// its default keepalive (15s), over what they inherit.
		goKeepalive: fromFile,
	}
	l.conf.Store(lc)
	if old != nil {
		taken[old] = l
	}
	return l, nil
}

// ownSocket is a listening socket of this process that is not a
// listener's: what holds it, and its address.
type ownSocket struct {
	what string
	addr net.Addr
}

// AlsoListens tells the proxy of another socket this process listens on
// (the admin listener), so that a reload onto its address says so.
func (p *Proxy) AlsoListens(what string, addr net.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.alsoOwn = append(p.alsoOwn, ownSocket{what, addr})
}

// bindHint adds to an error of binding a listen address what it means
// here, in the words of the config: the kernel's "cannot assign requested
// address" says nothing of an address that is not this host's. An address
// in use may be this process's own (a listener moved onto an address that
// overlaps its own, or onto the admin listener's): that is said, not
// "another process". Under p.mu.
func (p *Proxy) bindHint(err error, listen string) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		if own := p.holderOf(listen); own != "" {
			return fmt.Errorf("%w (%s: move onto it in a second reload, after one that moves that off)", err, own)
		}
	}
	return BindHint(err)
}

// BindHint adds to an error of binding an address what the kernel's
// words mean for a listen address of the config.
func BindHint(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w (no interface of this host has that address)", err)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w (another process listens on it)", err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w (a port under 1024 needs root or CAP_NET_BIND_SERVICE)", err)
	}
	return err
}

// holderOf names the socket of this process whose address overlaps listen
// (config.SameSocket: the same port, and the same address or a wildcard
// on either side), or "".
func (p *Proxy) holderOf(listen string) string {
	names := make([]string, 0, len(p.listeners))
	for name := range p.listeners {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if a := p.listeners[name].ln.Addr(); config.SameSocket(a.String(), listen) {
			return fmt.Sprintf("listener %q of the running configuration listens on %s", name, a)
		}
	}
	for _, o := range p.alsoOwn {
		if config.SameSocket(o.addr.String(), listen) {
			return fmt.Sprintf("%s of this process listens on %s", o.what, o.addr)
		}
	}
	return ""
}

// Addr is the bound address of a listener (useful with port 0), or nil.
func (p *Proxy) Addr(name string) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.listeners[name]; ok {
		return l.ln.Addr()
	}
	return nil
}

// current is l's config, its default backend and the backends its routes
// name, read together: Apply stores them under p.mu, so a connection
// admitted while a reload runs gets them from one side of it. A listener
// the reload dropped keeps the ones it had.
func (p *Proxy) current(l *listener) (*config.Listener, *failover.Backend, map[string]*failover.Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cfg, backs := l.cfg(), *l.backs.Load()
	return cfg, backs[routeFor(cfg, "")], backs
}

// backend is the running backend of that name, or nil.
func (p *Proxy) backend(name string) *failover.Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backends[name]
}

// FirstChecksDone tells whether every backend's servers have had their
// first health check, and how long the slowest check may take (its
// timeout): an upgrade's new process waits for them before it answers on
// the admin port (cmd/tnsguard), so that /readyz does not say "no server
// up" for the moment before them.
func (p *Proxy) FirstChecksDone() (bool, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	done, longest := true, time.Duration(0)
	for _, b := range p.backends {
		done = done && b.Checked()
		longest = max(longest, b.Config.Health.Timeout.Duration)
	}
	return done, longest
}

// Ready reports whether every listener is bound and its backend has a
// server up; when not, the reason names what is missing.
func (p *Proxy) Ready() (bool, string) {
	// After an upgrade the old process's admin server still answers the
	// requests on connections it accepted before its port went to the new
	// process: for those the service is as ready as before, not draining.
	if p.draining.Load() && !p.retired.Load() {
		return false, "draining: shutting down"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg == nil {
		return false, "no configuration applied"
	}
	names := make([]string, 0, len(p.listeners))
	for n := range p.listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		l := p.listeners[n]
		name := routeFor(l.cfg(), "") // backend, or the default route "*"
		if b := p.backends[name]; b == nil || !b.Up() {
			return false, fmt.Sprintf("listener %q: backend %q has no server up", n, name)
		}
	}
	return true, ""
}

// zeroSeries creates at 0 the series that alerts and dashboard panels
// watch for a listener, before anything happened on it: an alert on a
// counter's increase does not see its first event in a series born at 1
// (increase needs two samples), nor after a restart, where the same labels
// come back at 1; and a panel shows "no data" rather than 0. That is the
// rejections by limit, the sessions' series of each backend the listener
// routes to, its sessions' ends by outcome for each service label and the
// backend that service routes to (not every service on every backend: the
// series grow with the services and routes listed, not their product), and
// on each link the resets of established sessions (either side, idle or
// active, reset or dead peer) and the REDIRECTs passed on and followed.
func (p *Proxy) zeroSeries(cfg *config.Config, lc *config.Listener, l *listener) {
	for _, reason := range []string{"no_backend", "max_sessions", "max_sessions_per_source", "self_dial"} {
		p.metrics.SessionsRejected.WithLabelValues(lc.Name, reason)
	}
	for service, backend := range serviceBackends(lc) {
		for _, outcome := range []string{"ok", "reset", "no_backend", "closed", "abandoned"} {
			p.metrics.SessionsTotal.WithLabelValues(lc.Name, backend, service, outcome)
		}
	}
	for _, name := range lc.Backends() {
		l.seriesFor(name)
		bc := cfg.Backend(name)
		if bc == nil {
			continue
		}
		for _, srv := range bc.Servers {
			p.metrics.TNSRedirects.WithLabelValues(lc.Name, name, srv.Address)
			p.metrics.TNSFollowed.WithLabelValues(lc.Name, name, srv.Address)
			for _, side := range []Side{SideClient, SideBackend} {
				for _, phase := range []Phase{PhaseIdle, PhaseActive} {
					for _, cause := range []string{"rst", "timeout"} {
						p.metrics.Resets.WithLabelValues(lc.Name, name, srv.Address, string(side), string(phase), cause)
					}
				}
			}
		}
	}
}

// track adds or removes a live session.
func (p *Proxy) track(s *session, add bool) {
	p.sessMu.Lock()
	defer p.sessMu.Unlock()
	if add {
		p.sessions[s] = struct{}{}
		p.activity.Add(1)
	} else {
		delete(p.sessions, s)
	}
	p.nudge() // also wakes for the activity
}

// bump counts activity (Proxy.activity) and wakes housekeeping if it
// sleeps.
func (p *Proxy) bump() {
	p.activity.Add(1)
	p.rouse()
}

// nudge counts a change the walk must see within a second
// (Proxy.changes) and wakes housekeeping if it sleeps.
func (p *Proxy) nudge() {
	p.changes.Add(1)
	p.rouse()
}

// rouse wakes housekeeping if it sleeps. Housekeeping sets asleep before
// it reads the counters a last time, and the callers move a counter before
// they read asleep: one of the two sees the other's move.
func (p *Proxy) rouse() {
	if p.asleep.Load() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (p *Proxy) liveSessions() []*session {
	return p.appendLiveSessions(nil)
}

// appendLiveSessions appends the live sessions to out: a caller that runs
// often reuses its slice.
func (p *Proxy) appendLiveSessions(out []*session) []*session {
	p.sessMu.Lock()
	defer p.sessMu.Unlock()
	out = slices.Grow(out, len(p.sessions))
	for s := range p.sessions {
		out = append(out, s)
	}
	return out
}

// Shutdown drains: /readyz turns 503 at once, listeners stop accepting after
// grace, sessions may finish until drainTimeout, then the rest are closed
// (counted with outcome "closed"). It returns when everything has stopped.
func (p *Proxy) Shutdown(grace, drainTimeout time.Duration) {
	p.log.Info("draining: readiness now reports 503", "grace", grace.String(), "drain_timeout", drainTimeout.String())
	p.shutdown(grace, drainTimeout, p.log, nil)
}

// Retire drains after an upgrade: another process serves on the listening
// sockets now, so this one stops accepting at once (no grace: the sockets
// stay open in the other), and its sessions may finish until drainTimeout.
// stopped, if not nil, is called once no listener accepts any more, before
// the drain.
func (p *Proxy) Retire(drainTimeout time.Duration, stopped func()) {
	p.log.Info("handed over: draining", "drain_timeout", drainTimeout.String())
	p.retired.Store(true)
	p.shutdown(0, drainTimeout, p.log, stopped)
}

// Hurry ends a drain now: the rest of the grace and of the drain timeout
// are skipped, and the sessions left are closed as at the drain timeout
// (a second stop signal). It may come before Shutdown, or during it.
func (p *Proxy) Hurry() { p.hurryOnce.Do(func() { close(p.hurry) }) }

// Close stops a proxy whose start failed: Shutdown without a drain to
// speak of, so that the log ends with the start's error, not with a drain's
// lines (and a drain timeout's warning) for sessions that never were.
func (p *Proxy) Close() { p.shutdown(0, 0, hclog.NewNullLogger(), nil) }

func (p *Proxy) shutdown(grace, drainTimeout time.Duration, log hclog.Logger, stopped func()) {
	p.draining.Store(true)
	select {
	case <-time.After(grace):
	case <-p.hurry:
	}
	p.mu.Lock()
	for _, l := range p.listeners {
		l.ln.Close()
	}
	for _, l := range p.listeners {
		<-l.done // no accept loop may add a session once sessWG.Wait starts
	}
	p.mu.Unlock()
	left := len(p.liveSessions())
	log.Info("stopped accepting", "sessions", left)
	if stopped != nil {
		stopped()
	}

	done := make(chan struct{})
	go func() {
		p.sessWG.Wait()
		close(done)
	}()
	closed := 0
	select {
	case <-done:
	case <-p.hurry:
	case <-time.After(drainTimeout):
	}
	select {
	case <-done:
	default:
		rest := p.liveSessions()
		closed = len(rest)
		why, end := "drain timeout", errDrainTimeout
		select {
		case <-p.hurry:
			why, end = "drain cut short", errDrainCut
		default:
		}
		if closed > 0 { // none: they ended as the signal came
			log.Warn(why+": closing the sessions left", "sessions", closed)
		}
		// tnsguard's own end, counted on the app's side (as idle_timeout's)
		// with cause proxy.
		for _, s := range rest {
			s.abort(SideClient, s.phaseNow(SideClient, end), end, "closed", nil)
		}
		// Connections not yet sessions (a PROXY header still coming)
		// end too.
		p.cancel()
		// One whose header completed while the sessions above were being
		// ended became a session after the list was taken, with a live
		// context: end such late ones too, until every session is over.
		for waiting := true; waiting; {
			select {
			case <-done:
				waiting = false
			case <-time.After(50 * time.Millisecond):
				for _, s := range p.liveSessions() {
					s.abort(SideClient, s.phaseNow(SideClient, end), end, "closed", nil)
				}
			}
		}
	}
	p.cancel()
	p.loopWG.Wait()
	// The log lines a window dropped are told when it ends: the drain's
	// resets (10 lines a link, then one with the count) end now.
	p.forensics.closeWindows(time.Now(), 0)
	p.mu.Lock()
	for _, b := range p.backends {
		b.Stop()
	}
	p.mu.Unlock()
	log.Info("drained", "sessions_closed_at_timeout", closed)
}

// housekeeping counts the busy sessions for the lot's gate and watches
// the directions that wait for room (look, every parkAfter while any
// session is busy or waits), and walks the sessions (walkSessions) at
// most once a second, when something changed or a moment the last walk
// named comes. A proxy whose sessions all sit idle sleeps: a thousand
// pooled sessions held for hours cost no wake ten times a second, and
// none a second once their idleness is counted (the README's data-path
// section measures it).
func (p *Proxy) housekeeping(ctx context.Context) {
	timer := time.NewTimer(0) // the first look and walk at once
	defer timer.Stop()
	var scan []*session // the stall watch's scratch (every parkAfter: no allocation)
	var lookedAt uint64 // p.activity at the last look
	quiet := false      // the last look found no session busy, no write waiting for room
	var walkedAt, due time.Time
	walked := p.changes.Load() // p.changes at the last walk
	seen := map[pairKey]bool{}
	defer p.pool.dropIdlePipes(true)
	defer p.reserve.close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.wake:
		}
		p.asleep.Store(false)
		now := time.Now()
		// Each counter is read before what it guards: what comes during a
		// look or a walk makes the next one.
		looked := false
		if a := p.activity.Load(); !quiet || a != lookedAt {
			lookedAt = a
			quiet = p.look(now, &scan)
			looked = true
		}
		c := p.changes.Load()
		// Without the stall watch, the walk's checkStalled is the only
		// look at a direction that waits for room, and the walk before
		// the wait (a sleeping proxy's next is a minute off) did not see
		// it: activity, too, makes a walk due within a second.
		if (c != walked || looked && p.stalls == nil) && walkedAt.Add(time.Second).Before(due) {
			due = walkedAt.Add(time.Second)
		}
		if !now.Before(due) {
			walked, walkedAt = c, now
			// At most once a second: a walk is a lock per session.
			due = later(p.walkSessions(now, seen), now.Add(time.Second))
		}
		wait := due.Sub(now)
		if !quiet {
			wait = min(wait, parkAfter)
		} else {
			p.asleep.Store(true)
			if p.activity.Load() != lookedAt || p.changes.Load() != c {
				wait = 0 // came before asleep was set: no wake was sent for it
			}
		}
		timer.Reset(wait)
	}
}

// look counts the busy sessions (countBusy) and updates the stall watch;
// it says whether it found nothing busy and no write waiting for room.
func (p *Proxy) look(now time.Time, scan *[]*session) (quiet bool) {
	quiet = p.countBusy() == 0
	if p.stalls != nil {
		*scan = p.appendLiveSessions((*scan)[:0])
		if p.stalls.update(*scan, now) {
			quiet = false
		}
		clear(*scan) // no session kept alive by the scratch slice
	}
	return quiet
}

// idleAfter is how long a session moves no byte before it counts as idle
// (tnsguard_sessions_idle, a link's sessions_idle).
const idleAfter = time.Minute

// pairKey is a listener and a backend it routes to: a series of
// tnsguard_sessions_idle.
type pairKey struct{ listener, backend string }

// walkSessions updates the idle-sessions gauge, ends sessions idle longer
// than their listener's idle_timeout, ends sessions whose stalled
// direction's source failed (session.checkStalled), sets the keepalive
// that dials left (session.armKeepalive), closes the bulk's kept pipes
// when no bulk used them (bufPool.dropIdlePipes) and ends the log windows
// that dropped lines (forensics.tick). It returns when it must come
// again if nothing changes (Proxy.changes) before: the first moment a
// session crosses a minute idle or its idle_timeout, the next minute for
// the connect-time window, the end of a log window that dropped lines; now
// while a session opens, awaits its keepalive, has a direction waiting for
// room, or a pipe is kept. seen holds the pairs whose series it set.
func (p *Proxy) walkSessions(now time.Time, seen map[pairKey]bool) time.Time {
	next := p.forensics.tick(now)
	if p.pool.dropIdlePipes(false) {
		next = now
	}
	idle := map[pairKey]int{}
	live := map[pairKey]bool{}
	for _, s := range p.liveSessions() {
		k := pairKey{s.l.name, s.backendName()}
		d := s.idleFor()
		if d > idleAfter {
			idle[k]++
		} else {
			next = earlier(next, now.Add(idleAfter-d+time.Millisecond))
		}
		if limit := s.lcfg.IdleTimeout.Duration; limit > 0 {
			if d > limit {
				s.abort(SideClient, PhaseIdle, ErrIdleTimeout, "closed", nil)
			} else {
				next = earlier(next, now.Add(limit-d+time.Millisecond))
			}
		}
		waits := s.checkStalled(now)
		if s.armKeepalive(now) || waits {
			next = now
		}
		seen[k], live[k] = true, true
	}
	reachable := map[pairKey]bool{} // the pairs the running config can make
	p.mu.Lock()
	if p.cfg != nil {
		for _, lc := range p.cfg.Listeners {
			for _, b := range lc.Backends() {
				k := pairKey{lc.Name, b}
				reachable[k], seen[k] = true, true // 0 before a session came: a dashboard shows 0, not "no data"
			}
		}
	}
	p.mu.Unlock()
	for k := range seen {
		if !reachable[k] && !live[k] {
			// A listener, or a listener's backend, that a reload
			// removed, and whose last session ended: its series goes,
			// as its other gauges went at the reload.
			p.metrics.SessionsIdle.DeleteLabelValues(k.listener, k.backend)
			delete(seen, k)
			continue
		}
		p.metrics.SessionsIdle.WithLabelValues(k.listener, k.backend).Set(float64(idle[k]))
	}
	return next
}

// earlier is the earlier of a and b; later the later.
func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// countBusy counts the sessions that moved a byte within parkAfter, for
// the lot's gate (lotCrowded), and returns the count. It allocates
// nothing: it runs every parkAfter.
func (p *Proxy) countBusy() int32 {
	n := int32(0)
	p.sessMu.Lock()
	for s := range p.sessions {
		if s.idleFor() < parkAfter {
			n++
		}
	}
	p.sessMu.Unlock()
	p.busySessions.Store(n)
	return n
}

// record closes the books on a session: metrics, link counters, one log line.
// The session leaves the live list last, so that whoever sees it gone (a
// drain, /api/links, a test waiting for it) finds its end counted.
func (p *Proxy) record(s *session, srv *failover.Server, established bool) {
	defer p.track(s, false)
	end := s.end
	bname := s.backend.Config.Name
	server := serverName(srv)
	age := time.Since(s.start)
	s.series.active.Dec()
	if !established && s.openingSent { // the opening's bytes went to backends that never answered
		s.series.bytesUp.Add(float64(s.openingUp))
	}
	if established && srv != nil {
		srv.Release()
	}
	s.mu.Lock()
	elsewhere := s.loopCountedElsewhere
	s.mu.Unlock()
	if elsewhere {
		// A loop's other session counts it, once for the app (selfDialed):
		// this one's app was tnsguard's own dial, or is that app.
		return
	}
	s.series.endedFor(p.metrics, s.service, end.outcome).Inc()
	s.series.duration.Observe(age.Seconds())
	if end.outcome == "ok" {
		if s.l.log.IsDebug() {
			s.logger().Debug("session ended", "server", server, "duration", age.Round(time.Millisecond).String(),
				"idle", s.idleFor().Round(time.Millisecond).String(), "bytes_to_backend", s.toBackend.Load(), "bytes_to_client", s.toClient.Load())
		}
		return
	}
	if end.outcome == "abandoned" {
		s.logAbandoned(end, server, age) // no reset: the app closed
		return
	}
	cause := Cause(end.err)
	p.metrics.Resets.WithLabelValues(s.l.name, bname, server, string(end.side), string(end.phase), cause).Inc()
	p.linkFor(s.l.name, bname, server).reset(cause)
	// What reached a backend: the opening of a session that no backend
	// took went nowhere (tnsguard_bytes_total does not count it either).
	toBackend := s.toBackend.Load()
	if !established && !s.openingSent {
		toBackend = 0
	}
	p.forensics.add(s, server, cause, age, toBackend) // ring, windows, warn log (rate-limited)
	if end.phase == PhaseIdle && (cause == "rst" || cause == "timeout") {
		p.noteIdleDeath(s, server, end.side, s.idleAtEnd)
	}
}
