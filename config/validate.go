package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

// validate checks meaning: every error is prefixed with the table it is in
// (`listener "orders": ...`) and names the key. Each error and warning
// comes with the table it is about (errAt, warnAt): which [[listener]] or
// [[backend]] by its place in the file, for the line (withLines).
// defaulted holds the durations the file left out (applyDefaults); failed
// the fields that did not decode (a value of the wrong type, reported as
// such): a check that reads one is skipped, as its error would be made up
// (`listen: "" is not host:port` for listen = 1522) or the same again.
func (c *Config) validate(defaulted map[*Duration]bool, failed failedSet) (errs, warnings []string, errAt, warnAt []tablePos) {
	var at tablePos // the table being checked
	add := func(format string, a ...any) {
		errs = append(errs, fmt.Sprintf(format, a...))
		errAt = append(errAt, at)
	}
	warn := func(format string, a ...any) {
		warnings = append(warnings, fmt.Sprintf(format, a...))
		warnAt = append(warnAt, at)
	}

	if !failed.any(&c.Log.Level) {
		oneOf(add, "log: ", "level", c.Log.Level, "info", "trace", "debug", "info", "warn", "error")
	}
	if !failed.any(&c.Log.Format) {
		oneOf(add, "log: ", "format", c.Log.Format, "text", "text", "json")
	}
	adminListen := false // a valid admin.listen, to check the listeners' against
	switch {
	case failed.any(&c.Admin.Listen):
	case c.Admin.Listen == "": // written so (applyDefaults)
		add("admin: listen is empty: the admin listener cannot be turned off; give HOST:PORT, or leave the key out for %s", DefaultAdminListen)
	default:
		if err := checkHostPort(c.Admin.Listen); err != nil {
			add("admin: listen: %v", err)
		} else {
			adminListen = true
		}
	}
	var err error
	if !failed.any(&c.Admin.Allow) {
		if c.Admin.AllowNets, err = parseNets(c.Admin.Allow); err != nil {
			add("admin: allow: %v", err)
		}
		for _, m := range hostBitsSet(c.Admin.Allow) {
			warn("admin: allow: %s", m)
		}
	}
	if host, _, err := net.SplitHostPort(c.Admin.Listen); err == nil && !failed.any(&c.Admin.Listen, &c.Admin.Allow) {
		if len(c.Admin.Allow) == 0 && !isLoopback(host) {
			warn("admin: listen %q is reachable from other hosts and admin.allow is empty: anyone who reaches it sees your links", c.Admin.Listen)
		}
		h, _, _ := splitSocket(c.Admin.Listen)
		local := h == "" || h == "127.0.0.1" // reached through 127.0.0.1
		if local && len(c.Admin.AllowNets) > 0 && !Allowed(c.Admin.AllowNets, netip.MustParseAddr("127.0.0.1")) {
			warn("admin: allow leaves out 127.0.0.1: `tnsguard healthcheck` (the Docker HEALTHCHECK) asks from there, gets 403 and reports not ready")
		}
	}
	if w := c.Reload.Watch.Duration; w > 0 && w < time.Second && !failed.any(&c.Reload.Watch) {
		add("reload: watch %q is under 1s: reading the file more often finds no change sooner than a person or kubelet makes it; use 0s (off) or 1s and up", w)
	}

	// named says where a table is in messages, checks its name is set and
	// unique among seen, and records it there. A name that did not decode
	// is none: the table is named by its place.
	named := func(kind string, field *string, i int, seen map[string]bool) (where string) {
		if failed.any(field) {
			return fmt.Sprintf("%s #%d", kind, i+1)
		}
		name := *field
		where = fmt.Sprintf("%s %q", kind, name)
		if name == "" {
			where = fmt.Sprintf("%s #%d", kind, i+1)
			add("%s: name is empty", where)
		} else if seen[name] {
			add("%s: name is defined twice", where)
		}
		seen[name] = true
		return where
	}
	// report adds a table's own errors and warnings under where.
	report := func(where, prefix string, e, w []string) {
		for _, m := range e {
			add("%s: %s%s", where, prefix, m)
		}
		for _, m := range w {
			warn("%s: %s%s", where, prefix, m)
		}
	}

	backends := map[string]bool{}
	unnamed := false // a backend whose name did not decode: a listener's may be it
	for i := range c.Backends {
		b := &c.Backends[i]
		at = tablePos{"backend", i}
		where := named("backend", &b.Name, i, backends)
		unnamed = unnamed || failed.any(&b.Name)
		e, w := b.validate(defaulted, failed)
		report(where, "", e, w)
	}
	// backend is the backend named name whose every key in fields (of
	// it, given it) decoded; nil when there is none.
	backend := func(name string, fields func(b *Backend) []any) *Backend {
		for i := range c.Backends {
			if b := &c.Backends[i]; !failed.any(&b.Name) && b.Name == name {
				if failed.any(fields(b)...) {
					return nil
				}
				return b
			}
		}
		return nil
	}

	names := map[string]bool{}
	addrs := map[string]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		at = tablePos{"listener", i}
		where := named("listener", &l.Name, i, names)
		listen := !failed.any(&l.Listen) // a listen to check
		if !listen {
		} else if err := checkHostPort(l.Listen); err != nil {
			add("%s: listen: %v", where, err)
		} else if other, dup := listenerOn(addrs, l.Listen); dup {
			add("%s: listen %q is also used by %s", where, l.Listen, other)
		} else if adminListen && SameSocket(l.Listen, c.Admin.Listen) {
			add("%s: listen %q takes the address of admin.listen %q: one of them could not start", where, l.Listen, c.Admin.Listen)
		} else if host, _, _ := net.SplitHostPort(l.Listen); host != "" && !isIP(host) {
			// Go listens on the first address the name has (localhost:
			// 127.0.0.1, not ::1, where Node.js tries ::1 first).
			warn("%s: listen %q names a host: tnsguard listens on one of its addresses only, looked up at start; give the IP address to listen on", where, l.Listen)
		}
		// The backends it names are known. backend and routes are checked
		// each on its own; what needs both (which backend a session gets
		// when no route is "*") needs both to have decoded.
		backendOK, routesOK := !failed.any(&l.Backend), !failed.any(&l.Routes)
		targets := backendOK && routesOK
		// Backends leaves out a backend that did not decode (""); whether
		// backend is used at all needs the routes.
		for _, name := range l.Backends() { // another listener's backend may chain through this one: no loop
			if b := backend(name, func(b *Backend) []any { return []any{&b.Servers} }); b != nil && listen && routesOK {
				for j := range b.Servers {
					srv := &b.Servers[j]
					if !failed.any(&srv.Address) && loopsBack(l.Listen, srv.Address) {
						add("%s: listen %q is server %q of backend %q: each session would dial the listener again, until the fds run out", where, l.Listen, srv.Address, b.Name)
					}
				}
			}
		}
		if listen {
			addrs[l.Listen] = where // listener "orders", or listener #3 when its name did not decode
		}
		switch {
		case targets && l.Backend == "" && l.Routes["*"] == "":
			add("%s: backend is empty", where)
		case backendOK && l.Backend != "" && !backends[l.Backend] && !unnamed:
			add("%s: backend %q is not defined", where, l.Backend)
		}
		folded := map[string]string{}
		for _, svc := range sortedKeys(l.Routes) {
			if !backends[l.Routes[svc]] && !unnamed {
				add("%s: routes: %q routes to backend %q, which is not defined", where, svc, l.Routes[svc])
			}
			// Service names match case-insensitively, as Oracle's do: two
			// keys that differ only in case would pick one at random.
			if other, dup := folded[strings.ToUpper(svc)]; dup {
				add("%s: routes: %q and %q are the same service (names match case-insensitively)", where, other, svc)
			}
			folded[strings.ToUpper(svc)] = svc
		}
		// The backend a session has while its CONNECT is read: the "*"
		// route's, else backend (as the proxy routes, Backends). backend
		// first checked one no session waits on when both are set: a "*"
		// backend with replay_bytes = 0 passed, and sent every service to
		// the default route, while a backend of 0 behind a "*" of 65536 was
		// refused though it takes no session.
		def := l.Backend
		if star, ok := l.Routes["*"]; ok {
			def = star
		}
		_, star := l.Routes["*"]
		// Routes need the CONNECT whatever services says.
		services := len(l.Routes) > 0 || !failed.any(&l.Services) && len(l.Services) > 0
		if b := backend(def, func(b *Backend) []any { return []any{&b.ReplayBytes} }); routesOK && (star || backendOK) && services &&
			b != nil && b.ReplayBytes != nil && *b.ReplayBytes < MinRouteBytes {
			// The app's opening is held, up to replay_bytes, until it is read:
			// with less, no CONNECT is ever in hand.
			if len(l.Routes) > 0 {
				add("%s: routes need the app's CONNECT, and backend %q holds an opening only up to replay_bytes %d: use at least %d", where, def, *b.ReplayBytes, MinRouteBytes)
			} else {
				warn("%s: services need the app's CONNECT, and backend %q holds an opening only up to replay_bytes %d: below %d the service label is often \"other\"", where, def, *b.ReplayBytes, MinRouteBytes)
			}
		}
		// The checks that read proxy_protocol need one of its values:
		// "loud" or "" needs no trusted_proxies.
		proxy := !failed.any(&l.ProxyProtocol) && oneOf(add, where+": ", "proxy_protocol", l.ProxyProtocol, "off", "off", "optional", "required")
		trusted := !failed.any(&l.TrustedProxies)
		if trusted {
			if l.TrustedNets, err = parseNets(l.TrustedProxies); err != nil {
				add("%s: trusted_proxies: %v", where, err)
			}
			for _, m := range hostBitsSet(l.TrustedProxies) {
				warn("%s: trusted_proxies: %s", where, m)
			}
		}
		if !proxy {
		} else if l.ProxyProtocol == "off" && trusted && len(l.TrustedProxies) > 0 {
			// The balancer's header would reach the database as the app's
			// first bytes, and every session through it would fail.
			warn("%s: trusted_proxies is set but proxy_protocol is \"off\": PROXY headers from them are passed to the backend as the app's bytes; set proxy_protocol = \"required\" (or \"optional\")", where)
		}
		if !proxy || l.ProxyProtocol == "off" || failed.any(&l.ProxyHeaderTimeout) {
		} else if l.ProxyHeaderTimeout.Duration <= 0 {
			add("%s: proxy_header_timeout must be > 0 when proxy_protocol is %q", where, l.ProxyProtocol)
		} else if l.ProxyHeaderTimeout.Duration < minDialTimeout {
			// "1ns" passed, and the wait for every balancer's header
			// ended before the header could be read.
			add("%s: proxy_header_timeout %v is under %v: waits that short end before a balancer's header arrives, and its connections would be closed", where, l.ProxyHeaderTimeout.Duration, minDialTimeout)
		}
		if d := l.IdleTimeout.Duration; d > 0 && d < minIdleTimeout && !failed.any(&l.IdleTimeout) {
			// Sessions are looked at once a second: "500ms" resets those
			// idle that long at the next look, up to a second late, and
			// "1ns" every session between two packets at a look. Either
			// does what it says, so it is a warning, not an error.
			warn("%s: idle_timeout %v is under %v: sessions are looked at once a second, so each session that has moved no byte for %v at a look is reset then (a pool's idle sessions within a second); use 1s or more, or 0s for never", where, d, minIdleTimeout, d)
		}
		if proxy && l.ProxyProtocol != "off" && trusted && len(l.TrustedProxies) == 0 {
			add("%s: proxy_protocol %q needs trusted_proxies: PROXY headers are honoured only from them", where, l.ProxyProtocol)
		}
		if !failed.any(&l.Allow) {
			if l.AllowNets, err = parseNets(l.Allow); err != nil {
				add("%s: allow: %v", where, err)
			}
			for _, m := range hostBitsSet(l.Allow) {
				warn("%s: allow: %s", where, m)
			}
		}
		if l.MaxSessions < 0 && !failed.any(&l.MaxSessions) {
			add("%s: max_sessions must not be negative", where)
		}
		if l.MaxSessionsPerSource < 0 && !failed.any(&l.MaxSessionsPerSource) {
			add("%s: max_sessions_per_source must not be negative", where)
		}
		e, w := l.Keepalive.validate(failed)
		report(where, "keepalive.", e, w)
	}
	at = tablePos{}
	if len(c.Listeners) == 0 {
		add("no [[listener]] is defined")
	}
	return errs, warnings, errAt, warnAt
}

// oneOf checks with add a key of a few values (prefix names its table),
// "" too (written so: applyDefaults left it), and tells whether value is
// one of values; dflt is the key's default.
func oneOf(add func(string, ...any), prefix, key, value, dflt string, values ...string) bool {
	if slices.Contains(values, value) {
		return true
	}
	if value == "" {
		add("%s%s is empty: give one of %s, or leave the key out for %q", prefix, key, strings.Join(values, ", "), dflt)
	} else {
		add("%s%s %q is not one of %s", prefix, key, value, strings.Join(values, ", "))
	}
	return false
}

// tablePos is a [[listener]] or [[backend]] by its place among those of
// the file (kind "" for the top level, [log] and [admin]).
type tablePos struct {
	kind  string
	index int
}

// validate checks a backend; defaulted holds the durations the file left
// out (Config.defaulted), failed the keys that did not decode (a check
// that reads one is skipped).
func (b *Backend) validate(defaulted map[*Duration]bool, failed failedSet) (errs, warnings []string) {
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	ok := func(fields ...any) bool { return !failed.any(fields...) }
	// dflt marks a value in a message as a default, a key the file never
	// wrote: a file that sets only a short health.interval, or a long
	// connect_timeout, meets the default of the other key.
	dflt := func(d *Duration) string {
		if defaulted[d] {
			return ", the default"
		}
		return ""
	}
	if ok(&b.Balance) {
		oneOf(add, "", "balance", b.Balance, "priority", "priority", "round_robin", "least_sessions")
	}
	if !ok(&b.ConnectTimeout) {
	} else if b.ConnectTimeout.Duration <= 0 {
		add("connect_timeout must be > 0")
	} else if b.ConnectTimeout.Duration < minDialTimeout {
		// "1ns" passed, and every dial of every session timed out at
		// once: each app was reset after connect_budget, no server
		// ever counted as dialed.
		add("connect_timeout %v is under %v: dials that short time out before a database can answer, and sessions would find no server", b.ConnectTimeout.Duration, minDialTimeout)
	}
	if b.ConnectBudget.Duration < b.ConnectTimeout.Duration && ok(&b.ConnectBudget, &b.ConnectTimeout) {
		add("connect_budget (%v%s) must be at least connect_timeout (%v)", b.ConnectBudget.Duration, dflt(&b.ConnectBudget), b.ConnectTimeout.Duration)
	}
	if !ok(&b.AnswerTimeout) {
	} else if b.AnswerTimeout.Duration <= 0 {
		add("answer_timeout must be > 0")
	} else if b.AnswerTimeout.Duration < minDialTimeout {
		add("answer_timeout %v is under %v: waits that short end before a listener can answer, and every session would move on from a server that works", b.AnswerTimeout.Duration, minDialTimeout)
	} else if !defaulted[&b.AnswerTimeout] && b.AnswerTimeout.Duration > b.ConnectBudget.Duration && len(b.Servers) > 1 && ok(&b.ConnectBudget) {
		// Written so, it reads as a bound it never is: a hung listener
		// still holds each session it takes for the whole budget. Equal
		// to the budget is how to ask for that on purpose.
		warnings = append(warnings, fmt.Sprintf("answer_timeout (%v) is over connect_budget (%v%s): it never ends a wait, and a server that accepts and never answers holds every session it takes until the budget ends; set it to connect_budget if that is what you want", b.AnswerTimeout.Duration, b.ConnectBudget.Duration, dflt(&b.ConnectBudget)))
	}
	if !ok(&b.Backoff) {
	} else if b.Backoff.Duration <= 0 {
		add("backoff must be > 0")
	} else if b.Backoff.Duration < minBackoff {
		// "1ns" passed: a session waiting out an outage dialed the
		// refusing servers some 50,000 times a second, on a whole core.
		add("backoff %v is under %v: each pause ends in a round of dials, and with none every waiting session dials the servers without a break (tens of thousands a second while they refuse)", b.Backoff.Duration, minBackoff)
	}
	if b.BackoffMax.Duration < b.Backoff.Duration && ok(&b.BackoffMax, &b.Backoff) {
		add("backoff_max (%v) must be at least backoff (%v)", b.BackoffMax.Duration, b.Backoff.Duration)
	}
	retries := ok(&b.RetryOn) // what retry_on says is known
	replay := ok(&b.ReplayBytes)
	for _, r := range b.RetryOn {
		switch r {
		case "connect", "reset", "refuse":
		default:
			add("retry_on %q is not one of connect, reset, refuse", r)
		}
	}
	for _, code := range b.RefuseErrors {
		if (code <= 0 || code > 99999) && ok(&b.RefuseErrors) {
			add("refuse_errors: %d is not an ORA error number (1 to 99999)", code)
		}
	}
	if b.Retries("refuse") && len(b.RefuseErrors) == 0 && retries && ok(&b.RefuseErrors) {
		warnings = append(warnings, `retry_on "refuse" retries only the REFUSE codes in refuse_errors, and refuse_errors is empty: no REFUSE is retried; leave refuse_errors out for the default codes`)
	}
	if (*b.ReplayBytes < 0 || *b.ReplayBytes > 16<<20) && replay {
		add("replay_bytes %d must be between 0 and %d", *b.ReplayBytes, 16<<20)
	}
	if ok(&b.SendProxyProtocol) {
		oneOf(add, "", "send_proxy_protocol", b.SendProxyProtocol, "off", "off", "v1", "v2")
	}
	if ok(&b.Redirect) {
		oneOf(add, "", "redirect", b.Redirect, "pass", "pass", "follow")
	}
	if b.Redirect == "follow" && *b.ReplayBytes < MinRouteBytes && replay {
		// Below it an app's CONNECT (node-oracledb's: some 500 bytes) is
		// often not kept: its REDIRECT then goes to the app, uncounted.
		add(`redirect = "follow" needs replay_bytes of at least %d (the app's CONNECT is sent again, to the address the REDIRECT names), not %d`, MinRouteBytes, *b.ReplayBytes)
	}
	if b.Retries("refuse") && *b.ReplayBytes < MinRouteBytes && retries && replay {
		// The REFUSE is held back and the CONNECT replayed only when the
		// CONNECT was kept: an app whose CONNECT is longer gets the REFUSE
		// (go-ora's is some 250 to 600 bytes, node-oracledb's some 500).
		warnings = append(warnings, fmt.Sprintf(`retry_on "refuse" needs the app's CONNECT kept: with replay_bytes %d (below %d) an app whose CONNECT is longer gets the listener's REFUSE (ORA-12514 at a switchover) instead of the next server`, *b.ReplayBytes, MinRouteBytes))
	}
	e, w := b.Keepalive.validate(failed)
	for _, m := range e {
		add("keepalive.%s", m)
	}
	for _, m := range w {
		warnings = append(warnings, "keepalive."+m)
	}
	h := &b.Health
	// The checks that read health.check need one of its values.
	check := ok(&h.Check) && oneOf(add, "", "health.check", h.Check, "tcp", "tcp", "tnsping", "off")
	if h.Interval.Duration < minHealthInterval && ok(&h.Interval) {
		// "1ns" passed: a busy loop of checks, or with "1ms" a thousand
		// connections a second to the database.
		add("health.interval must be at least %v: each check is a connection to the server", minHealthInterval)
	}
	if (h.Timeout.Duration <= 0 || h.Timeout.Duration > h.Interval.Duration) && ok(&h.Timeout, &h.Interval) {
		add("health.timeout (%v%s) must be > 0 and at most health.interval (%v)", h.Timeout.Duration, dflt(&b.Health.Timeout), h.Interval.Duration)
	} else if h.Timeout.Duration > 0 && h.Timeout.Duration < minDialTimeout && ok(&h.Timeout) {
		// "1ns" passed, and every check failed: every server counted
		// as down while the databases were up.
		add("health.timeout %v is under %v: checks that short time out before a database can answer, and its servers would count as down", h.Timeout.Duration, minDialTimeout)
	}
	// One message per key, so that each names the line of its own key.
	if *h.Rise < 1 && ok(&h.Rise) {
		add("health.rise must be at least 1")
	}
	if *h.Fall < 1 && ok(&h.Fall) {
		add("health.fall must be at least 1")
	}
	service := ok(&h.Service)
	if h.Service != "" && h.Check != "tnsping" && service && check {
		add("health.service needs check = \"tnsping\"")
	}
	if strings.ContainsAny(h.Service, "()=\"\\ \t\r\n") && service {
		add("health.service %q: a service name has no spaces, parentheses, '=', quotes or backslashes", h.Service)
	}
	if *b.Breaker.Failures < 0 && ok(&b.Breaker.Failures) {
		add("breaker.failures must not be negative (0 turns the breaker off)")
	}
	if b.Breaker.OpenFor.Duration <= 0 && ok(&b.Breaker.OpenFor) {
		add("breaker.open_for must be > 0")
	}
	if b.Breaker.MaxOpenFor.Duration < b.Breaker.OpenFor.Duration && ok(&b.Breaker.MaxOpenFor, &b.Breaker.OpenFor) {
		add("breaker.max_open_for (%v) must be at least breaker.open_for (%v)", b.Breaker.MaxOpenFor.Duration, b.Breaker.OpenFor.Duration)
	}
	if o := b.Breaker.OpenFor.Duration; o > 0 && o < b.ConnectTimeout.Duration && h.Check == "off" && ok(&b.Breaker.OpenFor, &b.ConnectTimeout, &h.Check) {
		// Without checks, a server whose dial failed goes after the others
		// for open_for (Server.shunned), and nothing else keeps sessions
		// off it. Measured with a filtered server first, connect_timeout
		// 1s, a session every 50 ms: with failures = 0 and open_for "1ns"
		// every session waited 1s on it, with "10s" one in seven; the
		// breaker's doubling (1ns, 2ns, ... 1s after 30 trials) limits
		// the harm when it counts failures. "1ns" is no error: sessions
		// are still served, by the next server, connect_timeout late.
		warnings = append(warnings, fmt.Sprintf(`breaker.open_for %v is shorter than connect_timeout (%v%s): with health.check = "off" a server whose dial failed goes after the others only for open_for, so sessions dial a server that is down again before a dial to it can time out, and most of them wait connect_timeout on it`, o, b.ConnectTimeout.Duration, dflt(&b.ConnectTimeout)))
	}
	if len(b.Servers) == 0 && ok(&b.Servers) {
		add("no [[backend.server]] is defined")
	}
	seen := map[string]bool{}
	usable, negative := false, false
	weights := ok(&b.Servers) // every server's weight is known
	for i := range b.Servers {
		s := &b.Servers[i]
		weight := ok(&s.Weight)
		weights = weights && weight
		usable = usable || weight && *s.Weight > 0
		// A server is named by its address; one without is named by its
		// place, as a table without a name is (`server #2: `), so that
		// lineOf finds its own [[backend.server]] rather than the
		// backend's header.
		where := fmt.Sprintf("server %q", s.Address)
		switch {
		case !ok(&s.Address):
			where = fmt.Sprintf("server #%d", i+1)
		case s.Address == "":
			where = fmt.Sprintf("server #%d", i+1)
			add("%s: address is empty: give the database's HOST:PORT", where)
		default:
			if err := checkHostPort(s.Address); err != nil {
				add("%s: address: %v", where, err)
			} else if _, port, _ := net.SplitHostPort(s.Address); strings.Trim(port, "0") == "" {
				add("%s: address: port 0 cannot be dialed", where)
			} else if seen[serverKey(s.Address)] {
				add("%s: defined twice", where)
			}
			seen[serverKey(s.Address)] = true
		}
		if weight && *s.Weight < 0 {
			add("%s: weight must not be negative", where)
			negative = true
		}
	}
	if len(b.Servers) > 0 && !usable && !negative && weights { // a negative weight has its own message
		add("every server has weight 0: no session can use this backend")
	}
	taking := 0
	for i := range b.Servers {
		if s := &b.Servers[i]; ok(&s.Weight) && *s.Weight > 0 {
			taking++
		}
	}
	if h.Check == "tnsping" && h.Service == "" && taking > 1 && !b.Retries("refuse") && check && service && retries {
		// An Oracle listener answers (and passes tnsping) before its
		// service registers: after a restart, fail-back sends sessions to
		// it, and at a switchover the old primary keeps taking them; each
		// gets its ORA-12514 while another server could take it. With
		// health.service a server is up only once its service is there.
		warnings = append(warnings, `retry_on lacks "refuse": an Oracle listener passes tnsping before its service registers (a restart, a fail-back, a switchover), and its ORA-12514 goes to the apps while another server could take them`)
	}
	return errs, warnings
}

// validate checks a leg's keepalive; failed holds the keys that did not
// decode (and those derived from a path_idle_timeout that did not:
// failedSet.derived): a check that reads one is skipped.
func (k *Keepalive) validate(failed failedSet) (errs, warnings []string) {
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	idle, interval, count, user := !failed.any(&k.Idle), !failed.any(&k.Interval), !failed.any(&k.Count), !failed.any(&k.UserTimeout)
	if k.Idle.Duration > 0 && k.Idle.Duration < time.Second && idle {
		add("idle %v: the kernel counts keepalive in whole seconds; use at least 1s, or 0s to turn keepalive off", k.Idle.Duration)
	}
	if *k.Count < 0 && count {
		add("count must not be negative")
	}
	if k.Idle.Duration > 0 && idle {
		if *k.Count > keepalive.MaxCount && count {
			add("count %d: the kernel allows at most %d", *k.Count, keepalive.MaxCount)
		}
		if k.Idle.Duration > keepalive.MaxTimer {
			add("idle %v: the kernel allows at most %v", k.Idle.Duration, keepalive.MaxTimer)
		}
		if k.Interval.Duration > keepalive.MaxTimer && interval {
			add("interval %v: the kernel allows at most %v", k.Interval.Duration, keepalive.MaxTimer)
		}
	}
	if k.UserTimeout.Duration > keepalive.MaxUserTimeout && user {
		add("user_timeout %v: the kernel allows at most %v", k.UserTimeout.Duration, keepalive.MaxUserTimeout)
	}
	if k.UserTimeout.Duration > 0 && k.UserTimeout.Duration < time.Millisecond && user {
		// The kernel counts milliseconds: "500us" would be 0, its default.
		add("user_timeout %v: the kernel counts whole milliseconds; use at least 1ms, or 0s for the kernel's default", k.UserTimeout.Duration)
	}
	if k.Idle.Duration > 0 && *k.Count > 0 && k.Interval.Duration < time.Second && idle && count && interval {
		add("interval %v must be at least 1s when count > 0", k.Interval.Duration)
	}
	if k.Idle.Duration > 0 && *k.Count == 0 && idle && count {
		add("count must be at least 1 when idle is set (idle = \"0s\" turns keepalive off)")
	}
	if len(errs) > 0 {
		return errs, nil
	}
	if u := k.UserTimeout.Duration; u > 0 && u < keepalive.MinRTO && user {
		// Measured in the lab (TestLabUserTimeoutUnderTheRTO): a cut
		// ended sessions of "1ms" 0.22 to 0.5 s in; with every second
		// segment lost, all 10 sessions of "1ms" ended with 50 ms RTT,
		// and on a LAN one in 10 of "1ms" to "100ms", none of "200ms".
		warnings = append(warnings, fmt.Sprintf("user_timeout %v is under the kernel's shortest retransmission timeout (%v): the kernel looks at it only when a retransmission times out, so a cut ends sessions some 0.2 to 0.7 s in, not after %v, while a lost segment whose retransmission is not acknowledged within %v ends a healthy one", u, keepalive.MinRTO, u, u))
	}
	if k.Idle.Duration == 0 || !(idle && interval && count && user) || failed.any(&k.PathIdleTimeout) {
		return nil, warnings
	}
	// What the kernel does: idle and interval in whole seconds, rounded
	// up. The unrounded sum ("1.5s" + "1.5s"*2 = 4.5s) let a user_timeout
	// of 5s pass without a word, while the last probe left at 6s.
	kern := k.Settings().InKernel()
	rounded := ""
	if kern.Idle != k.Idle.Duration || kern.Interval != k.Interval.Duration {
		rounded = fmt.Sprintf(", of idle %v and interval %v: the kernel counts whole seconds, rounded up", kern.Idle, kern.Interval)
	}
	probes := kern.ProbeSpan()
	if k.UserTimeout.Duration > 0 && k.UserTimeout.Duration < probes {
		warnings = append(warnings, fmt.Sprintf("user_timeout %v is shorter than idle + interval*count (%v%s): it cuts keepalive short", k.UserTimeout.Duration, probes, rounded))
	}
	if p := k.PathIdleTimeout.Duration; p > 0 {
		d := keepalive.FromPathIdle(p)
		tooShort := d.Idle >= p || *k.Count > 1 && d.Idle+d.Interval >= p // even derived values fail it
		if derived := k.Idle.Duration == d.Idle && k.Interval.Duration == d.Interval; derived && tooShort {
			// Not the user's idle: whole seconds cannot serve this path.
			warnings = append(warnings, fmt.Sprintf("path_idle_timeout %v: keepalive counts whole seconds, so the idle %v and interval %v derived from it cannot refresh a path this short in time; above 2s it can", p, d.Idle, d.Interval))
		} else if kern.Idle >= p {
			warnings = append(warnings, fmt.Sprintf("idle %s is not below path_idle_timeout %v: the path forgets idle sessions before the first probe", asKernel(k.Idle.Duration, kern.Idle), p))
		} else if second := kern.Idle + kern.Interval; *k.Count > 1 && second >= p {
			warnings = append(warnings, fmt.Sprintf("idle + interval (%v) is not below path_idle_timeout %v: one lost probe lets the path forget the session%s", second, p, rounded))
		}
	}
	return nil, warnings
}

// asKernel is a keepalive idle or interval as written, and as the kernel
// takes it (kern) when that differs: "9.5s (10s: the kernel counts whole
// seconds, rounded up)".
func asKernel(written, kern time.Duration) string {
	if written == kern {
		return written.String()
	}
	return fmt.Sprintf("%v (%v: the kernel counts whole seconds, rounded up)", written, kern)
}

// urlEscapedZone tells a zone written as in a URL (%25eth0 for %eth0). A
// zone of digits is an interface index, 251 included.
func urlEscapedZone(z string) bool {
	rest, ok := strings.CutPrefix(z, "25")
	return ok && rest != "" && strings.ContainsFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if i := strings.LastIndexByte(s, ':'); i > 0 && isIP(s[:i]) && numericName(s[i+1:]) {
			// ::1:1522 or 2001:db8::1:1521: an IPv6 address and a port
			// without the brackets that tell them apart
			return fmt.Errorf("%q is not host:port: an IPv6 address goes in brackets, as %s", s, net.JoinHostPort(s[:i], s[i+1:]))
		}
		return fmt.Errorf("%q is not host:port", s)
	}
	if host != "" {
		ip, err := netip.ParseAddr(host)
		switch {
		case err != nil && numericName(host):
			return fmt.Errorf("%q: %q is not an IP address", s, host)
		case err != nil && !validHostname(host):
			return fmt.Errorf("%q: bad host %q", s, host)
		case err != nil: // a name
		case ip.Is6() && !ip.Is4In6() && ip.IsLinkLocalUnicast() && ip.Zone() == "":
			return fmt.Errorf("%q: a link-local address needs a zone, as [%s%%eth0]", s, host)
		case urlEscapedZone(ip.Zone()):
			return fmt.Errorf("%q: zone %q looks URL-escaped (%%25 is %%): write [%s%%%s]", s, ip.Zone(), ip.WithZone(""), ip.Zone()[2:])
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port %q", s, port)
	}
	return nil
}

// validHostname accepts a DNS name. Underscores are in: Docker's and
// Kubernetes' resolvers answer for names such as oracle_db, and so does
// Go's. A name whose last label is all digits is not one (RFC 3696 2.1):
// 127.1 or 10.0.0.256 is a mistyped address, which would fail only at run
// time as "no such host".
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > 253 || numericName(h) {
		return false
	}
	for _, r := range h {
		if !(r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// numericName reports whether h's last label is all digits.
func numericName(h string) bool {
	last := strings.TrimSuffix(h, ".")
	last = last[strings.LastIndexByte(last, '.')+1:]
	if last == "" {
		return false
	}
	for _, r := range last {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// Allowed reports whether a is in one of nets (an allow list parsed from
// the config); an empty list allows everyone. An IPv6 address's zone
// (fe80::1%eth0) does not count: a prefix never contains an address with
// one.
func Allowed(nets []netip.Prefix, a netip.Addr) bool {
	if len(nets) == 0 {
		return true
	}
	a = a.WithZone("")
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// parseNets accepts CIDRs and bare addresses (a /32 or /128).
func parseNets(list []string) ([]netip.Prefix, error) {
	var nets []netip.Prefix
	var bad []string
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
				// ::ffff:10.0.0.0/104: clients are matched unmapped
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			} else if a.Is4In6() {
				// ::ffff:10.0.0.0/8 is ::/8, not 10/8: an easy slip that
				// would let ::1 in and keep 10/8 out
				return nil, fmt.Errorf("%q: an IPv4-mapped prefix needs /96 to /128 (as written it is %s): write %s/%d, or %s/%d",
					s, p.Masked(), netip.PrefixFrom(a.Unmap(), min(p.Bits(), 32)).Masked().Addr(), min(p.Bits(), 32), a, min(p.Bits(), 32)+96)
			}
			nets = append(nets, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			if z := a.Zone(); strings.Contains(z, "/") {
				// netip reads fe80::%eth0/64 as the address fe80:: in a zone
				// "eth0/64", and the entry would hold that one address:
				// clients are matched without their zone, so a prefix has none.
				_, bits, _ := strings.Cut(z, "/")
				return nil, fmt.Errorf("%q: a prefix takes no zone (clients are matched without theirs): write %s/%s", s, a.WithZone(""), bits)
			}
			a = a.Unmap()
			nets = append(nets, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		bad = append(bad, fmt.Sprintf("%q", s))
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%s: not a CIDR or address", strings.Join(bad, ", "))
	}
	return nets, nil
}

// hostBitsSet describes each CIDR of list with bits set past its prefix
// length ("192.168.1.10/24", as `ip addr` shows an interface's address):
// parseNets matches the whole network it masks to, where one address was
// probably meant. Entries parseNets refuses are left to its error.
func hostBitsSet(list []string) []string {
	var out []string
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		a, bits := p.Addr(), p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				continue // parseNets refuses it
			}
			a, bits = a.Unmap(), bits-96
		}
		if m := netip.PrefixFrom(a, bits).Masked(); m.Addr() != a {
			out = append(out, fmt.Sprintf("%q has host bits set: it is the network %s, every address in it; for one address write %s (a /%d)", s, m, a, a.BitLen()))
		}
	}
	return out
}

// listenerOn finds the listener, of those seen (listen address -> how
// messages name it: listener "orders", listener #3), whose socket
// listening on addr would take.
func listenerOn(seen map[string]string, addr string) (string, bool) {
	for a, name := range seen {
		if SameSocket(a, addr) {
			return name, true
		}
	}
	return "", false
}

// minDialTimeout is the shortest connect_timeout, health.timeout and
// proxy_header_timeout check accepts: a dial, a check or a header takes
// at least a round trip (tens of µs on loopback, hundreds on a LAN), so
// with "1ns" every one failed. It is no advice: a dial to another host
// needs far more.
const minDialTimeout = time.Millisecond

// minIdleTimeout is the shortest idle_timeout (other than 0s, never) check
// takes without a warning: sessions are looked at once a second.
const minIdleTimeout = time.Second

// minBackoff is the shortest backoff (and so backoff_max) check accepts.
const minBackoff = time.Millisecond

// defaultHealthTimeout is health.timeout when the file sets none.
const defaultHealthTimeout = 2 * time.Second

// minHealthInterval is the shortest health.interval check accepts.
const minHealthInterval = 10 * time.Millisecond

// MinRouteBytes is the least replay_bytes that reads a CONNECT for routing
// and the service label: a CONNECT with its connect data rarely passes 2 KB,
// and 8 KiB is the SDU most drivers start with.
const MinRouteBytes = 8192

// SameSocket tells whether listening on a and on b would take one socket:
// the same port (not 0), on the same host or with either on every address.
func SameSocket(a, b string) bool {
	ha, pa, ok1 := splitSocket(a)
	hb, pb, ok2 := splitSocket(b)
	if !ok1 || !ok2 || pa != pb || pa == 0 { // port 0: each gets its own
		return false
	}
	return ha == hb || ha == "" || hb == ""
}

// loopsBack tells whether a server at addr is listen itself: the same
// port, and an address that reaches that listener on this host (the same
// address, or loopback or 0.0.0.0 for a wildcard listener). Each session
// would dial the listener again until the fds run out.
func loopsBack(listen, addr string) bool {
	hl, pl, ok1 := splitSocket(listen)
	hs, ps, ok2 := splitSocket(addr)
	if !ok1 || !ok2 || pl != ps || pl == 0 {
		return false
	}
	local := hs == "" || isLoopback(hs)
	// A dial to localhost tries every address of the name: ::1 too, where
	// /etc/hosts has it (Debian, RHEL), and first (Go orders them by RFC
	// 6724). Binding takes 127.0.0.1 alone (splitSocket), dialing does not.
	if rh, _, err := net.SplitHostPort(addr); err == nil {
		switch strings.TrimSuffix(strings.ToLower(rh), ".") {
		case "localhost":
			if hl == "" || hl == "127.0.0.1" || hl == "::1" {
				return true
			}
		case "ip6-localhost", "ip6-loopback": // Debian's names of ::1
			if hl == "" || hl == "::1" {
				return true
			}
		}
	}
	return hl == hs || (hl == "" && local) || (hs == "" && isLoopback(hl))
}

// splitSocket is addr's host as the kernel sees it ("" for every address;
// addresses unmapped, so [::ffff:127.0.0.1] is 127.0.0.1 and [0:0::1] is
// ::1; localhost as the 127.0.0.1 Go binds; other names lower-cased) and
// its port as a number.
func splitSocket(addr string) (string, int, bool) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, false
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, false
	}
	h = strings.ToLower(h)
	if h == "localhost" {
		h = "127.0.0.1"
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip = ip.Unmap(); ip.IsUnspecified() {
			return "", port, true
		}
		h = ip.String()
	}
	return h, port, true
}

// serverKey is a server address as the kernel reaches it: [0::1]:1521 and
// [::1]:1521, or db:1521 and DB:1521, are one server.
func serverKey(addr string) string {
	h, p, ok := splitSocket(addr)
	if !ok {
		return addr
	}
	return net.JoinHostPort(h, strconv.Itoa(p))
}

// isIP says whether host is an IP address, an IPv6 one with a zone too.
func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}
