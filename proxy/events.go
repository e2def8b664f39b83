package proxy

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Reset forensics: every session that ends abnormally becomes a ResetEvent
// in a fixed ring (/api/resets), is counted in per-link minute buckets
// (the 5 min / 1 h / 24 h figures and the hour-of-day pattern of
// /api/links) and is logged once at warn, at most logBurst lines per link
// per logWindow. Memory is fixed whatever the reset rate: the ring holds
// resetRingSize events, each link dayMinutes buckets, and recording an
// event allocates nothing.
const (
	resetRingSize = 1000
	logBurst      = 10
	logWindow     = time.Minute
	dayMinutes    = 24 * 60
	hourMinutes   = 60
	maxServiceLen = 128
	// maxRedirectShown bounds a REDIRECT's address in the log.
	maxRedirectShown = 512
)

// ResetEvent is one session that ended abnormally (outcome reset,
// no_backend or closed), as /api/resets shows it and the warn log line
// says it.
type ResetEvent struct {
	Time     time.Time `json:"time"`
	Listener string    `json:"listener"`
	Backend  string    `json:"backend"`
	// Server is the backend server's address, "none" when the session never
	// got a backend connection.
	Server string `json:"server"`
	// Service is the Oracle service name when tnsguard read it from the
	// connect packet, "other" when not.
	Service string     `json:"service"`
	Client  netip.Addr `json:"client"`
	Side    Side       `json:"side"`
	Phase   Phase      `json:"phase"`
	Cause   string     `json:"cause"`
	Outcome string     `json:"outcome"`
	// IdleSeconds is how long no byte had moved either way before the end:
	// near a firewall's idle timeout it points at the path, not the database.
	IdleSeconds    float64 `json:"idle_seconds"`
	AgeSeconds     float64 `json:"age_seconds"`
	BytesToBackend int64   `json:"bytes_to_backend"`
	BytesToClient  int64   `json:"bytes_to_client"`
}

// The causes Cause returns, in the order of the per-minute cause counters.
const nCauses = 9

func causeNames() [nCauses]string {
	return [nCauses]string{"rst", "timeout", "eof", "refused", "idle_timeout", "proxy", "no_backend", "unreachable", "error"}
}

func causeIndex(cause string) int {
	for i, c := range causeNames() {
		if c == cause {
			return i
		}
	}
	return nCauses - 1 // "error"
}

// linkResets is one link's reset history in fixed-size buckets. A bucket
// holds the count of one minute; its stamp says which (unix minute), so a
// stale bucket is recognised without a sweep.
type linkResets struct {
	perMinute   [dayMinutes]uint32
	perMinuteAt [dayMinutes]int32
	byCause     [hourMinutes][nCauses]uint32
	byCauseAt   [hourMinutes]int32
	byHourOfDay [24]uint64 // since start, in the proxy's local time
	log         logBudget
}

// logBudget lets logBurst lines through per log window and counts the
// rest: the reset lines of a link, and a listener's no-backend lines, which
// would otherwise grow the log with the rate of failures. The caller holds
// the lock that guards it.
type logBudget struct {
	start   time.Time // of the current window; zero while none is open
	logged  int
	dropped int
}

// take says whether to log a line at now; when it opens a new window, the
// window before it is reported (the lines it dropped, and its start).
func (b *logBudget) take(now time.Time, window time.Duration) (ok bool, dropped int, since time.Time) {
	if b.start.IsZero() || now.Sub(b.start) >= window {
		dropped, since = b.dropped, b.start
		*b = logBudget{start: now}
	}
	if b.logged < logBurst {
		b.logged++
		return true, dropped, since
	}
	b.dropped++
	return false, dropped, since
}

// dropsUntil is when the window ends that has dropped lines: closeWindows
// must tell it then. Zero when it dropped none.
func (b *logBudget) dropsUntil(window time.Duration) time.Time {
	if b.dropped == 0 {
		return time.Time{}
	}
	return b.start.Add(window)
}

// end closes the window if it is over at now, and reports it as take does.
func (b *logBudget) end(now time.Time, window time.Duration) (dropped int, since time.Time) {
	if b.start.IsZero() || now.Sub(b.start) < window {
		return 0, time.Time{}
	}
	dropped, since = b.dropped, b.start
	*b = logBudget{}
	return dropped, since
}

// forensics is the proxy's reset memory; housekeeping runs tick when the
// last one said, or sooner.
type forensics struct {
	log     hclog.Logger
	connect *connectWindow
	// dropping is called when a window drops its first line, under mu:
	// tick must come at its end (Proxy.nudge).
	dropping func()

	mu     sync.Mutex
	window time.Duration // log window: logWindow; tests shorten it
	ring   [resetRingSize]ResetEvent
	next   int // slot of the next event
	held   int // events in the ring
	links  map[linkKey]*linkResets
	lines  map[lineKey]*logBudget // per listener and kind of line that apps set off
}

// lineKey names a listener's log budget for one kind of line. By name, not
// by listener: a reload that renames or removes a listener leaves its
// window open, and the count of the lines it dropped is told all the same.
type lineKey struct{ listener, kind string }

// takeLine says whether a line of kind on listener may be logged at now:
// logBurst per log window. The lines a window dropped are told when the
// next line of the kind comes after the window, or when closeWindows ends
// it, whichever is first.
func (f *forensics) takeLine(listener, kind string, now time.Time) bool {
	k := lineKey{listener, kind}
	f.mu.Lock()
	b := f.lines[k]
	if b == nil {
		b = &logBudget{}
		f.lines[k] = b
	}
	ok, dropped, since := b.take(now, f.window)
	f.noteDropping(b)
	f.mu.Unlock()
	f.logLinesDropped(k, dropped, since, now)
	return ok
}

func (f *forensics) logLinesDropped(k lineKey, n int, since, now time.Time) {
	if n > 0 {
		f.log.Warn(k.kind+" log lines dropped: too many on this listener", "listener", k.listener, "dropped", n,
			"since", since.Format(time.RFC3339), "window", now.Sub(since).Round(time.Millisecond).String(), "limit", logBurst)
	}
}

func newForensics(log hclog.Logger, connect *prometheus.HistogramVec) *forensics {
	return &forensics{log: log, connect: newConnectWindow(connect), window: logWindow, links: map[linkKey]*linkResets{},
		lines: map[lineKey]*logBudget{}}
}

// logWindow is the window of every log budget (links' and listeners').
func (f *forensics) logWindow() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.window
}

func unixMinute(t time.Time) int32 { return int32(t.Unix() / 60) }

// add records the end of s (called from record, once per abnormal end) and
// logs it unless the link's log budget for this window is spent. toBackend
// is what the session carried to a backend.
func (f *forensics) add(s *session, server, cause string, age time.Duration, toBackend int64) {
	now := time.Now()
	service := s.serviceShown // the name the app asked for, cut (the ring must not keep a large client packet alive)
	if service == "" {        // not Oracle, or no CONNECT read
		service = "other"
	}
	ev := ResetEvent{
		Time: now, Listener: s.l.name, Backend: s.backend.Config.Name, Server: server, Service: service,
		Client: s.source(), Side: s.end.side, Phase: s.end.phase, Cause: cause, Outcome: s.end.outcome,
		IdleSeconds: s.idleAtEnd.Seconds(), AgeSeconds: age.Seconds(),
		BytesToBackend: toBackend, BytesToClient: s.toClient.Load(),
	}
	logIt, dropped, window := f.store(&ev)
	if dropped > 0 {
		f.logDropped(ev.Listener, ev.Backend, ev.Server, dropped, window, ev.Time.Sub(window))
	}
	if logIt {
		s.logger().Warn("session reset", "server", server, // the logger carries the service
			"side", ev.Side, "phase", ev.Phase, "cause", cause, "outcome", ev.Outcome,
			"idle", time.Duration(ev.IdleSeconds*float64(time.Second)).Round(time.Millisecond).String(),
			"age", age.Round(time.Millisecond).String(), "bytes_to_backend", ev.BytesToBackend,
			"bytes_to_client", ev.BytesToClient, "error", s.end.err)
	}
}

// store puts ev in the ring and the link's buckets. It says whether to log
// ev, and the count of lines dropped in a log window that ev closes.
func (f *forensics) store(ev *ResetEvent) (logIt bool, dropped int, window time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ring[f.next] = *ev
	f.next = (f.next + 1) % resetRingSize
	f.held = min(f.held+1, resetRingSize)

	k := linkKey{ev.Listener, ev.Backend, ev.Server}
	lr, ok := f.links[k]
	if !ok {
		lr = &linkResets{}
		f.links[k] = lr
	}
	// A bucket holding a later minute is left alone: the event (the clock
	// stepped back) is older than any window that bucket serves.
	m := unixMinute(ev.Time)
	if b := int(m % dayMinutes); lr.perMinuteAt[b] <= m {
		if lr.perMinuteAt[b] != m {
			lr.perMinuteAt[b], lr.perMinute[b] = m, 0
		}
		lr.perMinute[b]++
	}
	if c := int(m % hourMinutes); lr.byCauseAt[c] <= m {
		if lr.byCauseAt[c] != m {
			lr.byCauseAt[c], lr.byCause[c] = m, [nCauses]uint32{}
		}
		lr.byCause[c][causeIndex(ev.Cause)]++
	}
	lr.byHourOfDay[ev.Time.Hour()]++

	logIt, dropped, window = lr.log.take(ev.Time, f.window)
	f.noteDropping(&lr.log)
	return logIt, dropped, window
}

// noteDropping tells housekeeping (dropping) when b has just dropped its
// window's first line. Under f.mu.
func (f *forensics) noteDropping(b *logBudget) {
	if b.dropped == 1 && f.dropping != nil {
		f.dropping()
	}
}

// logDropped says how many reset lines of a link were not logged in the
// window that began at start and lasted d.
func (f *forensics) logDropped(listener, backend, server string, n int, start time.Time, d time.Duration) {
	f.log.Warn("reset log lines dropped: too many resets on this link",
		"listener", listener, "backend", backend, "server", server, "dropped", n,
		"since", start.Format(time.RFC3339), "window", d.Round(time.Millisecond).String(), "limit", logBurst)
}

// tick ends the log windows that are over, logging the lines they dropped,
// and samples the connect histograms. It returns when it must run again:
// the end of the first window that dropped lines, or the next minute's
// sample.
func (f *forensics) tick(now time.Time) time.Time {
	next := time.Unix((now.Unix()/60+1)*60, 0)
	if end := f.closeWindows(now, f.logWindow()); !end.IsZero() {
		next = earlier(next, end)
	}
	f.connect.sample(now)
	return next
}

// closeWindows ends the links' log windows that are at least window old at
// now, telling what each dropped (all of them with window 0: at shutdown).
// It returns the end of the first window still open that dropped lines,
// zero if none.
func (f *forensics) closeWindows(now time.Time, window time.Duration) (next time.Time) {
	type summary struct {
		k      linkKey
		n      int
		window time.Time
	}
	var over []summary
	f.mu.Lock()
	soonest := func(b *logBudget) {
		if end := b.dropsUntil(window); !end.IsZero() && (next.IsZero() || end.Before(next)) {
			next = end
		}
	}
	for k, lr := range f.links {
		if n, since := lr.log.end(now, window); n > 0 {
			over = append(over, summary{k, n, since})
		}
		soonest(&lr.log)
	}
	type lineSummary struct {
		k     lineKey
		n     int
		since time.Time
	}
	var lines []lineSummary
	for k, b := range f.lines {
		if n, since := b.end(now, window); n > 0 {
			lines = append(lines, lineSummary{k, n, since})
		}
		if b.start.IsZero() { // no window open: nothing to keep
			delete(f.lines, k)
		}
		soonest(b)
	}
	f.mu.Unlock()
	for _, s := range over {
		f.logDropped(s.k.listener, s.k.backend, s.k.server, s.n, s.window, now.Sub(s.window))
	}
	for _, s := range lines {
		f.logLinesDropped(s.k, s.n, s.since, now)
	}
	return next
}

// Resets returns up to limit of the most recent reset events, newest
// first (all that are kept when limit <= 0).
func (p *Proxy) Resets(limit int) []ResetEvent {
	f := p.forensics
	f.mu.Lock()
	defer f.mu.Unlock()
	if limit <= 0 || limit > f.held {
		limit = f.held
	}
	out := make([]ResetEvent, limit)
	for i := range out {
		out[i] = f.ring[(f.next-1-i+resetRingSize)%resetRingSize]
	}
	return out
}

// statusView is what /api/links adds to every link, read once per answer.
type statusView struct {
	f       *forensics
	connect connectView
	now     time.Time
}

func (f *forensics) view(now time.Time) statusView {
	return statusView{f: f, connect: f.connect.view(now), now: now}
}

// fill adds a link's reset windows, idle sessions and connect latency to
// its status.
func (v statusView) fill(st *LinkStatus, l *link) {
	st.SessionsIdle = l.idleSessions(idleAfter)
	st.ResetsByCause1h = map[string]uint64{}
	f := v.f
	f.mu.Lock()
	if lr := f.links[l.key]; lr != nil {
		st.Resets5m, st.Resets1h, st.Resets24h, st.ResetsByHour24h = lr.windows(v.now)
		st.ResetsByHour = lr.byHourOfDay
		m := unixMinute(v.now)
		names := causeNames()
		for i := range hourMinutes {
			at := m - int32(i)
			c := int(at % hourMinutes)
			if lr.byCauseAt[c] != at {
				continue
			}
			for ci, n := range lr.byCause[c] {
				if n > 0 {
					st.ResetsByCause1h[names[ci]] += uint64(n)
				}
			}
		}
	}
	f.mu.Unlock()
	if l.key.server != "none" {
		st.ConnectP50Seconds, st.ConnectP99Seconds, st.ConnectDials1h = v.connect.quantiles(l.key.backend, l.key.server)
	}
}

// windows counts the resets of the current minute and the 4, 59 and 1439
// before it (so never older than 5 min, 1 h, 24 h), and the last 24 h by
// hour of day. Call with f.mu held.
func (lr *linkResets) windows(now time.Time) (m5, h1, h24 uint64, byHour [24]uint64) {
	m := unixMinute(now)
	for i := range dayMinutes {
		at := m - int32(i)
		b := int(at % dayMinutes)
		if lr.perMinuteAt[b] != at || lr.perMinute[b] == 0 {
			continue
		}
		n := uint64(lr.perMinute[b])
		if i < 5 {
			m5 += n
		}
		if i < hourMinutes {
			h1 += n
		}
		h24 += n
		byHour[time.Unix(int64(at)*60, 0).Hour()] += n
	}
	return m5, h1, h24, byHour
}

// idleSessions counts the link's live sessions that moved no byte either
// way for longer than d.
func (l *link) idleSessions(d time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s := range l.live {
		if s.idleFor() > d {
			n++
		}
	}
	return n
}
