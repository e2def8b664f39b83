package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns"
)

func linkOf(t *testing.T, p *Proxy, server string) LinkStatus {
	t.Helper()
	for _, l := range p.Links() {
		if l.Server == server {
			return l
		}
	}
	t.Fatalf("no link to %s in %+v", server, p.Links())
	return LinkStatus{}
}

// A backend RST on a live session becomes one reset event with the link,
// side, phase, cause, idle time, age and bytes, and shows in the link's
// 5 min / 1 h / 24 h counts, its causes of the hour and its hour of day.
func TestBackendResetBecomesAnEvent(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("hi-app"))
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	c.Write([]byte("hello"))
	if _, err := io.ReadFull(c, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // idle before the reset
	resetConn(be.accepted()[0])
	if _, err := readErr(c, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v, want ECONNRESET", err)
	}
	waitFor(t, 2*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })

	ev := h.p.Resets(0)[0]
	if ev.Listener != "l" || ev.Backend != "b" || ev.Server != be.addr() || ev.Side != SideBackend ||
		ev.Phase != PhaseActive || ev.Cause != "rst" || ev.Outcome != "reset" || ev.Service != "other" {
		t.Errorf("event = %+v", ev)
	}
	if ev.BytesToBackend != 5 || ev.BytesToClient != 6 {
		t.Errorf("bytes to backend %d, to client %d; want 5 and 6", ev.BytesToBackend, ev.BytesToClient)
	}
	if ev.IdleSeconds < 0.1 || ev.IdleSeconds > 1 || ev.AgeSeconds < ev.IdleSeconds {
		t.Errorf("idle %.3fs, age %.3fs; want idle about 0.1s, age above it", ev.IdleSeconds, ev.AgeSeconds)
	}
	if !ev.Client.IsLoopback() {
		t.Errorf("client = %v", ev.Client)
	}
	if time.Since(ev.Time) > 5*time.Second {
		t.Errorf("event time %v", ev.Time)
	}

	st := linkOf(t, h.p, be.addr())
	if st.Resets5m != 1 || st.Resets1h != 1 || st.Resets24h != 1 {
		t.Errorf("resets 5m/1h/24h = %d/%d/%d, want 1/1/1", st.Resets5m, st.Resets1h, st.Resets24h)
	}
	if st.ResetsByCause1h["rst"] != 1 || len(st.ResetsByCause1h) != 1 {
		t.Errorf("resets_by_cause_1h = %v", st.ResetsByCause1h)
	}
	hr := ev.Time.Hour()
	if st.ResetsByHour[hr] != 1 || st.ResetsByHour24h[hr] != 1 {
		t.Errorf("hour %d: by hour %v, last 24h %v", hr, st.ResetsByHour, st.ResetsByHour24h)
	}
	if st.ConnectDials1h != 1 || st.ConnectP50Seconds == nil || st.ConnectP99Seconds == nil {
		t.Fatalf("connect: %d dials, p50 %v, p99 %v", st.ConnectDials1h, st.ConnectP50Seconds, st.ConnectP99Seconds)
	}
	if p50, p99 := *st.ConnectP50Seconds, *st.ConnectP99Seconds; p50 <= 0 || p50 > p99 || p99 > 0.1 {
		t.Errorf("loopback connect p50 %v p99 %v", p50, p99)
	}
}

// Events out of order in time land in the right windows: counted to the
// minute, the 5 min window never reaches further back than 5 minutes.
func TestResetWindows(t *testing.T) {
	f := newForensics(hclog.NewNullLogger(), connectVec())
	now := time.Date(2025, 3, 10, 14, 30, 20, 0, time.Local)
	for _, e := range []struct {
		ago   time.Duration
		cause string
	}{
		{10 * time.Second, "rst"},
		{4 * time.Minute, "timeout"},
		{5*time.Minute + 10*time.Second, "refused"}, // minute 14:25: out of 5m
		{30 * time.Minute, "rst"},
		{5 * time.Hour, "eof"},
		{23*time.Hour + 59*time.Minute, "rst"},
		{25 * time.Hour, "rst"}, // out of 24h
	} {
		f.store(&ResetEvent{Time: now.Add(-e.ago), Listener: "l", Backend: "b", Server: "s", Cause: e.cause})
	}
	l := &link{key: linkKey{"l", "b", "s"}, live: map[*session]struct{}{}}
	var st LinkStatus
	f.view(now).fill(&st, l)
	if st.Resets5m != 2 || st.Resets1h != 4 || st.Resets24h != 6 {
		t.Errorf("5m/1h/24h = %d/%d/%d, want 2/4/6", st.Resets5m, st.Resets1h, st.Resets24h)
	}
	want := map[string]uint64{"rst": 2, "timeout": 1, "refused": 1}
	if !equalCounts(st.ResetsByCause1h, want) {
		t.Errorf("by cause 1h = %v, want %v", st.ResetsByCause1h, want)
	}
	// Hours of day: 14:30, 14:26, 14:25, 14:00, 09:30, 14:31 and 13:30 the day before.
	if st.ResetsByHour[14] != 5 || st.ResetsByHour[9] != 1 || st.ResetsByHour[13] != 1 {
		t.Errorf("by hour of day = %v", st.ResetsByHour)
	}
	if st.ResetsByHour24h[14] != 5 || st.ResetsByHour24h[9] != 1 || st.ResetsByHour24h[13] != 0 {
		t.Errorf("by hour of day, last 24h = %v", st.ResetsByHour24h)
	}
	// A day later nothing of this is in the windows any more.
	var later LinkStatus
	f.view(now.Add(25*time.Hour)).fill(&later, l)
	if later.Resets24h != 0 || later.Resets1h != 0 || len(later.ResetsByCause1h) != 0 || later.ResetsByHour[14] != 5 {
		t.Errorf("a day later: 24h %d, 1h %d, causes %v, by hour %v", later.Resets24h, later.Resets1h, later.ResetsByCause1h, later.ResetsByHour)
	}
}

func equalCounts(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func connectVec() *prometheus.HistogramVec {
	return metrics.New(prometheus.NewRegistry(), "test").ConnectDuration
}

// The ring keeps the latest resetRingSize events whatever the rate, newest
// first, and recording one allocates nothing.
func TestResetRingIsBounded(t *testing.T) {
	f := newForensics(hclog.NewNullLogger(), connectVec())
	p := &Proxy{forensics: f}
	if got := p.Resets(10); len(got) != 0 {
		t.Fatalf("empty ring gave %d events", len(got))
	}
	t0 := time.Now()
	for i := range 2500 {
		f.store(&ResetEvent{Time: t0.Add(time.Duration(i) * time.Millisecond), Listener: "l", Backend: "b", Server: "s", Cause: "rst", BytesToBackend: int64(i)})
	}
	all := p.Resets(0)
	if len(all) != resetRingSize || all[0].BytesToBackend != 2499 || all[len(all)-1].BytesToBackend != 2500-resetRingSize {
		t.Fatalf("ring: %d events, newest %d, oldest %d", len(all), all[0].BytesToBackend, all[len(all)-1].BytesToBackend)
	}
	if got := p.Resets(3); len(got) != 3 || got[0].BytesToBackend != 2499 || got[2].BytesToBackend != 2497 {
		t.Fatalf("limit 3: %+v", got)
	}
	ev := ResetEvent{Time: t0, Listener: "l", Backend: "b", Server: "s", Cause: "timeout"}
	if a := testing.AllocsPerRun(1000, func() { f.store(&ev) }); a != 0 {
		t.Errorf("recording a reset allocates %v times", a)
	}
}

// At most logBurst lines per link per window; the rest are counted and the
// count is logged when the window ends, by the next event or by tick.
func TestResetLogLimiter(t *testing.T) {
	out := &logBuffer{}
	f := newForensics(hclog.New(&hclog.LoggerOptions{Output: out}), connectVec())
	t0 := time.Date(2025, 3, 10, 14, 30, 0, 0, time.Local)
	logged := map[string]int{}
	for i := range 25 {
		for _, server := range []string{"a", "b"} {
			if server == "b" && i >= 3 {
				continue
			}
			ev := ResetEvent{Time: t0.Add(time.Duration(i) * 100 * time.Millisecond), Listener: "l", Backend: "b", Server: server, Cause: "rst"}
			if ok, dropped, _ := f.store(&ev); ok {
				logged[server]++
			} else if dropped != 0 {
				t.Fatalf("dropped count %d reported inside the window", dropped)
			}
		}
	}
	if logged["a"] != logBurst || logged["b"] != 3 {
		t.Fatalf("logged %v, want a=%d b=3", logged, logBurst)
	}
	// Link a: the next event after the window reports the 15 dropped lines.
	ok, dropped, start := f.store(&ResetEvent{Time: t0.Add(61 * time.Second), Listener: "l", Backend: "b", Server: "a", Cause: "rst"})
	if !ok || dropped != 15 || !start.Equal(t0) {
		t.Fatalf("after the window: log %v, dropped %d since %v; want true, 15 since %v", ok, dropped, start, t0)
	}
	// A quiet link: tick ends its window and logs the count.
	for i := range 12 {
		f.store(&ResetEvent{Time: t0.Add(time.Duration(i) * time.Millisecond), Listener: "l", Backend: "b", Server: "c", Cause: "rst"})
	}
	f.tick(t0.Add(30 * time.Second))
	if got := out.lines("dropped"); len(got) != 0 {
		t.Fatalf("logged before the window ended: %q", got)
	}
	f.tick(t0.Add(61 * time.Second))
	got := out.lines("reset log lines dropped")
	if len(got) != 1 || !strings.Contains(got[0], "server=c") || !strings.Contains(got[0], "dropped=2") || !strings.Contains(got[0], "[WARN]") {
		t.Fatalf("summary lines %q; want one warn for server c with dropped=2", got)
	}
	f.tick(t0.Add(200 * time.Second))
	if got := out.lines("reset log lines dropped"); len(got) != 1 {
		t.Fatalf("summary logged again: %q", got)
	}
}

// A storm of real backend resets on one link logs logBurst warn lines
// with the event's fields, then one line with the count of the others.
func TestResetStormLogIsLimited(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		resetConn(c)
	})
	h, out := startProxyLog(t, oneBackendConfig(be.addr()))
	h.p.forensics.mu.Lock()
	h.p.forensics.window = time.Second
	h.p.forensics.mu.Unlock()
	const storm = 30
	start := time.Now()
	for range storm {
		c := h.dial("l")
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("y"))
		if _, err := readErr(c, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("app saw %v, want ECONNRESET", err)
		}
		c.Close()
	}
	waitFor(t, 2*time.Second, "all resets recorded", func() bool { return len(h.p.Resets(0)) == storm })
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Skipf("the storm took %v, longer than the shortened log window: limiter not exercised", took)
	}
	// A session's line is written after its event is stored (forensics.add),
	// by its own goroutine, which a loaded machine may run late.
	waitFor(t, 2*time.Second, "the reset lines of the burst", func() bool { return len(out.lines("session reset")) >= logBurst })
	lines := out.lines("session reset")
	if len(lines) != logBurst {
		t.Fatalf("%d reset lines for %d resets, want %d", len(lines), storm, logBurst)
	}
	for _, want := range []string{"[WARN]", "listener=l", "backend=b", "server=" + be.addr(), "side=backend", "phase=active",
		"cause=rst", "outcome=reset", "idle=", "age=", "bytes_to_backend=1", "bytes_to_client=1", "error="} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("reset line lacks %q: %s", want, lines[0])
		}
	}
	waitFor(t, 4*time.Second, "dropped-lines summary", func() bool { return len(out.lines("reset log lines dropped")) == 1 })
	sum := out.lines("reset log lines dropped")[0]
	if !strings.Contains(sum, "dropped=20") || !strings.Contains(sum, "server="+be.addr()) {
		t.Errorf("summary: %s", sum)
	}
}

func TestBucketQuantile(t *testing.T) {
	upper := []float64{0.001, 0.01, 0.1}
	for _, tc := range []struct {
		name  string
		cum   []uint64
		total uint64
		q     float64
		want  float64
	}{
		{"all in first bucket: from 0", []uint64{10, 10, 10}, 10, 0.5, 0.0005},
		{"middle bucket interpolated", []uint64{0, 10, 10}, 10, 0.5, 0.0055},
		{"p99 at the top of its bucket", []uint64{50, 100, 100}, 100, 0.99, 0.001 + 0.009*49/50},
		{"beyond the last bound", []uint64{0, 0, 0}, 5, 0.5, 0.1},
	} {
		if got := bucketQuantile(tc.q, upper, tc.cum, tc.total); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Connect p50/p99 cover the last hour's successful dials only.
func TestConnectWindowIsTheLastHour(t *testing.T) {
	vec := connectVec()
	w := newConnectWindow(vec)
	t0 := time.Date(2025, 3, 10, 14, 0, 30, 0, time.Local)
	ok := vec.WithLabelValues("b", "s", "ok")
	for range 10 {
		ok.Observe(0.2) // slow dials, early
	}
	vec.WithLabelValues("b", "s", "timeout").Observe(3)
	w.sample(t0)
	p50, p99, n := w.view(t0.Add(30*time.Minute)).quantiles("b", "s")
	if n != 10 || p50 == nil || *p50 <= 0.1 || *p50 > 0.25 || *p99 > 0.25 {
		t.Fatalf("after 30 min: %d dials, p50 %v p99 %v; want 10 in (0.1, 0.25]", n, val(p50), val(p99))
	}
	for i := 1; i <= 61; i++ {
		w.sample(t0.Add(time.Duration(i) * time.Minute))
	}
	for range 4 {
		ok.Observe(0.003) // fast dials, now
	}
	p50, p99, n = w.view(t0.Add(61*time.Minute+time.Second)).quantiles("b", "s")
	if n != 4 || p50 == nil || *p50 <= 0.0025 || *p99 > 0.005 {
		t.Fatalf("an hour later: %d dials, p50 %v p99 %v; want only the 4 fast ones", n, val(p50), val(p99))
	}
	if p50, _, n := w.view(t0).quantiles("b", "unknown"); p50 != nil || n != 0 {
		t.Errorf("server without dials: p50 %v, %d dials", val(p50), n)
	}
}

// The connect history of a server a reload removed is dropped at the next
// minute's copy: an hour of copies (about 20 KB a server) stayed for the
// process's life, one more for every address ever configured.
func TestConnectWindowDropsRemovedServers(t *testing.T) {
	vec := connectVec()
	w := newConnectWindow(vec)
	removed := map[serverKey]bool{}
	w.keep = func(k serverKey) bool { return !removed[k] }
	t0 := time.Date(2025, 3, 10, 14, 0, 30, 0, time.Local)
	for i := range 100 {
		vec.WithLabelValues("b", fmt.Sprint("10.0.0.", i), "ok").Observe(0.01)
	}
	w.sample(t0)
	if n := len(w.servers); n != 100 {
		t.Fatalf("%d servers kept, want 100", n)
	}
	for i := range 99 {
		removed[serverKey{"b", fmt.Sprint("10.0.0.", i)}] = true
	}
	w.sample(t0.Add(time.Minute))
	if n := len(w.servers); n != 1 {
		t.Errorf("%d servers kept after 99 were removed, want 1", n)
	}
	if _, _, n := w.view(t0.Add(time.Minute)).quantiles("b", "10.0.0.99"); n != 1 {
		t.Errorf("the server still configured: %d dials, want 1", n)
	}
	// Added back 75 minutes later (copies every minute, as housekeeping
	// takes them): its dials from before are not the last hour's.
	for i := 2; i < 75; i++ {
		w.sample(t0.Add(time.Duration(i) * time.Minute))
	}
	delete(removed, serverKey{"b", "10.0.0.0"})
	back := t0.Add(74*time.Minute + 40*time.Second)
	if _, _, n := w.view(back).quantiles("b", "10.0.0.0"); n != 0 {
		t.Errorf("a server added back: %d dials in the last hour, want 0 (its one was 75 minutes ago)", n)
	}
	for range 3 {
		vec.WithLabelValues("b", "10.0.0.0", "ok").Observe(0.01)
	}
	if _, _, n := w.view(back).quantiles("b", "10.0.0.0"); n != 3 {
		t.Errorf("added back and dialed 3 times, before the next copy: %d dials in the last hour, want 3", n)
	}
	w.sample(t0.Add(75 * time.Minute))
	if _, _, n := w.view(t0.Add(75*time.Minute+time.Second)).quantiles("b", "10.0.0.0"); n != 3 {
		t.Errorf("added back and dialed 3 times, after the next copy: %d dials in the last hour, want 3", n)
	}
}

func val(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// Pool view: a session that moved nothing for over a minute counts in
// tnsguard_sessions_idle and the link's sessions_idle; a byte makes it
// active again. Idleness is faked by moving the session's last activity
// back to 2s short of a minute, and telling housekeeping, which sleeps
// until the crossing it computed from the old mark: the gauge must move
// at the crossing itself, with nothing else waking it
// (TNSGUARD_LONG=1 runs TestSessionsIdleReal, which waits).
func TestSessionsIdle(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	quiet, busy := h.dial("l"), h.dial("l")
	for _, c := range []*net.TCPConn{quiet, busy} {
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
	}
	idle := func() float64 {
		return gaugeValue(h.m.SessionsIdle.WithLabelValues("l", "b"))
	}
	waitFor(t, 3*time.Second, "idle gauge set", func() bool { return len(h.p.liveSessions()) == 2 && idle() == 0 })
	// Faked again until counted: the pump marks the echo's chunk moved
	// after writing it, so on a loaded machine its mark can land after the
	// app has read the byte and this test has moved the mark back.
	const short = 2 * time.Second
	faked := time.Now()
	waitFor(t, 2*short, "tnsguard_sessions_idle = 1", func() bool {
		for _, s := range h.p.liveSessions() {
			if s.in.client.String() == quiet.LocalAddr().String() && s.idleFor() < idleAfter-2*short {
				s.lastActive.Store(int64(time.Since(s.start) - (idleAfter - short)))
				faked = time.Now()
				h.p.nudge()
			}
		}
		return idle() == 1
	})
	if early := time.Since(faked); early < short-100*time.Millisecond {
		t.Errorf("counted idle %v after the mark was moved to %v short of a minute", early, short)
	}
	if st := linkOf(t, h.p, be.addr()); st.SessionsIdle != 1 || st.SessionsActive != 2 {
		t.Errorf("link: %d idle of %d active, want 1 of 2", st.SessionsIdle, st.SessionsActive)
	}
	quiet.Write([]byte("y"))
	io.ReadFull(quiet, make([]byte, 1))
	waitFor(t, 3*time.Second, "tnsguard_sessions_idle back to 0", func() bool { return idle() == 0 })
}

// Every listener/backend pair the config can make has its
// tnsguard_sessions_idle series from the start, at 0, like the other
// per-listener series: a dashboard's idle panel shows 0, not "no data".
func TestSessionsIdleSeriesBeforeAnySession(t *testing.T) {
	sales, orders := newServer(t, sayName("S")), newServer(t, sayName("O"))
	h := startProxy(t, routesConfig(sales.address, orders.address))
	want := `
# HELP tnsguard_sessions_idle Open sessions that moved no byte either way for over a minute (pooled, or leaked).
# TYPE tnsguard_sessions_idle gauge
tnsguard_sessions_idle{backend="orders-db",listener="l"} 0
tnsguard_sessions_idle{backend="sales-db",listener="l"} 0
`
	waitFor(t, 3*time.Second, "a series per pair", func() bool {
		return testutil.GatherAndCompare(h.reg, strings.NewReader(want), "tnsguard_sessions_idle") == nil
	})
}

func TestSessionsIdleReal(t *testing.T) {
	if os.Getenv("TNSGUARD_LONG") == "" {
		t.Skip("waits 62s; set TNSGUARD_LONG=1")
	}
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	time.Sleep(62 * time.Second)
	if v := gaugeValue(h.m.SessionsIdle.WithLabelValues("l", "b")); v != 1 {
		t.Fatalf("tnsguard_sessions_idle = %v after 62s of silence", v)
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var d dto.Metric
	g.Write(&d)
	return d.GetGauge().GetValue()
}

// tnsguard_session_duration_seconds gets each session's age when it ends.
func TestSessionDurationHistogram(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	time.Sleep(300 * time.Millisecond)
	c.CloseWrite()
	io.Copy(io.Discard, c)
	waitFor(t, 2*time.Second, "session recorded", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 1
	})
	var d dto.Metric
	h.m.SessionDuration.WithLabelValues("l", "b").(prometheus.Histogram).Write(&d)
	hist := d.GetHistogram()
	if hist.GetSampleCount() != 1 || hist.GetSampleSum() < 0.3 || hist.GetSampleSum() > 1 {
		t.Fatalf("count %d sum %v, want 1 session of about 0.3s", hist.GetSampleCount(), hist.GetSampleSum())
	}
	if b := hist.GetBucket()[0]; b.GetUpperBound() != 1 || b.GetCumulativeCount() != 1 {
		t.Errorf("first bucket le=%v holds %d", b.GetUpperBound(), b.GetCumulativeCount())
	}
}

// An app that gives up while tnsguard is still dialing (its only server
// refuses, re-dials within connect_budget) ended before any backend
// connection existed: phase connect, server none. "opening" means a backend
// connection was up and its first byte awaited.
func TestAppResetWhileDialingIsPhaseConnect(t *testing.T) {
	h := startProxy(t, oneBackendConfig(closedPort(t)))
	c := h.dial("l")
	c.Write([]byte("hello"))
	waitFor(t, 2*time.Second, "a re-dial", func() bool { return counter(h.m.Redials, "l", "b", "connect") > 0 })
	resetConn(c)
	waitFor(t, 2*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })
	ev := h.p.Resets(0)[0]
	if ev.Side != SideClient || ev.Phase != PhaseConnect || ev.Server != "none" {
		t.Errorf("app reset while dialing: side %s, phase %s, server %s; want client, connect, none", ev.Side, ev.Phase, ev.Server)
	}
}

// JSON logs (the Docker image's and the Kubernetes example's format) write
// durations as text, as the text format does ("1.5s"), not as a count of
// nanoseconds that a reader takes for seconds.
func TestJSONLogsWriteDurationsAsText(t *testing.T) {
	logs := &logBuffer{}
	be := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("hi"))
		time.Sleep(20 * time.Millisecond)
		c.SetLinger(0)
		c.Close()
	})
	toml := backendTOML(`connect_budget = "300ms"
connect_timeout = "100ms"
retry_on = ["connect"]`, `address = "`+be.addr()+`"`) + `
[[listener]]
name = "dead"
listen = "127.0.0.1:0"
backend = "dead"
[[backend]]
name = "dead"
connect_budget = "300ms"
connect_timeout = "100ms"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = "` + closedPort(t) + `"
`
	h := startProxyWith(t, toml, hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: true}))
	c := h.dial("l")
	io.Copy(io.Discard, c) // "hi", then the reset passed on
	c.Close()
	c = h.dial("dead")
	io.Copy(io.Discard, c)
	c.Close()
	want := map[string][]string{
		"session reset": {"idle", "age"},
		"no backend for new session: resetting the app's connection": {"budget"},
	}
	waitFor(t, 3*time.Second, "both lines", func() bool {
		s := logs.String()
		return strings.Contains(s, `"session reset"`) && strings.Contains(s, `"no backend for new session`)
	})
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		for _, k := range want[m["@message"].(string)] {
			v, ok := m[k].(string)
			if !ok {
				t.Errorf("%q: %s = %v (%T), want a duration as text", m["@message"], k, m[k], m[k])
				continue
			}
			if _, err := time.ParseDuration(v); err != nil {
				t.Errorf("%q: %s = %q: %v", m["@message"], k, v, err)
			}
		}
	}
}

// A session that a drain closes is logged with what ended it: the drain
// timeout, or a second signal that cut the drain short (it said "after
// the drain timeout" either way). Both count as tnsguard's own end, on the
// app's side, as idle_timeout's does.
func TestDrainCloseSaysWhatEndedIt(t *testing.T) {
	for _, cut := range []bool{false, true} {
		be := newBackend(t, echo)
		h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
		c := h.dial("l")
		echoed(t, c, "x")
		drain, want := 200*time.Millisecond, "closed at shutdown after the drain timeout"
		if cut {
			drain, want = time.Minute, "closed at shutdown: a second signal cut the drain short"
		}
		done := make(chan struct{})
		go func() {
			h.p.Shutdown(0, drain)
			close(done)
		}()
		if cut {
			waitFor(t, 2*time.Second, "the drain to start", func() bool { return strings.Contains(logs.String(), "stopped accepting") })
			h.p.Hurry()
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return")
		}
		if lines := logs.lines("session reset", "cause=proxy", "side=client", want); len(lines) != 1 {
			t.Errorf("cut %v: want one reset line with %q:\n%s", cut, want, logs.String())
		}
	}
}

// A drain that closes more sessions on a link than its log budget tells how
// many reset lines it dropped before the process ends: that line came only
// when the minute was over, and the process had exited by then (a review
// read 40 reset lines of 240 and no word of the rest).
func TestDrainTellsTheResetLinesItDropped(t *testing.T) {
	be := newBackend(t, echo)
	h, logs := startProxyLog(t, oneBackendConfig(be.addr()))
	const n = logBurst + 5
	for range n {
		echoed(t, h.dial("l"), "x")
	}
	h.p.Shutdown(0, 200*time.Millisecond)
	if got := len(logs.lines("session reset")); got != logBurst {
		t.Errorf("%d reset lines, want %d", got, logBurst)
	}
	if lines := logs.lines("reset log lines dropped", "dropped=5"); len(lines) != 1 {
		t.Errorf("no line with the count of dropped reset lines before the end:\n%s", logs.String())
	}
}

// A second signal when no session is left warns of none to close.
func TestHurryWithNoSessionWarnsOfNone(t *testing.T) {
	h, logs := startProxyLog(t, oneBackendConfig(closedPort(t)))
	h.p.Hurry()
	h.p.Shutdown(time.Minute, time.Minute)
	if lines := logs.lines("closing the sessions left"); len(lines) != 0 {
		t.Errorf("warned of closing sessions when there were none: %q", lines)
	}
}

// A session that no server took carried no byte to a backend: its reset
// event (and so its log line and /api/resets) says bytes_to_backend 0, as
// tnsguard_bytes_total does, not the count of what the app sent into the
// void: "no_backend ... bytes_to_backend=229" read as a CONNECT that a
// database got.
func TestNoBackendEventCarriedNoBytesToBackend(t *testing.T) {
	cfg := strings.Replace(oneBackendConfig(closedPort(t)), `connect_budget = "3s"`, `connect_budget = "600ms"`, 1)
	h := startProxy(t, cfg)
	ev := noBackendEvent(t, h, "hello")
	sent := counter(h.m.Bytes, "l", "b", "to_backend")
	if sent != 0 || ev.BytesToBackend != 0 {
		t.Errorf("bytes to backend: event %d, tnsguard_bytes_total %v; want 0 and 0 (no backend took a byte)", ev.BytesToBackend, sent)
	}
}

// A session whose opening a server took before it reset, and that no
// re-dial then placed (the server went down with it), is shown on server
// "none" too, but its opening did reach a backend: its event gives those
// bytes, as tnsguard_bytes_total does (the README said 0 for every "none"
// row).
func TestNoBackendAfterAResetCountsTheOpeningAServerGot(t *testing.T) {
	var srv *server
	srv = newServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 100)
		c.Read(buf)
		go srv.down() // every re-dial is refused
		time.Sleep(50 * time.Millisecond)
		resetConn(c)
	})
	cfg := strings.Replace(oneBackendConfig(srv.address), `connect_budget = "3s"`, `connect_budget = "800ms"`, 1)
	h := startProxy(t, cfg)
	ev := noBackendEvent(t, h, "hello")
	sent := counter(h.m.Bytes, "l", "b", "to_backend")
	if ev.BytesToBackend != 5 || sent != 5 {
		t.Errorf("bytes to backend: event %d, tnsguard_bytes_total %v; want 5 and 5 (the server that reset got the opening)", ev.BytesToBackend, sent)
	}
}

// noBackendEvent sends opening through a proxy that places no session and
// returns the one reset event, which must be a no_backend one on server
// "none".
func noBackendEvent(t *testing.T, h *harness, opening string) ResetEvent {
	t.Helper()
	c := h.dial("l")
	c.Write([]byte(opening))
	readErr(c, 3*time.Second)
	waitFor(t, 3*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })
	ev := h.p.Resets(0)[0]
	if ev.Outcome != "no_backend" || ev.Server != "none" {
		t.Fatalf("event = %+v, want a no_backend one on server none", ev)
	}
	return ev
}

// An app that resets while its server has taken the opening and not
// answered yet (a slow listener, a handshake the app's own timeout cut)
// ended on that server's link: phase opening, and the server named, as
// the contrast with TestAppResetWhileDialingIsPhaseConnect says. It was
// counted on the link "none", which /api/resets reserves for sessions no
// server took (outcome no_backend): the status page's "→ none" row and
// TnsguardResetRateHigh then named no server.
func TestAppResetWhileOpeningNamesTheServer(t *testing.T) {
	got := make(chan struct{}, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 64)
		c.Read(buf)
		got <- struct{}{}
		io.Copy(io.Discard, c) // never answers
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	c.Write([]byte("hello"))
	select {
	case <-got:
	case <-time.After(2 * time.Second):
		t.Fatal("the server never got the opening")
	}
	time.Sleep(50 * time.Millisecond)
	resetConn(c)
	waitFor(t, 2*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })
	ev := h.p.Resets(0)[0]
	if ev.Side != SideClient || ev.Phase != PhaseOpening || ev.Server != be.addr() {
		t.Errorf("app reset while its server owed the first answer: side %s, phase %s, server %s; want client, opening, %s", ev.Side, ev.Phase, ev.Server, be.addr())
	}
	if v := counter(h.m.Resets, "l", "b", be.addr(), "client", "opening", "rst"); v != 1 {
		t.Errorf("resets{server=%s,side=client,phase=opening,cause=rst} = %v, want 1", be.addr(), v)
	}
}

// hungBudgetConfig is a backend of the given servers (backendTOML's form)
// whose connect_budget ends soon, health checks off: as in a switchover
// drill, nothing but the sessions' own dials tells a hung server.
func hungBudgetConfig(servers ...string) string {
	return backendTOML(`connect_timeout = "500ms"
connect_budget = "2s"
backoff = "50ms"
backoff_max = "200ms"
answer_timeout = "300ms"
[backend.health]
check = "off"`, servers...)
}

// budgetEndEvent sends an Oracle CONNECT through h, which places no
// session, and returns the app's REFUSE code and the one reset event.
func budgetEndEvent(t *testing.T, h *harness) (int, ResetEvent) {
	t.Helper()
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	code := readRefuse(t, c, 8*time.Second)
	waitFor(t, 5*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })
	return code, h.p.Resets(0)[0]
}

// A session whose connect_budget ends while a server holds its CONNECT
// unanswered (a hung listener: it accepts, reads, never answers) names
// that server: in tnsguard_resets_total, /api/resets and its status-page
// row, phase opening, cause timeout. It is still a session no server took
// (outcome no_backend, rejected no_backend), and the app still gets
// ORA-12170. Until 2026-12-01 every such end was counted on "none", phase
// connect: in a switchover drill 59 apps got ORA-12170, the hung server's
// row showed 0 resets and only the log line's attempts named it. With a
// standby that is down (its dials refused) the hung server is named too,
// whichever attempt came last.
func TestBudgetEndOnAHungServerNamesIt(t *testing.T) {
	for _, standby := range []bool{false, true} {
		t.Run(fmt.Sprintf("standby down %v", standby), func(t *testing.T) {
			hung := newHungReader(t)
			servers := []string{fmt.Sprintf("address = %q;priority = 0", hung.address)}
			if standby {
				servers = append(servers, fmt.Sprintf("address = %q;priority = 1", closedPort(t)))
			}
			h := startProxy(t, hungBudgetConfig(servers...))
			code, ev := budgetEndEvent(t, h)
			if code != 12170 {
				t.Errorf("the app got ORA-%05d, want ORA-12170 (as before)", code)
			}
			if ev.Server != hung.address || ev.Side != SideBackend || ev.Phase != PhaseOpening || ev.Cause != "timeout" || ev.Outcome != "no_backend" {
				t.Errorf("/api/resets event: server %s, side %s, phase %s, cause %s, outcome %s; want %s, backend, opening, timeout, no_backend",
					ev.Server, ev.Side, ev.Phase, ev.Cause, ev.Outcome, hung.address)
			}
			if v := counter(h.m.Resets, "l", "b", hung.address, "backend", "opening", "timeout"); v != 1 {
				t.Errorf("resets{server=%s,side=backend,phase=opening,cause=timeout} = %v, want 1", hung.address, v)
			}
			if v := sumCounters(t, h.m.Resets); v != 1 {
				t.Errorf("resets_total summed over every series = %v, want 1 (none on server none)", v)
			}
			if st := linkOf(t, h.p, hung.address); st.Resets5m != 1 || st.ResetsByCause1h["timeout"] != 1 {
				t.Errorf("the hung server's row: resets 5m %d, by cause %v; want 1, timeout 1", st.Resets5m, st.ResetsByCause1h)
			}
			if v := counter(h.m.SessionsTotal, "l", "b", "other", "no_backend"); v != 1 {
				t.Errorf("sessions_total{outcome=no_backend} = %v, want 1", v)
			}
			if v := counter(h.m.SessionsRejected, "l", "no_backend"); v != 1 {
				t.Errorf("sessions_rejected_total{reason=no_backend} = %v, want 1", v)
			}
		})
	}
}

// A session whose dials were all refused (no server took its CONNECT) stays
// on server "none", phase connect, with the dial's cause, beside a test of
// the one above: only a server that held the opening is named.
func TestBudgetEndOnRefusedDialsStaysOnNone(t *testing.T) {
	h := startProxy(t, hungBudgetConfig(fmt.Sprintf("address = %q", closedPort(t))))
	code, ev := budgetEndEvent(t, h)
	if code != 12541 {
		t.Errorf("the app got ORA-%05d, want ORA-12541 (no listener)", code)
	}
	if ev.Server != "none" || ev.Side != SideBackend || ev.Phase != PhaseConnect || ev.Cause != "refused" || ev.Outcome != "no_backend" {
		t.Errorf("/api/resets event: server %s, side %s, phase %s, cause %s, outcome %s; want none, backend, connect, refused, no_backend",
			ev.Server, ev.Side, ev.Phase, ev.Cause, ev.Outcome)
	}
	if v := counter(h.m.Resets, "l", "b", "none", "backend", "connect", "refused"); v != 1 {
		t.Errorf("resets{server=none,side=backend,phase=connect,cause=refused} = %v, want 1", v)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "no_backend"); v != 1 {
		t.Errorf("sessions_total{outcome=no_backend} = %v, want 1", v)
	}
}

// A session whose hung server a reload took out (the operator's fix), and
// whose budget then ended on the new servers (down: their dials refused),
// is not counted on the removed server: its status-page row is gone (it
// never carried a session), so the end showed on no row at all, and
// tnsguard_resets_total and /api/resets named, with cause timeout, a server
// the app's last attempts never reached while the app got ORA-12541. It
// stays on "none", phase connect, with the new server's cause, as before
// 2026-12-01.
func TestBudgetEndAfterAReloadTookTheHungServerOutStaysOnNone(t *testing.T) {
	hung := newHungReader(t)
	body := `connect_timeout = "500ms"
connect_budget = "6s"
backoff = "50ms"
backoff_max = "200ms"
answer_timeout = "300ms"
[backend.health]
check = "off"`
	h := startProxy(t, backendTOML(body, fmt.Sprintf("address = %q;priority = 0", hung.address),
		fmt.Sprintf("address = %q;priority = 1", closedPort(t))))
	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	// Dialed again: its first wait ended at answer_timeout, and the
	// standby's dial was refused in between.
	waitFor(t, 4*time.Second, "the hung server dialed a second time", func() bool { return hung.dialed.Load() >= 2 })
	moved := closedPort(t)
	if err := h.p.Apply(mustParse(t, backendTOML(body, fmt.Sprintf("address = %q", moved)))); err != nil {
		t.Fatal(err)
	}
	if code := readRefuse(t, c, 10*time.Second); code != 12541 {
		t.Errorf("the app got ORA-%05d, want ORA-12541 (the new server's dials refused)", code)
	}
	waitFor(t, 5*time.Second, "one reset event", func() bool { return len(h.p.Resets(0)) == 1 })
	if ev := h.p.Resets(0)[0]; ev.Server != "none" || ev.Phase != PhaseConnect || ev.Cause != "refused" || ev.Outcome != "no_backend" {
		t.Errorf("/api/resets event: server %s, phase %s, cause %s, outcome %s; want none, connect, refused, no_backend",
			ev.Server, ev.Phase, ev.Cause, ev.Outcome)
	}
	shown := map[string]uint64{}
	var sum uint64
	for _, st := range h.p.Links() {
		shown[st.Server] += st.Resets5m
		sum += st.Resets5m
	}
	if sum != 1 || shown["none"] != 1 {
		t.Errorf("status-page rows' resets_5m by server: %v; want the end on none's row (1)", shown)
	}
	if v := counter(h.m.Resets, "l", "b", hung.address, "backend", "opening", "timeout"); v != 0 {
		t.Errorf("resets{server=%s (removed),phase=opening,cause=timeout} = %v, want 0", hung.address, v)
	}
}

// Without "reset" in retry_on, a hung listener's app gets ORA-12170 at the
// budget's end as with it, and is the same session no server took: outcome
// no_backend, counted in rejected{reason="no_backend"} (TnsguardAppsRejected),
// on the hung server, phase opening. Until 2026-12-01 it ended "reset" and
// was not counted as rejected: with retry_on = ["connect"] a hung listener
// fired TnsguardResetRateHigh but never TnsguardAppsRejected, and the
// sessions panel showed resets where the default retry_on showed no_backend.
func TestBudgetEndOnAHungServerWithoutResetRetryIsNoBackend(t *testing.T) {
	hung := newHungReader(t)
	h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "2s"
retry_on = ["connect"]
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", hung.address)))
	code, ev := budgetEndEvent(t, h)
	if code != 12170 {
		t.Errorf("the app got ORA-%05d, want ORA-12170", code)
	}
	if ev.Server != hung.address || ev.Side != SideBackend || ev.Phase != PhaseOpening || ev.Cause != "timeout" || ev.Outcome != "no_backend" {
		t.Errorf("/api/resets event: server %s, side %s, phase %s, cause %s, outcome %s; want %s, backend, opening, timeout, no_backend",
			ev.Server, ev.Side, ev.Phase, ev.Cause, ev.Outcome, hung.address)
	}
	if v := counter(h.m.SessionsRejected, "l", "no_backend"); v != 1 {
		t.Errorf("sessions_rejected_total{reason=no_backend} = %v, want 1", v)
	}
	if v := counter(h.m.SessionsTotal, "l", "b", "other", "no_backend"); v != 1 {
		t.Errorf("sessions_total{outcome=no_backend} = %v, want 1", v)
	}
}
