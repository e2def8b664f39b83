package netlab

import (
	"context"
	"strconv"
	"testing"

	"github.com/tnsguard/tnsguard/test/lab/netem"
)

// Netem delays and drops packets that fw forwards and that match the iptables match
// arguments (e.g. "-p", "tcp", "-d", db-ip, "--dport", "1521"): a userspace netem on a
// netfilter queue, run by the test process with a socket in fw. Only one direction
// is affected unless match selects both; delay in one direction adds to the RTT all
// the same. Removed at cleanup, or by calling the returned stop function (which
// returns what the queue did).
func (l *Lab) Netem(t testing.TB, cfg netem.Config, match ...string) (stop func() netem.Stats) {
	t.Helper()
	var q *netem.Queue
	if err := Do(l.FW, func() error {
		var err error
		q, err = netem.Open(cfg)
		return err
	}); err != nil {
		t.Fatalf("netlab: netem: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	rule := append(append([]string{"FORWARD", "1"}, match...), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(cfg.Queue)), "--queue-bypass")
	l.IPTables(t, l.FW, append([]string{"-I"}, rule...)...)
	var stats *netem.Stats
	stop = func() netem.Stats {
		if stats != nil {
			return *stats
		}
		del := append([]string{"-D", "FORWARD"}, rule[2:]...)
		if out, err := run(append([]string{"ip", "netns", "exec", l.FW, "iptables"}, del...)...); err != nil {
			t.Errorf("netlab: remove netem rule: %v %s", err, out)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("netlab: netem: %v", err)
		}
		s := q.Stats()
		stats = &s
		return s
	}
	t.Cleanup(func() { stop() })
	return stop
}
