package proxy

import (
	"net"
	"sync"
	"testing"
	"time"
)

// A session whose app resets while the backend's first bytes are being
// passed on must not stay among its link's live sessions: /api/links would
// count it active for ever, and the link would keep it in memory. The
// backend greets on accept (as a database listener that speaks first
// would), and every app resets right after connecting, so the reset races
// the establishment.
func TestLinkForgetsSessionsResetWhileEstablishing(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		defer c.Close()
		c.Write([]byte("hello"))
		var b [64]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	const sessions = 4000
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < sessions/8; i++ {
				c, err := net.Dial("tcp", h.addr("l"))
				if err != nil {
					t.Error(err)
					return
				}
				c.Write([]byte("x"))
				if i%2 == 1 {
					time.Sleep(time.Duration(i%5) * 50 * time.Microsecond)
				}
				resetConn(c.(*net.TCPConn))
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "every session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	for _, l := range h.p.Links() {
		if l.SessionsActive != 0 {
			t.Errorf("link %s -> %s: %d sessions active after every session ended", l.Listener, l.Server, l.SessionsActive)
		}
	}
}
