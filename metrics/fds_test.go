package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// gauges returns the value of each unlabelled gauge reg gathers, and the
// gather error.
func gauges(reg *prometheus.Registry) (map[string]float64, error) {
	mfs, err := reg.Gather()
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil && len(m.GetLabel()) == 0 {
				out[mf.GetName()] = g.GetValue()
			}
		}
	}
	return out, err
}

// Out of fds, /metrics still has process_open_fds and process_max_fds: they
// are what shows the shortage (the README's "Out of file descriptors", and
// the alert TnsguardFileDescriptorsLow divides one by the other). Until
// 2026-11-30 the process collector opened /proc/self/fd and
// /proc/self/limits at each scrape; with every fd taken those opens failed and
// both figures were left out, so a Prometheus scraping a tnsguard whose
// sessions held every fd had neither for as long as the shortage lasted
// (seen with a real Prometheus: no sample of either for 2 minutes while
// accept failed with EMFILE and every backend was reported down).
func TestProcessFDFiguresWhenOutOfFDs(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, "test")
	before, err := gauges(reg)
	if err != nil {
		t.Fatal(err)
	}
	open := before["process_open_fds"]
	if open < 3 || before["process_max_fds"] < open {
		t.Fatalf("process_open_fds %v, process_max_fds %v before the shortage", open, before["process_max_fds"])
	}

	var saved unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	limit := uint64(open) + 32
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: saved.Max}); err != nil {
		t.Fatal(err)
	}
	var held []int
	t.Cleanup(func() {
		for _, fd := range held {
			unix.Close(fd)
		}
		unix.Setrlimit(unix.RLIMIT_NOFILE, &saved)
	})
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			if err != unix.EMFILE {
				t.Fatal(err)
			}
			break
		}
		held = append(held, fd)
	}

	got, err := gauges(reg)
	if err != nil {
		t.Logf("gather out of fds: %v", err)
	}
	if v, ok := got["process_max_fds"]; !ok || v != float64(limit) {
		t.Errorf("out of fds, process_max_fds is %v (present: %v), want %d", v, ok, limit)
	}
	// At least the limit less the two fds the Go runtime may have closed since
	// (an fd numbered over the limit, inherited, is counted too).
	if v, ok := got["process_open_fds"]; !ok || v < float64(limit)-2 {
		t.Errorf("out of fds, process_open_fds is %v (present: %v), want about %d", v, ok, limit)
	}
}
