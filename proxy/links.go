package proxy

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
)

// A link is one listener -> backend -> server path. Links are kept for the
// process's life (they are bounded by config names and server addresses),
// so their counters never go back.
type linkKey struct{ listener, backend, server string }

type link struct {
	key linkKey

	mu            sync.Mutex
	live          map[*session]struct{}
	closedRetrans uint64
	shownRetrans  uint64 // the most figures() reported: the counter never goes back
	lastRTT       time.Duration
	lastRTTAt     time.Time
	hasRTT        bool
	resets        map[string]uint64 // by cause
	redials       uint64
	lastReset     time.Time
	carried       bool                  // had a live session once: a removed server's link stays listed only then
	born          time.Time             // outlived's windows count from here
	window        time.Duration         // outlived's window: the proxy's evidenceWindow
	outlived      outlivedPauses        // the longest pause after which the database answered, on any session, lately
	fresh         time.Duration         // a live socket's RTT counts in the mean when it sent data this recently: the proxy's rttFresh
	rttMarks      map[*session]*rttMark // live sessions whose socket's RTT was looked at (judgeRTT)
}

// rttMark is what figures remembers of a live backend socket between two
// looks: whether its smoothed RTT is still settling after a pause.
type rttMark struct {
	woke      int64     // the session's rttWoke when last looked at
	settling  bool      // it paused: its RTT is the old one until it has sent rttSettle more segments
	segs      uint32    // its DataSegsOut when the settling began (or, woken unseen, when it was seen)
	sampledAt time.Time // when its RTT was last the path's: before the pause
}

func (p *Proxy) linkFor(listener, backend, server string) *link {
	k := linkKey{listener, backend, server}
	p.linksMu.Lock()
	defer p.linksMu.Unlock()
	l, ok := p.links[k]
	if !ok {
		l = newLink(k, p.evidenceWindow)
		l.fresh = p.rttFresh
		p.links[k] = l
	}
	return l
}

// newLink is an empty link: no session, no reset yet.
func newLink(k linkKey, window time.Duration) *link {
	return &link{key: k, live: map[*session]struct{}{}, resets: map[string]uint64{}, born: time.Now(), window: window, fresh: defaultRTTFresh}
}

func (p *Proxy) allLinks() []*link {
	p.linksMu.Lock()
	out := make([]*link, 0, len(p.links))
	for _, l := range p.links {
		out = append(out, l)
	}
	p.linksMu.Unlock()
	sortLinks(out)
	return out
}

func sortLinks(out []*link) {
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].key, out[j].key
		if a.listener != b.listener {
			return a.listener < b.listener
		}
		if a.backend != b.backend {
			return a.backend < b.backend
		}
		return a.server < b.server
	})
}

func (l *link) addLive(s *session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.live[s] = struct{}{}
	l.carried = true
}

// shown tells whether the status page and the metrics still show the
// link: configured, or it carried sessions (its history). A link that only
// counted re-dials away from a server that a reload then removed is not.
func (l *link) shown(configured bool) bool {
	if configured {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.carried
}

// removeLive takes the backend connection's final kernel counters (read
// just before the socket is closed) into the link's totals.
func (l *link) removeLive(s *session, info keepalive.Info, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.live[s]; !ok {
		return
	}
	if err == nil {
		l.closedRetrans += uint64(info.Retransmits)
		// The kernel's RTT was last sampled when the data last sent was
		// acknowledged: a session idle for an hour ends with an hour-old RTT,
		// and one that woke from a pause lately with the RTT from before it.
		_, at := l.judgeRTTLocked(s, info, time.Now())
		if info.RTT > 0 && (!l.hasRTT || !at.Before(l.lastRTTAt)) {
			l.lastRTT, l.lastRTTAt, l.hasRTT = info.RTT, at, true
		}
	}
	delete(l.live, s)
	delete(l.rttMarks, s)
}

// rttSettle is how many data segments a backend socket must send after a
// pause of rttFresh or more before its smoothed RTT counts as the path's
// now. The kernel moves the smoothed RTT an eighth of the way to each new
// sample, so a pooled session that wakes after the path's delay changed
// reads nearly the old delay: with one query every few seconds a pool
// held tnsguard_backend_rtt_seconds at 24-32 ms for a path that had been
// 50 ms for half a minute, while the health checks measured 50 ms. After 8
// samples two-thirds of the figure is new.
const rttSettle = 8

// judgeRTT says whether a live backend socket's smoothed RTT is the path's
// now (it sent data within the link's fresh window and is not settling
// after a pause), and when it was last right otherwise.
func (l *link) judgeRTT(s *session, info keepalive.Info, now time.Time) (fresh bool, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.judgeRTTLocked(s, info, now)
}

func (l *link) judgeRTTLocked(s *session, info keepalive.Info, now time.Time) (fresh bool, at time.Time) {
	at = now.Add(-info.LastDataSent)
	mk := l.rttMarks[s]
	if mk == nil {
		mk = &rttMark{}
		// Kept for live sessions only: one that ended after figures listed
		// it is read once more, and must not stay in the map.
		if _, live := l.live[s]; live {
			if l.rttMarks == nil {
				l.rttMarks = map[*session]*rttMark{}
			}
			l.rttMarks[s] = mk
		}
	}
	woke := s.rttWoke.Load()
	if info.LastDataSent > l.fresh {
		// Sending nothing: its RTT is its last query's, and whatever it
		// sends next moves that only slowly.
		mk.woke, mk.settling, mk.segs, mk.sampledAt = woke, true, info.DataSegsOut, at
		return false, at
	}
	if woke != mk.woke {
		// It paused and woke since the last look: what it sent since is
		// not known, so it counts from here.
		mk.woke = woke
		if !mk.settling {
			mk.settling, mk.segs = true, info.DataSegsOut
			mk.sampledAt = s.start.Add(time.Duration(s.rttPauseAt.Load()))
		}
	}
	if mk.settling {
		if info.DataSegsOut-mk.segs < rttSettle {
			return false, mk.sampledAt
		}
		mk.settling = false
	}
	return true, at
}

// backendOutlived is the longest pause after which the database's path
// answered lately (outlivedPauses), on any session of this link, live or
// ended (one path: the apps' legs of a link are not); 0 for a nil link.
func (l *link) backendOutlived() time.Duration {
	if l == nil {
		return 0
	}
	return l.outlived.longest(time.Since(l.born), l.window)
}

// outlivedNow records that the database's path answered after a pause of
// d, now: at the time it was outlived, so that it fades with the link's
// windows (a session's own evidence, merged at its end, would count from
// then).
func (l *link) outlivedNow(d time.Duration) {
	if l != nil {
		l.outlived.add(time.Since(l.born), l.window, d)
	}
}

func (l *link) redial() {
	l.mu.Lock()
	l.redials++
	l.mu.Unlock()
}

func (l *link) reset(cause string) {
	l.mu.Lock()
	l.resets[cause]++
	l.lastReset = time.Now()
	l.mu.Unlock()
}

// defaultRTTFresh is how recently a backend socket must have sent data for its
// smoothed RTT to count as the path's RTT now. The kernel samples the RTT
// only when sent data is acknowledged (keepalive probes do not update it),
// so an idle pooled session keeps the RTT of its last query, however long
// ago: averaged in, a pool of idle sessions held the gauge at the old
// figure after the path's delay changed (half of a new 40 ms with half the
// sessions idle).
const defaultRTTFresh = 5 * time.Second

// linkFigures is a link's kernel view now: mean RTT of its live backend
// sockets that sent data in the last defaultRTTFresh (or, with none, the most
// recent RTT sample, live or ended) and retransmits over its whole life.
type linkFigures struct {
	rtt         time.Duration
	hasRTT      bool
	retransmits uint64
	sessions    int
	liveRTT     time.Duration // sum over the live sockets with a fresh RTT
	liveN       int
	lastAt      time.Time // when rtt was sampled, when it is not a fresh live mean
	anyLive     bool      // a live socket reported an RTT (fresh or not)
}

// figures reads the link's kernel view; checked is its server (nil for
// none), whose last health check's RTT counts as a sample too.
func (l *link) figures(checked *failover.Server) linkFigures {
	l.mu.Lock()
	live := make([]*session, 0, len(l.live))
	for s := range l.live {
		live = append(live, s)
	}
	f := linkFigures{retransmits: l.closedRetrans, rtt: l.lastRTT, hasRTT: l.hasRTT, lastAt: l.lastRTTAt, sessions: len(l.live)}
	l.mu.Unlock()
	now := time.Now()
	for _, s := range live {
		info, err := s.backendInfo()
		if err != nil {
			continue
		}
		f.retransmits += uint64(info.Retransmits)
		if info.RTT <= 0 {
			continue
		}
		f.anyLive = true
		if fresh, at := l.judgeRTT(s, info, now); fresh {
			f.liveRTT += info.RTT
			f.liveN++
		} else if !f.hasRTT || at.After(f.lastAt) {
			f.rtt, f.lastAt, f.hasRTT = info.RTT, at, true
		}
	}
	if rtt, at, ok := checked.CheckRTT(); ok && (!f.hasRTT || at.After(f.lastAt)) {
		f.rtt, f.lastAt, f.hasRTT = rtt, at, true // a health check's is the newer sample
	}
	if f.liveN > 0 {
		f.rtt, f.hasRTT = f.liveRTT/time.Duration(f.liveN), true
	}
	// A session that ended between the two reads had its retransmits
	// moved into closedRetrans after it was read, and its socket is gone:
	// this sum misses them once. Prometheus would take the dip for a
	// counter reset, and rate() would jump by the whole total.
	l.mu.Lock()
	f.retransmits = max(f.retransmits, l.shownRetrans)
	l.shownRetrans = f.retransmits
	l.mu.Unlock()
	return f
}

// ServerLinks implements metrics.LinkSource: per backend server, over all
// listeners. The RTT is the mean over the server's live backend sockets
// that sent data lately (defaultRTTFresh); with none, the most recent sample on
// any of its links, live or ended, if the server is still
// configured: a gauge of a server a reload removed goes away with its last
// session, as its other gauges go at the reload.
func (p *Proxy) ServerLinks() []metrics.ServerLink {
	type key struct{ backend, server string }
	servers := map[key]*failover.Server{} // the configured ones
	p.mu.Lock()
	for _, b := range p.backends {
		for _, s := range b.Servers {
			servers[key{b.Config.Name, s.Address}] = s
		}
	}
	p.mu.Unlock()
	type acc struct {
		sl      metrics.ServerLink
		liveSum time.Duration
		liveN   int
		last    time.Duration
		lastAt  time.Time
		anyLive bool
	}
	agg := map[key]*acc{}
	var order []key
	for _, l := range p.allLinks() {
		k := key{l.key.backend, l.key.server}
		if l.key.server == "none" || !l.shown(servers[k] != nil) {
			continue
		}
		a, ok := agg[k]
		if !ok {
			a = &acc{sl: metrics.ServerLink{Backend: k.backend, Server: k.server}}
			agg[k] = a
			order = append(order, k)
		}
		f := l.figures(servers[k])
		a.sl.Retransmits += float64(f.retransmits)
		a.liveSum += f.liveRTT
		a.liveN += f.liveN
		a.anyLive = a.anyLive || f.anyLive
		if f.liveN == 0 && f.hasRTT && f.lastAt.After(a.lastAt) {
			a.last, a.lastAt = f.rtt, f.lastAt
		}
	}
	// A server no session has used yet has an RTT once it is checked.
	for k, srv := range servers {
		if _, ok := agg[k]; !ok {
			if rtt, at, checked := srv.CheckRTT(); checked {
				agg[k] = &acc{sl: metrics.ServerLink{Backend: k.backend, Server: k.server}, last: rtt, lastAt: at}
				order = append(order, k)
			}
		}
	}
	out := make([]metrics.ServerLink, 0, len(order))
	for _, k := range order {
		a := agg[k]
		switch {
		case a.liveN > 0:
			a.sl.RTTSeconds, a.sl.HasRTT = (a.liveSum / time.Duration(a.liveN)).Seconds(), true
		case !a.lastAt.IsZero() && (servers[k] != nil || a.anyLive):
			a.sl.RTTSeconds, a.sl.HasRTT = a.last.Seconds(), true
		}
		out = append(out, a.sl)
	}
	return out
}

// openingCount is the sessions of a listener and backend not established
// yet, and how many of them moved no byte for over a minute.
type openingCount struct{ n, idle int }

// openingSessions counts the live sessions that no server has answered
// yet, keyed by their listener's and backend's link to server "none".
func (p *Proxy) openingSessions() map[linkKey]openingCount {
	out := map[linkKey]openingCount{}
	for _, s := range p.liveSessions() {
		if s.linkNow.Load() != nil {
			continue // established: on its server's link
		}
		k := linkKey{s.l.name, s.backendName(), "none"}
		o := out[k]
		o.n++
		if s.idleFor() > idleAfter {
			o.idle++
		}
		out[k] = o
	}
	return out
}

// LinkStatus is one link as /api/links shows it.
type LinkStatus struct {
	Listener       string            `json:"listener"`
	Backend        string            `json:"backend"`
	Server         string            `json:"server"`
	Up             bool              `json:"up"`
	Breaker        string            `json:"breaker"`
	SessionsActive int               `json:"sessions_active"`
	RTTSeconds     *float64          `json:"rtt_seconds"`
	Retransmits    uint64            `json:"retransmits"`
	Redials        uint64            `json:"redials"`
	Resets         map[string]uint64 `json:"resets_by_cause"`
	LastReset      *time.Time        `json:"last_reset,omitempty"`
	// Removed: the server is no longer one of its backend's (a reload
	// took it out) and the link is listed for its sessions and history;
	// nothing checks it, so Up says nothing of its health.
	Removed bool `json:"removed,omitempty"`

	// Reset windows, pool view and connect latency: see events.go.
	SessionsIdle      int               `json:"sessions_idle"`
	Resets5m          uint64            `json:"resets_5m"`
	Resets1h          uint64            `json:"resets_1h"`
	Resets24h         uint64            `json:"resets_24h"`
	ResetsByCause1h   map[string]uint64 `json:"resets_by_cause_1h"`
	ResetsByHour      [24]uint64        `json:"resets_by_hour"`
	ResetsByHour24h   [24]uint64        `json:"resets_by_hour_24h"`
	ConnectP50Seconds *float64          `json:"connect_p50_seconds"`
	ConnectP99Seconds *float64          `json:"connect_p99_seconds"`
	ConnectDials1h    uint64            `json:"connect_dials_1h"`

	// RefusedServices are the services the server refused lately (a
	// listener's ORA-12514/12505: the old primary after a switchover)
	// whose new sessions dial it after the other servers, and whose
	// backend's listeners without routes wait for the CONNECT, until then
	// (see "After a switchover"). Nothing else showed why sessions avoided
	// a server. [] for none; at most 256 (the backend's memory).
	RefusedServices []RefusedService `json:"refused_services"`
}

// RefusedService is one entry of LinkStatus.RefusedServices.
type RefusedService struct {
	Service    string    `json:"service"`     // as compared: lower case
	Until      time.Time `json:"until"`       // the server is dialed last for the service until then
	ForSeconds float64   `json:"for_seconds"` // the time given: open_for, doubled at each repeat up to max_open_for
	Refusals   uint64    `json:"refusals"`    // refusals since it was remembered
	Error      string    `json:"error"`       // the last refusal's code, e.g. "ORA-12514"
}

// linkConfigured tells whether the running config has the path k (Links
// lists such a link whatever it carried; one of an earlier config only if
// it carried a session).
func (p *Proxy) linkConfigured(k linkKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.listeners[k.listener]
	if l == nil || !slices.Contains(l.cfg().Backends(), k.backend) {
		return false
	}
	b := p.backends[k.backend]
	return b != nil && b.ServerAt(k.server) != nil
}

// Links lists every configured listener -> backend -> server path with its
// live figures, plus paths of earlier configurations that saw traffic.
func (p *Proxy) Links() []LinkStatus {
	p.mu.Lock()
	configured := map[linkKey]bool{}
	for _, l := range p.listeners {
		for _, name := range l.cfg().Backends() { // the default and every route's
			if b := p.backends[name]; b != nil {
				for _, s := range b.Servers {
					configured[linkKey{l.name, b.Config.Name, s.Address}] = true
				}
			}
		}
	}
	backends := p.backends
	p.mu.Unlock()
	// Configured paths that carried nothing yet are shown, not kept: a
	// reload that drops them drops them from here too.
	all := p.allLinks()
	links := all[:0]
	for _, l := range all {
		// server "none" counts the sessions no server took: an outage's row
		if l.key.server == "none" || l.shown(configured[l.key]) {
			links = append(links, l)
		}
		delete(configured, l.key)
	}
	for k := range configured {
		links = append(links, newLink(k, p.evidenceWindow))
	}
	// Sessions still opening (dialing, or waiting for a server's first
	// answer) are on no server's link yet, but open, and counted in
	// tnsguard_sessions_active (and _idle) from their accept: they show on
	// their listener's and backend's row to server "none".
	opening := p.openingSessions()
	for k := range opening {
		if !slices.ContainsFunc(links, func(l *link) bool { return l.key == k }) {
			links = append(links, newLink(k, p.evidenceWindow))
		}
	}
	sortLinks(links)
	var out []LinkStatus
	now := time.Now()
	view := p.forensics.view(now)
	for _, l := range links {
		var srv *failover.Server
		if b := backends[l.key.backend]; b != nil {
			srv = b.ServerAt(l.key.server)
		}
		f := l.figures(srv)
		st := LinkStatus{Listener: l.key.listener, Backend: l.key.backend, Server: l.key.server,
			SessionsActive: f.sessions, Retransmits: f.retransmits, Resets: map[string]uint64{}, Breaker: "closed"}
		// A removed server's row keeps no RTT once its last socket is gone,
		// as tnsguard_backend_rtt_seconds goes (ServerLinks): nothing
		// checks it, and the last figure only ages.
		if f.hasRTT && (srv != nil || l.key.server == "none" || f.anyLive) {
			v := f.rtt.Seconds()
			st.RTTSeconds = &v
		}
		l.mu.Lock()
		for c, n := range l.resets {
			st.Resets[c] = n
		}
		st.Redials = l.redials
		if !l.lastReset.IsZero() {
			t := l.lastReset
			st.LastReset = &t
		}
		l.mu.Unlock()
		st.RefusedServices = []RefusedService{}
		if srv != nil {
			st.Up = srv.Up()
			st.Breaker = [...]string{"closed", "open", "half-open"}[srv.BreakerState()]
			for _, r := range srv.ServiceRefusals(now) {
				st.RefusedServices = append(st.RefusedServices, RefusedService{Service: r.Service, Until: r.Until,
					ForSeconds: r.For.Seconds(), Refusals: r.Refusals, Error: fmt.Sprintf("ORA-%05d", r.Code)})
			}
		} else if l.key.server != "none" {
			st.Removed = true
		}
		view.fill(&st, l)
		if o := opening[l.key]; o.n > 0 {
			st.SessionsActive += o.n
			st.SessionsIdle += o.idle
		}
		out = append(out, st)
	}
	return out
}
