package probe

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// A target whose own sockets send TCP keepalive (tnsguard's listener does, idle
// 60s by default, and the README has you probe that listener for the app leg)
// refreshes the middlebox itself: the probe's connections survive any idle time
// although the path forgets them after a longer silence. The probe must say so
// and must not recommend a keepalive slower than the one that kept them alive:
// until this test it reported "no idle timeout found" and recommended idle =
// max/3 as "enough over this path"; pasted into [listener.keepalive] in place of
// the 60s that had kept the path alive, it let the firewall cut the app leg
// (the lab: a 7 s firewall, the listener's keepalive at 3 s, -max 25s: idle 8s
// recommended, every session dead after 21 s idle).
func TestRunTargetSendsKeepalives(t *testing.T) {
	t.Parallel()
	const targetIdle = 2 * time.Second
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []*net.TCPConn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			if err := c.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: targetIdle, Interval: time.Second, Count: 3}); err != nil {
				t.Error(err)
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})

	var progress, stdout bytes.Buffer
	res, err := Run(context.Background(), Options{Target: ln.Addr().String(), Max: 9 * time.Second, Progress: &progress})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	_ = res.WriteText(&stdout)
	t.Logf("summary:\n%s", stdout.String())
	if res.Recommended.Idle > targetIdle {
		t.Errorf("recommended keepalive idle %v: only a keepalive after %v (the target's own) was seen to keep connections alive", res.Recommended.Idle, targetIdle)
	}
	if !strings.Contains(stdout.String(), "the target sent TCP keepalive probes") {
		t.Errorf("the summary does not say that the target's own keepalive probes refreshed the path")
	}
	if strings.Contains(stdout.String(), "is enough over this path") {
		t.Errorf("the summary calls the recommendation proven enough, though the target's keepalives kept the path alive")
	}
}
