// Package probe measures, by experiment, after how long of silence the network
// path to a TCP server (a firewall, NAT gateway or load balancer on the way)
// forgets a connection, and how it then fails: silently (drop) or with a
// reset. From that it recommends the keepalive that keeps connections alive
// over the path.
//
// It opens a few test connections with TCP keepalive off, lets them sit idle
// for chosen times, and then checks each by making the kernel send one TCP
// keepalive probe: an empty segment the server's TCP acknowledges without its
// application seeing anything. An ACK means the path still knew the
// connection; no answer means it black-holes it; a reset means it resets it.
//
// Typical use:
//
//	res, err := probe.Run(ctx, probe.Options{Target: "db.example.com:1521", Progress: os.Stderr})
//	if err != nil { ... }
//	if res.Found {
//		fmt.Println("idle timeout", res.IdleTimeout, "failure", res.Failure)
//	}
//	fmt.Println("path_idle_timeout =", res.Recommended.PathIdleTimeout)
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/keepalive"
)

const (
	defaultMax         = 2 * time.Hour
	defaultParallel    = 5
	defaultProbes      = 3
	defaultDialTimeout = 10 * time.Second

	// pollEvery is how often a check in flight looks for the probe's ACK.
	pollEvery = 5 * time.Millisecond
	// ackSlack absorbs the millisecond (jiffy) rounding of tcpi_last_ack_recv
	// when telling the probe's ACK from the last one before the idle time.
	ackSlack = 50 * time.Millisecond
	// dialRetries is how many dials in a row may fail during a run before it
	// gives up (the first dial of a run has no retry: its error is the answer).
	dialRetries = 3
)

// Options are what to probe and how.
type Options struct {
	// Target is the server's HOST:PORT. Any TCP server that keeps a silent
	// connection open works; its application never receives a byte.
	Target string
	// Max is the longest idle time checked (default 2h). When connections
	// survive that, no timeout is reported.
	Max time.Duration
	// Parallel is how many test connections may be open at once (default 5).
	Parallel int
	// Progress receives a line per check while it runs (nil: quiet).
	Progress io.Writer
	// Probes is how many unanswered keepalive probes, a second apart, make a
	// check conclude the path drops the connection (default 3).
	Probes int
	// DialTimeout bounds each connect (default 10s).
	DialTimeout time.Duration
	// Dial opens a test connection; nil dials from this host with keepalive
	// off. Keepalive is switched off on whatever it returns.
	Dial func(ctx context.Context, address string) (*net.TCPConn, error)
}

// Result is what a run found.
type Result struct {
	Target string
	Max    time.Duration

	// Found is true when a connection died after some idle time below Max.
	Found bool
	// IdleTimeout is the path's idle timeout: the middle of LongestAlive and
	// ShortestDead when Found, else 0.
	IdleTimeout time.Duration
	// LongestAlive is the longest idle time a connection survived (below
	// ShortestDead); ShortestDead the shortest after which one had died (0:
	// none died).
	LongestAlive, ShortestDead time.Duration
	// Failure is how the connection that died after ShortestDead died.
	Failure Failure
	// RTT is the median round-trip time the kernel measured on connect.
	RTT time.Duration
	// TargetClosedAfter is set when the target itself closed an idle
	// connection (FIN) this long after connect, e.g. an Oracle listener's
	// INBOUND_CONNECT_TIMEOUT; no longer idle time can be checked there.
	TargetClosedAfter time.Duration
	// Contradictions counts connections that survived an idle time longer
	// than ShortestDead: the path is not consistent (several middleboxes,
	// load-balanced paths); the deaths are trusted.
	Contradictions int
	// TargetKeepalive is set when the target sent segments (its own TCP
	// keepalive probes) on connections the probe kept silent: the shortest
	// idle time of a check that found such. They refresh the middlebox, so a
	// timeout longer than the target's keepalive cannot be seen, and the
	// recommendation is no slower than what kept the connections alive.
	TargetKeepalive time.Duration
	// Recommended is the keepalive for the path: Recommend(IdleTimeout) when
	// Found, else Recommend(LongestAlive), which is proven enough; either
	// capped at Recommend(TargetKeepalive) when that is set.
	Recommended Recommendation

	Checks      int           // liveness checks made
	Connections int           // test connections opened
	Elapsed     time.Duration // how long the run took
}

// ErrClosedByTarget means the target closes idle connections itself before
// any middlebox timeout was found, so the path cannot be measured there.
var ErrClosedByTarget = errors.New("closed by target")

// Run probes o.Target until it has found the path's idle timeout within 1s
// (2% for timeouts over 50s), or connections survived o.Max idle, or ctx
// ends. Expect it to take about three times the timeout it finds (at most
// four, in simulated runs), or o.Max when there is none. On return every test connection is closed.
//
// An error means no answer: the target could not be reached (the Result is
// then empty), ctx ended (the Result holds what was found so far), or the
// target closed idle connections itself before the path did (ErrClosedByTarget;
// the Result says after how long, and up to which idle time the path kept them).
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Target == "" {
		return Result{}, errors.New("no target: give HOST:PORT")
	}
	if _, _, err := net.SplitHostPort(o.Target); err != nil {
		return Result{Target: o.Target}, fmt.Errorf("target %q: %w", o.Target, err)
	}
	if o.Max == 0 {
		o.Max = defaultMax
	}
	if o.Max < ladderStart {
		return Result{Target: o.Target}, fmt.Errorf("max %v is below the shortest idle time checked (%v)", o.Max, ladderStart)
	}
	if o.Parallel == 0 {
		o.Parallel = defaultParallel
	}
	if o.Parallel < 2 {
		return Result{Target: o.Target}, fmt.Errorf("parallel %d: need at least 2 connections", o.Parallel)
	}
	if o.Probes <= 0 {
		o.Probes = defaultProbes
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.Dial == nil {
		d := net.Dialer{KeepAlive: -1}
		o.Dial = func(ctx context.Context, addr string) (*net.TCPConn, error) {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return c.(*net.TCPConn), nil
		}
	}

	e := &engine{
		o:      o,
		s:      search{max: o.Max},
		start:  time.Now(),
		events: make(chan connEvent),
		dials:  make(chan dialResult),
		quit:   make(chan struct{}),
	}
	defer e.shutdown()

	c, err := e.dial(ctx)
	if err != nil {
		return Result{Target: o.Target, Max: o.Max}, fmt.Errorf("connect to %s: %w", o.Target, err)
	}
	if err := e.add(c, time.Now()); err != nil {
		return Result{Target: o.Target, Max: o.Max}, err
	}
	e.progress("probing %s (rtt %s): idle times from %v up to %v on up to %d connections; liveness by TCP keepalive probes, nothing is sent to the service",
		o.Target, fmtRTT(e.rtt()), ladderStart, o.Max, o.Parallel)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for !e.s.done() {
		now := time.Now()
		e.plan(ctx, now)
		if len(e.conns) == 0 && len(e.dialing) == 0 && now.After(e.nextDial) {
			lo, hi := e.s.bounds()
			return e.result(), fmt.Errorf("probe stuck with no connection to check (survived %v, died after %v)", lo, hi)
		}
		timer.Reset(e.nextWake(now).Sub(now))
		select {
		case <-ctx.Done():
			return e.result(), ctx.Err()
		case ev := <-e.events:
			e.handle(ev)
		case d := <-e.dials:
			if err := e.dialed(d); err != nil {
				return e.result(), err
			}
		case <-timer.C:
		}
		e.tick(time.Now())
	}
	r := e.result()
	lo, hi := e.s.bounds()
	switch {
	case hi > 0:
		e.progress("idle timeout between %s and %s: %s", fmtDur(lo), fmtDur(hi), r.Failure)
	case lo < o.Max && r.TargetClosedAfter > 0:
		return r, fmt.Errorf("%w after %s: connections survived idle up to %s, and longer idle times cannot be checked on this target",
			ErrClosedByTarget, fmtDur(r.TargetClosedAfter), fmtDur(lo))
	default:
		e.progress("no idle timeout found up to %v", o.Max)
	}
	return r, nil
}

// engine is one run: the open test connections and what they found. Only
// Run's goroutine touches it; each connection has a goroutine reading it
// (to hear resets, timeouts and the target's FIN at once) and each dial
// runs in its own, both reporting over channels.
type engine struct {
	o     Options
	s     search
	start time.Time

	conns     []*testConn
	dialing   []time.Duration // the planned targets of dials in flight
	nextDial  time.Time       // after a failed dial, no new one before this
	dialFails int

	events chan connEvent
	dials  chan dialResult
	quit   chan struct{} // closed at shutdown: goroutines stop reporting
	wg     sync.WaitGroup

	rtts           []time.Duration // of each connect
	checks, opened int
	nextID         int
	// targetKeepalive is the shortest idle of a check during which the
	// target sent segments on the silent connection (0: none seen).
	targetKeepalive time.Duration
}

// testConn is one test connection.
type testConn struct {
	id        int
	c         *net.TCPConn
	connected time.Time
	// refreshed is when the path last saw a packet of it: connect, the ACK of
	// the last check, or data from the target.
	refreshed time.Time
	target    time.Duration // idle at which to check it next
	checking  bool
	triggered time.Time     // when the check in flight started
	idle      time.Duration // the idle time the check in flight tests
	closed    bool
	// segsIn is how many segments the kernel had received on it when it
	// was last refreshed, plus the ACKs still due to probes in flight then:
	// more at the next check means the target sent something while the
	// probe kept silent (its own keepalive probes). Counted from the first
	// check on: until the server's TCP has the handshake's last ACK, it
	// resends its SYN-ACK (over a long RTT, or when that ACK was lost).
	segsIn  uint32
	counted bool
}

// connEvent is what a connection's reader saw: data, or the end (err).
type connEvent struct {
	tc   *testConn
	at   time.Time
	data bool
	err  error
}

type dialResult struct {
	c      *net.TCPConn
	err    error
	target time.Duration
	at     time.Time
}

func (e *engine) dial(ctx context.Context) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.o.DialTimeout)
	defer cancel()
	return e.o.Dial(ctx, e.o.Target)
}

// add takes a new connection into the run, keepalive off.
func (e *engine) add(c *net.TCPConn, now time.Time) error {
	if err := keepaliveOff(c); err != nil {
		c.Close()
		return fmt.Errorf("test connection: %w", err)
	}
	if st, err := keepalive.ReadInfo(c); err == nil && st.RTT > 0 {
		e.rtts = append(e.rtts, st.RTT)
	}
	e.nextID++
	e.opened++
	tc := &testConn{id: e.nextID, c: c, connected: now, refreshed: now}
	e.conns = append(e.conns, tc)
	e.wg.Add(1)
	go e.read(tc)
	return nil
}

// read reports what arrives on a test connection until it ends.
func (e *engine) read(tc *testConn) {
	defer e.wg.Done()
	buf := make([]byte, 512)
	for {
		n, err := tc.c.Read(buf)
		if n == 0 && err == nil {
			continue
		}
		select {
		case e.events <- connEvent{tc: tc, at: time.Now(), data: n > 0, err: err}:
		case <-e.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

func (e *engine) startDial(ctx context.Context, target time.Duration) {
	e.dialing = append(e.dialing, target)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		c, err := e.dial(ctx)
		select {
		case e.dials <- dialResult{c: c, err: err, target: target, at: time.Now()}:
		case <-e.quit:
			if c != nil {
				c.Close()
			}
		}
	}()
}

func (e *engine) dialed(d dialResult) error {
	if i := slices.Index(e.dialing, d.target); i >= 0 {
		e.dialing = slices.Delete(e.dialing, i, i+1)
	}
	if d.err != nil {
		e.dialFails++
		if e.dialFails >= dialRetries {
			return fmt.Errorf("connect to %s: %w (%d attempts in a row failed)", e.o.Target, d.err, e.dialFails)
		}
		e.progress("connect failed, retrying: %v", d.err)
		e.nextDial = d.at.Add(time.Second)
		return nil
	}
	e.dialFails = 0
	return e.add(d.c, d.at)
}

// plan (re)assigns every idle connection its next check, closes those of no
// more use, and opens new ones for the checks that need them.
func (e *engine) plan(ctx context.Context, now time.Time) {
	var pending []time.Duration
	var idle []*testConn
	var slots []slot
	for _, tc := range e.conns {
		if tc.checking {
			pending = append(pending, tc.idle)
			continue
		}
		idle = append(idle, tc)
		slots = append(slots, slot{idle: now.Sub(tc.refreshed), reach: e.reach(tc)})
	}
	pending = append(pending, e.dialing...)
	free := e.o.Parallel - len(e.conns) - len(e.dialing)
	if now.Before(e.nextDial) {
		free = 0
	}
	targets, fresh := e.s.plan(pending, slots, free)
	for i, tc := range idle {
		if targets[i] == 0 {
			e.retire(tc)
			continue
		}
		tc.target = targets[i]
	}
	for _, x := range fresh {
		e.startDial(ctx, x)
	}
}

// reach is the longest idle a connection can still get to before the
// target closes it (0: no limit known).
func (e *engine) reach(tc *testConn) time.Duration {
	closed := e.s.closedAfter()
	if closed == 0 {
		return 0
	}
	end := tc.connected.Add(closed - resolution(closed))
	return max(end.Sub(tc.refreshed), time.Nanosecond)
}

func (e *engine) nextWake(now time.Time) time.Time {
	wake := now.Add(time.Hour)
	for _, tc := range e.conns {
		at := tc.refreshed.Add(tc.target)
		if tc.checking {
			at = now.Add(pollEvery)
		}
		if at.Before(wake) {
			wake = at
		}
	}
	if len(e.dialing) == 0 && e.nextDial.After(now) && e.nextDial.Before(wake) {
		wake = e.nextDial
	}
	return wake
}

// tick starts the checks that are due and looks for answers to those in
// flight.
func (e *engine) tick(now time.Time) {
	for _, tc := range slices.Clone(e.conns) {
		switch {
		case tc.closed:
		case tc.checking:
			e.poll(tc, now)
		case tc.target > 0 && !now.Before(tc.refreshed.Add(tc.target)):
			e.trigger(tc, time.Now())
		}
	}
}

func (e *engine) trigger(tc *testConn, now time.Time) {
	tc.idle = now.Sub(tc.refreshed)
	tc.triggered = now
	if st, err := keepalive.ReadInfo(tc.c); err == nil && tc.counted && st.SegsIn > tc.segsIn && tc.idle >= ladderStart {
		// Segments with no data (a read would have reported data) reached
		// a connection that sent nothing: the target's keepalive probes.
		// They crossed the path and refreshed it during this idle time.
		if e.targetKeepalive == 0 || tc.idle < e.targetKeepalive {
			if e.targetKeepalive == 0 {
				e.progress("idle %s: the target sent %d segment(s) on the silent connection (its own TCP keepalive?): they refresh the path, so longer idle times do not test it", fmtDur(tc.idle), st.SegsIn-tc.segsIn)
			}
			e.targetKeepalive = tc.idle
		}
	}
	if err := startCheck(tc.c, e.o.Probes); err != nil {
		// Only a socket already closed refuses these options.
		e.progress("check after idle %s could not start: %v", fmtDur(tc.idle), err)
		e.retire(tc)
		return
	}
	tc.checking = true
	e.checks++
}

// poll looks for the ACK of the check's probe: one received after the check
// started, while the connection is still established.
func (e *engine) poll(tc *testConn, now time.Time) {
	st, err := keepalive.ReadInfo(tc.c)
	if err == nil && st.State == unix.BPF_TCP_ESTABLISHED {
		if ackAt := now.Add(-st.LastAckRecv); !ackAt.Before(tc.triggered.Add(-ackSlack)) {
			e.alive(tc, tc.idle, "")
			// The path last saw the connection when the ACK crossed it: about
			// half an RTT after the probe left. The kernel sends a probe every
			// checkInterval until one is answered, so over a path whose RTT is
			// longer than that, more probes left before this ACK came back,
			// and the last of them (and its ACK) crossed the path later.
			tc.refreshed = ackAt.Add(-st.RTT / 2)
			if ackAt.After(tc.triggered) {
				lastProbe := tc.triggered.Add(ackAt.Sub(tc.triggered).Truncate(checkInterval))
				if r := lastProbe.Add(st.RTT / 2); r.After(tc.refreshed) {
					tc.refreshed = r
				}
			}
			if tc.refreshed.Before(tc.triggered) {
				tc.refreshed = tc.triggered
			}
			// The probes sent before this ACK came back are answered too.
			tc.segsIn, tc.counted = st.SegsIn, true
			if ackAt.After(tc.triggered) {
				tc.segsIn += uint32(ackAt.Sub(tc.triggered) / checkInterval)
			}
			return
		}
	}
	// The kernel ends an unanswered check after Probes seconds; its reader
	// reports that. This is only a backstop.
	if now.Sub(tc.triggered) > time.Duration(e.o.Probes+5)*checkInterval {
		e.dead(tc, tc.idle, FailureDrop, "no answer to keepalive probes")
		e.retire(tc)
	}
}

// alive records that tc survived idle, and lets it sit idle again.
func (e *engine) alive(tc *testConn, idle time.Duration, how string) {
	tc.checking = false
	tc.target = 0
	if err := keepaliveOff(tc.c); err != nil {
		e.retire(tc)
	}
	if idle < ladderStart {
		return
	}
	e.s.addAlive(idle)
	e.progress("idle %s: alive%s", fmtDur(idle), how)
}

func (e *engine) dead(tc *testConn, idle time.Duration, f Failure, how string) {
	e.s.addDead(idle, f)
	e.reportDead(idle, f, how)
}

// reportDead says that a check found a connection dead after idle.
func (e *engine) reportDead(idle time.Duration, f Failure, how string) {
	e.progress("idle %s: dead, %s (%s)", fmtDur(idle), f, how)
	if lo, hi := e.s.bounds(); hi == idle && !e.s.done() {
		e.progress("idle timeout between %s and %s, narrowing it down", fmtDur(lo), fmtDur(hi))
	}
}

// handle takes what a connection's reader saw.
func (e *engine) handle(ev connEvent) {
	tc := ev.tc
	if tc.closed {
		return
	}
	idle := ev.at.Sub(tc.refreshed)
	checkIdle := idle
	if tc.checking {
		checkIdle = tc.idle
	}
	if ev.data {
		// The target talks (a greeting, say). It crossed the path, so the
		// connection was alive after this idle time, which starts again now.
		if tc.checking || idle >= ladderStart {
			e.alive(tc, checkIdle, " (the target sent data)")
		}
		tc.refreshed = ev.at
		if st, err := keepalive.ReadInfo(tc.c); err == nil {
			tc.segsIn = st.SegsIn
		}
	}
	if ev.err == nil {
		return
	}
	life := ev.at.Sub(tc.connected)
	switch {
	case errors.Is(ev.err, io.EOF):
		// The target closed it (FIN).
		e.s.addClose(idle, life, false)
		e.progress("closed by target after %s (idle %s): the target ends idle connections itself", fmtDur(life), fmtDur(idle))
	case errors.Is(ev.err, syscall.ECONNRESET) && tc.checking:
		e.s.addProbeReset(checkIdle, life)
		e.reportDead(checkIdle, FailureReset, "reset in answer to a keepalive probe")
	case errors.Is(ev.err, syscall.ECONNRESET):
		e.s.addClose(idle, life, true)
		e.progress("idle %s: reset, not in answer to a probe (%s after connect): a middlebox that resets the flows it forgets, or the target", fmtDur(idle), fmtDur(life))
	case tc.checking:
		e.dead(tc, checkIdle, FailureDrop, fmt.Sprintf("no answer to %d keepalive probes: %v", e.o.Probes, ev.err))
	default:
		e.dead(tc, checkIdle, FailureDrop, fmt.Sprintf("failed while idle: %v", ev.err))
	}
	e.retire(tc)
}

// retire closes a test connection and forgets it.
func (e *engine) retire(tc *testConn) {
	if tc.closed {
		return
	}
	tc.closed = true
	tc.c.Close()
	e.conns = slices.DeleteFunc(e.conns, func(x *testConn) bool { return x == tc })
}

// shutdown closes every connection and waits for all goroutines of the run.
func (e *engine) shutdown() {
	close(e.quit)
	for _, tc := range slices.Clone(e.conns) {
		e.retire(tc)
	}
	e.wg.Wait()
}

func (e *engine) result() Result {
	lo, hi := e.s.bounds()
	r := Result{
		Target:            e.o.Target,
		Max:               e.o.Max,
		LongestAlive:      lo,
		ShortestDead:      hi,
		Failure:           e.s.failure(),
		RTT:               e.rtt(),
		TargetClosedAfter: e.s.closedAfter(),
		Contradictions:    e.s.contradictions(),
		TargetKeepalive:   e.targetKeepalive,
		Checks:            e.checks,
		Connections:       e.opened,
		Elapsed:           time.Since(e.start),
	}
	if hi > 0 {
		r.Found = true
		r.IdleTimeout = ((lo + hi) / 2).Round(time.Millisecond)
		r.Recommended = Recommend(r.IdleTimeout)
	} else {
		r.Recommended = Recommend(lo)
	}
	// Only a keepalive as frequent as the target's was seen to keep the
	// connections alive.
	if k := e.targetKeepalive; k > 0 && k < lo {
		if rk := Recommend(k); rk.PathIdleTimeout < r.Recommended.PathIdleTimeout {
			r.Recommended = rk
		}
	}
	return r
}

// rtt is the median of the kernel's RTT on each connect: one handshake is
// one sample, and the first of a run is often slower (ARP, conntrack entry).
func (e *engine) rtt() time.Duration {
	if len(e.rtts) == 0 {
		return 0
	}
	s := slices.Clone(e.rtts)
	slices.Sort(s)
	return s[len(s)/2]
}

func (e *engine) progress(format string, args ...any) {
	if e.o.Progress == nil {
		return
	}
	fmt.Fprintf(e.o.Progress, "[%6s] %s\n", time.Since(e.start).Round(time.Second), fmt.Sprintf(format, args...))
}

// fmtDur shows a duration as precisely as the probe measures it.
func fmtDur(d time.Duration) string {
	if d < time.Minute {
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func fmtRTT(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}
