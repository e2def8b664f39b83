package main

import (
	"strings"
	"testing"
)

// TestRatioPicksBestPeerByDirection checks the ratio column against the best
// of HAProxy and nginx in each figure's own direction, and that the naive Go
// proxy stands in only while tnsguard did not run.
func TestRatioPicksBestPeerByDirection(t *testing.T) {
	r := &results{
		Opts:    quickOptions(),
		Systems: []string{sysDirect, sysHAProxy, sysNginx, sysGoCopy, sysTnsguard},
		Values:  map[string]map[figure][]float64{},
		failed:  map[string]map[figure]bool{},
	}
	for s, v := range map[string][2]float64{
		sysDirect:   {20, 40},
		sysHAProxy:  {16, 100},
		sysNginx:    {8, 90},
		sysGoCopy:   {12, 150},
		sysTnsguard: {15, 60},
	} {
		r.add(s, figBulk, v[0])
		r.add(s, figP50At1, v[1])
	}
	if q, peer := r.ratio(figBulk); peer != sysHAProxy || q < 0.937 || q > 0.938 {
		t.Errorf("bulk ratio = %v vs %s, want 15/16 vs haproxy", q, peer)
	}
	if q, peer := r.ratio(figP50At1); peer != sysNginx || q < 0.666 || q > 0.667 {
		t.Errorf("p50 ratio = %v vs %s, want 60/90 vs nginx", q, peer)
	}
	if got := r.ratioHeader(); got != "tnsguard / best peer" {
		t.Errorf("header = %q", got)
	}
	r.Systems = []string{sysDirect, sysHAProxy, sysNginx, sysGoCopy}
	if q, _ := r.ratio(figBulk); q != 12.0/16 {
		t.Errorf("stand-in bulk ratio = %v, want 12/16", q)
	}
	md := r.markdown()
	for _, want := range []string{"| bulk backend->client (Gbit/s) | 20.00 | 16.00 | 8.00 | 12.00 | 0.75x vs haproxy (want >= 1) |", "gocopy (stand-in for tnsguard)"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// A best peer at 0 (nginx's idle CPU, whose 10 ms ticks all fell outside
// the window) has no ratio: the column shows the difference instead.
func TestRatioColumnWhenTheBestPeerIsZero(t *testing.T) {
	r := &results{
		Opts:    quickOptions(),
		Systems: []string{sysHAProxy, sysNginx, sysTnsguard},
		Values:  map[string]map[figure][]float64{},
		failed:  map[string]map[figure]bool{},
	}
	r.add(sysHAProxy, figIdleCPU, 0.8)
	r.add(sysNginx, figIdleCPU, 0)
	r.add(sysTnsguard, figIdleCPU, 0.4)
	md := r.markdown()
	if want := "| 0.80 | 0.00 | 0.40 | +0.40 over nginx's 0.00 (no ratio to 0) |"; !strings.Contains(md, want) {
		t.Errorf("markdown lacks %q:\n%s", want, md)
	}
	r.Values[sysTnsguard][figIdleCPU] = []float64{0}
	if want := "| 0.00 | both 0.00 with nginx (no ratio to 0) |"; !strings.Contains(r.markdown(), want) {
		t.Errorf("markdown lacks %q:\n%s", want, r.markdown())
	}
}

func TestMedianOfRounds(t *testing.T) {
	r := &results{Values: map[string]map[figure][]float64{}}
	for _, v := range []float64{5, 1, 3} {
		r.add(sysNginx, figRPS32, v)
	}
	if got := r.value(sysNginx, figRPS32); got != 3 {
		t.Errorf("median of 5,1,3 = %v", got)
	}
	r.add(sysNginx, figRPS32, 4)
	if got := r.value(sysNginx, figRPS32); got != 3.5 {
		t.Errorf("median of 5,1,3,4 = %v", got)
	}
}

// With several rounds, the ratio column also gives the range of the
// round-by-round ratios against the same peer: how far noise moves it.
func TestRatioShowsRoundRange(t *testing.T) {
	o := quickOptions()
	o.Rounds = 3
	r := &results{Opts: o, Systems: []string{sysHAProxy, sysNginx, sysTnsguard},
		Values: map[string]map[figure][]float64{}, failed: map[string]map[figure]bool{}}
	for _, v := range [][3]float64{{100, 90, 80}, {120, 90, 84}, {80, 90, 88}} { // haproxy, nginx, tnsguard
		r.add(sysHAProxy, figRPS32, v[0])
		r.add(sysNginx, figRPS32, v[1])
		r.add(sysTnsguard, figRPS32, v[2])
	}
	// Medians: haproxy 100, tnsguard 84: 0.84x. Rounds: 0.80, 0.70, 1.10.
	var row []string
	for _, rw := range r.rows() {
		if rw[0] == figRPS32.info().Name {
			row = rw
		}
	}
	if got, want := row[len(row)-1], "0.84x vs haproxy (rounds 0.70-1.10; want >= 1)"; got != want {
		t.Errorf("ratio cell %q, want %q", got, want)
	}
	r.Values[sysHAProxy][figRPS32] = r.Values[sysHAProxy][figRPS32][:2] // a failed round: no pairing
	for _, rw := range r.rows() {
		if rw[0] == figRPS32.info().Name && strings.Contains(rw[len(rw)-1], "rounds") {
			t.Errorf("ratio cell %q pairs rounds although one failed", rw[len(rw)-1])
		}
	}
}
