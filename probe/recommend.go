package probe

import (
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

// Recommendation is the keepalive that keeps idle connections alive over a
// path whose middlebox forgets a connection after PathIdleTimeout of silence.
// In tnsguard.toml, path_idle_timeout alone is enough: the config derives the
// other values from it the same way (keepalive.FromPathIdle).
type Recommendation struct {
	PathIdleTimeout time.Duration // whole seconds, at least 1s
	Idle            time.Duration // first probe after this much silence
	Interval        time.Duration // between unanswered probes
	Count           int           // unanswered probes before the connection is dropped
	UserTimeout     time.Duration // when the last probe gives up (idle + interval*count)
}

// Recommend derives keepalive settings from a path's idle timeout. The
// timeout is rounded down to whole seconds (at least 1s), then:
//
//	idle     = path/3   (rounded down to whole seconds, at least 1s)
//	interval = path/9   (rounded down to whole seconds, at least 1s)
//	count    = 3
//
// so the first probe refreshes the middlebox at a third of its timeout, and
// when it is lost the second and third still land inside it. It is the same
// formula tnsguard's config applies to path_idle_timeout: both call
// keepalive.FromPathIdle, so the two cannot drift apart.
func Recommend(pathIdle time.Duration) Recommendation {
	p := pathIdle.Truncate(time.Second)
	if p < time.Second {
		p = time.Second
	}
	s := keepalive.FromPathIdle(p)
	return Recommendation{PathIdleTimeout: p, Idle: s.Idle, Interval: s.Interval, Count: s.Count, UserTimeout: s.UserTimeout}
}

// RecommendFromIdle is for a running proxy whose sessions on one link were
// reset in their idle phase. idleTimes are how long each such session had
// been idle when it died. The path forgets connections before the shortest of
// them, so that is an upper bound on its idle timeout; the settings returned
// are Recommend of that bound (rounded down to whole seconds), which would
// have prevented the deaths if the timeout is not far below it. ok is false
// when no idle time of at least 1s is given. Run `tnsguard probe` to measure
// the timeout itself.
func RecommendFromIdle(idleTimes []time.Duration) (r Recommendation, ok bool) {
	var shortest time.Duration
	for _, d := range idleTimes {
		if d < time.Second {
			continue // a session idle under a second was not killed by an idle timeout
		}
		if shortest == 0 || d < shortest {
			shortest = d
		}
	}
	if shortest == 0 {
		return Recommendation{}, false
	}
	return Recommend(shortest), true
}
