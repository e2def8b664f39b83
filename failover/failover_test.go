package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testBackend builds a backend from the [[backend]] body given (keys, then
// servers), with health checks off unless the body sets them.
func testBackend(t *testing.T, body string) *Backend {
	t.Helper()
	return testBackendLogged(t, body, hclog.NewNullLogger())
}

// testBackendLogged is testBackend with the backend's log going to log.
func testBackendLogged(t *testing.T, body string, log hclog.Logger) *Backend {
	t.Helper()
	text := `
[[listener]]
name = "l"
listen = "127.0.0.1:0"
backend = "b"
[[backend]]
name = "b"
` + body
	cfg, _, err := config.Parse([]byte(text), "test.toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return New(cfg.Backend("b"), log, metrics.New(prometheus.NewRegistry(), "test"))
}

func servers(specs ...string) string {
	var sb strings.Builder
	for _, s := range specs {
		fmt.Fprintf(&sb, "  [[backend.server]]\n  %s\n", strings.ReplaceAll(s, ";", "\n  "))
	}
	return sb.String()
}

func firstOf(b *Backend) string {
	list, _ := b.order(time.Now())
	if len(list) == 0 {
		return ""
	}
	return list[0].Address
}

// Round robin puts each server first in proportion to its weight, exactly
// over whole cycles.
func TestRoundRobinWeights(t *testing.T) {
	b := testBackend(t, `balance = "round_robin"
`+servers(`address = "a:1";weight = 1`, `address = "b:1";weight = 2`, `address = "c:1";weight = 3`))
	got := map[string]int{}
	for range 600 {
		got[firstOf(b)]++
	}
	if got["a:1"] != 100 || got["b:1"] != 200 || got["c:1"] != 300 {
		t.Fatalf("first-choice counts %v, want a:100 b:200 c:300", got)
	}
}

// The server after the first choice (the one a session re-dials when its
// first choice fails: a dead host not yet seen down, a reset) is also
// chosen by weight, so a failing server's share spreads over the others as
// their weights say. The others used to follow in list order: with weights
// 1:2:3 and c:1 dead, a:1 took every session c:1 failed, 40 of 60 in all
// against b:1's 20.
func TestRoundRobinNextChoiceByWeight(t *testing.T) {
	b := testBackend(t, `balance = "round_robin"
`+servers(`address = "a:1";weight = 1`, `address = "b:1";weight = 2`, `address = "c:1";weight = 3`))
	second := map[string]map[string]int{}
	for range 600 {
		list, _ := b.order(time.Now())
		first := list[0].Address
		if second[first] == nil {
			second[first] = map[string]int{}
		}
		second[first][list[1].Address]++
	}
	if got := second["c:1"]; got["a:1"] != 100 || got["b:1"] != 200 {
		t.Fatalf("after c:1 (first 300 times): %v, want a:100 b:200 (weights 1:2)", got)
	}
	if got := second["b:1"]; got["a:1"] != 50 || got["c:1"] != 150 {
		t.Fatalf("after b:1 (first 200 times): %v, want a:50 c:150 (weights 1:3)", got)
	}
	if got := second["a:1"]; got["b:1"] != 40 || got["c:1"] != 60 {
		t.Fatalf("after a:1 (first 100 times): %v, want b:40 c:60 (weights 2:3)", got)
	}
}

// A reload that changes a round_robin backend (its connect_timeout, say)
// goes on with the rotation where it was: it started again at the first
// server, so with reloads more often than a turn of the rotation (a
// reload.watch on a busy ConfigMap, an automation that reloads each
// minute) the first server took more than its share.
func TestRoundRobinGoesOnAcrossAReload(t *testing.T) {
	three := servers(`address = "a:1"`, `address = "b:1"`, `address = "c:1"`)
	old := testBackend(t, "balance = \"round_robin\"\n"+three)
	got := map[string]int{}
	for i := range 30 {
		list, _ := old.order(time.Now())
		got[list[0].Address]++
		// Reloaded after every session: a new Backend each time.
		b := testBackend(t, fmt.Sprintf("balance = \"round_robin\"\nconnect_timeout = \"%dms\"\n", 1000+i)+three)
		b.Inherit(old)
		old = b
	}
	for _, a := range []string{"a:1", "b:1", "c:1"} {
		if got[a] != 10 {
			t.Fatalf("30 sessions, a reload after each: first choices %v, want 10 each", got)
		}
	}
}

// Servers of one priority share by weight even when other priority groups
// (and down servers) are sorted in the same round. Before the fix every
// group advanced the shared rotation, so with two groups the preferred
// pair always started with the same server.
func TestPriorityGroupsShareByWeight(t *testing.T) {
	b := testBackend(t, servers(`address = "a:1"`, `address = "b:1"`, `address = "s:1";priority = 1`, `address = "t:1";priority = 1`))
	got := map[string]int{}
	for range 100 {
		list, _ := b.order(time.Now())
		got[list[0].Address]++
		if p := list[2].Priority; p != 1 {
			t.Fatalf("standby order %v", list)
		}
	}
	if got["a:1"] != 50 || got["b:1"] != 50 {
		t.Fatalf("first choice among priority 0: %v, want a:50 b:50", got)
	}
}

// A server with weight 0 takes no session, so it does not make its backend
// up (nor the proxy ready) when every weighted server is down.
func TestWeightZeroServerDoesNotMakeTheBackendUp(t *testing.T) {
	b := testBackend(t, servers(`address = "a:1"`, `address = "z:1";weight = 0`))
	b.Servers[0].setUp(false)
	b.Servers[1].setUp(true)
	if b.Up() {
		t.Errorf("backend up with only its weight-0 server up")
	}
	b.Servers[0].setUp(true)
	if !b.Up() {
		t.Errorf("backend down with its weighted server up")
	}
}

// Health-down servers come after healthy ones, whatever their priority.
func TestPriorityDownServerLast(t *testing.T) {
	b := testBackend(t, servers(`address = "a:1"`, `address = "s:1";priority = 1`))
	b.Servers[0].setUp(false)
	b.Servers[1].setUp(true)
	list, last := b.order(time.Now())
	if len(list) != 2 || list[0].Address != "s:1" || list[1].Address != "a:1" || last {
		t.Fatalf("order %v (last resort %v), want s:1 then a:1", addrs(list), last)
	}
}

// least_sessions picks the fewest sessions per weight; ties rotate.
func TestLeastSessions(t *testing.T) {
	b := testBackend(t, `balance = "least_sessions"
`+servers(`address = "a:1"`, `address = "b:1"`, `address = "c:1";weight = 2`))
	a, bb, c := b.Servers[0], b.Servers[1], b.Servers[2]
	add := func(s *Server, n int) {
		for range n {
			s.Acquire()
		}
	}
	add(a, 3)
	add(bb, 1)
	add(c, 4) // 4/2 = 2 per weight
	for range 10 {
		if f := firstOf(b); f != "b:1" {
			t.Fatalf("first choice %s with sessions a=3 b=1 c=4 (weight 2), want b:1", f)
		}
	}
	bb.Acquire()
	bb.Acquire() // b=3, c=2 per weight
	if f := firstOf(b); f != "c:1" {
		t.Fatalf("first choice %s with a=3 b=3 c=4/2, want c:1", f)
	}
	// All equal: a burst of new sessions spreads by weight.
	for _, s := range b.Servers {
		for s.Sessions() > 0 {
			s.Release()
		}
	}
	got := map[string]int{}
	for range 40 {
		got[firstOf(b)]++
	}
	if got["a:1"] != 10 || got["b:1"] != 10 || got["c:1"] != 20 {
		t.Fatalf("ties: first choice %v, want a:10 b:10 c:20", got)
	}
}

// least_sessions counts the sessions still dialing a server (or awaiting
// its first answer) as its sessions: two sessions that open at once go to
// two servers, not both to the one the first picked. Done (or the next
// Next) ends the count; a reload's backend shares it.
func TestLeastSessionsCountsOpeningSessions(t *testing.T) {
	b := testBackend(t, `balance = "least_sessions"
`+servers(`address = "a:1"`, `address = "b:1"`))
	p1 := b.NewPlan(time.Now())
	first, err := p1.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for range 4 { // whatever turn the rotation is at
		p := b.NewPlan(time.Now())
		if s, _ := p.Next(context.Background()); s == first {
			t.Fatalf("a session went to %s while another was still dialing it and %s had none", s.Address, addrs(b.Servers))
		}
		p.Done()
	}
	reloaded := testBackend(t, `balance = "least_sessions"
`+servers(`address = "a:1"`, `address = "b:1"`))
	reloaded.Inherit(b)
	p2 := reloaded.NewPlan(time.Now())
	if s, _ := p2.Next(context.Background()); s.Address == first.Address {
		t.Fatalf("after a reload a session went to %s, which a session of the old backend is still dialing", s.Address)
	}
	p2.Done()
	p1.Done()
	p1.Done() // twice: nothing more
	if n := first.opening.Load(); n != 0 {
		t.Fatalf("%s counts %d opening sessions after Done, want 0", first.Address, n)
	}
}

// Open circuits are skipped while another server is usable, and tried
// anyway when every circuit is open.
func TestOrderSkipsOpenCircuitsUnlessAllOpen(t *testing.T) {
	b := primaryAndStandby(t, "")
	b.Servers[0].Failed(errors.New("refused"))
	list, last := b.order(time.Now())
	if len(list) != 1 || list[0].Address != "s:1" || last {
		t.Fatalf("one circuit open: order %v (last resort %v), want only s:1", addrs(list), last)
	}
	b.Servers[1].Failed(errors.New("refused"))
	list, last = b.order(time.Now())
	if len(list) != 2 || list[0].Address != "a:1" || !last {
		t.Fatalf("all circuits open: order %v (last resort %v), want a:1, s:1 as a last resort", addrs(list), last)
	}
	// Next hands them out even though their breakers refuse.
	plan := b.NewPlan(time.Now())
	for _, want := range []string{"a:1", "s:1"} {
		s, err := plan.Next(context.Background())
		if err != nil || s.Address != want {
			t.Fatalf("last-resort round: got %v, %v; want %s", s, err, want)
		}
	}
}

// A restart shorter than fall checks opens the primary's circuit while its
// check still passes. When the only other server's check fails (a standby
// whose service is not open yet), a session tries the primary first, its
// breaker not asked, once: a server that takes TCP but fails every session
// is not dialed every round (29 times in one session in a first version).
func TestPlanTriesAnOpenCircuitThatIsUpOnceWhenTheOthersAreDown(t *testing.T) {
	b := primaryAndStandby(t, "backoff = \"1ms\"\nbackoff_max = \"1ms\"\n")
	b.Servers[0].Failed(errors.New("refused"))
	b.Servers[0].setUp(true) // its check passes: it never saw the restart
	b.Servers[1].setUp(false)
	// 500 ms of budget: at least three dials, however late this goroutine
	// runs on a loaded machine (with 50 ms, a stall took the budget whole).
	plan := b.NewPlan(time.Now().Add(-b.Config.ConnectBudget.Duration + 500*time.Millisecond))
	var got []string
	for {
		s, err := plan.Next(context.Background())
		if err != nil {
			break
		}
		got = append(got, s.Address)
	}
	if len(got) < 3 || got[0] != "a:1" || got[1] != "s:1" || slices.Contains(got[2:], "a:1") {
		t.Fatalf("dials %v, want a:1 once, first, then s:1 every round", got)
	}
	b.Servers[1].setUp(true) // a healthy standby: the open circuit is skipped again
	plan = b.NewPlan(time.Now())
	if s, err := plan.Next(context.Background()); err != nil || s.Address != "s:1" {
		t.Fatalf("with the standby up: %v, %v; want s:1", s, err)
	}
}

// A restarting listener refuses the one dial a session gave it as its
// only chance; the dial cost nothing, so a later round tries it again.
func TestPlanTriesAnOnlyChanceAgainAfterAFastRefusal(t *testing.T) {
	b := restartedPrimary(t)
	plan := b.NewPlan(time.Now())
	s, _ := plan.Next(context.Background())
	plan.Refused(s)
	if s, _ = plan.Next(context.Background()); s.Address != "a:1" {
		t.Fatalf("after the standby refused: %s, want a:1", s.Address)
	}
	plan.TryAgain(s) // connection refused: the listener restarts
	for range 3 {
		if s, _ = plan.Next(context.Background()); s.Address == "a:1" {
			return
		}
	}
	t.Fatalf("a:1 was not tried again after its fast refusal")
}

// When every server a round would try has refused this session, the next
// round tries the servers whose circuit is open too.
func TestPlanTriesOpenCircuitsOnceTheOthersRefused(t *testing.T) {
	b := restartedPrimary(t)
	plan := b.NewPlan(time.Now())
	s, err := plan.Next(context.Background())
	if err != nil || s.Address != "s:1" {
		t.Fatalf("first: %v, %v; want s:1 (a:1's circuit is open)", s, err)
	}
	plan.Refused(s)
	s, err = plan.Next(context.Background())
	if err != nil || s.Address != "a:1" {
		t.Fatalf("after s:1 refused the session: %v, %v; want a:1, its circuit open but the session's only chance", s, err)
	}
}

// primaryAndStandby is a backend of a:1 and s:1 (priority 1) whose
// breaker opens at the first failure, for an hour; keys go before its
// tables.
func primaryAndStandby(t *testing.T, keys string) *Backend {
	t.Helper()
	return testBackend(t, keys+`[backend.breaker]
failures = 1
open_for = "1h"
max_open_for = "1h"
`+servers(`address = "a:1"`, `address = "s:1";priority = 1`))
}

// restartedPrimary is primaryAndStandby with a 1 ms backoff after a
// restart of a:1 that its check never saw: its circuit open, both servers up.
func restartedPrimary(t *testing.T) *Backend {
	t.Helper()
	b := primaryAndStandby(t, "backoff = \"1ms\"\nbackoff_max = \"1ms\"\n")
	b.Servers[0].Failed(errors.New("refused"))
	b.Servers[0].setUp(true)
	b.Servers[1].setUp(true)
	return b
}

func addrs(list []*Server) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.Address)
	}
	return out
}

// Pauses between rounds are drawn from [b/2, b), b doubling from backoff to
// backoff_max; a pause that would outlast the budget is cut short so one
// more round runs before the deadline.
func TestPauseJitterAndDoubling(t *testing.T) {
	b := testBackend(t, `backoff = "100ms"
backoff_max = "2s"
`+servers(`address = "a:1"`))
	for range 200 {
		p := b.NewPlan(time.Now())
		for _, ms := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
			base := ms * time.Millisecond
			w, ok := p.pause(time.Hour)
			if !ok || w < base/2 || w >= base {
				t.Fatalf("pause %v for backoff %v, want [%v, %v)", w, base, base/2, base)
			}
		}
	}
	p := b.NewPlan(time.Now())
	if w, ok := p.pause(70 * time.Millisecond); !ok || w > 20*time.Millisecond {
		t.Fatalf("70ms left: pause %v ok=%v, want at most 20ms so a round fits before the deadline", w, ok)
	}
	if _, ok := p.pause(50 * time.Millisecond); ok {
		t.Fatal("50ms left (= backoff/2): want the budget reported exhausted")
	}
	// The shortest backoff check accepts (1ms; 1ns once, which must not
	// panic either: an empty jitter range) pauses.
	tiny := testBackend(t, `backoff = "1ms"
backoff_max = "1ms"
`+servers(`address = "a:1"`))
	if _, ok := tiny.NewPlan(time.Now()).pause(time.Second); !ok {
		t.Fatal("1ms backoff: no pause")
	}
}

// A plan goes round the servers, pauses between rounds, and runs out of
// budget close to connect_budget: not earlier than the deadline minus
// backoff/2, never later.
func TestPlanBudget(t *testing.T) {
	b := testBackend(t, `connect_timeout = "100ms"
connect_budget = "600ms"
backoff = "40ms"
backoff_max = "160ms"
`+servers(`address = "a:1"`, `address = "b:1"`))
	late := schedulingDelay(t)
	start := time.Now()
	p := b.NewPlan(time.Now())
	var rounds, dials int
	var last time.Time
	var pauses []time.Duration
	for {
		s, err := p.Next(context.Background())
		if errors.Is(err, ErrBudgetExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		dials++
		if s.Address == "a:1" {
			if rounds > 0 {
				pauses = append(pauses, time.Since(last))
			}
			rounds++
			last = time.Now()
		}
	}
	// Every pause is at least backoff/2, except the last, which is cut
	// short so that a final round still runs before the deadline.
	for i, d := range pauses[:max(len(pauses)-1, 0)] {
		if d < 20*time.Millisecond {
			t.Fatalf("round %d started %v after the previous one, want a pause of at least backoff/2", i+1, d)
		}
	}
	took := time.Since(start)
	// The last pause ends backoff/2 before the deadline; a wake-up that the
	// machine's load delays (seen: 140 ms under -race on a busy 2-core
	// host) comes late by as much as any goroutine's of this process.
	if slack := late(); took < 575*time.Millisecond || took > 660*time.Millisecond+slack {
		t.Fatalf("budget of 600ms exhausted after %v (wake-ups came up to %v late meanwhile)", took, slack)
	}
	// Four rounds fit in the budget (pauses of 20-40, 40-80 and 80-160 ms
	// first) unless a stall of the machine took their time.
	if dials != 2*rounds || rounds < 4 && late() < 100*time.Millisecond {
		t.Fatalf("%d dials in %d rounds (wake-ups came up to %v late meanwhile)", dials, rounds, late())
	}
	t.Logf("600ms budget: %d rounds, exhausted after %v", rounds, took)
}

// schedulingDelay measures, until the returned function is called, how much
// later than asked a sleeping goroutine of this process wakes: a timing
// bound on a loaded machine allows for it. The function returns the
// longest delay seen.
func schedulingDelay(t *testing.T) func() time.Duration {
	t.Helper()
	var worst atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			before := time.Now()
			time.Sleep(time.Millisecond)
			if d := int64(time.Since(before) - time.Millisecond); d > worst.Load() {
				worst.Store(d)
			}
		}
	}()
	var once sync.Once
	end := func() time.Duration {
		once.Do(func() { close(stop); <-done })
		return time.Duration(worst.Load())
	}
	t.Cleanup(func() { end() })
	return end
}

// A plan waiting out a pause returns as soon as its context ends.
func TestPlanCancelledMidPause(t *testing.T) {
	b := testBackend(t, `connect_budget = "1m"
backoff = "10s"
backoff_max = "10s"
`+servers(`address = "a:1"`))
	p := b.NewPlan(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := p.Next(ctx); err != nil {
		t.Fatal(err)
	}
	late := schedulingDelay(t)
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := p.Next(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if d, slack := time.Since(start), late(); d > 150*time.Millisecond+slack {
		t.Fatalf("cancel took %v to end a pause of 5-10s (wake-ups came up to %v late meanwhile)", d, slack)
	}
}

// A backoff past 1281023h (check takes any positive duration) doubled past
// MaxInt64: the next pause called rand.N with a negative range, and the
// panic took the whole process down at an app's second attempt. Doubling
// stops at the limit, for pauses and for a breaker's open period.
func TestHugeBackoffDoublesWithoutWrapping(t *testing.T) {
	bc := &config.Backend{}
	bc.Backoff.Duration = 1500000 * time.Hour
	bc.BackoffMax.Duration = 1500000 * time.Hour
	p := &Plan{b: &Backend{Config: bc}, backoff: bc.Backoff.Duration}
	for range 3 {
		if wait, _ := p.pause(time.Hour); wait < 0 {
			t.Fatalf("pause %v", wait)
		}
	}
	if p.backoff != bc.BackoffMax.Duration {
		t.Errorf("backoff %v, want the limit %v", p.backoff, bc.BackoffMax.Duration)
	}
	if got := doubled(math.MaxInt64/2+1, math.MaxInt64); got != math.MaxInt64 {
		t.Errorf("doubled near MaxInt64 = %v", got)
	}
}

// A session that sees a server up after its health check passed rise times
// must not find its circuit still open: the open period ends before the
// server is marked up. Before, a session in between went to the standby
// (seen in CI as TestPriorityFailoverAndFailBack's "session reached B").
// The log line written in between takes a while here, as on a busy stderr.
func TestFailBackEndsTheOpenPeriodBeforeTheServerIsUp(t *testing.T) {
	for i := range 20 {
		slow := hclog.New(&hclog.LoggerOptions{Output: slowWriter{}, Level: hclog.Info})
		s := oneStrikeBackend(t, "tcp", slow).Servers[0]
		s.checked.Store(true) // past the first check
		s.setUp(false)
		s.Failed(errors.New("refused"))
		shut := make(chan bool)
		go func() {
			for !s.Up() {
			}
			shut <- !s.breaker.usable(time.Now())
		}()
		s.setUp(true)
		if <-shut {
			t.Fatalf("round %d: the server was up while its circuit was still open", i)
		}
	}
}

// oneStrikeBackend has one server, a:1, whose circuit opens for an hour at
// its first failure; check is its health check.
func oneStrikeBackend(t *testing.T, check string, log hclog.Logger) *Backend {
	t.Helper()
	return testBackendLogged(t, `[backend.breaker]
failures = 1
open_for = "1h"
max_open_for = "1h"
[backend.health]
check = "`+check+`"
`+servers(`address = "a:1"`), log)
}

type slowWriter struct{}

func (slowWriter) Write(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return len(p), nil
}

// A half-open trial is out (session 1's). Session 2, refused by the
// standby, does not dial the same server as its only chance: its end would
// decide the trial (a failure doubled open_for, a no-verdict end let a
// third session take a second trial).
func TestOnlyChanceLeavesAHalfOpenTrialAlone(t *testing.T) {
	b := testBackend(t, `backoff = "1ms"
backoff_max = "1ms"
[backend.breaker]
failures = 1
open_for = "10ms"
max_open_for = "1h"
`+servers(`address = "a:1"`, `address = "s:1";priority = 1`))
	a := b.Servers[0]
	a.Failed(errors.New("restart"))
	time.Sleep(20 * time.Millisecond)
	trial := b.NewPlan(time.Now())
	if s, _ := trial.Next(context.Background()); s != a || a.BreakerState() != metrics.BreakerHalfOpen {
		t.Fatalf("session 1 got %v, want the half-open trial on a:1", s)
	}
	p := b.NewPlan(time.Now().Add(-b.Config.ConnectBudget.Duration + 500*time.Millisecond)) // 500 ms of budget: a stall must not take it whole
	s, err := p.Next(context.Background())
	if err != nil || s.Address != "s:1" {
		t.Fatalf("session 2 first got %v, %v; want s:1", s, err)
	}
	p.Refused(s)
	for {
		s, err := p.Next(context.Background())
		if err != nil {
			break // the budget ended
		}
		if s == a {
			t.Fatalf("session 2 dialed a:1 beside session 1's half-open trial")
		}
	}
}

// A session that dialed a server while its circuit was closed, and ends
// without a verdict after the circuit opened and half-opened (its app left,
// a budget cut, a service-only REFUSE), gave up the trial another session
// held: a second session dialed beside the trial.
func TestLateAbandonLeavesAnotherSessionsTrialOut(t *testing.T) {
	b := testBackend(t, `[backend.breaker]
failures = 1
open_for = "10ms"
`+servers(`address = "a:1"`, `address = "s:1";priority = 1`))
	a := b.Servers[0]
	y := b.NewPlan(time.Now())
	if s, _ := y.Next(context.Background()); s != a || y.Trial() != 0 {
		t.Fatalf("session Y: got %v, trial %d; want a:1 while closed, no trial", s, y.Trial())
	}
	a.Failed(errors.New("another session's reset")) // opens the circuit
	time.Sleep(20 * time.Millisecond)
	x := b.NewPlan(time.Now())
	if s, _ := x.Next(context.Background()); s != a || x.Trial() == 0 {
		t.Fatalf("session X: got %v, trial %d; want the half-open trial of a:1", s, x.Trial())
	}
	a.Abandoned(y.Trial()) // Y's dial from before ends without a verdict
	a.Refused(errors.New("ORA-12514"), true, y.Trial())
	if s, _ := b.NewPlan(time.Now()).Next(context.Background()); s == a {
		t.Fatal("session Z dialed a:1 while X's half-open trial is out: two trials")
	}
	a.Abandoned(x.Trial()) // X's app left: the next session tries
	if s, _ := b.NewPlan(time.Now()).Next(context.Background()); s != a {
		t.Fatalf("after X gave up its trial the next session got %v, want a:1", s)
	}
}

// A reload replaces a backend while sessions are still opening on its
// servers; their failures still count against the old breakers, which no
// new session reads. The old breaker's "circuit opened" (after a half-open
// trial, for twice the period) beside the new one's, for the same server,
// told the operator that the circuit opened twice within milliseconds,
// for two open periods. A stopped backend logs nothing of its servers.
func TestReplacedBackendLogsNoCircuitOrDown(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	b := oneStrikeBackend(t, "off", log)
	b.Start(context.Background())
	b.Stop()
	s := b.Servers[0]
	s.Failed(errors.New("refused")) // a session that was opening when the reload came
	if s.BreakerState() != metrics.BreakerOpen {
		t.Fatalf("breaker state %d, want open: the old breaker still counts for its own sessions", s.BreakerState())
	}
	if strings.Contains(buf.String(), "circuit opened") || strings.Contains(buf.String(), "server down") {
		t.Errorf("a replaced backend logged its server:\n%s", buf.String())
	}
	live := oneStrikeBackend(t, "off", log)
	live.Start(context.Background())
	defer live.Stop()
	live.Servers[0].Failed(errors.New("refused"))
	if !strings.Contains(buf.String(), "circuit opened") {
		t.Errorf("a running backend did not log its circuit opening:\n%s", buf.String())
	}
}

// A session that was opening when a reload replaced its backend goes on
// with the old backend's plan: once the old circuit's open period ends it
// takes the old breaker's half-open trial, and its success closes the old
// circuit. The old backend logged "circuit half-open" and "circuit closed"
// for the server while the new backend's breaker, the one new sessions
// read, said nothing of the kind: the lines the reload's fix silenced for
// "circuit opened" and "server down" still came for these two.
func TestReplacedBackendLogsNoHalfOpenOrClosed(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	b := testBackendLogged(t, `backoff = "1ms"
backoff_max = "1ms"
[backend.breaker]
failures = 1
open_for = "10ms"
[backend.health]
check = "off"
`+servers(`address = "a:1"`), log)
	b.Start(context.Background())
	a := b.Servers[0]
	y := b.NewPlan(time.Now()) // a session opening when the reload comes
	if s, _ := y.Next(context.Background()); s != a {
		t.Fatalf("got %v, want a:1", s)
	}
	a.Failed(errors.New("refused")) // opens the circuit, before the reload
	b.Stop()                        // the reload replaces the backend
	buf.Reset()
	time.Sleep(20 * time.Millisecond)
	if s, _ := y.Next(context.Background()); s != a || y.Trial() == 0 {
		t.Fatalf("got %v, trial %d; want the old breaker's half-open trial of a:1", s, y.Trial())
	}
	a.Succeeded()
	if a.BreakerState() != metrics.BreakerClosed {
		t.Fatalf("breaker state %d, want closed: the old breaker still counts for its own sessions", a.BreakerState())
	}
	if strings.Contains(buf.String(), "circuit") {
		t.Errorf("a replaced backend logged its server's circuit:\n%s", buf.String())
	}
}
