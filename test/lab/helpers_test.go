package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// roundTrip writes msg and reads it back from an echo server within timeout.
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo mismatch: %q != %q", got, msg)
	}
	return nil
}

// dialN opens n sessions from namespace ns to addr and checks each with a round trip.
func dialN(t *testing.T, ns, addr string, n int) []*net.TCPConn {
	t.Helper()
	conns := make([]*net.TCPConn, 0, n)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := netlab.Dial(ctx, ns, addr)
		cancel()
		if err != nil {
			t.Fatalf("session %d: dial %s: %v", i, addr, err)
		}
		t.Cleanup(func() { c.Close() })
		if err := roundTrip(c, fmt.Appendf(nil, "hello %d\n", i), 5*time.Second); err != nil {
			t.Fatalf("session %d: first round trip via %s: %v", i, addr, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// roundTripAll does one round trip on every conn concurrently and returns each error.
func roundTripAll(conns []*net.TCPConn, timeout time.Duration) []error {
	errs := make([]error, len(conns))
	done := make(chan struct{})
	for i, c := range conns {
		go func() {
			errs[i] = roundTrip(c, fmt.Appendf(nil, "again %d\n", i), timeout)
			done <- struct{}{}
		}()
	}
	for range conns {
		<-done
	}
	return errs
}

func countOK(errs []error) int {
	n := 0
	for _, err := range errs {
		if err == nil {
			n++
		}
	}
	return n
}

func describe(errs []error) map[string]int {
	m := map[string]int{}
	for _, err := range errs {
		m[netlab.Classify(err)]++
	}
	return m
}

// keepAlive is a keepalive config as an app or proxy would set it.
func keepAlive(idle, interval time.Duration, count int) net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: idle, Interval: interval, Count: count}
}

// serverRTT reads the kernel RTT tnsguard reports for server two ways:
// tnsguard_backend_rtt_seconds (ok: the series is there) and the
// rtt_seconds of the only link in /api/links (nil: none).
func serverRTT(t *testing.T, guard *netlab.Tnsguard, server string) (gauge float64, ok bool, api *float64) {
	t.Helper()
	gauge, ok = guard.Metrics(t).Sum("tnsguard_backend_rtt_seconds", netlab.Labels{"server": server})
	_, body, err := guard.Get("/api/links")
	if err != nil {
		t.Fatal(err)
	}
	var links struct {
		Links []struct {
			RTT *float64 `json:"rtt_seconds"`
		} `json:"links"`
	}
	if err := json.Unmarshal(body, &links); err != nil || len(links.Links) != 1 {
		t.Fatalf("/api/links: %v %s", err, body)
	}
	return gauge, ok, links.Links[0].RTT
}
