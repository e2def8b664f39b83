package proxy

import (
	"encoding/json"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns/tnstest"
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

// A server that a reload removes, and that never carried a session, is not
// a link of any configuration any more: /api/links (the status page polls it
// every 3 s) must not keep showing it, as "down", for the process's life.
func TestLinksForgetRemovedServerThatCarriedNothing(t *testing.T) {
	one := newBackend(t, echo)
	two := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(one.addr(), two.addr()))
	linkOf(t, h.p, two.addr()) // the status page was open before the reload
	if err := h.p.Apply(mustParse(t, oneBackendConfig(one.addr()))); err != nil {
		t.Fatal(err)
	}
	for _, l := range h.p.Links() {
		if l.Server == two.addr() {
			t.Errorf("removed server %s still listed after the reload: %+v", l.Server, l)
		}
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "tnsguard_backend_r") { // rtt_seconds, retransmits_total (TCP_INFO)
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "server" && lp.GetValue() == two.addr() {
					t.Errorf("%s{server=%q} still exported after the reload removed the server", mf.GetName(), two.addr())
				}
			}
		}
	}
}

// The same for a removed server that sessions were re-dialed away from: its
// link counted the re-dials, but it never carried a session. Listed "down"
// and with a retransmits series, it stayed for the process's life.
func TestLinksForgetRemovedServerThatOnlyFailed(t *testing.T) {
	live := newBackend(t, echo)
	dead := closedPort(t)
	cfg := strings.Replace(oneBackendConfig(dead, live.addr()), "[[backend]]\nname = \"b\"", "[[backend]]\nname = \"b\"\nbalance = \"priority\"", 1)
	h := startProxy(t, cfg)
	c := h.dial("l") // dials dead first (listed first), then live
	echoed(t, c, "x")
	c.Close()
	if n := counter(h.m.Redials, "l", "b", "connect"); n == 0 {
		t.Fatalf("no redial: the dead server was not dialed")
	}
	if err := h.p.Apply(mustParse(t, oneBackendConfig(live.addr()))); err != nil {
		t.Fatal(err)
	}
	for _, l := range h.p.Links() {
		if l.Server == dead {
			t.Errorf("removed server %s, which never carried a session, still listed after the reload: %+v", l.Server, l)
		}
	}
	for _, sm := range h.samples(t, "tnsguard_backend_retransmits_total") {
		if sm.labels["server"] == dead {
			t.Errorf("tnsguard_backend_retransmits_total{server=%q} still exported after the reload removed it", dead)
		}
	}
}

// A removed server that carried sessions stays listed (its reset history),
// but it is no longer checked: /api/links must not say it is down, and the
// status page must not show it with a red "down" pill for the process's
// life, next to the servers that are. It said "up": false (the server's
// health was not known, not bad), while its sessions ran on it and after.
func TestLinksDoNotCallARemovedServerDown(t *testing.T) {
	one := newBackend(t, echo)
	two := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(one.addr(), two.addr()))
	for i := 0; i < 2; i++ { // round robin: one session on each server
		c := h.dial("l")
		echoed(t, c, "a")
		defer c.Close()
	}
	if link := linkOf(t, h.p, two.addr()); link.SessionsActive != 1 || !link.Up {
		t.Fatalf("before the reload: %+v", link)
	}
	if err := h.p.Apply(mustParse(t, oneBackendConfig(one.addr()))); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(h.p.Links())
	if err != nil {
		t.Fatal(err)
	}
	var links []map[string]any
	if err := json.Unmarshal(raw, &links); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l["server"] != two.addr() {
			continue
		}
		if l["removed"] != true {
			t.Errorf("removed server %s listed without \"removed\": true (it reads as down: \"up\": %v): %v", two.addr(), l["up"], l)
		}
		return
	}
	t.Fatalf("the removed server that carries a session is not listed: %s", raw)
}

// A removed server that carried sessions loses its RTT gauge once its last
// session ends (its retransmits counter stays, as counters do): the
// dashboard must not draw a server that is gone, at its last RTT, until
// a restart.
func TestRemovedServerLosesItsRTTWithItsLastSession(t *testing.T) {
	one := newBackend(t, echo)
	two := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(two.addr()))
	exported := func(name string) bool {
		for _, sm := range h.samples(t, name) {
			if sm.labels["server"] == two.addr() {
				return true
			}
		}
		return false
	}
	ended := h.dial("l")
	echoed(t, ended, "a")
	ended.Close()
	live := h.dial("l")
	echoed(t, live, "b")
	waitFor(t, 2*time.Second, "one live session", func() bool { return len(h.p.liveSessions()) == 1 })
	if err := h.p.Apply(mustParse(t, oneBackendConfig(one.addr()))); err != nil {
		t.Fatal(err)
	}
	if !exported("tnsguard_backend_rtt_seconds") {
		t.Errorf("the removed server's RTT is gone while a session still runs on it")
	}
	live.Close()
	waitFor(t, 2*time.Second, "the session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	if exported("tnsguard_backend_rtt_seconds") {
		t.Errorf("removed server %s still exports tnsguard_backend_rtt_seconds after its last session", two.addr())
	}
	if !exported("tnsguard_backend_retransmits_total") {
		t.Errorf("the removed server's retransmits counter is gone: counters stay")
	}
}

// firstConnSlow is an echo whose first connection thinks 30 ms before each
// answer: delayed ACKs make that connection's RTT long, the others' short.
func firstConnSlow() func(c *net.TCPConn) {
	var mu sync.Mutex
	first := true
	return func(c *net.TCPConn) {
		mu.Lock()
		slow := first
		first = false
		mu.Unlock()
		defer c.Close()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if slow {
				time.Sleep(30 * time.Millisecond)
			}
			c.Write(buf[:n])
		}
	}
}

// tnsguard_backend_rtt_seconds is the mean smoothed RTT of the server's live
// backend connections: a link (another listener on the same server) whose
// last session ended long ago must not weigh its frozen last RTT in while
// live connections report theirs.
func TestServerRTTIsOfLiveConnectionsOnly(t *testing.T) {
	be := newBackend(t, firstConnSlow())
	h := startProxy(t, twoListeners(be.addr()))
	roundTrips := func(c *net.TCPConn, n int) {
		for i := 0; i < n; i++ {
			c.Write([]byte("x"))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	old := h.dial("m")
	roundTrips(old, 20)
	old.Close()
	waitFor(t, 2*time.Second, "the session on m ended", func() bool { return len(h.p.liveSessions()) == 0 })

	live := h.dial("l")
	roundTrips(live, 20)
	s := sessionOf(t, h.p, live)
	info, err := s.backendInfo()
	if err != nil {
		t.Fatal(err)
	}
	var got float64
	for _, sl := range h.p.ServerLinks() {
		if sl.Server == be.addr() {
			got = sl.RTTSeconds
		}
	}
	if want := info.RTT.Seconds(); math.Abs(got-want) > 1e-6 {
		t.Errorf("tnsguard_backend_rtt_seconds = %v, want %v: the one live connection's RTT", got, want)
	}
}

// An idle session's backend socket keeps the RTT of its last exchange: the
// kernel samples the RTT only when sent data is acknowledged (keepalive
// probes do not). A pool's idle sessions must not hold
// tnsguard_backend_rtt_seconds (and /api/links) at that old figure while
// working sessions report the path's RTT now: with half the sessions idle
// the gauge read 20 ms for a 40 ms path (TestLabKernelRTTWithIdleSessions).
// Here the idle session's last exchanges had a long RTT (the server's think
// time delays its ACKs), and the working one's a short RTT.
func TestServerRTTIsOfSessionsThatSentLately(t *testing.T) {
	be := newBackend(t, firstConnSlow())
	cfg, _, err := config.Parse([]byte(oneBackendConfig(be.addr())), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	p := New(hclog.NewNullLogger(), m)
	p.rttFresh = 300 * time.Millisecond
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(0, time.Second) })
	h := &harness{t: t, p: p, m: m}
	roundTrips := func(c *net.TCPConn, n int) {
		for i := 0; i < n; i++ {
			c.Write([]byte("x"))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	serverRTT := func() float64 {
		for _, sl := range p.ServerLinks() {
			if sl.Server == be.addr() {
				return sl.RTTSeconds
			}
		}
		return math.NaN()
	}
	idle := h.dial("l")
	roundTrips(idle, 20)
	working := h.dial("l")
	roundTrips(working, 5)
	time.Sleep(500 * time.Millisecond) // the idle session's last sample ages past rttFresh
	roundTrips(working, 20)
	idleInfo, err := sessionOf(t, p, idle).backendInfo()
	if err != nil {
		t.Fatal(err)
	}
	info, err := sessionOf(t, p, working).backendInfo()
	if err != nil {
		t.Fatal(err)
	}
	want := info.RTT.Seconds()
	if got := serverRTT(); math.Abs(got-want) > 1e-6 {
		t.Errorf("tnsguard_backend_rtt_seconds = %v, want %v: the working session's RTT, not a mean with the idle one's %v", got, want, idleInfo.RTT)
	}
	if st := linkOf(t, p, be.addr()); st.RTTSeconds == nil {
		t.Errorf("/api/links rtt_seconds = null, want %v", want)
	} else if math.Abs(*st.RTTSeconds-want) > 1e-6 {
		t.Errorf("/api/links rtt_seconds = %v, want %v", *st.RTTSeconds, want)
	}

	// With every session idle, the figure is the most recent sample: the
	// working session's, not the idle one's older one.
	time.Sleep(500 * time.Millisecond)
	if got := serverRTT(); math.Abs(got-want) > 1e-6 {
		t.Errorf("with all sessions idle: tnsguard_backend_rtt_seconds = %v, want %v: the latest sample", got, want)
	}
}

// The retransmits a link reports never go back: a session that ends
// between figures' two reads is missed once (its count moved into
// closedRetrans after that was read), and a dip would read as a counter
// reset. Here the dip is made by hand: 7 reported, then a sum of 5.
func TestLinkRetransmitsNeverGoBack(t *testing.T) {
	l := newLink(linkKey{"l", "b", "s"}, defaultEvidenceWindow)
	l.closedRetrans = 7
	if got := l.figures(nil).retransmits; got != 7 {
		t.Fatalf("retransmits %d, want 7", got)
	}
	l.closedRetrans = 5 // as if 2 were in flight between a live socket and closedRetrans
	if got := l.figures(nil).retransmits; got != 7 {
		t.Errorf("retransmits went back to %d after 7 were reported", got)
	}
	l.closedRetrans = 9
	if got := l.figures(nil).retransmits; got != 9 {
		t.Errorf("retransmits %d, want 9", got)
	}
}

// Every backend a listener can route to has its links listed from the
// start, not only the default route's.
func TestLinksListEveryRoutesBackend(t *testing.T) {
	sales, orders := newServer(t, sayName("S")), newServer(t, sayName("O"))
	h := startProxy(t, routesConfig(sales.address, orders.address))
	got := map[string]string{}
	for _, l := range h.p.Links() {
		got[l.Backend] = l.Server
	}
	if got["sales-db"] != sales.address || got["orders-db"] != orders.address {
		t.Errorf("links %v, want sales-db -> %s and orders-db -> %s", got, sales.address, orders.address)
	}
}

// Sessions that no server took (all down) are counted on the link to
// server "none": during an outage that row carries the resets, and the
// status page lists it.
func TestLinksListTheNoServerLink(t *testing.T) {
	h := startProxy(t, oneBackendConfig(closedPort(t)))
	c := h.dial("l")
	c.Write([]byte("x"))
	readErr(c, 10*time.Second)
	c.Close()
	waitFor(t, 5*time.Second, `the link to server "none" with its reset`, func() bool {
		for _, l := range h.p.Links() {
			if l.Server == "none" && l.Resets24h == 1 {
				return true
			}
		}
		return false
	})
}

// The wait for a server's first answer (here a first server that hangs for
// 1.5 s, then drops) is no pause the answering server's path outlived: its
// connection is milliseconds old. Counted as one, it would make a query
// lost after any shorter pause on that link an active end, for the
// process's life.
func TestConnectWaitIsNoOutlivedPause(t *testing.T) {
	slow := newBackend(t, func(c *net.TCPConn) { time.Sleep(1500 * time.Millisecond); c.Close() })
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	cfg := strings.Replace(oracleConfig("", slow.addr()+";0", standby.Addr()+";1"), `connect_budget = "2s"`, `connect_budget = "10s"`, 1)
	h := startProxy(t, cfg)
	_, wait := tnsFirstByte(t, h) // the ACCEPT's first byte, a length's high byte, may be 0
	if wait < 1100*time.Millisecond {
		t.Fatalf("the standby answered after %v: the test needs a wait of over a second", wait)
	}
	if got := h.p.linkFor("l", "b", standby.Addr()).backendOutlived(); got > 0 {
		t.Errorf("link to the standby: a pause of %v recorded as outlived; its connection never paused", got)
	}
}

// A pause a path outlived is evidence for one to two evidence windows, not
// for the process's life: a path changes (a firewall with a shorter timeout
// is put in), and its idle deaths would count as active, without keepalive
// advice, as long as the old evidence stood. Here the window is 3 s.
func TestOutlivedPausesFade(t *testing.T) {
	t.Parallel()
	const window = 3 * time.Second
	be := newBackend(t, echo)
	h := startProxyEvidence(t, oneBackendConfig(be.addr()), window)
	p := h.p
	// Two sessions outlive the same pause; the second then ends, and its
	// database leg's evidence goes to the link.
	const pause = 1300 * time.Millisecond
	c, c2 := h.dial("l"), h.dial("l")
	defer c.Close()
	defer c2.Close()
	echoed(t, c, "ping")
	echoed(t, c2, "ping")
	s := sessionOf(t, p, c)
	time.Sleep(pause)
	echoed(t, c, "ping")
	echoed(t, c2, "ping")
	c2.Close()
	lk := p.linkFor("l", "b", be.addr())
	waitFor(t, 5*time.Second, "the second session's end", func() bool { return len(p.liveSessions()) == 1 })
	for _, side := range []Side{SideClient, SideBackend} {
		if got := s.outlived(side, lk); got < pause || got > pause+time.Second {
			t.Fatalf("%s leg: outlived %v right after a pause of %v", side, got, pause)
		}
	}
	if got := lk.backendOutlived(); got < pause || got > pause+time.Second {
		t.Fatalf("link: outlived %v, want the pause of %v", got, pause)
	}
	time.Sleep(2*window + 500*time.Millisecond) // a pause no bytes ended yet: not evidence
	for _, side := range []Side{SideClient, SideBackend} {
		if got := s.outlived(side, lk); got != 0 {
			t.Errorf("%s leg: outlived %v two windows after the only pause it outlived", side, got)
		}
	}
	if got := lk.backendOutlived(); got != 0 {
		t.Errorf("link: outlived %v two windows after the only pause any session outlived", got)
	}
}

// The series that alerts watch through increase() exist at 0 before the
// first event, for every link the config can make, also after a reload
// that adds one: a series born at 1 hides its first event from increase(),
// and after a restart the same labels came back at 1, so a link's first
// idle reset after a restart raised no TnsguardIdleResets (a review with a
// real Prometheus). The sessions' series exist too: panels show 0, not "no
// data", for a listener no app used yet.
func TestAlertedSeriesExistAtZero(t *testing.T) {
	be := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(be.addr()))
	has := func(name string, want map[string]string) bool {
		for _, s := range h.samples(t, name) {
			match := s.value == 0
			for k, v := range want {
				match = match && s.labels[k] == v
			}
			if match {
				return true
			}
		}
		return false
	}
	check := func(server string) {
		t.Helper()
		for _, side := range []string{"client", "backend"} {
			for _, phase := range []string{"idle", "active"} {
				for _, cause := range []string{"rst", "timeout"} {
					want := map[string]string{"listener": "l", "backend": "b", "server": server, "side": side, "phase": phase, "cause": cause}
					if !has("tnsguard_resets_total", want) {
						t.Errorf("no tnsguard_resets_total%v at 0", want)
					}
				}
			}
		}
	}
	check(be.addr())
	for _, reason := range []string{"no_backend", "max_sessions", "max_sessions_per_source"} {
		if !has("tnsguard_sessions_rejected_total", map[string]string{"listener": "l", "reason": reason}) {
			t.Errorf("no tnsguard_sessions_rejected_total{reason=%q} at 0", reason)
		}
	}
	for _, name := range []string{"tnsguard_sessions_active", "tnsguard_bytes_total"} {
		if !has(name, map[string]string{"listener": "l", "backend": "b"}) {
			t.Errorf("no %s{listener=l,backend=b} at 0", name)
		}
	}
	second := newBackend(t, echo)
	cfg, _, err := config.Parse([]byte(oneBackendConfig(be.addr(), second.addr())), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	check(second.addr())
}

// A link's evidence counts from when its path outlived the pause, not from
// when the session that saw it ended: a session that outlived a pause early
// and ended late in its second window handed the pause to its link as new,
// which kept it up to two more windows (4 hours, not 1 to 2). Here the
// window is 3 s.
func TestLinkEvidenceCountsFromThePause(t *testing.T) {
	t.Parallel()
	const window = 3 * time.Second
	be := newBackend(t, echo)
	h := startProxyEvidence(t, oneBackendConfig(be.addr()), window)
	p := h.p
	c := h.dial("l")
	defer c.Close()
	echoed(t, c, "ping")
	s := sessionOf(t, p, c)
	time.Sleep(1300 * time.Millisecond)
	echoed(t, c, "ping") // the database's leg outlived a pause of 1.3 s
	outlivedAt := time.Now()
	lk := p.linkFor("l", "b", be.addr())
	// The session ends late in its second window, no bytes since: its own
	// evidence is still there, one to two windows old.
	time.Sleep(time.Until(s.start.Add(2*window - 400*time.Millisecond)))
	c.Close()
	waitFor(t, 5*time.Second, "the session's end", func() bool { return len(p.liveSessions()) == 0 })
	time.Sleep(time.Until(outlivedAt.Add(2*window + 700*time.Millisecond)))
	if got := lk.backendOutlived(); got != 0 {
		t.Errorf("link: a pause of %v outlived %v ago (over two windows of %v) still counts as evidence",
			got, time.Since(outlivedAt).Round(time.Millisecond), window)
	}
}

// A database that takes over a second to answer the first query after a
// long pause makes a pause of its own (the query's time): the long pause,
// which its path outlived as well, was lost for the database's leg, and a
// later cut after a shorter pause could count as the middlebox's doing.
func TestSlowAnswerAfterAPauseKeepsThePause(t *testing.T) {
	t.Parallel()
	be := newBackend(t, func(c *net.TCPConn) {
		buf := make([]byte, 4)
		for n := 0; ; n++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if n == 1 {
				time.Sleep(1300 * time.Millisecond) // the query after the pause is slow
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	c := h.dial("l")
	defer c.Close()
	echoed(t, c, "ping")
	s := sessionOf(t, h.p, c)
	const pause = 2 * time.Second
	time.Sleep(pause)
	echoed(t, c, "slow")
	lk := h.p.linkFor("l", "b", be.addr())
	// The pump notes the answer's bytes just after it has written them,
	// so the app may read them a moment before; the session notes the
	// pause, then its link (CI once read the link between the two).
	waitFor(t, time.Second, "the slow answer noted on the session and its link", func() bool {
		return s.outlived(SideBackend, nil) > 0 && lk.backendOutlived() > 0
	})
	if got := s.outlived(SideBackend, lk); got < pause {
		t.Errorf("database leg: outlived %v, want the pause of %v before the slow answer", got, pause)
	}
	if got := lk.backendOutlived(); got < pause {
		t.Errorf("link: outlived %v, want %v", got, pause)
	}
	if got := s.outlived(SideClient, lk); got < pause || got > pause+time.Second {
		t.Errorf("app's leg: outlived %v, want about %v", got, pause)
	}
}

// startProxyEvidence is startProxy with outlived-pause evidence windows of
// window (set before any session or link exists).
func startProxyEvidence(t *testing.T, toml string, window time.Duration) *harness {
	t.Helper()
	cfg, _, err := config.Parse([]byte(toml), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	p := New(hclog.NewNullLogger(), m)
	p.evidenceWindow = window
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(0, time.Second) })
	return &harness{t: t, p: p, m: m}
}

// A pooled session that wakes after a pause of rttFresh or more sends data
// again, but the kernel's smoothed RTT of its socket is still mostly its
// last query's: it moves an eighth of the way to each new sample. Until it
// has sent rttSettle segments it is no live figure of the path; its RTT
// dates from before the pause, so a newer one (a health check's) wins.
// Until 2026-11-30 it counted at once, and a pool that woke after the
// path went from 20 to 50 ms read 24 ms (TestLabKernelRTTOfAPoolThatWakes).
func TestWokenSessionsRTTCountsOnceSettled(t *testing.T) {
	l := newLink(linkKey{"l", "b", "s"}, defaultEvidenceWindow)
	now := time.Now()
	s := &session{start: now.Add(-time.Minute)}
	l.addLive(s)
	info := keepalive.Info{RTT: 20 * time.Millisecond, LastDataSent: 100 * time.Millisecond, DataSegsOut: 40}
	if fresh, _ := l.judgeRTT(s, info, now); !fresh {
		t.Fatal("a session that never paused: not fresh")
	}
	// Idle for 20 s (seen so by a scrape), then it sends one query.
	info.LastDataSent = 20 * time.Second
	if fresh, _ := l.judgeRTT(s, info, now); fresh {
		t.Fatal("an idle session counted as fresh")
	}
	idleSince := now.Add(-20 * time.Second)
	now = now.Add(21 * time.Second)
	info.LastDataSent, info.DataSegsOut, info.RTT = 50*time.Millisecond, 41, 24*time.Millisecond
	if fresh, at := l.judgeRTT(s, info, now); fresh || !at.Equal(idleSince) {
		t.Errorf("one query after the pause: fresh %v, sampled at %v; want not fresh, sampled before the pause (%v)", fresh, at, idleSince)
	}
	info.DataSegsOut = 41 + rttSettle
	if fresh, _ := l.judgeRTT(s, info, now); !fresh {
		t.Errorf("%d segments after the pause: not fresh", rttSettle+1)
	}

	// Woken between two looks (a pause touch saw, no scrape during it):
	// the segments sent since are unknown, so they count from this look.
	s2 := &session{start: now.Add(-time.Minute)}
	s2.rttPauseAt.Store(int64(10 * time.Second))
	s2.rttWoke.Store(int64(50 * time.Second))
	l.addLive(s2)
	info = keepalive.Info{RTT: 20 * time.Millisecond, LastDataSent: 10 * time.Millisecond, DataSegsOut: 100}
	if fresh, at := l.judgeRTT(s2, info, now); fresh || !at.Equal(s2.start.Add(10*time.Second)) {
		t.Errorf("woken unseen: fresh %v, sampled at %v; want not fresh, sampled when its pause began", fresh, at)
	}
	info.DataSegsOut = 100 + rttSettle
	if fresh, _ := l.judgeRTT(s2, info, now); !fresh {
		t.Error("woken unseen, then rttSettle segments: not fresh")
	}
	l.removeLive(s, info, nil)
	l.removeLive(s2, info, nil)
	if len(l.rttMarks) != 0 {
		t.Errorf("%d marks kept after the sessions ended, want 0", len(l.rttMarks))
	}
	// A session that ended after figures listed it is read once more: no
	// mark may be kept for it.
	l.judgeRTT(s, info, now)
	if len(l.rttMarks) != 0 {
		t.Errorf("a mark kept for a session that is not live")
	}
}

// A session still opening (here: the server took the connection and the
// app's bytes, and has not answered) is open, and tnsguard_sessions_active
// counts it from its accept; /api/links, and so the status page, counted a
// session only once its server had answered. Through a database that
// hangs on its CONNECT, the page said 0 sessions on every row for the
// whole connect_budget while the metric said 20. It is counted on its
// listener's and backend's row to server "none" (no server took it yet).
func TestLinksCountSessionsStillOpening(t *testing.T) {
	silent := newBackend(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	h := startProxy(t, strings.Replace(oneBackendConfig(silent.addr()), `connect_budget = "3s"`, `connect_budget = "20s"`, 1))
	const n = 20
	for range n {
		c := h.dial("l")
		defer c.Close()
		c.Write([]byte("hello"))
	}
	waitFor(t, 5*time.Second, "the server to take every session's opening", func() bool {
		return len(silent.accepted()) == n && gauge(h.m.SessionsActive, "l", "b") == n
	})
	shown, rows := 0, map[string]int{}
	for _, l := range h.p.Links() {
		shown += l.SessionsActive
		rows[l.Server] = l.SessionsActive
	}
	if shown != n || rows["none"] != n {
		t.Errorf("tnsguard_sessions_active = %d; /api/links shows %d sessions in all (by server: %v), want %d on the row to \"none\"", n, shown, rows, n)
	}
}

// The status page's row of a removed server (listed for its history) shows
// no kernel RTT once its last session ended, as the gauge goes: until
// 2026-11-30 the row kept the RTT of a socket closed hours ago, next to
// live servers' current figures.
func TestRemovedServerRowLosesItsRTTWithItsLastSession(t *testing.T) {
	one := newBackend(t, echo)
	two := newBackend(t, echo)
	h := startProxy(t, oneBackendConfig(two.addr()))
	live := h.dial("l")
	echoed(t, live, "b")
	waitFor(t, 2*time.Second, "one live session", func() bool { return len(h.p.liveSessions()) == 1 })
	if err := h.p.Apply(mustParse(t, oneBackendConfig(one.addr()))); err != nil {
		t.Fatal(err)
	}
	if st := linkOf(t, h.p, two.addr()); !st.Removed || st.RTTSeconds == nil {
		t.Errorf("removed server with a live session: removed %v, RTT %v; want removed, with the session's RTT", st.Removed, st.RTTSeconds)
	}
	live.Close()
	waitFor(t, 2*time.Second, "the session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	if st := linkOf(t, h.p, two.addr()); !st.Removed || st.RTTSeconds != nil {
		t.Errorf("removed server after its last session: removed %v, RTT shown %v; want removed, no RTT", st.Removed, st.RTTSeconds != nil)
	}
}
