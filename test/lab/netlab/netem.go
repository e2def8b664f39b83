package netlab

import (
	"context"
	"encoding/json"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netem"
)

// Netem delays and drops packets that fw forwards and that match the iptables match
// arguments (e.g. "-p", "tcp", "-d", db-ip, "--dport", "1521"): a userspace netem on a
// netfilter queue, run by a helper process in fw so that the test's own load cannot
// delay the release of packets. Only the matched direction is affected; delay in one
// direction adds to the RTT all the same. Removed at cleanup, or by calling the
// returned stop function, which returns what the queue did.
func (l *Lab) Netem(t testing.TB, cfg netem.Config, match ...string) (stop func() netem.Stats) {
	t.Helper()
	p := l.StartHelper(t, l.FW, "netem", cfg)
	rule := append(append([]string{"FORWARD", "1"}, match...), "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(cfg.Queue)), "--queue-bypass")
	l.IPTables(t, l.FW, append([]string{"-I"}, rule...)...)
	var (
		once  sync.Once
		stats netem.Stats
	)
	stop = func() netem.Stats {
		once.Do(func() {
			del := append([]string{"-D", "FORWARD"}, rule[2:]...)
			if out, err := run(append([]string{"ip", "netns", "exec", l.FW, "iptables"}, del...)...); err != nil {
				t.Errorf("netlab: remove netem rule: %v %s", err, out)
			}
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			ev, ok := p.Next("stats", 5*time.Second)
			if !ok || ev.Stats == nil {
				t.Errorf("netlab: netem helper gave no stats: %s", p.Stderr())
			} else {
				stats = *ev.Stats
			}
			p.Kill()
			// A queue that ended early leaves its rule in place, and
			// --queue-bypass then lets the flows through undelayed.
			if e := p.Stderr(); strings.Contains(e, "netlab helper:") {
				t.Errorf("netlab: the netem helper failed, so packets went undelayed: %s", e)
			}
		})
		return stats
	}
	t.Cleanup(func() { stop() })
	return stop
}

func netemMain(args string) error {
	var cfg netem.Config
	if err := json.Unmarshal([]byte(args), &cfg); err != nil {
		return err
	}
	q, err := netem.Open(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	var mu sync.Mutex
	writeEvent(&mu, Event{Event: "ready"})
	err = q.Run(ctx)
	st := q.Stats()
	writeEvent(&mu, Event{Event: "stats", Stats: &st})
	return err
}
