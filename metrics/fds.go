package metrics

import (
	"runtime"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"
)

// processCollector is client_golang's process collector with its two fd
// figures, process_open_fds and process_max_fds, read without opening a
// file. The stock collector opens /proc/self/fd and /proc/self/limits at
// every scrape: when sessions hold every fd (the shortage these figures are
// for), those opens fail with EMFILE and the figures are left out of
// /metrics, so process_open_fds / process_max_fds was empty exactly then and
// an alert on it never fired. Here the /proc/self/fd directory is opened
// once, at start (again at a scrape if that failed), and read again from
// its beginning at each scrape; the limit is getrlimit's. The fd is closed
// once the collector is garbage (a registry of a test).
type processCollector struct {
	inner   prometheus.Collector
	openFDs *prometheus.Desc
	maxFDs  *prometheus.Desc

	mu  sync.Mutex
	dir *heldFD // /proc/self/fd, held open from the first scrape on
	buf []byte
}

// heldFD is an fd that its owner's cleanup closes; -1 while none.
type heldFD struct{ fd int }

func newProcessCollector() *processCollector {
	c := &processCollector{
		inner:   collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		openFDs: prometheus.NewDesc("process_open_fds", "Number of open file descriptors.", nil, nil),
		maxFDs:  prometheus.NewDesc("process_max_fds", "Maximum number of open file descriptors.", nil, nil),
		dir:     &heldFD{fd: -1},
		buf:     make([]byte, 16<<10),
	}
	c.openDir()
	runtime.AddCleanup(c, func(h *heldFD) {
		if h.fd >= 0 {
			unix.Close(h.fd)
		}
	}, c.dir)
	return c
}

// own tells whether d is one of the figures this collector makes itself.
func (c *processCollector) own(d *prometheus.Desc) bool {
	return d.String() == c.openFDs.String() || d.String() == c.maxFDs.String()
}

func (c *processCollector) Describe(ch chan<- *prometheus.Desc) {
	inner := make(chan *prometheus.Desc)
	go func() { c.inner.Describe(inner); close(inner) }()
	for d := range inner {
		if !c.own(d) {
			ch <- d
		}
	}
	ch <- c.openFDs
	ch <- c.maxFDs
}

func (c *processCollector) Collect(ch chan<- prometheus.Metric) {
	inner := make(chan prometheus.Metric)
	go func() { c.inner.Collect(inner); close(inner) }()
	for m := range inner {
		if !c.own(m.Desc()) {
			ch <- m
		}
	}
	// A figure that cannot be read is left out, as the stock collector
	// does: an invalid metric would fail the whole scrape.
	if n, err := c.openCount(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.openFDs, prometheus.GaugeValue, float64(n))
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		ch <- prometheus.MustNewConstMetric(c.maxFDs, prometheus.GaugeValue, float64(lim.Cur))
	}
}

// openDir opens /proc/self/fd into c.dir.
func (c *processCollector) openDir() error {
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		c.dir.fd = fd
	}
	return err
}

// openCount counts the entries of /proc/self/fd through the directory fd
// held open (which is one of them, as the stock collector's own open was).
func (c *processCollector) openCount() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir.fd < 0 {
		if err := c.openDir(); err != nil {
			return 0, err // out of fds since the start: tried again at the next scrape
		}
	}
	if _, err := unix.Seek(c.dir.fd, 0, 0); err != nil {
		return 0, err
	}
	n := 0
	for {
		got, err := unix.Getdents(c.dir.fd, c.buf)
		if err != nil {
			return 0, err
		}
		if got <= 0 {
			return n, nil
		}
		_, count, _ := unix.ParseDirent(c.buf[:got], -1, nil)
		n += count // ParseDirent skips "." and ".."
	}
}
