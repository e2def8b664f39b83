package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
)

// listener is one bound [[listener]]: its socket, accept loop and limits.
// Its configuration can be swapped by a reload while the socket stays.
type listener struct {
	p     *Proxy
	name  string
	conf  atomic.Pointer[config.Listener]
	backs atomic.Pointer[map[string]*failover.Backend] // the backends of the config conf came with; stored with it under p.mu
	ln    *net.TCPListener
	log   hclog.Logger
	done  chan struct{} // closed when the accept loop has ended

	*admitted                    // shared with the listener whose socket it took over (a rename)
	perConnKeepalive atomic.Bool // set every keepalive option per connection (the listening socket refused them, or goKeepalive)
	goKeepalive      bool        // made from a file (a handed-over socket): Go sets its own keepalive on accept
	// kaChangedAt is when Apply last gave the listening socket other
	// keepalive options (UnixNano): connections whose handshake completed
	// before hold the old ones, which ApplyAccepted does not replace.
	kaChangedAt atomic.Int64
	series      sync.Map // backend name -> *sessionSeries
}

// takeLogLine says whether a line of a kind that apps set off (one per
// connection: "no-backend", "REDIRECT") may be logged (forensics.takeLine).
func (l *listener) takeLogLine(kind string) bool {
	return l.p.forensics.takeLine(l.name, kind, time.Now())
}

// acceptQueueAge bounds how long after a reload changed a listening
// socket's keepalive an accepted connection may still have inherited the
// old options; until then each gets every option set (four system calls
// more).
const acceptQueueAge = 10 * time.Second

// admitted counts the sessions a listener let in, for max_sessions and
// max_sessions_per_source. It goes with the listener as its users know it
// (Proxy.slotsFor): by name across moves, swaps and a removal undone by a
// later reload, and to the new name of a renamed listener, so the sessions
// the old listener object admitted still count against the limits (with
// counts of their own, the new listener let in max_sessions more while
// they lived).
type admitted struct {
	active atomic.Int64
	// pending are the connections accepted and not yet let in or turned
	// away (handle: a PROXY header awaited), for HandedOver.
	pending   atomic.Int64
	srcMu     sync.Mutex
	perSource map[netip.Addr]int
	// holder is the listener of the running config these are the counts
	// of (after a rename, the heir), or the last one that was; set by
	// Apply before the config is visible.
	holder atomic.Pointer[listener]
}

// sessionSeries are the metric series every session of one listener and
// backend touches, resolved once: a label lookup costs a map and a hash per
// call (never deleted series, so they stay valid across reloads).
type sessionSeries struct {
	bytesUp, bytesDown prometheus.Counter
	active             prometheus.Gauge
	wait, duration     prometheus.Observer
	// ended is tnsguard_sessions_total by service and outcome (endedKey),
	// which a session knows only at its end: resolved once each, too.
	// Both labels are bounded (serviceLabel, the outcomes), so it is.
	ended             sync.Map
	listener, backend string // the labels the series above were resolved with
}

// endedKey is a series of tnsguard_sessions_total within a sessionSeries.
type endedKey struct{ service, outcome string }

// endedFor is the tnsguard_sessions_total series of a session of service
// that ended with outcome.
func (ss *sessionSeries) endedFor(m *metrics.Metrics, service, outcome string) prometheus.Counter {
	k := endedKey{service, outcome}
	if c, ok := ss.ended.Load(k); ok {
		return c.(prometheus.Counter)
	}
	c, _ := ss.ended.LoadOrStore(k, m.SessionsTotal.WithLabelValues(ss.listener, ss.backend, service, outcome))
	return c.(prometheus.Counter)
}

func (l *listener) seriesFor(backend string) *sessionSeries {
	if v, ok := l.series.Load(backend); ok {
		return v.(*sessionSeries)
	}
	m := l.p.metrics
	v, _ := l.series.LoadOrStore(backend, &sessionSeries{
		bytesUp:   m.Bytes.WithLabelValues(l.name, backend, "to_backend"),
		bytesDown: m.Bytes.WithLabelValues(l.name, backend, "to_client"),
		active:    m.SessionsActive.WithLabelValues(l.name, backend),
		wait:      m.SessionWait.WithLabelValues(l.name),
		duration:  m.SessionDuration.WithLabelValues(l.name, backend),
		listener:  l.name, backend: backend,
	})
	return v.(*sessionSeries)
}

func (l *listener) cfg() *config.Listener { return l.conf.Load() }

// serve accepts until the socket is closed. Temporary errors (out of fds)
// back off, 5 ms doubling to 1 s, logged once per shortage (acceptShortage).
func (l *listener) serve(ctx context.Context) {
	defer close(l.done)
	var delay time.Duration
	short := acceptShortage{log: l.log}
	defer short.stop()
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			short.failed(err)
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(delay*2, time.Second)
			}
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		delay = 0
		l.p.sessWG.Add(1)
		l.pending.Add(1)    // until handle lets it in or turns it away
		go l.handle(ctx, c) // it, or the session it starts, calls sessWG.Done
	}
}

// acceptCalm is how long accept must go without a failure before a
// shortage counts as over: longer than the backoff's ceiling (1 s), so that
// a loop still failing fails again within it.
const acceptCalm = 2 * time.Second

// acceptShortage logs an accept loop's shortage (accept failing with
// EMFILE) once: "accept failed" at its first failure, "accept works again"
// once acceptCalm has passed with none. At the fd limit, connections that
// come and go at once (a port scanner, apps that reset) each take the one
// fd left and give it back a moment later, so accept fails, works and
// fails again every few ms: logged at each turn, that was two lines per
// connection. The calm runs from the last failure, not from a success:
// the last accept of a shortage may fail (Linux takes the fd before it
// looks at the queue) with nothing left to accept after it.
type acceptShortage struct {
	log hclog.Logger

	mu       sync.Mutex
	on       bool        // "accept failed" logged, "works again" not yet
	since    time.Time   // the shortage's first failure
	failures int         // failed accepts in the shortage
	gen      int         // bumped by each failure: a pending calm is void
	calm     *time.Timer // "works again" after acceptCalm, unless a failure comes first
}

func (a *acceptShortage) failed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.voidCalmLocked()
	a.failures++
	if !a.on {
		a.on, a.since, a.failures = true, time.Now(), 1
		a.log.Error("accept failed: backing off until it works again", "error", err)
	}
	gen := a.gen
	a.calm = time.AfterFunc(acceptCalm, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.gen != gen || !a.on {
			return
		}
		a.on, a.calm = false, nil
		a.log.Info("accept works again", "failed_accepts", a.failures,
			"shortage", time.Since(a.since).Round(time.Millisecond).String())
	})
}

// stop ends the loop's logging: the listener is closed.
func (a *acceptShortage) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.voidCalmLocked()
}

// voidCalmLocked stops a pending "works again". Under a.mu.
func (a *acceptShortage) voidCalmLocked() {
	a.gen++
	if a.calm != nil {
		a.calm.Stop()
		a.calm = nil
	}
}

// rejected counts a connection refused before its session began.
func (l *listener) rejected(reason string) {
	l.p.metrics.SessionsRejected.WithLabelValues(l.name, reason).Inc()
}

// reject closes a connection at once with a reset: the app's driver reports
// an error immediately instead of waiting on a silent socket.
func (l *listener) reject(c *net.TCPConn, reason string, in inbound) {
	l.rejected(reason)
	if l.log.IsDebug() {
		// As a session's lines name its app: address and port, and the
		// load balancer that sent the PROXY header.
		args := []any{"reason", reason, "client", in.client}
		if in.via.IsValid() {
			args = append(args, "via", in.via)
		}
		l.log.Debug("connection rejected", args...)
	}
	c.SetLinger(0)
	c.Close()
}

// handle runs one accepted connection: checks, then the session. The
// session may outlive this goroutine (idle.go); it then frees the
// listener's slots itself (sessionEnded).
func (l *listener) handle(ctx context.Context, c *net.TCPConn) {
	growStack()
	held := false
	undecided := true // counted in l.pending
	defer func() {
		if undecided {
			l.pending.Add(-1)
		}
		if !held {
			l.p.sessWG.Done()
		}
	}()
	l.p.selfDials.arrived(c) // this host's NAT may have sent c here (a transparent capture)
	chain, loop := l.p.selfDials.ours(c, l.name)
	if loop {
		// A server of some backend is this listener (its address, or what
		// its name resolves to): serving this would dial the listener
		// again, and so on until the fds run out. The connection is
		// tnsguard's own dial, no app: its dialer has found the loop too
		// (selfDials.add), and counts and logs it once for its app, or
		// dials the name's next address (Looped).
		l.log.Debug("own dial reset: a loop", "loop", strings.Join(append(slices.Clip(chain), l.name), " -> "))
		c.SetLinger(0)
		c.Close()
		return
	}
	cfg, accepted, backs := l.p.current(l)
	ka := cfg.Keepalive.Settings()
	apply := ka.ApplyAccepted // the rest comes from the listening socket
	if l.perConnKeepalive.Load() || time.Since(time.Unix(0, l.kaChangedAt.Load())) < acceptQueueAge {
		// Handshakes that completed before a reload changed the
		// listening socket's options (in the accept queue, or waiting
		// here for current while Apply ran) inherited the old ones.
		apply = ka.Apply
	}
	if err := apply(c); err != nil {
		l.log.Warn("cannot set keepalive on the app's connection", "error", err)
	}
	// PROXY protocol (proxyproto.go): from here on src is the real client.
	in, reason, err := readInbound(ctx, c, cfg)
	src := in.client.Addr()
	if reason == localCheck {
		l.log.Debug("PROXY protocol: health check ended", "source", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	if reason != "" {
		l.log.Debug("PROXY protocol: connection refused before dialing", "source", c.RemoteAddr().String(), "error", err)
		l.reject(c, reason, in)
		return
	}
	// A reload may have come while the header was awaited (or while
	// current waited for it): admit and serve the connection by the config
	// it made (every reload stores a new one). A listener the reload
	// dropped or renamed (its socket handed over) keeps its old config and
	// backends, which serve the connections it took before it closed
	// (stopped, but their servers still dial) rather than a reset.
	b := accepted
	if l.cfg() != cfg {
		cfg, b, backs = l.p.current(l)
	}
	if !config.Allowed(cfg.AllowNets, src) {
		l.reject(c, "not_allowed", in)
		return
	}
	n := l.active.Add(1)
	l.pending.Add(-1) // after: a HandedOver count may take it twice, never not at all
	undecided = false
	if cfg.MaxSessions > 0 && n > int64(cfg.MaxSessions) {
		l.active.Add(-1)
		l.reject(c, "max_sessions", in)
		return
	}
	if !l.acquireSource(src, cfg.MaxSessionsPerSource) {
		l.active.Add(-1)
		l.reject(c, "max_sessions_per_source", in)
		return
	}

	if b == nil { // the default; route() may pick another by service
		l.releaseSource(src)
		l.active.Add(-1)
		l.reject(c, "no_backend", in)
		return
	}
	if chain != nil {
		in.chain = append(slices.Clip(chain), l.name)
	}
	s := l.p.newSession(ctx, l, cfg, b, backs, c, in, ka)
	held = true
	s.run()
}

// sessionEnded frees what an admitted session held; its last goroutine
// calls it.
func (l *listener) sessionEnded(src netip.Addr) {
	l.releaseSource(src)
	l.active.Add(-1)
	l.p.sessWG.Done()
}

// acquireSource counts a session of src, or refuses it at limit (0: no
// limit). Sessions are counted without a limit too, so that a reload that
// sets one finds the sources' sessions already counted: it is enforced at
// once, and their ends do not take from sessions counted after it.
func (l *listener) acquireSource(src netip.Addr, limit int) bool {
	l.srcMu.Lock()
	defer l.srcMu.Unlock()
	if limit > 0 && l.perSource[src] >= limit {
		return false
	}
	l.perSource[src]++
	return true
}

func (l *listener) releaseSource(src netip.Addr) {
	l.srcMu.Lock()
	defer l.srcMu.Unlock()
	if n, ok := l.perSource[src]; ok {
		if n <= 1 {
			delete(l.perSource, src)
		} else {
			l.perSource[src] = n - 1
		}
	}
}

// appKA is the keepalive the app's socket got when it was accepted.
func (p *Proxy) newSession(ctx context.Context, l *listener, lcfg *config.Listener, b *failover.Backend, backs map[string]*failover.Backend, c *net.TCPConn, in inbound, appKA keepalive.Settings) *session {
	s := &session{
		p: p, l: l, lcfg: lcfg, backend: b, backs: backs, client: c, in: in, start: time.Now(),
		service: "other", lot: p.parking.pick(),
		ka: [2]keepalive.Settings{appKA, b.Config.Keepalive.Settings()},
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.cond = sync.NewCond(&s.mu)
	s.series = l.seriesFor(b.Config.Name)
	s.series.active.Inc()
	p.track(s, true)
	// A reload since the socket was accepted (its PROXY header or a LOCAL
	// connection's first bytes were awaited, or it came as this session
	// was made) did not retune it: it was no session yet. The listener's
	// config read after track is the reload's when retuneSessions's list
	// missed the session; after a rename, the heir's, as there.
	//
	// The config is read under s.mu: a reload's retune of this session
	// (retuneSessions reads the config it sets before it takes s.mu)
	// is then never undone by a read from before that reload.
	s.mu.Lock()
	if h := l.admitted.holder.Load(); h != nil {
		s.retuneLocked(SideClient, h.cfg().Keepalive.Settings())
	}
	s.mu.Unlock()
	return s
}

// openingStack is what the goroutine that opens a session needs below
// handle's frame: the dial through Go's net package reaches about 3.2 KB
// deep there (uprobe on runtime.copystack, 2026-11-30).
const openingStack = 4 << 10

// growStack gives the goroutine that runs handle the stack the opening will
// need, at once and while handle's is its only frame. A goroutine starts
// with 2 KB (or the runtime's running average) and doubles its stack each
// time a call finds it too small, copying every frame it holds: the
// opening grew it twice per session, the second time in the dial with a
// dozen frames to copy, and those copies were a quarter of the
// instructions tnsguard spent on a session that opens, asks once and
// closes (callgrind: 29.6k of 117.9k). One copy of a shallow stack to 8 KB
// costs an eighth of that (3.5k), and zeroing the array 0.5k. The stack is
// no bigger than the dial made it anyway (README, "Setting a session up").
//
//go:noinline
func growStack() {
	var b [openingStack]byte
	keepStack(b[:])
}

// keepStack keeps growStack's array (and so its frame) from being compiled away.
//
//go:noinline
func keepStack([]byte) {}
