// Package metrics owns tnsguard's Prometheus metric names and their
// registration. The registry is made by the caller (cmd/tnsguard) and passed
// in; nothing here touches the global default registry.
//
// Typical use:
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg, version)
//	m.SessionsActive.WithLabelValues("orders", "orders").Inc()
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is every metric tnsguard exports. Labels come from config names
// and server addresses only, never from client addresses.
type Metrics struct {
	SessionsActive   *prometheus.GaugeVec     // listener, backend
	SessionsIdle     *prometheus.GaugeVec     // listener, backend (set every second, 0 from the start for each pair the config can make)
	SessionsTotal    *prometheus.CounterVec   // listener, backend, service, outcome
	SessionsRejected *prometheus.CounterVec   // listener, reason
	SessionWait      *prometheus.HistogramVec // listener
	SessionDuration  *prometheus.HistogramVec // listener, backend
	MaxSessions      *prometheus.GaugeVec     // listener
	Resets           *prometheus.CounterVec   // listener, backend, server, side, phase, cause
	Redials          *prometheus.CounterVec   // listener, backend, reason
	Bytes            *prometheus.CounterVec   // listener, backend, direction
	ConnectDuration  *prometheus.HistogramVec // backend, server, result
	BackendUp        *prometheus.GaugeVec     // backend, server
	BreakerState     *prometheus.GaugeVec     // backend, server
	HealthDuration   *prometheus.HistogramVec // backend, server
	ListenerVersion  *prometheus.GaugeVec     // backend, server, version
	TNSRedirects     *prometheus.CounterVec   // listener, backend, server
	TNSFollowed      *prometheus.CounterVec   // listener, backend, server
	ReloadOK         prometheus.Gauge
	ReloadTime       prometheus.Gauge
	LogDropped       prometheus.Counter // log lines the output took no room for
}

// Breaker states as exported by tnsguard_breaker_state.
const (
	BreakerClosed   = 0
	BreakerOpen     = 1
	BreakerHalfOpen = 2
)

// New creates the metrics and registers them, with Go runtime and process
// collectors and tnsguard_build_info, on reg.
func New(reg prometheus.Registerer, version string) *Metrics {
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20}
	m := &Metrics{
		SessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_sessions_active", Help: "Sessions open now.",
		}, []string{"listener", "backend"}),
		SessionsIdle: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_sessions_idle", Help: "Open sessions that moved no byte either way for over a minute (pooled, or leaked).",
		}, []string{"listener", "backend"}),
		SessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_sessions_total", Help: "Sessions ended, by outcome: ok, reset, no_backend, closed (by tnsguard), abandoned (the app closed while a server held its CONNECT, or TLS ClientHello, unanswered).",
		}, []string{"listener", "backend", "service", "outcome"}),
		SessionsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_sessions_rejected_total", Help: "Connections turned away, by reason: refused before a session began, or (no_backend) sessions that no server took within connect_budget, which tnsguard_sessions_total{outcome=\"no_backend\"} counts too.",
		}, []string{"listener", "reason"}),
		SessionWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tnsguard_session_wait_seconds", Help: "Time from accept to a working backend connection, re-dials included.",
			Buckets: latency,
		}, []string{"listener"}),
		SessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tnsguard_session_duration_seconds", Help: "Age of sessions when they ended.",
			Buckets: []float64{1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600},
		}, []string{"listener", "backend"}),
		MaxSessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_listener_max_sessions", Help: "The listener's max_sessions (0 = unlimited).",
		}, []string{"listener"}),
		Resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_resets_total", Help: "Sessions that ended abnormally, by the leg that failed, the phase and the cause.",
		}, []string{"listener", "backend", "server", "side", "phase", "cause"}),
		Redials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_redials_total", Help: "Backend dials retried for a new session, by reason.",
		}, []string{"listener", "backend", "reason"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_bytes_total", Help: "Bytes carried, by direction (to_backend, to_client).",
		}, []string{"listener", "backend", "direction"}),
		ConnectDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tnsguard_backend_connect_duration_seconds", Help: "Backend dial time, by result (ok, refused, timeout, unreachable, canceled, error).",
			Buckets: latency,
		}, []string{"backend", "server", "result"}),
		BackendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_backend_up", Help: "1 when the server passes its health check (or, with checks off, its last dial worked).",
		}, []string{"backend", "server"}),
		BreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_breaker_state", Help: "Circuit breaker of a server: 0 closed, 1 open, 2 half-open.",
		}, []string{"backend", "server"}),
		HealthDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tnsguard_health_check_duration_seconds", Help: "Health check time, as the application level sees it.",
			Buckets: latency,
		}, []string{"backend", "server"}),
		ListenerVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tnsguard_oracle_listener_info", Help: "Oracle listener version reported by tnsping (VSNNUM).",
		}, []string{"backend", "server", "version"}),
		TNSRedirects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_tns_redirects_total", Help: "TNS REDIRECTs passed to apps: they will dial another address directly, bypassing tnsguard.",
		}, []string{"listener", "backend", "server"}),
		TNSFollowed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tnsguard_tns_redirects_followed_total", Help: "TNS REDIRECTs tnsguard followed for apps to a node whose answer went to the app (redirect = \"follow\"): the app stayed on tnsguard.",
		}, []string{"listener", "backend", "server"}),
		ReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tnsguard_config_last_reload_successful", Help: "1 when the last configuration load worked.",
		}),
		ReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tnsguard_config_last_reload_success_timestamp_seconds", Help: "When the configuration was last loaded successfully.",
		}),
		LogDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tnsguard_log_lines_dropped_total", Help: "Log lines dropped because the log output (stderr: journald, a Docker log driver) took no writes and the 1 MiB queue was full.",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tnsguard_build_info", Help: "tnsguard's version.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.SessionsActive, m.SessionsIdle, m.SessionsTotal, m.SessionsRejected, m.SessionWait,
		m.SessionDuration, m.MaxSessions, m.Resets, m.Redials, m.Bytes, m.ConnectDuration, m.BackendUp,
		m.BreakerState, m.HealthDuration, m.ListenerVersion, m.TNSRedirects, m.TNSFollowed, m.ReloadOK, m.ReloadTime, m.LogDropped, build,
		collectors.NewGoCollector(), newProcessCollector())
	return m
}
