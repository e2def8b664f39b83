package lab

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/probe"
	"github.com/tnsguard/tnsguard/test/lab/netem"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// The probe over a path with latency: 150 ms each way through the firewall (300 ms
// RTT, a third of the keepalive probes' 1 s spacing), and 600 ms each way, queued after conntrack has seen
// each packet, like a WAN beyond the firewall. The probe dates a connection's last
// refresh from its ACK minus half an RTT; the bracket must still hold the firewall's
// timeout. About 30 s.
func TestLabProbeLatency(t *testing.T) {
	t.Parallel()
	netlab.Require(t)
	for i, tc := range []struct {
		stale netlab.Stale
		want  probe.Failure
		delay time.Duration
	}{
		{netlab.StaleDrop, probe.FailureDrop, 150 * time.Millisecond},
		{netlab.StaleReset, probe.FailureReset, 150 * time.Millisecond},
		// An RTT over the checks' 1 s keepalive interval (a satellite link): the
		// second probe leaves before the first one's ACK is back.
		{netlab.StaleDrop, probe.FailureDrop, 600 * time.Millisecond},
	} {
		t.Run(fmt.Sprintf("%s/%v", tc.stale, tc.delay), func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t, netlab.Config{EstablishedTimeout: 5 * time.Second, Stale: tc.stale})
			lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
			delay := tc.delay
			q := uint16(31 + i)
			// Only packets conntrack still knows are queued: the queue's verdict accepts
			// a packet for the whole chain, so a stale one must not reach it.
			stop := lab.Netem(t, netem.Config{Queue: q, Delay: delay}, "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED")
			// Control: a plain connection idle past the timeout must die on this path.
			control := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := netlab.Dial(ctx, lab.App, lab.DBAddr(dbPort))
				cancel()
				if err != nil {
					control <- err
					return
				}
				defer c.Close()
				if err := roundTrip(c, []byte("one\n"), 5*time.Second); err != nil {
					control <- fmt.Errorf("first round trip: %w", err)
					return
				}
				time.Sleep(lab.Timeout + 3*time.Second)
				control <- roundTrip(c, []byte("two\n"), 5*time.Second)
			}()
			var progress syncBuffer
			res, err := probe.Run(context.Background(), probe.Options{
				Target: lab.DBAddr(dbPort), Max: 30 * time.Second, Progress: &progress,
				Dial: func(ctx context.Context, addr string) (*net.TCPConn, error) { return netlab.Dial(ctx, lab.App, addr) },
			})
			t.Logf("probe progress:\n%s", progress.String())
			cerr := <-control
			t.Logf("control: a plain connection's round trip after %v idle: %v", lab.Timeout+3*time.Second, cerr)
			if cerr == nil {
				t.Fatalf("a plain connection survived %v idle through the %v firewall: the path does not forget here", lab.Timeout+3*time.Second, lab.Timeout)
			}
			if err != nil {
				t.Fatalf("probe: %v", err)
			}
			// The one-way delay the packets really got: on a loaded machine
			// the queue releases some late, and the probe dates a refresh
			// from an ACK that crossed it.
			st := stop()
			t.Logf("found %v (survived %v, died after %v), failure %s, rtt %v, recommended %+v; %d checks on %d connections; netem %+v",
				res.IdleTimeout, res.LongestAlive, res.ShortestDead, res.Failure, res.RTT, res.Recommended, res.Checks, res.Connections, st)
			if slack := delay + st.MaxLate; !res.Found || res.LongestAlive > lab.Timeout+slack || res.ShortestDead < lab.Timeout-slack {
				t.Errorf("bracket (%v, %v] does not hold the firewall's %v (give or take the one-way delay %v and the queue's lateness %v)", res.LongestAlive, res.ShortestDead, lab.Timeout, delay, st.MaxLate)
			}
			if res.Failure != tc.want {
				t.Errorf("failure %q, want %q", res.Failure, tc.want)
			}
			if res.Contradictions != 0 {
				t.Errorf("%d contradicting checks", res.Contradictions)
			}
		})
	}
}
