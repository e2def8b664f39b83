package proxy

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Idle sessions cost no CPU: a pool of thousands of sessions that sit
// between queries (the pools tnsguard is for) must leave an idle proxy
// idle, as HAProxy and nginx are. Until 2026-12-01 housekeeping walked
// every session twice every 100 ms (the lot's count of busy sessions, the
// watch of directions waiting for room) whether or not any had moved a
// byte: 3,000 idle sessions took 1.3% of a core, 9 us a second each.
// Now that walk runs only after something happened that it could find.
// Until 2026-12-02 housekeeping's two tickers still woke the process 11
// times a second; now it sleeps (TestAnIdleProxySleeps in test/e2e counts
// the process's context switches: this test process has other tests'
// leftovers in it).
func TestIdleSessionsCostNoCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("3,000 sessions")
	}
	const n = 3000
	srv := newServer(t, echo)
	h := startProxy(t, backendTOML("", fmt.Sprintf("address = %q", srv.address)))
	apps := make([]*net.TCPConn, 0, n)
	defer func() {
		for _, c := range apps {
			c.Close()
		}
	}()
	buf := make([]byte, 5)
	for range n {
		c := h.dial("l")
		apps = append(apps, c)
		c.Write([]byte("hello"))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "every session dormant", func() bool {
		for _, s := range h.p.liveSessions() {
			if !s.isDormant() {
				return false
			}
		}
		return true
	})
	// Housekeeping sets the database leg's keepalive once a session has
	// lasted 1s (five system calls, once): past that.
	time.Sleep(1500 * time.Millisecond)
	// Measured: 0.37-0.45% of a core (1.3% before); under the race
	// detector 2.4-2.7% (11-12% before).
	cpuUnder(t, fmt.Sprintf("holding %d idle sessions", n), 0.9, 6)
	// The look comes back when sessions move bytes again: the lot's gate
	// (lotCrowded) counts them busy, as the stall watch sees a direction
	// that waits for room (stallwatch_test.go).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range apps[:16] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 5)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write([]byte("hello")); err != nil {
					return
				}
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
			}
		}()
	}
	waitFor(t, 3*time.Second, "the busy sessions counted", func() bool { return h.p.busySessions.Load() >= 16 })
	close(stop)
	wg.Wait()
	waitFor(t, 3*time.Second, "no session counted busy once they stopped", func() bool { return h.p.busySessions.Load() == 0 })
}
