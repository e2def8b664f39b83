package probe

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Report is the JSON object `tnsguard probe -json` prints (see the contract).
type Report struct {
	Target string `json:"target"`
	// IdleTimeoutSeconds is null when no timeout was found up to -max.
	IdleTimeoutSeconds *float64          `json:"idle_timeout_seconds"`
	Failure            Failure           `json:"failure"`
	RTTSeconds         float64           `json:"rtt_seconds"`
	Recommended        RecommendedReport `json:"recommended"`
}

// RecommendedReport is a Recommendation as Go duration strings, the way
// tnsguard.toml writes them.
type RecommendedReport struct {
	PathIdleTimeout string `json:"path_idle_timeout"`
	Idle            string `json:"idle"`
	Interval        string `json:"interval"`
	Count           int    `json:"count"`
}

// Report returns the result in the contract's JSON shape.
func (r Result) Report() Report {
	rep := Report{
		Target:     r.Target,
		Failure:    r.Failure,
		RTTSeconds: roundTo(r.RTT.Seconds(), 1e6),
		Recommended: RecommendedReport{
			PathIdleTimeout: r.Recommended.PathIdleTimeout.String(),
			Idle:            r.Recommended.Idle.String(),
			Interval:        r.Recommended.Interval.String(),
			Count:           r.Recommended.Count,
		},
	}
	if r.Found {
		s := roundTo(r.IdleTimeout.Seconds(), 1e3)
		rep.IdleTimeoutSeconds = &s
	}
	if rep.Failure == "" {
		rep.Failure = FailureNone
	}
	return rep
}

func roundTo(x, scale float64) float64 { return math.Round(x*scale) / scale }

// WriteText writes the human summary and the recommended configuration.
func (r Result) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "target:        %s\n", r.Target)
	if r.Found {
		fmt.Fprintf(&b, "idle timeout:  %s (connections idle %s survived, idle %s died)\n",
			fmtDur(r.IdleTimeout), fmtDur(r.LongestAlive), fmtDur(r.ShortestDead))
	} else {
		fmt.Fprintf(&b, "idle timeout:  no idle timeout found up to %v\n", r.Max)
	}
	switch r.Failure {
	case FailureDrop:
		fmt.Fprintf(&b, "failure:       drop: the path silently black-holes a connection it forgot (no reset; the application waits until TCP gives up)\n")
	case FailureReset:
		fmt.Fprintf(&b, "failure:       reset: the path answers a connection it forgot with a TCP reset\n")
	default:
		fmt.Fprintf(&b, "failure:       none\n")
	}
	fmt.Fprintf(&b, "rtt:           %s\n", fmtRTT(r.RTT))
	if r.TargetClosedAfter > 0 {
		fmt.Fprintf(&b, "note:          the target itself closed idle connections after %s\n", fmtDur(r.TargetClosedAfter))
	}
	if r.Contradictions > 0 {
		fmt.Fprintf(&b, "note:          %d connection(s) survived longer than %s although one died then: the path is not consistent (several middleboxes or paths?); the shortest death counts\n",
			r.Contradictions, fmtDur(r.ShortestDead))
	}
	if r.Found && r.Recommended.Idle >= r.IdleTimeout {
		// Keepalive counts whole seconds: its shortest first probe, after 1s
		// of silence, leaves after this path has already forgotten the flow.
		fmt.Fprintf(&b, "note:          the path forgot connections idle %s: keepalive cannot keep connections alive over it (it counts whole seconds, idle at least 1s); a path that resets every connection at once looks the same\n",
			fmtDur(r.ShortestDead))
	}
	if r.TargetKeepalive > 0 {
		fmt.Fprintf(&b, "note:          the target sent TCP keepalive probes on idle connections (by idle %s): they refresh the path too, so a longer timeout cannot be seen here; the keepalive below is no slower than the target's\n",
			fmtDur(r.TargetKeepalive))
	}
	fmt.Fprintf(&b, "took:          %s, %d checks on %d connections\n", r.Elapsed.Round(time.Second), r.Checks, r.Connections)

	b.WriteString("\n")
	if r.Found {
		b.WriteString("Recommended keepalive for connections over this path (tnsguard.toml, for the backend behind it):\n\n")
	} else if r.TargetKeepalive > 0 {
		fmt.Fprintf(&b, "Connections survived %s idle, with the target's keepalive probes crossing the path; a keepalive at least as frequent keeps connections over it alive:\n\n", fmtDur(r.LongestAlive))
	} else {
		fmt.Fprintf(&b, "Connections survived %s idle; keepalive derived from that is enough over this path (a longer -max may allow gentler settings):\n\n", fmtDur(r.LongestAlive))
	}
	b.WriteString(r.TOML())
	// The probe cannot tell which leg it measured: a middlebox between the
	// application and tnsguard is the listener's to keep alive.
	b.WriteString("\nIf this path runs between the application and tnsguard (you probed tnsguard's listener), put the same values\n" +
		"under that listener's [listener.keepalive] instead: [backend.keepalive] keeps only the database leg alive.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// TOML returns the [backend.keepalive] table for the recommendation, with
// every value written out: pasted over an existing table, it replaces the
// values there (tnsguard derives only the values a table leaves out).
func (r Result) TOML() string {
	rec := r.Recommended
	return fmt.Sprintf(`[backend.keepalive]
path_idle_timeout = %q   # measured by tnsguard probe
idle         = %q   # path_idle_timeout/3
interval     = %q   # path_idle_timeout/9
count        = %d
user_timeout = %q   # idle + interval*count
`, rec.PathIdleTimeout.String(), rec.Idle.String(), rec.Interval.String(), rec.Count, rec.UserTimeout.String())
}
