package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// subject is the system whose ratio to the best peer is shown: tnsguard, or
// the naive Go proxy standing in for it while tnsguard does not build.
func (r *results) subject() string {
	for _, s := range []string{sysTnsguard, sysGoCopy} {
		if contains(r.Systems, s) {
			return s
		}
	}
	return ""
}

// ratio returns subject/best-peer for f and the best peer's name.
func (r *results) ratio(f figure) (float64, string) {
	subj := r.subject()
	if subj == "" {
		return math.NaN(), ""
	}
	v := r.value(subj, f)
	best, bestName := math.NaN(), ""
	for _, s := range r.Systems {
		if !isPeer(s) {
			continue
		}
		pv := r.value(s, f)
		if math.IsNaN(pv) {
			continue
		}
		if math.IsNaN(best) || (f.info().HigherBetter && pv > best) || (!f.info().HigherBetter && pv < best) {
			best, bestName = pv, s
		}
	}
	if math.IsNaN(v) || math.IsNaN(best) || best == 0 {
		return math.NaN(), bestName
	}
	return v / best, bestName
}

// roundRatios are the subject's value over peer's, round by round. Rounds
// are interleaved, so each pair was measured at most a few minutes apart:
// their spread shows how much of the median's ratio is the machine's noise.
// Nil unless both have a value in every round (a failed round would pair
// values of different rounds).
func (r *results) roundRatios(f figure, peer string) []float64 {
	a, b := r.Values[r.subject()][f], r.Values[peer][f]
	if len(a) < 2 || len(a) != len(b) || len(a) != r.Opts.Rounds {
		return nil
	}
	out := make([]float64, len(a))
	for i := range a {
		if b[i] == 0 {
			return nil
		}
		out[i] = a[i] / b[i]
	}
	return out
}

func (r *results) ratioHeader() string {
	switch r.subject() {
	case sysTnsguard:
		return "tnsguard / best peer"
	case sysGoCopy:
		return "gocopy (stand-in for tnsguard) / best peer"
	}
	return "ratio"
}

// rows is the table as cells: header first.
func (r *results) rows() [][]string {
	header := append([]string{"figure"}, r.Systems...)
	header = append(header, r.ratioHeader())
	rows := [][]string{header}
	for f := range numFigures {
		info := f.info()
		measured := false
		row := []string{info.Name}
		for _, s := range r.Systems {
			v := r.value(s, f)
			switch {
			case !math.IsNaN(v):
				row = append(row, fmt.Sprintf(info.Format, v))
				measured = true
			case info.ProxyOnly && s == sysDirect:
				row = append(row, "n/a")
			case r.failed[s][f]:
				row = append(row, "failed")
			default:
				row = append(row, "-")
			}
		}
		if !measured {
			continue
		}
		want := "want >= 1"
		if !info.HigherBetter {
			want = "want <= 1"
		}
		if q, peer := r.ratio(f); !math.IsNaN(q) {
			if rr := r.roundRatios(f, peer); rr != nil {
				want = fmt.Sprintf("rounds %.2f-%.2f; %s", slices.Min(rr), slices.Max(rr), want)
			}
			row = append(row, fmt.Sprintf("%.2fx vs %s (%s)", q, peer, want))
		} else {
			row = append(row, r.unratioed(f, peer))
		}
		rows = append(rows, row)
	}
	return rows
}

// unratioed is the ratio column where there is no ratio: the subject's
// difference from a best peer that measured 0 (idle CPU, where nginx's
// ticks can all fall outside the window), else "-".
func (r *results) unratioed(f figure, peer string) string {
	v, best := r.value(r.subject(), f), r.value(peer, f)
	if peer == "" || math.IsNaN(v) || best != 0 {
		return "-"
	}
	format := f.info().Format
	if v == 0 {
		return fmt.Sprintf("both "+format+" with %s (no ratio to 0)", v, peer)
	}
	return fmt.Sprintf("+"+format+" over %s's "+format+" (no ratio to 0)", v-best, peer, best)
}

func (r *results) describeRun() string {
	o := r.Opts
	mode := "full"
	if o.Quick {
		mode = "quick (smoke: tiny durations, numbers not meaningful)"
	}
	if o.PeerKeepalive {
		mode += ", peers with tnsguard's keepalive"
	}
	return fmt.Sprintf("mode %s; %v timed per measurement, %d round(s) interleaved across systems (table: medians), "+
		"%d-byte messages, %d conn/s clients, %d idle sessions; took %s; load average %s at start, %s at end",
		mode, o.Duration, o.Rounds, o.MessageSize, o.ConnWorkers, o.IdleSessions, r.Elapsed.Round(time.Second), r.Load[0], r.Load[1])
}

func (r *results) problems() []string {
	var out []string
	for _, s := range r.Opts.Systems {
		if why, ok := r.Skipped[s]; ok {
			out = append(out, fmt.Sprintf("skipped %s: %s", s, why))
		}
	}
	for _, f := range r.Failures {
		out = append(out, "failed: "+f)
	}
	return append(out, r.Notes...)
}

// text is the table for a terminal.
func (r *results) text() string {
	rows := r.rows()
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	var b strings.Builder
	for n, row := range rows {
		for i, c := range row {
			if i == 0 {
				fmt.Fprintf(&b, "%-*s", widths[i], c)
			} else {
				fmt.Fprintf(&b, "  %*s", widths[i], c)
			}
		}
		b.WriteString("\n")
		if n == 0 {
			total := len(widths)*2 - 2
			for _, w := range widths {
				total += w
			}
			b.WriteString(strings.Repeat("-", total) + "\n")
		}
	}
	b.WriteString("\n" + r.describeRun() + "\n")
	for _, p := range r.problems() {
		b.WriteString(p + "\n")
	}
	return b.String()
}

// markdown is the table with its date, command and machine, for the README.
func (r *results) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Benchmark, %s\n\n", r.Started.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Command: `%s`\n\n", r.Opts.Command)
	for _, v := range r.Versions {
		fmt.Fprintf(&b, "- %s\n", v)
	}
	fmt.Fprintf(&b, "- %s\n\n", r.describeRun())
	rows := r.rows()
	for n, row := range rows {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
		if n == 0 {
			seps := make([]string, len(row))
			for i := range seps {
				seps[i] = "---:"
			}
			seps[0] = "---"
			b.WriteString("|" + strings.Join(seps, "|") + "|\n")
		}
	}
	b.WriteString("\nLoopback on a shared 2-core machine: numbers are noisy; only same-run ratios count.\n")
	if ps := r.problems(); len(ps) > 0 {
		b.WriteString("\n")
		for _, p := range ps {
			fmt.Fprintf(&b, "- %s\n", p)
		}
	}
	if r.Opts.Rounds > 1 {
		b.WriteString("\n<details><summary>Every round</summary>\n\n")
		for f := range numFigures {
			var parts []string
			for _, s := range r.Systems {
				vs := r.Values[s][f]
				if len(vs) == 0 {
					continue
				}
				strs := make([]string, len(vs))
				for i, v := range vs {
					strs[i] = fmt.Sprintf(f.info().Format, v)
				}
				parts = append(parts, s+" "+strings.Join(strs, " / "))
			}
			if len(parts) > 0 {
				fmt.Fprintf(&b, "- %s: %s\n", f.info().Name, strings.Join(parts, "; "))
			}
		}
		b.WriteString("\n</details>\n")
	}
	return b.String()
}
