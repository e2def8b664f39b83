package proxy

import (
	"math"
	"runtime/debug"
	"time"

	"github.com/tnsguard/tnsguard/config"
)

// replayShare: the openings sessions keep for a re-dial may take, all
// together, a quarter of Go's memory limit (GOMEMLIMIT, or the 90% of the
// cgroup's limit that run gives it). Each session keeps up to
// replay_bytes (64 KiB by default) until its server answers: 3,000 apps
// that each sent 60 KB of a CONNECT a listener waits out took tnsguard to
// 256 MiB of RSS under the GOMEMLIMIT of a 256 MiB pod (182 MiB with the
// budget): the pod's limit, where the OOM killer ends every session.
const replayShare = 4

// replayBudgetFor is the bytes of openings the sessions may keep together
// under the process's memory limit; -1 (no budget) without a limit.
func replayBudgetFor() int64 {
	limit := debug.SetMemoryLimit(-1)
	if limit <= 0 || limit == math.MaxInt64 {
		return -1
	}
	return limit / replayShare
}

// routeReserve is what an opening on a listener with routes may keep
// past the budget while its route is still to be read: as much as the
// least replay_bytes that routes allow (config.MinRouteBytes), which a
// CONNECT with its connect data rarely approaches. Past the budget, its
// bytes went on without a copy, routing took the CONNECT for one longer
// than replay_bytes, and the app went to the default route's database:
// openings that other listeners' apps kept chose the database of a
// routed listener's apps.
const routeReserve = config.MinRouteBytes

// replayRoomLocked tells whether n more bytes of the opening may be kept:
// within the backend's replay_bytes (limit), and within what the proxy's
// budget has left. Bytes that fit in the buffer the opening holds already
// (charged as its capacity) take no more memory, and an opening whose
// route is still to be read keeps up to routeReserve whatever the budget.
// The caller holds s.mu.
func (s *session) replayRoomLocked(n, limit int) bool {
	if len(s.replay)+n > limit {
		return false
	}
	grow := len(s.replay) + n - cap(s.replay)
	if grow <= 0 {
		return true
	}
	if len(s.replay)+n <= routeReserve && len(s.lcfg.Routes) > 0 && !s.connectSeen && s.conn == nil && s.attaching == nil {
		return true
	}
	b := s.p.replayBudget.Load()
	return b < 0 || s.p.replayHeld.Load()+int64(grow) <= b
}

// chargeReplayLocked brings the proxy's count of kept opening bytes to
// what s.replay holds now (its capacity). The caller holds s.mu.
func (s *session) chargeReplayLocked() {
	if d := int64(cap(s.replay)) - s.replayCharged; d != 0 {
		s.p.replayHeld.Add(d)
		s.replayCharged += d
	}
}

// releaseReplay lets go of what the session kept of its opening, at its
// end.
func (s *session) releaseReplay() {
	s.mu.Lock()
	s.replay = nil
	s.chargeReplayLocked()
	s.mu.Unlock()
}

// replayBudgetSpent logs, at most once a minute, that an opening went on
// without a copy kept for a re-dial because the budget was spent.
func (s *session) replayBudgetSpent() {
	now := time.Now().UnixNano()
	last := s.p.replayWarned.Load()
	if now-last < int64(time.Minute) || !s.p.replayWarned.CompareAndSwap(last, now) {
		return
	}
	s.p.log.Warn("openings kept for a re-dial have reached their memory budget (a quarter of the memory limit): new openings are sent on without a copy, and are not replayed if their server fails before it answers",
		"listener", s.l.name, "budget_bytes", s.p.replayBudget.Load(), "held_bytes", s.p.replayHeld.Load())
}
