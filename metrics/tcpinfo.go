package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ServerLink is what the kernel reports for one backend server at scrape
// time: the mean smoothed RTT over its live connections and the total
// retransmits of every connection it ever had (ended ones included, so the
// counter never goes down).
type ServerLink struct {
	Backend, Server string
	RTTSeconds      float64
	HasRTT          bool
	Retransmits     float64
}

// LinkSource lists backend servers with their kernel figures; the proxy
// implements it by reading TCP_INFO of its live backend sockets.
type LinkSource interface {
	ServerLinks() []ServerLink
}

// TCPInfoCollector exports tnsguard_backend_rtt_seconds and
// tnsguard_backend_retransmits_total from TCP_INFO read at scrape time, so
// nothing is counted on the copy path.
type TCPInfoCollector struct {
	src         LinkSource
	rtt, retran *prometheus.Desc
}

// NewTCPInfoCollector returns a collector over src; register it on the same
// registry as New's metrics.
func NewTCPInfoCollector(src LinkSource) *TCPInfoCollector {
	return &TCPInfoCollector{
		src: src,
		rtt: prometheus.NewDesc("tnsguard_backend_rtt_seconds",
			"Kernel smoothed RTT of the backend connections to a server (live ones, or the last seen).", []string{"backend", "server"}, nil),
		retran: prometheus.NewDesc("tnsguard_backend_retransmits_total",
			"TCP segments retransmitted to a server, over all backend connections.", []string{"backend", "server"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *TCPInfoCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rtt
	ch <- c.retran
}

// Collect implements prometheus.Collector.
func (c *TCPInfoCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.src.ServerLinks() {
		if l.HasRTT {
			ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, l.RTTSeconds, l.Backend, l.Server)
		}
		ch <- prometheus.MustNewConstMetric(c.retran, prometheus.CounterValue, l.Retransmits, l.Backend, l.Server)
	}
}
