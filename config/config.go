// Package config reads, defaults and validates tnsguard's TOML configuration.
//
// Typical use:
//
//	cfg, warnings, err := config.Load("/etc/tnsguard/tnsguard.toml")
//	if err != nil { // every problem, one per line, each naming file, line or table and key
//		fmt.Fprintln(os.Stderr, err)
//	}
//
// The order is always the same: decode, reject unknown keys, fill defaults,
// validate, then hand out an immutable *Config. A reload builds a new
// *Config the same way; a bad file never replaces a good one.
package config

import (
	_ "embed"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

//go:embed default.toml
var defaultText string

// DefaultText is the embedded default configuration: the same text as
// configs/tnsguard.toml (a test keeps them equal).
func DefaultText() string { return defaultText }

// Config is the whole validated configuration. Treat it as read-only.
type Config struct {
	Log       Log        `toml:"log"`
	Admin     Admin      `toml:"admin"`
	Shutdown  Shutdown   `toml:"shutdown"`
	Reload    Reload     `toml:"reload"`
	Listeners []Listener `toml:"listener"`
	Backends  []Backend  `toml:"backend"`

	// Source names where the configuration came from (a path, or "embedded default").
	Source string `toml:"-"`
	text   string // Source's text, for Place
}

// Log selects the log level and format.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Admin is the HTTP listener for metrics, health and the status page.
type Admin struct {
	Listen string   `toml:"listen"`
	Allow  []string `toml:"allow"`

	AllowNets []netip.Prefix `toml:"-"`
}

// Reload controls reloads other than SIGHUP's.
type Reload struct {
	// Watch is how often the config file is read to see whether it
	// changed; a change reloads it as SIGHUP does. 0: on SIGHUP only.
	// For a file a process cannot signal tnsguard about (a Kubernetes
	// ConfigMap, which kubelet swaps in place).
	Watch Duration `toml:"watch"`
}

// Shutdown controls the drain on SIGTERM/SIGINT.
type Shutdown struct {
	// Grace is how long /readyz reports 503 before listeners stop accepting,
	// so load balancers stop sending new connections first.
	Grace Duration `toml:"grace"`
	// DrainTimeout is how long live sessions may go on after that; the rest
	// are then closed and counted.
	DrainTimeout Duration `toml:"drain_timeout"`
}

// Listener is one address apps connect to.
type Listener struct {
	Name                 string    `toml:"name"`
	Listen               string    `toml:"listen"`
	Backend              string    `toml:"backend"`
	Routes               Routes    `toml:"routes"`
	Services             []string  `toml:"services"`
	ProxyProtocol        string    `toml:"proxy_protocol"`
	TrustedProxies       []string  `toml:"trusted_proxies"`
	ProxyHeaderTimeout   Duration  `toml:"proxy_header_timeout"`
	Allow                []string  `toml:"allow"`
	MaxSessions          int       `toml:"max_sessions"`
	MaxSessionsPerSource int       `toml:"max_sessions_per_source"`
	IdleTimeout          Duration  `toml:"idle_timeout"`
	Keepalive            Keepalive `toml:"keepalive"`

	AllowNets   []netip.Prefix `toml:"-"`
	TrustedNets []netip.Prefix `toml:"-"`
}

// Keepalive is one leg's TCP keepalive and user timeout.
type Keepalive struct {
	// PathIdleTimeout is the idle timeout of the firewall, NAT or load
	// balancer on this leg. When set, the values below that are not given
	// are derived from it (keepalive.FromPathIdle).
	PathIdleTimeout Duration `toml:"path_idle_timeout"`
	Idle            Duration `toml:"idle"`
	Interval        Duration `toml:"interval"`
	Count           *int     `toml:"count"`
	UserTimeout     Duration `toml:"user_timeout"`
}

// Settings returns the socket options to apply.
func (k Keepalive) Settings() keepalive.Settings {
	s := keepalive.Settings{Idle: k.Idle.Duration, Interval: k.Interval.Duration, UserTimeout: k.UserTimeout.Duration}
	if k.Count != nil {
		s.Count = *k.Count
	}
	return s
}

// Backend is a set of servers that one kind of session goes to.
type Backend struct {
	Name              string   `toml:"name"`
	Balance           string   `toml:"balance"`
	ConnectTimeout    Duration `toml:"connect_timeout"`
	ConnectBudget     Duration `toml:"connect_budget"`
	AnswerTimeout     Duration `toml:"answer_timeout"` // one server's first answer, when another could take the session (proxy: answerBound)
	Backoff           Duration `toml:"backoff"`
	BackoffMax        Duration `toml:"backoff_max"`
	RetryOn           []string `toml:"retry_on"`
	RefuseErrors      []int    `toml:"refuse_errors"`
	ReplayBytes       *int     `toml:"replay_bytes"`
	SendProxyProtocol string   `toml:"send_proxy_protocol"`
	// Redirect is what a TNS REDIRECT from a server does: "pass" gives
	// it to the app, which dials the address itself; "follow" dials it
	// here and gives the app that listener's answer.
	Redirect  string    `toml:"redirect"`
	Keepalive Keepalive `toml:"keepalive"`
	Health    Health    `toml:"health"`
	Breaker   Breaker   `toml:"breaker"`
	Servers   []Server  `toml:"server"`
}

// Retries reports whether retry_on lists the given reason.
func (b *Backend) Retries(reason string) bool {
	for _, r := range b.RetryOn {
		if r == reason {
			return true
		}
	}
	return false
}

// SendProxyVersion is the PROXY protocol version send_proxy_protocol asks
// for: 1, 2, or 0 for none.
func (b *Backend) SendProxyVersion() byte {
	switch b.SendProxyProtocol {
	case "v1":
		return 1
	case "v2":
		return 2
	}
	return 0
}

// Health is the active health check of every server of a backend.
type Health struct {
	Check           string   `toml:"check"`
	Interval        Duration `toml:"interval"`
	Timeout         Duration `toml:"timeout"`
	Rise            *int     `toml:"rise"`
	Fall            *int     `toml:"fall"`
	Service         string   `toml:"service"`
	ServiceInterval Duration `toml:"service_interval"`
}

// Breaker opens a server's circuit after consecutive failures.
type Breaker struct {
	Failures   *int     `toml:"failures"`
	OpenFor    Duration `toml:"open_for"`
	MaxOpenFor Duration `toml:"max_open_for"`
}

// Server is one address of a backend.
type Server struct {
	Address  string `toml:"address"`
	Priority int    `toml:"priority"`
	Weight   *int   `toml:"weight"`
}

// FileNeed is the open files that the sessions the listeners'
// max_sessions admit need, as the README sizes it: two for each session,
// a listening socket for each listener, a health check for each server and
// 20 besides (it saturates at the largest uint64: max_sessions may be near
// 2^63). sessions is the sum of max_sessions, and all tells whether every
// listener sets one (otherwise nothing bounds the sessions).
func (c *Config) FileNeed() (need, sessions uint64, all bool) {
	add := func(a, b uint64) uint64 {
		if s := a + b; s >= a {
			return s
		}
		return math.MaxUint64
	}
	all = true
	for _, l := range c.Listeners {
		sessions = add(sessions, uint64(max(l.MaxSessions, 0)))
		all = all && l.MaxSessions > 0
		need++ // its listening socket
	}
	for _, b := range c.Backends {
		need += uint64(len(b.Servers)) // a health check each
	}
	return add(add(add(need, 20), sessions), sessions), sessions, all
}

// Backend returns the backend with the given name, or nil.
func (c *Config) Backend(name string) *Backend {
	for i := range c.Backends {
		if c.Backends[i].Name == name {
			return &c.Backends[i]
		}
	}
	return nil
}

// Backends names the backends a listener's sessions can go to: those its
// routes name, and its backend unless a "*" route takes its place (as the
// proxy routes: the service's route, else "*", else backend).
func (l *Listener) Backends() []string {
	var out []string
	if _, ok := l.Routes["*"]; !ok && l.Backend != "" {
		out = append(out, l.Backend)
	}
	for _, b := range l.Routes {
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// DefaultAdminListen is admin.listen when the file leaves it out.
const DefaultAdminListen = "127.0.0.1:9521"

// DefaultRefuseErrors returns the TNS REFUSE codes that mean "this server
// cannot take the session now": another server may (service not registered,
// SID unknown, no handler, hand-off failed, instance restricted or blocking).
func DefaultRefuseErrors() []int {
	return []int{12514, 12505, 12516, 12518, 12519, 12520, 12526, 12527, 12528}
}

// applyDefaults fills in what the file left out, and returns those of the
// durations that validate's messages name as such ("the default": a key
// the file never wrote). empty tells whether the file wrote "" for a key
// (a path of keys and indexes: "backend", 1, "health", "check"): that is
// no key left out, and validate refuses it, where it took the default
// without a word (a templating variable that expanded to nothing turned
// proxy_protocol off).
func (c *Config) applyDefaults(empty func(path ...any) bool) (defaulted map[*Duration]bool) {
	defaulted = map[*Duration]bool{}
	noted := func(d *Duration, v time.Duration) {
		if !d.Set {
			defaulted[d] = true
		}
		d.orDefault(v)
	}
	or := func(s *string, v string, path ...any) {
		if *s == "" && !empty(path...) {
			*s = v
		}
	}
	or(&c.Log.Level, "info", "log", "level")
	or(&c.Log.Format, "text", "log", "format")
	// admin.listen = "" (as if to turn the admin listener off, which
	// cannot be) listened on the default; validate refuses it.
	or(&c.Admin.Listen, DefaultAdminListen, "admin", "listen")
	c.Shutdown.Grace.orDefault(time.Second)
	c.Shutdown.DrainTimeout.orDefault(30 * time.Second)
	for i := range c.Listeners {
		l := &c.Listeners[i]
		or(&l.ProxyProtocol, "off", "listener", i, "proxy_protocol")
		l.ProxyHeaderTimeout.orDefault(5 * time.Second)
		l.Keepalive.applyDefaults(60*time.Second, 15*time.Second, 4, 0)
	}
	for i := range c.Backends {
		b := &c.Backends[i]
		or(&b.Balance, "priority", "backend", i, "balance")
		b.ConnectTimeout.orDefault(3 * time.Second)
		noted(&b.ConnectBudget, 20*time.Second)
		noted(&b.AnswerTimeout, 5*time.Second)
		b.Backoff.orDefault(100 * time.Millisecond)
		b.BackoffMax.orDefault(2 * time.Second)
		if b.RetryOn == nil {
			b.RetryOn = []string{"connect", "reset"}
		}
		if b.RefuseErrors == nil {
			b.RefuseErrors = DefaultRefuseErrors()
		}
		b.ReplayBytes = intOr(b.ReplayBytes, 65536)
		or(&b.Redirect, "pass", "backend", i, "redirect")
		or(&b.SendProxyProtocol, "off", "backend", i, "send_proxy_protocol")
		b.Keepalive.applyDefaults(30*time.Second, 10*time.Second, 3, 60*time.Second)
		h := &b.Health
		or(&h.Check, "tcp", "backend", i, "health", "check")
		h.Interval.orDefault(5 * time.Second)
		noted(&h.Timeout, defaultHealthTimeout)
		h.ServiceInterval.orDefault(5 * time.Minute)
		h.Rise = intOr(h.Rise, 2)
		h.Fall = intOr(h.Fall, 3)
		b.Breaker.Failures = intOr(b.Breaker.Failures, 5)
		b.Breaker.OpenFor.orDefault(10 * time.Second)
		b.Breaker.MaxOpenFor.orDefault(5 * time.Minute)
		for j := range b.Servers {
			b.Servers[j].Weight = intOr(b.Servers[j].Weight, 1)
		}
	}
	return defaulted
}

// applyDefaults fills what was not given: from path_idle_timeout when that
// is set, else from the leg's defaults.
func (k *Keepalive) applyDefaults(idle, interval time.Duration, count int, userTimeout time.Duration) {
	derived := k.PathIdleTimeout.Set && k.PathIdleTimeout.Duration > 0
	if derived {
		d := keepalive.FromPathIdle(k.PathIdleTimeout.Duration)
		idle, interval, count = d.Idle, d.Interval, d.Count
	}
	k.Idle.orDefault(idle)
	k.Interval.orDefault(interval)
	k.Count = intOr(k.Count, count)
	if derived || userTimeout > 0 && k.Idle.Duration > 0 {
		// Give up when the last probe would: never cut keepalive short
		// (of the kernel's whole seconds: an idle of "1.5s" is 2s). A leg
		// whose default has a user timeout (the database's: 60s, its
		// default probes' span) keeps it at the span of the probes
		// written: an idle of "60s" alone gives 90s, not a user timeout
		// that cuts its keepalive short and a warning about a key the
		// user never wrote.
		userTimeout = min(k.Settings().InKernel().ProbeSpan(), keepalive.MaxUserTimeout)
	}
	k.UserTimeout.orDefault(userTimeout)
}
