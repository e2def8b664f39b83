package netlab

import "testing"

func TestMetricsSum(t *testing.T) {
	body := []byte(`# HELP tnsguard_resets_total Resets.
# TYPE tnsguard_resets_total counter
tnsguard_resets_total{listener="orders",backend="orders",server="198.18.3.2:1521",side="backend",phase="idle",cause="timeout"} 2
tnsguard_resets_total{listener="orders",backend="orders",server="198.18.3.2:1521",side="backend",phase="active",cause="timeout"} 1
tnsguard_resets_total{listener="orders",backend="orders",server="198.18.3.2:1521",side="client",phase="idle",cause="timeout"} 5
# TYPE tnsguard_health_check_duration_seconds histogram
tnsguard_health_check_duration_seconds_bucket{backend="slow",server="s",le="0.1"} 0
tnsguard_health_check_duration_seconds_bucket{backend="slow",server="s",le="+Inf"} 4
tnsguard_health_check_duration_seconds_sum{backend="slow",server="s"} 0.8
tnsguard_health_check_duration_seconds_count{backend="slow",server="s"} 4
`)
	m, err := ParseMetrics(body)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Sum("tnsguard_resets_total", Labels{"side": "backend", "cause": "timeout"}); !ok || v != 3 {
		t.Errorf("backend timeouts = %v %v, want 3", v, ok)
	}
	if v, _ := m.Sum("tnsguard_resets_total", nil); v != 8 {
		t.Errorf("all resets = %v, want 8", v)
	}
	if _, ok := m.Sum("tnsguard_resets_total", Labels{"side": "nope"}); ok {
		t.Error("no series should match side=nope")
	}
	if n, sum, ok := m.Histogram("tnsguard_health_check_duration_seconds", Labels{"backend": "slow"}); !ok || n != 4 || sum != 0.8 {
		t.Errorf("histogram = %d %v %v, want 4 0.8", n, sum, ok)
	}
	if _, ok := m.Sum("absent", nil); ok {
		t.Error("absent family matched")
	}
}
