package failover

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/tns"
)

// Start makes the backend report its servers' gauges (up, breaker closed)
// and runs their active health checks until Stop (or ctx ends); with
// check = "off" there are no checks. A backend is started once its
// configuration is committed, so a reload that fails changes no gauge.
func (b *Backend) Start(ctx context.Context) {
	ctx, b.cancel = context.WithCancel(ctx)
	b.reporting.Store(true)
	for _, s := range b.Servers {
		// Resolved here, not in New: a reload that fails after building
		// its backends must not leave series of servers it never ran.
		s.connectOK = b.metrics.ConnectDuration.WithLabelValues(b.Config.Name, s.Address, "ok")
		s.publish() // up only with checks off, or inherited up (Inherit); the breaker closed
	}
	if b.Checked() { // checks off, or every server checked before a reload (Inherit)
		b.closeFirstChecks()
	}
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

// Stop ends the health checks and waits for them; from now on the
// backend's servers write no gauge (sessions that were opening on them may
// still succeed or fail).
func (b *Backend) Stop() {
	b.stopped.Store(true)
	b.reporting.Store(false)
	for _, s := range b.Servers {
		// A publish that saw reporting still on ends before Stop returns,
		// so a reload that then deletes a removed server's series does not
		// see it written again.
		s.gaugeMu.Lock()
		s.gaugeMu.Unlock()
	}
	if b.cancel != nil {
		b.cancel()
	}
	b.wg.Wait()
	b.closeFirstChecks() // no check comes any more
}

func (s *Server) checkLoop(ctx context.Context) {
	h := s.backend.Config.Health
	var streak int             // successes (>0) or failures (<0) in a row
	first := !s.checked.Load() // a server checked before a reload goes on with rise and fall
	var opened openWatch
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		started := time.Now()
		err := s.check(ctx)
		if ctx.Err() != nil {
			return
		}
		s.failBackAfterDialOpen(&opened, started, err == nil)
		if err != nil {
			// The listener (or its host) may be restarting: its service
			// registers after it answers again, so a positive service
			// answer from before says nothing about it then. The next check
			// that passes tnsping asks again.
			s.serviceOK.Store(0)
		}
		if err == nil {
			streak = max(streak, 0) + 1
		} else {
			streak = min(streak, 0) - 1
		}
		wasUp := s.up.Load()
		switch {
		case first:
			// The first result decides at once: no waiting rise checks at start.
			s.setUp(err == nil)
		case err == nil && streak == *h.Rise:
			s.setUp(true)
		case err != nil && -streak == *h.Fall:
			s.setUp(false)
		}
		// Said once per outage: at the first check, or when this failure
		// takes an up server down. A server already down (since the first
		// check, or inherited down over a reload, whose streak starts
		// again) reached fall once more and was logged as newly failed:
		// twice at start, and again after every reload.
		if err != nil && (first || (wasUp && -streak == *h.Fall)) {
			s.backend.log.Warn("health check failed", "server", s.Address, "error", err)
		}
		first = false
		if !s.checked.Swap(true) && s.backend.Checked() { // its first check: was it the last server's?
			s.backend.closeFirstChecks()
		}
		t.Reset(h.Interval.Duration)
	}
}

// openWatch is what checkLoop knows of a circuit that failed dials opened:
// when it opened (Server.dialOpen), and how many checks begun after that
// have passed in a row.
type openWatch struct {
	at     int64
	passes int
}

// failBackAfterDialOpen ends early the open period of a circuit that
// failed dials opened while the check still has the server up, once rise
// checks begun after the opening have passed: a listener restart shorter
// than fall checks opens a circuit the check never saw, and no down-to-up
// move (setUp) ends it. Without this, new sessions stayed on a standby for
// all of open_for with the preferred server back and its check passing.
// The next session is the half-open trial, as after setUp's early end.
func (s *Server) failBackAfterDialOpen(w *openWatch, started time.Time, passed bool) {
	at := s.dialOpen.Load()
	if at != w.at {
		w.at, w.passes = at, 0
	}
	if at == 0 || started.UnixNano() <= at {
		return // no such circuit, or a check begun before it opened
	}
	if !passed {
		w.passes = 0
		return
	}
	w.passes++
	if w.passes == *s.backend.Config.Health.Rise && s.up.Load() && s.breaker.expire(time.Now()) {
		s.backend.serverLog().Info("circuit open period ended early: the health check says the server is back", "server", s.Address)
		s.publish()
		s.back()
	}
}

// check runs one health check within the configured timeout and records
// its duration. A name of several addresses passes when one of them does,
// each checked within its own timeout, in the resolver's order: one silent
// address of a RAC SCAN or a DNS round robin, which sessions get past, must
// not keep the server down; and checking it first at every interval keeps
// its failure fresh, so that sessions keep dialing it last (dialOrder).
func (s *Server) check(ctx context.Context) error {
	h := s.backend.Config.Health
	start := time.Now()
	addrs, err := s.resolve(ctx, h.Timeout.Duration)
	if err != nil {
		return fmt.Errorf("%s check: %w", h.Check, err)
	}
	var firstErr error
	for _, a := range addrs {
		dialed, err := s.checkAddr(ctx, a)
		if err == nil {
			s.backend.metrics.HealthDuration.WithLabelValues(s.backend.Config.Name, s.Address).Observe(time.Since(start).Seconds())
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
		if !dialed {
			s.addrFailed(a, err, len(addrs))
		}
	}
	return fmt.Errorf("%s check: %w", h.Check, firstErr)
}

// checkAddr checks one address of the server within health.timeout;
// dialed tells whether the dial succeeded.
func (s *Server) checkAddr(ctx context.Context, a netip.Addr) (dialed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.backend.Config.Health.Timeout.Duration)
	defer cancel()
	ap := netip.AddrPortFrom(a, s.port)
	addr := ap.String()
	c, err := s.dialCheck(ctx, addr)
	if err != nil {
		return false, err
	}
	s.addrSucceeded(a)
	defer c.Close()
	if err := s.checkProtocol(ctx, c, addr); err != nil {
		return true, err
	}
	// The kernel measured the path's RTT on this connection (its
	// handshake, and a tnsping's exchange): a sample for the server's RTT
	// gauge while no session sends (CheckRTT).
	if tc, ok := c.(*net.TCPConn); ok {
		if info, err := keepalive.ReadInfo(tc); err == nil && info.RTT > 0 {
			s.checkRTT.Store(&rttSample{rtt: info.RTT, at: time.Now()})
		}
	}
	return true, nil
}

// rttSample is a kernel RTT and when it was read.
type rttSample struct {
	rtt time.Duration
	at  time.Time
}

// CheckRTT is the kernel RTT of the server's last successful health check
// and when it was read; ok is false before the first (and for nil).
func (s *Server) CheckRTT() (rtt time.Duration, at time.Time, ok bool) {
	if s == nil {
		return 0, time.Time{}, false
	}
	if v := s.checkRTT.Load(); v != nil {
		return v.rtt, v.at, true
	}
	return 0, time.Time{}, false
}

// dialCheck opens a connection of tnsguard's own to the server (a health
// check, a service probe) at addr, one of its addresses. To a server that expects PROXY headers
// (send_proxy_protocol) it opens with a LOCAL one: "this connection is the
// proxy's own", so a downstream tnsguard or HAProxy accepts it instead of
// refusing it for a missing header.
//
// An address that is a listener of this tnsguard whose sessions dial this
// backend (ownListener) is the proxy itself, not a database: it fails
// (ErrOwnListener) undialed, or dialed as the proxy's own (DialOwn), so
// that the listener does not take the check for an app whose session
// dials itself. DialOwn tells it from an address that this host's NAT
// sends to a database, which is checked.
func (s *Server) dialCheck(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	ap, _ := netip.ParseAddrPort(addr) // invalid for a name: no listener's
	if l := s.backend.ownListener(ap); l != "" {
		loop := true
		if s.backend.DialOwn != nil {
			c, loop, err = s.backend.DialOwn(ctx, ap, l)
		}
		if err == nil && loop {
			err = fmt.Errorf("%s is listener %q, %w", ap, l, ErrOwnListener)
		}
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if version := s.backend.Config.SendProxyVersion(); version != 0 {
		h := &proxyproto.Header{Version: version, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
		if _, err := h.WriteTo(c); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// checkProtocol is what a check does over the connection after connect:
// nothing for "tcp"; for "tnsping", the listener must answer a tnsping, and,
// with health.service set, that service must be registered. A registered
// service is asked again only after service_interval, since a positive
// answer starts a server process on the database host; until it is
// registered, it is asked at every check (a REFUSE costs the database
// nothing), so a server whose service registers a minute after its
// listener came back (a restart) is up at the next check, not
// service_interval later.
func (s *Server) checkProtocol(ctx context.Context, c net.Conn, addr string) error {
	h := s.backend.Config.Health
	if h.Check != "tnsping" {
		return nil
	}
	res, err := tns.Ping(ctx, c)
	if err != nil {
		return err
	}
	s.setVersion(res.Version)
	if h.Service == "" {
		return nil
	}
	if at := s.serviceOK.Load(); at != 0 && time.Since(time.Unix(0, at)) < h.ServiceInterval.Duration {
		return nil
	}
	asked := time.Now()
	if err := s.probeService(ctx, h.Service, addr); err != nil {
		s.serviceOK.Store(0)
		return err
	}
	s.serviceOK.Store(asked.UnixNano())
	return nil
}

// probeService asks the listener, on a connection of its own, whether the
// service is registered; the connection is closed at once either way.
func (s *Server) probeService(ctx context.Context, service, addr string) error {
	c, err := s.dialCheck(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	registered, code, err := tns.ProbeService(ctx, c, service)
	switch {
	case err != nil:
		return fmt.Errorf("service %s: %w", service, err)
	case !registered:
		return fmt.Errorf("service %s is not registered with the listener (ORA-%05d)", service, code)
	case code != 0 && (slices.Contains(config.DefaultRefuseErrors(), code) || slices.Contains(s.backend.Config.RefuseErrors, code)):
		// Registered, but the listener refuses every session for it now:
		// an instance starting (NOMOUNT, MOUNT: ORA-12528), restricted
		// (ORA-12526) or out of processes (ORA-12519). Up, fail-back would
		// hand the apps that REFUSE while another server takes them.
		return fmt.Errorf("service %s is registered but the listener refuses its sessions (ORA-%05d)", service, code)
	}
	return nil
}

// setVersion exports the listener version tnsping reported.
func (s *Server) setVersion(v string) {
	if v == "" {
		return
	}
	old, _ := s.version.Swap(v).(string)
	if old == v {
		return
	}
	m := s.backend.metrics.ListenerVersion
	if old != "" {
		m.DeleteLabelValues(s.backend.Config.Name, s.Address, old)
	}
	m.WithLabelValues(s.backend.Config.Name, s.Address, v).Set(1)
	s.backend.log.Info("oracle listener version", "server", s.Address, "version", v)
}

// ownListener is the listener of the proxy that a dial to addr would
// reach, when its sessions dial b (OwnListener); "" for any other.
func (b *Backend) ownListener(addr netip.AddrPort) string {
	if b.OwnListener == nil {
		return ""
	}
	return b.OwnListener(addr)
}
