package probe

import (
	"math"
	"slices"
	"sort"
	"time"
)

// search decides which idle times to check, from what the checks so far
// found. It holds no sockets and reads no clock, so its decisions can be
// tested with simulated time.
//
// The idle timeout lies between the longest idle a connection survived (lo)
// and the shortest after which one died (hi). Until a connection has died,
// the oldest connection waits for max and the others climb a ladder of idle
// times (1s, 2s, 3s, 4s, 6s, 8s, 11s, ... a factor √2 apart), each taking the
// next rung when its check comes back alive. Once one has died, each free
// connection is sent to the middle of the widest gap left between lo, the
// checks in flight and hi (or checked at once when it is already past that
// middle), until hi-lo is within the resolution: 1s, or 2% of long timeouts.
type search struct {
	max time.Duration

	alive []time.Duration // idle times connections survived (checked alive)
	dead  []observation   // idle times after which checks found connections dead
	// probeResets are the resets that answered a keepalive probe: deaths,
	// unless the target resets connections at that age (view).
	probeResets []closing
	closes      []closing // connections that ended with no check in flight
}

type observation struct {
	idle    time.Duration
	failure Failure
}

// closing is a connection that ended by itself, with no check in flight: a
// FIN, or a reset, that arrived after idle, life after connect.
type closing struct {
	idle, life time.Duration
	reset      bool
}

// ladderStart is the first rung of the ladder and the shortest idle checked:
// the liveness check tells its own probe's ACK from older ones by more than
// this much silence before it.
const ladderStart = time.Second

// ladderStep is the factor between rungs. Simulated runs (search_test.go)
// over timeouts from 1 min to 2 h found √2 the quickest with a handful of
// connections: coarser rungs leave a wide bracket to narrow, each narrowing
// costing a whole timeout of waiting; finer ones make the climb slow.
const ladderStep = math.Sqrt2

// slot is the planner's view of one open test connection that is not being
// checked: how long it has been idle and how long it could still idle before
// the target closes it (0: no limit known).
type slot struct {
	idle  time.Duration
	reach time.Duration
}

func (s *search) addAlive(idle time.Duration) { s.alive = append(s.alive, idle) }

func (s *search) addDead(idle time.Duration, f Failure) {
	s.dead = append(s.dead, observation{idle, f})
}

// addProbeReset records a connection reset in answer to a keepalive probe
// after idle, life after connect: dead after idle (view), unless the target
// resets its connections at that age anyway.
func (s *search) addProbeReset(idle, life time.Duration) {
	s.probeResets = append(s.probeResets, closing{idle, life, true})
}

func (s *search) addClose(idle, life time.Duration, reset bool) {
	s.closes = append(s.closes, closing{idle, life, reset})
}

// view sorts the connections that ended by themselves into what they say.
//
// A FIN comes from the target: it closes idle connections itself (an Oracle
// listener's INBOUND_CONNECT_TIMEOUT, say) after life, and the FIN crossed
// the path, so the path still knew the connection after that idle time.
//
// A reset is either a middlebox that resets flows it forgets, at a fixed
// idle time, or the target resetting connections at a fixed time after
// connect. It is the target's when a connection survived a longer idle time
// (so it was not the path's idle timeout), else the path's when the
// connection had been checked since connect (its idle and its life differ).
func (s *search) view() (alive []time.Duration, dead []observation, closedAfter time.Duration) {
	alive = slices.Clone(s.alive)
	dead = slices.Clone(s.dead)
	byTarget := func(c closing) {
		if closedAfter == 0 || c.life < closedAfter {
			closedAfter = c.life
		}
		if c.idle >= ladderStart {
			alive = append(alive, c.idle)
		}
	}
	var resets []closing
	for _, c := range s.closes {
		if c.reset {
			resets = append(resets, c)
		} else {
			byTarget(c)
		}
	}
	survivedLonger := func(idle time.Duration) bool {
		for _, a := range s.alive {
			if a >= idle {
				return true
			}
		}
		return false
	}
	// A never-checked connection's reset (idle = life) cannot tell; it is
	// the target's when the target is known to end connections at that
	// time, the path's when another such reset came after the same idle but
	// a different time after connect, and else it waits for more evidence.
	var unchecked []closing
	for _, c := range resets {
		switch {
		case survivedLonger(c.idle):
			byTarget(c)
		default:
			unchecked = append(unchecked, c)
		}
	}
	near := func(a, b time.Duration) bool { return absDur(a-b) <= resolution(min(a, b)) }
	for _, c := range unchecked {
		if closedAfter > 0 && near(c.life, closedAfter) {
			byTarget(c)
			continue
		}
		// Resets at the same time after connect after different idle
		// times: the target ends connections at a fixed age.
		if slices.ContainsFunc(resets, func(d closing) bool { return near(d.life, c.life) && !near(d.idle, c.idle) }) {
			byTarget(c)
			continue
		}
		for _, d := range resets {
			if near(d.idle, c.idle) && !near(d.life, c.life) {
				dead = append(dead, observation{c.idle, FailureReset})
				break
			}
		}
	}
	// A reset that answered a keepalive probe is the path's (a middlebox
	// that forgot the flow), unless it came at the age at which the target
	// resets its connections anyway: a probe sent just then cannot tell the
	// two apart.
	for _, c := range s.probeResets {
		if closedAfter > 0 && near(c.life, closedAfter) {
			byTarget(c)
			continue
		}
		dead = append(dead, observation{c.idle, FailureReset})
	}
	return alive, dead, closedAfter
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// bounds returns lo, the longest idle survived below hi, and hi, the shortest
// idle after which a connection died (0: none died). A survival at or above
// hi contradicts a death and is set aside: the deaths are trusted, since
// keepalive must work for every connection, not just for the lucky ones.
func (s *search) bounds() (lo, hi time.Duration) {
	alive, dead, _ := s.view()
	for _, d := range dead {
		if hi == 0 || d.idle < hi {
			hi = d.idle
		}
	}
	for _, a := range alive {
		if (hi == 0 || a < hi) && a > lo {
			lo = a
		}
	}
	return lo, hi
}

// failure is how the connection that bounds the timeout from above died.
func (s *search) failure() Failure {
	_, dead, _ := s.view()
	_, hi := s.bounds()
	for _, d := range dead {
		if d.idle == hi {
			return d.failure
		}
	}
	return FailureNone
}

// contradictions counts survivals longer than the shortest death.
func (s *search) contradictions() int {
	alive, _, _ := s.view()
	_, hi := s.bounds()
	n := 0
	for _, a := range alive {
		if hi > 0 && a >= hi {
			n++
		}
	}
	return n
}

// closedAfter is how long after connect the target itself ends idle
// connections (0: not seen). No idle longer than that can be checked.
func (s *search) closedAfter() time.Duration {
	_, _, c := s.view()
	return c
}

// resolution is how close lo and hi must get: 1s, or 2% for long timeouts.
func resolution(lo time.Duration) time.Duration {
	if r := lo / 50; r > time.Second {
		return r
	}
	return time.Second
}

// limit is the longest idle worth checking: max, or less when the target
// closes idle connections itself.
func (s *search) limit() time.Duration {
	closed := s.closedAfter()
	if closed == 0 {
		return s.max
	}
	if l := closed - resolution(closed); l < s.max {
		return l
	}
	return s.max
}

// done reports whether the search has its answer: a bracket within the
// resolution, or survival up to the limit.
func (s *search) done() bool {
	lo, hi := s.bounds()
	if hi > 0 {
		if hi-lo <= resolution(lo) {
			return true
		}
		// No idle below ladderStart is checked (next clamps the middle to
		// it), and a check leaves a few ms after its idle is due: with
		// nothing surviving ladderStart, a death this close above it is as
		// low as the search can get. Checking at ladderStart again would
		// only die again, a new connection each time, without end.
		return lo < ladderStart && hi-ladderStart < resolution(lo)/2
	}
	return lo >= s.limit()
}

// plan gives each idle connection its next check (targets[i] is the idle at
// which to check slots[i]; 0 means the connection is of no more use and is
// closed) and returns the targets for up to free new connections. pending are
// the idle times of checks in flight.
func (s *search) plan(pending []time.Duration, slots []slot, free int) (targets, fresh []time.Duration) {
	targets = make([]time.Duration, len(slots))
	if s.done() {
		return targets, nil
	}
	planned := append([]time.Duration(nil), pending...)
	// Oldest first: they can reach the longest idle times soonest.
	order := make([]int, len(slots))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return slots[order[a]].idle > slots[order[b]].idle })
	if _, hi := s.bounds(); hi == 0 && len(order) > 0 {
		// The oldest connection is kept for the limit itself, so a run that
		// finds no timeout ends after about max, not a ladder cycle later.
		lim, covered := s.limit(), false
		for _, p := range planned {
			covered = covered || p >= lim
		}
		if i := order[0]; !covered && slots[i].idle <= lim && (slots[i].reach == 0 || lim <= slots[i].reach) {
			targets[i] = lim
			planned = append(planned, lim)
			order = order[1:]
		}
	}
	for _, i := range order {
		if x, ok := s.next(slots[i].idle, slots[i].reach, planned); ok {
			targets[i] = x
			planned = append(planned, x)
		}
	}
	for range free {
		x, ok := s.next(0, 0, planned)
		if !ok {
			break
		}
		fresh = append(fresh, x)
		planned = append(planned, x)
	}
	return targets, fresh
}

// next picks the idle at which a connection now idle for a should be
// checked, given the checks already planned; reach bounds it (0: unbounded).
func (s *search) next(a, reach time.Duration, planned []time.Duration) (time.Duration, bool) {
	lo, hi := s.bounds()
	lim := s.limit()
	if reach == 0 || reach > lim {
		reach = lim
	}
	if hi == 0 {
		// Ladder: the lowest rung above lo that no check or dial has taken.
		for k := 0.0; ; k++ {
			r := time.Duration(float64(ladderStart) * math.Pow(ladderStep, k)).Round(time.Second)
			if r >= lim {
				if slices.ContainsFunc(planned, func(p time.Duration) bool { return p >= lim }) || lim < a || lim > reach {
					return 0, false
				}
				return lim, true
			}
			taken := slices.ContainsFunc(planned, func(p time.Duration) bool { return absDur(p-r) <= r/10 })
			if r > lo && r >= a && !taken {
				if r > reach {
					return 0, false
				}
				return r, true
			}
		}
	}
	// Bisection: the middle of the widest gap this connection can still
	// reach; a connection already past the middle is checked now, where it is.
	res := resolution(lo)
	cuts := []time.Duration{lo, hi}
	for _, p := range planned {
		if p > lo && p < hi {
			cuts = append(cuts, p)
		}
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i] < cuts[j] })
	var best, bestWidth time.Duration
	for i := 0; i+1 < len(cuts); i++ {
		g1, g2 := cuts[i], cuts[i+1]
		w := g2 - g1
		if w <= res || w <= bestWidth {
			continue
		}
		x := max((g1+g2)/2, ladderStart)
		if a > x {
			if a >= g2-res/2 {
				continue // would barely split it
			}
			x = a
		}
		if x > reach {
			continue
		}
		best, bestWidth = x, w
	}
	return best, bestWidth > 0
}
