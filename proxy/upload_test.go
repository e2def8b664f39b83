package proxy

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// An upload: the app sends more than replay_bytes and the backend never
// answers a byte, then closes when the app is done. No replay is possible,
// so the session is pumped as usual: it is not cut at connect_budget, and
// the backend's close reaches the app as an ordinary EOF, not a reset.
func TestUploadWithoutAnswer(t *testing.T) {
	got := make(chan int64, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		got <- n
		c.Close()
	})
	cfg := strings.NewReplacer(`connect_budget = "3s"`, `connect_budget = "1s"`,
		`connect_timeout = "500ms"`, `connect_timeout = "500ms"
replay_bytes = 1024`).Replace(oneBackendConfig(be.addr()))
	h := startProxy(t, cfg)
	c := h.dial("l")
	chunk := make([]byte, 64<<10)
	var sent int64
	stop := time.Now().Add(1500 * time.Millisecond) // longer than connect_budget
	for time.Now().Before(stop) {
		n, err := c.Write(chunk)
		sent += int64(n)
		if err != nil {
			t.Fatalf("upload broke after %d bytes: %v", sent, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("app saw %v at the end, want EOF", err)
	}
	if n := <-got; n != sent {
		t.Fatalf("backend got %d bytes, app sent %d", n, sent)
	}
	waitFor(t, time.Second, "ok session", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 1
	})
	if v := counter(h.m.Bytes, "l", "b", "to_backend"); v != float64(sent) {
		t.Fatalf("bytes_total to_backend %v, sent %d", v, sent)
	}
}
