package lab

import (
	"fmt"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netem"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// What `tnsguard check` warns of for a user_timeout under the kernel's
// shortest retransmission timeout (200ms), here "1ms" on the database leg:
// the kernel looks at TCP_USER_TIMEOUT only when a retransmission times out,
// so a lost segment whose retransmission is not acknowledged within it ends
// a healthy session, and a cut ends the session a retransmission timeout or
// more after the query, not 1 ms after it. Measured, with every second
// segment to the database lost, 10 sessions of 10 round trips each: with
// 50 ms RTT all 10 of "1ms" ended, none of "100ms", "200ms" or "300ms"; on
// a LAN one in 10 of "1ms", "10ms" and "100ms" ended, none of "200ms". A cut
// ended sessions of "1ms" 0.22 to 0.45 s in on a LAN and some 0.5 s in with
// 50 ms RTT, of "100ms" 0.32 to 0.58 s in, of "1s" 1.24 to 1.45 s in. With
// 1% loss each way and 50 ms RTT, 20 sessions of "100ms" or "200ms" ran a
// minute each (some 400 segments lost) and none ended. About 10 s.
func TestLabUserTimeoutUnderTheRTO(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 60 * time.Second})
	lab.StartEcho(t, lab.DB, fmt.Sprintf(":%d", dbPort))
	// Keepalive off: a user timeout under its interval ends a session at
	// one lost probe (the other warning, "it cuts keepalive short").
	db := keepalive{Idle: "0s", UserTimeout: "1ms"}
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}, App: appKeepalive, DB: db})
	timeouts := func(want float64) {
		t.Helper()
		m := guard.MetricsWhen(t, 5*time.Second, func(m netlab.Metrics) bool {
			v, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout"})
			return v == want
		})
		if v, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "backend", "cause": "timeout"}); v != want {
			t.Errorf("tnsguard_resets_total{side=backend,cause=timeout} = %v, want %v\n%s", v, want, m.Dump("tnsguard_resets_total"))
		}
	}

	// 50 ms RTT, and every second segment to the database lost: each is
	// retransmitted, and acknowledged 50 ms later, past the user timeout.
	c := dialN(t, lab.App, guardAddr, 1)[0]
	back := lab.Netem(t, netem.Config{Queue: 41, Delay: 25 * time.Millisecond}, "-p", "tcp", "-s", lab.DBIP.String(), "--sport", fmt.Sprint(dbPort))
	there := lab.Netem(t, netem.Config{Queue: 42, Delay: 25 * time.Millisecond, Loss: 0.5}, "-p", "tcp", "-d", lab.DBIP.String(), "--dport", fmt.Sprint(dbPort))
	var err error
	trips := 0
	for ; trips < 10 && err == nil; trips++ {
		err = roundTrip(c, fmt.Appendf(nil, "query %d\n", trips), 10*time.Second)
	}
	st := there()
	back()
	t.Logf("lost segments: %v at round trip %d; netem %+v", err, trips, st)
	if netlab.Classify(err) != "reset" {
		t.Fatalf("10 round trips with every second segment to the database lost and 50 ms RTT: %v; want the session ended by a user timeout of 1ms", err)
	}
	timeouts(1)

	// A cut: the query is never acknowledged.
	c = dialN(t, lab.App, guardAddr, 1)[0]
	lab.BlackHolePort(t, dbPort)
	sent := time.Now()
	err = roundTrip(c, []byte("into the cut\n"), 10*time.Second)
	took := time.Since(sent)
	t.Logf("query into the cut: %v after %v", err, took.Round(time.Millisecond))
	if netlab.Classify(err) != "reset" {
		t.Fatalf("query into the cut: %v after %v, want the app's leg reset when the user timeout gives up", err, took)
	}
	if took < 200*time.Millisecond {
		t.Errorf("the session ended %v into the cut: a user timeout of 1ms took effect before the kernel's shortest retransmission timeout (200ms)", took)
	}
	timeouts(2)
}
