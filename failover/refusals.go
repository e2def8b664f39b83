package failover

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// maxRefusals bounds the (server, service) refusals a backend remembers:
// service names come from the network, and apps that send made-up ones
// must not grow the memory without bound.
const maxRefusals = 256

// refusals remembers which server refused which service (a listener that
// does not offer it: after a switchover, the old primary). New sessions for
// that service try the server after the others, so that a lasting
// switchover costs a refused round trip every open_for or so, not one per
// session. A refusal of a service is no verdict on the server (one app's
// typo must not open a circuit for everyone), so the breaker keeps none.
//
// Entries are keyed by the server's address, so that a reload that rebuilds
// the backend can share them (Inherit). The proxy passes service names in
// one spelling per service (as its listeners compare them); this package
// does not read them.
type refusals struct {
	// until is the latest end of any entry's lifetime (unix ns): a session
	// waits for the app's service name before it plans only before then,
	// so that the common path reads one atomic.
	until atomic.Int64
	// n is the number of entries, live or not: a success looks them up
	// only when there are some.
	n atomic.Int32

	mu      sync.Mutex
	entries map[refusalKey]*refusal
	clock   uint64 // ticks at each use, for the least recently used entry
}

type refusalKey struct{ server, service string }

// refusal is one server's refusal of one service.
type refusal struct {
	until    time.Time     // new sessions try the server last until then
	lifetime time.Duration // the last lifetime given: doubled at a repeat after it ended
	used     uint64        // refusals.clock when it last refused or reordered a plan
	times    uint64        // refusals since the server last served the service (the status page's count)
	code     int           // the ORA code of the last one (12514, 12505)
}

// remember records that server refused service at now, with base and max
// as the lifetimes (open_for, max_open_for). It returns the lifetime it
// gave when the refusal is new (0 when the server was already remembered as
// refusing the service): a refusal that comes while the entry is live (a
// session planned before it, or one that tried every other server first)
// changes nothing; one after its end doubles the lifetime, as a failed
// half-open trial doubles open_for.
func (r *refusals) remember(server, service string, code int, now time.Time, base, max time.Duration) (fresh time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.entries == nil {
		r.entries = map[refusalKey]*refusal{}
	}
	r.clock++
	k := refusalKey{server, service}
	e, ok := r.entries[k]
	if ok {
		e.times++
		e.code = code
	}
	switch {
	case ok && now.Before(e.until):
		e.used = r.clock
		return 0
	case ok:
		e.lifetime = doubled(e.lifetime, max)
		e.until, e.used = now.Add(e.lifetime), r.clock
	default:
		if len(r.entries) >= maxRefusals {
			r.dropLeastUsedLocked()
		}
		e = &refusal{lifetime: base, until: now.Add(base), used: r.clock, times: 1, code: code}
		r.entries[k] = e
		fresh = base
	}
	if u := e.until.UnixNano(); u > r.until.Load() {
		r.until.Store(u)
	}
	r.n.Store(int32(len(r.entries)))
	return fresh
}

// dropLeastUsedLocked drops the entry no session has needed for longest:
// a flood of made-up service names, each refused once, pushes out its own
// entries before one that every session of a real service consults.
func (r *refusals) dropLeastUsedLocked() {
	var oldest refusalKey
	first := true
	var at uint64
	for k, e := range r.entries {
		if first || e.used < at {
			oldest, at, first = k, e.used, false
		}
	}
	delete(r.entries, oldest)
	r.untilLocked()
}

// forget drops the refusal of service by server: the server served it.
// It reports whether the refusal still put the server last then.
func (r *refusals) forget(server, service string) (live bool) {
	if r.n.Load() == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k := refusalKey{server, service}
	e, ok := r.entries[k]
	if !ok {
		return false
	}
	delete(r.entries, k)
	r.n.Store(int32(len(r.entries)))
	r.untilLocked()
	return time.Now().Before(e.until)
}

// untilLocked sets until to the latest end of the entries left.
func (r *refusals) untilLocked() {
	var u int64
	for _, e := range r.entries {
		u = max(u, e.until.UnixNano())
	}
	r.until.Store(u)
}

// live tells whether any refusal still orders plans at now.
func (r *refusals) live(now time.Time) bool { return now.UnixNano() < r.until.Load() }

// last moves the servers of list that refused service, their refusal
// still live at now, after the others, keeping the order of each part.
func (r *refusals) last(list []*Server, service string, now time.Time) []*Server {
	if service == "" || !r.live(now) || len(list) < 2 {
		return list
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var refused []*Server
	for _, s := range list {
		if e := r.entries[refusalKey{s.Address, service}]; e != nil && now.Before(e.until) {
			r.clock++
			e.used = r.clock
			refused = append(refused, s)
		}
	}
	if len(refused) == 0 || len(refused) == len(list) {
		return list
	}
	out := make([]*Server, 0, len(list))
	for _, s := range list {
		if !slices.Contains(refused, s) {
			out = append(out, s)
		}
	}
	return append(out, refused...)
}

// has tells whether server refused service, the refusal still live at now.
func (r *refusals) has(server, service string, now time.Time) bool {
	if service == "" || !r.live(now) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[refusalKey{server, service}]
	return e != nil && now.Before(e.until)
}

// kept tells whether server refused service and has not served it since,
// whether or not the refusal still puts it last (ElsewhereAgain).
func (r *refusals) kept(server, service string) bool {
	if service == "" || r.n.Load() == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.entries[refusalKey{server, service}] != nil
}

// ServiceRefusal is a server's refusal of a service that still puts the
// server last for the service's new sessions (the status page and
// /api/links show them).
type ServiceRefusal struct {
	Service  string        // in the spelling the proxy remembers it by (lower case)
	Until    time.Time     // new sessions of Service dial the server last until then
	For      time.Duration // the time given at the last refusal after the previous one ended: open_for, doubled at each repeat up to max_open_for
	Refusals uint64        // refusals since the pair was remembered (it is forgotten when the server serves the service)
	Code     int           // the ORA code of the last refusal: 12514 or 12505
}

// of lists server's live refusals at now, by service name: at most
// maxRefusals, read under the memory's lock (an admin request's cost, not
// a session's). Entries past their time are kept only to double the next
// lifetime and order no plan, so they are not listed.
func (r *refusals) of(server string, now time.Time) []ServiceRefusal {
	if !r.live(now) {
		return nil
	}
	r.mu.Lock()
	var out []ServiceRefusal
	for k, e := range r.entries {
		if k.server == server && now.Before(e.until) {
			out = append(out, ServiceRefusal{Service: k.service, Until: e.until, For: e.lifetime, Refusals: e.times, Code: e.code})
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b ServiceRefusal) int { return cmp.Compare(a.Service, b.Service) })
	return out
}

// keepOnly drops the entries of servers not in addrs (a reload removed
// them).
func (r *refusals) keepOnly(addrs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.entries {
		if !slices.Contains(addrs, k.server) {
			delete(r.entries, k)
		}
	}
	r.n.Store(int32(len(r.entries)))
	r.untilLocked()
}

// ServiceRefusalsLive tells whether a server's refusal of a service still
// puts that server last for new sessions of the service: only then does a
// session need its service name before it plans (Plan.ForService).
func (b *Backend) ServiceRefusalsLive(now time.Time) bool { return b.refusals.live(now) }

// ServiceRefusalsKept tells whether the backend remembers any refusal of a
// service, live or not (ServedService has something to forget).
func (b *Backend) ServiceRefusalsKept() bool { return b.refusals.n.Load() > 0 }

// RefusedService records that s refused service with code (a listener
// that does not offer it: ORA-12514, ORA-12505; the status page shows
// it), so that new sessions for service try s after the servers that
// did not refuse it, for the backend's open_for; a repeat after that
// doubles the time, up to max_open_for, until s serves the service again
// (ServedService). It returns that time when the refusal is newly
// remembered (else 0), for the caller's log line. service "" is no service.
func (s *Server) RefusedService(service string, code int) time.Duration {
	if service == "" {
		return 0
	}
	b := s.backend
	return b.refusals.remember(s.Address, service, code, time.Now(), b.Config.Breaker.OpenFor.Duration, b.Config.Breaker.MaxOpenFor.Duration)
}

// ServiceRefusals lists the services s refused whose refusal still puts s
// last for their new sessions at now, by name (at most 256): what an
// operator needs to see why sessions avoid s, or wait for their CONNECT.
func (s *Server) ServiceRefusals(now time.Time) []ServiceRefusal {
	return s.backend.refusals.of(s.Address, now)
}

// ServedService tells that s took a session for service: a refusal of it
// that s gave before is forgotten. One that still put s last for the
// service is news for the sessions that found nowhere else to go
// (ServerBack): s serves the service now.
func (s *Server) ServedService(service string) {
	if service != "" && s.backend.refusals.forget(s.Address, service) {
		s.back()
	}
}

// ForService names the service the plan's session asks for (in the spelling
// RefusedService was given): its rounds try the servers that refused it
// lately after the others. "" (unknown) leaves the balance policy's order.
func (p *Plan) ForService(service string) { p.service = service }

// RefusedKept lists b's servers that refused service and have not served
// it since (none for service ""), however long ago: ElsewhereAgain's
// refusals, for a session waiting under b's definition when a reload
// replaced it (proxy).
func (b *Backend) RefusedKept(service string) []*Server {
	return b.serversWhere(func(s *Server) bool { return b.refusals.kept(s.Address, service) })
}

// RefusedLately lists b's servers whose refusal of service still puts them
// last for its sessions at now (none for service ""). A session waiting
// under b's definition when a reload replaced it asks it (proxy,
// answerBound.reloadedElsewhere): the new definition may have forgotten
// the refusals (Inherit), and a server that refused the service is still
// nowhere for the session to go.
func (b *Backend) RefusedLately(service string, now time.Time) []*Server {
	return b.serversWhere(func(s *Server) bool { return b.refusals.has(s.Address, service, now) })
}

// serversWhere lists b's servers for which f is true, in b's order.
func (b *Backend) serversWhere(f func(*Server) bool) []*Server {
	var out []*Server
	for _, s := range b.Servers {
		if f(s) {
			out = append(out, s)
		}
	}
	return out
}
