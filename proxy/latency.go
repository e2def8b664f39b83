package proxy

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// connectWindow gives the p50/p99 of the last hour's successful backend
// dials per server, from tnsguard_backend_connect_duration_seconds itself:
// once a minute it keeps a copy of each server's cumulative bucket counts
// (result="ok"), and a quantile is taken, as Prometheus's
// histogram_quantile does, over the difference between now and the copy of
// an hour ago. Memory: connectSlots copies per server.
type connectWindow struct {
	vec *prometheus.HistogramVec

	// keep tells whether a server is still configured; the history of one
	// that is not is dropped (nil: keep every server).
	keep func(serverKey) bool

	mu      sync.Mutex
	lastMin int64 // unix minute of the last sample; 0 before the first
	servers map[serverKey]*connectHistory
	dropped map[serverKey]cumulative // removed servers' totals then: their histograms keep those dials
}

type serverKey struct{ backend, server string }

const connectSlots = hourMinutes + 2

type connectSnap struct {
	at     int64 // unix minute; 0 = empty slot
	count  uint64
	counts []uint64 // cumulative, one per finite upper bound
}

type connectHistory struct {
	snaps [connectSlots]connectSnap
	next  int
}

func newConnectWindow(vec *prometheus.HistogramVec) *connectWindow {
	return &connectWindow{vec: vec, servers: map[serverKey]*connectHistory{}, dropped: map[serverKey]cumulative{}}
}

// cumulative is one server's histogram of successful dials: counts per
// finite upper bound, cumulative, and the total.
type cumulative struct {
	upper  []float64
	counts []uint64
	total  uint64
}

// read returns the current histograms of successful dials, per server.
func (w *connectWindow) read() map[serverKey]cumulative {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		w.vec.Collect(ch)
		close(ch)
	}()
	out := map[serverKey]cumulative{}
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil || d.Histogram == nil {
			continue
		}
		var k serverKey
		ok := false
		for _, lp := range d.Label {
			switch lp.GetName() {
			case "backend":
				k.backend = lp.GetValue()
			case "server":
				k.server = lp.GetValue()
			case "result":
				ok = lp.GetValue() == "ok"
			}
		}
		if !ok {
			continue
		}
		c := cumulative{total: d.Histogram.GetSampleCount()}
		for _, b := range d.Histogram.Bucket {
			if math.IsInf(b.GetUpperBound(), 1) {
				continue
			}
			c.upper = append(c.upper, b.GetUpperBound())
			c.counts = append(c.counts, b.GetCumulativeCount())
		}
		out[k] = c
	}
	return out
}

// sample keeps a copy of every server's histogram once per minute.
func (w *connectWindow) sample(now time.Time) {
	m := now.Unix() / 60
	w.mu.Lock()
	due := m != w.lastMin
	w.mu.Unlock()
	if !due {
		return
	}
	hists := w.read()
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.lastMin
	if prev == 0 {
		prev = m - 1
	}
	w.lastMin = m
	for k, h := range hists {
		if w.keep != nil && !w.keep(k) {
			// Removed by a reload: its hour of copies (about 20 KB) would
			// stay for the process's life, one more per address ever used.
			if _, known := w.dropped[k]; !known {
				w.dropped[k] = h // no dial once removed: a server added back counts from here
			}
			delete(w.servers, k)
			continue
		}
		sh, ok := w.servers[k]
		if !ok {
			// First seen: it had no dial at the previous sample. A server
			// added back has its dials from before it was removed: they
			// are older than the window.
			base := cumulative{counts: make([]uint64, len(h.counts))}
			if d, ok := w.dropped[k]; ok {
				base = d
				delete(w.dropped, k)
			}
			sh = &connectHistory{}
			sh.put(prev, base)
			w.servers[k] = sh
		}
		sh.put(m, h)
	}
}

// put stores h as the copy of minute at, reusing the slot's memory.
func (sh *connectHistory) put(at int64, h cumulative) {
	s := &sh.snaps[sh.next]
	sh.next = (sh.next + 1) % connectSlots
	s.at, s.count = at, h.total
	s.counts = append(s.counts[:0], h.counts...)
}

// connectView is the current histograms, read once for a /api/links answer.
type connectView struct {
	w   *connectWindow
	cur map[serverKey]cumulative
	now time.Time
}

func (w *connectWindow) view(now time.Time) connectView {
	return connectView{w: w, cur: w.read(), now: now}
}

// quantiles returns p50 and p99 of the server's successful dials in the
// last hour (nil when there was none) and their number.
func (v connectView) quantiles(backend, server string) (p50, p99 *float64, dials uint64) {
	k := serverKey{backend, server}
	cur, ok := v.cur[k]
	if !ok {
		return nil, nil, 0
	}
	counts := append([]uint64(nil), cur.counts...)
	total := cur.total

	// The base is the oldest copy at most an hour old; no copy: since start,
	// or since a server added back was removed.
	w := v.w
	w.mu.Lock()
	if d, ok := w.dropped[k]; ok && w.servers[k] == nil && len(d.counts) == len(counts) && d.total <= total {
		for i := range counts {
			counts[i] -= d.counts[i]
		}
		total -= d.total
	}
	if sh := w.servers[k]; sh != nil {
		from := v.now.Unix()/60 - hourMinutes
		var base, newest *connectSnap
		for i := range sh.snaps {
			s := &sh.snaps[i]
			if s.at == 0 {
				continue
			}
			if s.at >= from && (base == nil || s.at < base.at) {
				base = s
			}
			if newest == nil || s.at > newest.at {
				newest = s
			}
		}
		if base == nil {
			base = newest // no copy in the hour (sampling lapsed): the latest one
		}
		if base != nil && len(base.counts) == len(counts) && base.count <= total {
			for i := range counts {
				counts[i] -= base.counts[i]
			}
			total -= base.count
		}
	}
	w.mu.Unlock()
	if total == 0 {
		return nil, nil, 0
	}
	a, b := bucketQuantile(0.5, cur.upper, counts, total), bucketQuantile(0.99, cur.upper, counts, total)
	return &a, &b, total
}

// bucketQuantile estimates the q-quantile from cumulative bucket counts by
// linear interpolation inside the bucket where it falls, as Prometheus's
// histogram_quantile does; in the +Inf bucket it is the highest finite
// bound.
func bucketQuantile(q float64, upper []float64, cum []uint64, total uint64) float64 {
	rank := q * float64(total)
	for i, c := range cum {
		if float64(c) >= rank {
			lo, loCount := 0.0, 0.0
			if i > 0 {
				lo, loCount = upper[i-1], float64(cum[i-1])
			}
			return lo + (upper[i]-lo)*(rank-loCount)/(float64(c)-loCount)
		}
	}
	if len(upper) == 0 {
		return 0
	}
	return upper[len(upper)-1]
}
