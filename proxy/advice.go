package proxy

import (
	"sync"
	"time"

	"github.com/tnsguard/tnsguard/probe"
)

// Keepalive advice. Sessions that die in the idle phase were killed by a
// middlebox that forgot them before keepalive refreshed it. The idle time
// at death bounds the path's idle timeout from above, so a link that sees
// such resets logs, at most once per adviceEvery, the keepalive that would
// have kept them alive (probe.RecommendFromIdle).

const (
	adviceEvery   = time.Hour
	adviceSamples = 64 // idle times kept per link between pieces of advice
)

type keepaliveAdvice struct {
	mu    sync.Mutex
	links map[linkKey]*adviceState
}

type adviceState struct {
	deaths []adviceSample
	last   time.Time
	// held is the longest silence after which a session of the link,
	// since heldAt, had a keepalive probe answered before it died: the
	// path kept flows that long, so a death after no longer a silence is
	// no evidence of a shorter idle timeout (a firewall that lost its
	// state table resets each session at its next probe, the first
	// one for a session that was busy just before). Only for silences
	// that began before heldAt: a session that fell silent after a death
	// the path's state explains (its restart) and died at no longer a
	// silence met a timeout shorter than keepalive (one that was cut).
	held   time.Duration
	heldAt time.Time
}

// adviceSample is one idle death on a link: a session's idle at its death,
// the silence the path was lost by (at most that idle), and when the
// silence began.
type adviceSample struct {
	idle, lost time.Duration
	quiet      time.Time
}

// note records an idle-phase death on a link and logs advice when it is
// due.
func (p *Proxy) noteIdleDeath(s *session, server string, side Side, idle time.Duration) {
	a := &p.advice
	k := linkKey{s.l.name, s.backend.Config.Name, server}
	// The keepalive in force on the leg (a reload may have changed it
	// since the session began: retune), not the config it began with.
	s.mu.Lock()
	ka := s.ka[legIndex(side)]
	s.mu.Unlock()
	a.mu.Lock()
	if a.links == nil {
		a.links = map[linkKey]*adviceState{}
	}
	st, ok := a.links[k]
	if !ok {
		st = &adviceState{}
		a.links[k] = st
	}
	now := time.Now()
	if held := time.Duration(s.kaHeld.Load()); held > 0 {
		// Keepalive kept this session's path until it died: a shorter
		// keepalive would not have saved it. Not a sample; evidence
		// against the samples as short as its silence.
		if held > st.held || now.Sub(st.heldAt) >= adviceEvery {
			st.held = held
		}
		st.heldAt = now
	} else if len(st.deaths) < adviceSamples {
		lost := idle
		if l := time.Duration(s.kaLost.Load()); l > 0 {
			lost = min(lost, l)
		}
		quiet := now.Add(-idle)
		if s.lostPause.Load() > 0 {
			// Lost in a pause that bytes resumed: it died then, or a
			// user timeout after.
			quiet = s.start.Add(time.Duration(s.resumedAt.Load() - s.pauseBefore.Load()))
		}
		st.deaths = append(st.deaths, adviceSample{idle, lost, quiet})
	}
	due := now.Sub(st.last) >= adviceEvery
	evidence := st.held > 0 && now.Sub(st.heldAt) < adviceEvery
	var samples []time.Duration
	for _, d := range st.deaths {
		// Keepalive's whole seconds: a path that kept a flow held long
		// does not forget one within a second more of silence.
		if !evidence || d.lost > st.held+time.Second || !d.quiet.Before(st.heldAt) {
			// The silence that lost the path, not the idle at death: a
			// session black-holed at its first probe dies a user timeout
			// (or interval*count) later, and advice from that idle keeps
			// the first probe behind the middlebox's timeout, or, when
			// it would lengthen the idle in force, is not given at all.
			samples = append(samples, d.lost)
		}
	}
	current := ka.Idle
	rec, ok := probe.RecommendFromIdle(samples)
	// Advice to lengthen the idle in force, or to set what is in force, is
	// no advice: the pause the sessions died of began under a longer
	// keepalive that a reload has since replaced (tnsguard probe's values,
	// or an earlier advice, pasted), and the operator would be told to
	// undo the fix or to make it again. The samples stay for the next
	// advice.
	same := rec.Idle == ka.Idle && rec.Interval == ka.Interval && rec.Count == ka.Count
	ok = ok && (current <= 0 || rec.Idle <= current && !same)
	if due && ok {
		st.last, st.deaths = now, nil
	}
	a.mu.Unlock()
	if !due || !ok {
		return
	}
	table := "[listener.keepalive] of listener " + s.l.name
	if side == SideBackend {
		table = "[backend.keepalive] of backend " + s.backend.Config.Name
	}
	s.logger().Warn("sessions on this link die while idle: a middlebox forgets them before keepalive refreshes it; run `tnsguard probe` on the path, or set",
		"server", server, "side", side, "idle_deaths", len(samples), "shortest_idle_at_death", rec.PathIdleTimeout.String(),
		"keepalive_idle_now", current.String(), "table", table,
		"path_idle_timeout", rec.PathIdleTimeout.String(), "idle", rec.Idle.String(), "interval", rec.Interval.String(), "count", rec.Count)
}
