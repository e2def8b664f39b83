package failover

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Start runs the active health checks of every server until Stop (or ctx
// ends). With check = "off" it does nothing.
func (b *Backend) Start(ctx context.Context) {
	ctx, b.cancel = context.WithCancel(ctx)
	if b.Config.Health.Check == "off" {
		return
	}
	for _, s := range b.Servers {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			s.checkLoop(ctx)
		}()
	}
}

// Stop ends the health checks and waits for them.
func (b *Backend) Stop() {
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
}

func (s *Server) checkLoop(ctx context.Context) {
	h := s.backend.Config.Health
	var streak int // successes (>0) or failures (<0) in a row
	first := true
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.check(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			streak = max(streak, 0) + 1
		} else {
			streak = min(streak, 0) - 1
		}
		switch {
		case first:
			// The first result decides at once: no waiting rise checks at start.
			s.setUp(err == nil)
		case err == nil && streak == h.Rise:
			s.setUp(true)
		case err != nil && -streak == h.Fall:
			s.setUp(false)
		}
		if err != nil && (first || -streak == h.Fall) {
			s.backend.log.Warn("health check failed", "server", s.Address, "error", err)
		}
		first = false
		t.Reset(h.Interval.Duration)
	}
}

// check runs one health check within the configured timeout and records
// its duration.
func (s *Server) check(ctx context.Context) error {
	h := s.backend.Config.Health
	ctx, cancel := context.WithTimeout(ctx, h.Timeout.Duration)
	defer cancel()
	start := time.Now()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.Address)
	if err == nil {
		err = s.checkProtocol(ctx, c)
		c.Close()
	}
	if err == nil {
		s.backend.metrics.HealthDuration.WithLabelValues(s.backend.Config.Name, s.Address).Observe(time.Since(start).Seconds())
		return nil
	}
	return fmt.Errorf("%s check: %w", h.Check, err)
}

// checkProtocol is what a check does over the connection after connect:
// nothing for "tcp".
func (s *Server) checkProtocol(ctx context.Context, c net.Conn) error {
	return nil
}
