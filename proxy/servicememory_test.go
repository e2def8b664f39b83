package proxy

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// switchoverConfig is an oracleConfig whose only held-back REFUSE is
// ORA-12514, with open_for and max_open_for given: the other codes the
// fake listeners send go to go-ora as they came and tell which server
// answered.
func switchoverConfig(openFor, maxOpenFor string, servers ...string) string {
	return strings.Replace(oracleConfig(`refuse_errors = [12514]`, servers...), "  [backend.health]",
		"  [backend.breaker]\n  open_for = \""+openFor+"\"\n  max_open_for = \""+maxOpenFor+"\"\n  [backend.health]", 1)
}

// answeredBy is the ORA code go-ora got for service: the fake listener's
// own code tells which server answered.
func answeredBy(t *testing.T, h *harness, service string) string {
	t.Helper()
	err := goOraPing(t, h.addr("l"), service)
	for _, code := range []string{"ORA-12526", "ORA-12528", "ORA-12514"} {
		if err != nil && strings.Contains(err.Error(), code) {
			return code
		}
	}
	t.Fatalf("go-ora for %s: %v; want a listener's REFUSE", service, err)
	return ""
}

// After a switchover the old primary's listener still runs and refuses the
// service (ORA-12514). The first session meets that REFUSE and goes on to
// the standby; the sessions after it go to the standby at once: no dial of
// the old primary, no re-dial, one log line. An app asking for a service
// the old primary still offers dials it first, as before. Until 2026-12-01
// every new session dialed the old primary first (20 of 20), a 12514 in its
// listener's log and a re-dial each, and TnsguardRedialsHigh fired.
func TestSwitchoverSessionsSkipTheOldPrimary(t *testing.T) {
	// The old primary refuses SALES with 12514 and answers OTHER with its
	// own 12528; the standby answers SALES with 12526.
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	h, logs := startProxyLog(t, switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1"))

	if got := answeredBy(t, h, "SALES"); got != "ORA-12526" {
		t.Fatalf("first session: %s, want the standby's ORA-12526", got)
	}
	if n := old.Accepted(); n != 1 {
		t.Fatalf("first session: the old primary was dialed %d times, want 1", n)
	}
	redials := counter(h.m.Redials, "l", "b", "refuse")
	if redials != 1 {
		t.Fatalf("first session: %v re-dials, want 1", redials)
	}
	const n = 10
	for i := range n {
		if got := answeredBy(t, h, "sales"); got != "ORA-12526" { // the same service as the listener compares it
			t.Fatalf("session %d after the switchover: %s, want the standby's ORA-12526", i+2, got)
		}
	}
	if got := old.Accepted(); got != 1 {
		t.Errorf("%d sessions after the first: the old primary was dialed %d more times, want none", n, got-1)
	}
	if got := counter(h.m.Redials, "l", "b", "refuse"); got != redials {
		t.Errorf("%d sessions after the first: re-dials went from %v to %v, want no more", n, redials, got)
	}
	// Another service still goes to the preferred server first.
	standbyBefore := standby.Accepted()
	if got := answeredBy(t, h, "OTHER"); got != "ORA-12528" {
		t.Fatalf("a session for OTHER: %s, want the old primary's ORA-12528", got)
	}
	if old.Accepted() != 2 || standby.Accepted() != standbyBefore {
		t.Errorf("a session for OTHER: dials old primary %d, standby %d; want the old primary's second, no standby dial",
			old.Accepted(), standby.Accepted()-standbyBefore)
	}
	waitFor(t, 5*time.Second, "the log line", func() bool {
		return len(logs.lines("server refused service: new sessions for it try this server last", old.Addr(), "service=SALES", "for=1h0m0s")) == 1
	})
	if got := logs.lines("server refused service"); len(got) != 1 {
		t.Errorf("log lines about the refusal: %d, want 1:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// The memory lasts open_for, then the old primary is tried again (a service
// that comes back there is found); a repeat refusal doubles the time, as a
// failed half-open trial doubles a circuit's open period.
func TestServiceRefusalIsTriedAgainAfterOpenFor(t *testing.T) {
	const openFor = 400 * time.Millisecond
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	h := startProxy(t, switchoverConfig(openFor.String(), "10s", old.Addr()+";0", standby.Addr()+";1"))

	// nextDialOfOld runs sessions for SALES until one dials the old
	// primary, and returns when that session began and when it ended.
	type span struct{ began, ended time.Time }
	nextDialOfOld := func(what string) span {
		t.Helper()
		before := old.Accepted()
		deadline := time.Now().Add(20 * time.Second)
		for {
			began := time.Now()
			if got := answeredBy(t, h, "SALES"); got != "ORA-12526" {
				t.Fatalf("%s: %s, want the standby's ORA-12526", what, got)
			}
			if old.Accepted() > before {
				return span{began, time.Now()}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the old primary was not dialed again within 20s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first := nextDialOfOld("first session")
	second := nextDialOfOld("after open_for")
	third := nextDialOfOld("after twice open_for")
	// A refusal is remembered after its session began, and the session
	// that dials the old primary again planned before it ended: between
	// the two lies at least the refusal's lifetime.
	if gap := second.ended.Sub(first.began); gap < openFor {
		t.Errorf("the old primary was dialed again %v after the first refusal, before open_for (%v) ended", gap, openFor)
	}
	if gap := third.ended.Sub(second.began); gap < 2*openFor {
		t.Errorf("the old primary was dialed again %v after its repeat refusal, want at least twice open_for (%v)", gap, 2*openFor)
	}
}

// tnsAnswer sends a CONNECT for service on a new session and returns the
// type of the first packet the app gets.
func tnsAnswer(t *testing.T, h *harness, service string) tns.PacketType {
	t.Helper()
	c := h.dial("l")
	defer c.Close()
	if _, err := c.Write(goodConnect(t, service)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil {
		t.Fatalf("CONNECT for %s: %v", service, err)
	}
	return pkt.Type
}

// acceptTNS is a listener that accepts every CONNECT and echoes after it.
func acceptTNS(c *net.TCPConn) {
	if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
		return
	}
	if _, err := c.Write(tns.BuildAccept(318, "")); err != nil {
		return
	}
	echo(c)
}

// A server that serves the service again (the standby was down, so the
// session went on to it) is forgotten as refusing it at once: the next
// session dials it first again, with the standby back, not after the
// memory's hour.
func TestServiceServedAgainIsForgotten(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := newServer(t, acceptTNS)
	h := startProxy(t, switchoverConfig("1h", "1h", old.Addr()+";0", standby.address+";1"))

	for i := range 3 {
		if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
			t.Fatalf("session %d: %v, want the standby's ACCEPT", i+1, got)
		}
	}
	if n := old.Accepted(); n != 1 {
		t.Fatalf("the old primary was dialed %d times for 3 sessions, want once", n)
	}
	old.SetServices("OTHER", "SALES") // a switch back
	standby.down()
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("with the standby down: %v, want the old primary's ACCEPT", got)
	}
	if n := old.Accepted(); n != 2 {
		t.Fatalf("with the standby down: the old primary dialed %d times in all, want 2", n)
	}
	standby.up()
	before := standby.accepts()
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("with the standby back: %v, want the old primary's ACCEPT", got)
	}
	if n := old.Accepted(); n != 3 || standby.accepts() != before {
		t.Errorf("with the standby back: dials old primary %d (want 3), standby %d more (want 0): the refusal was not forgotten",
			n, standby.accepts()-before)
	}
}

// A reload that rebuilds the backend (another connect_budget) keeps what
// it learnt: the sessions after it do not go back to the old primary.
func TestReloadKeepsTheServiceRefusals(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	cfg := switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1")
	h := startProxy(t, cfg)
	if got := answeredBy(t, h, "SALES"); got != "ORA-12526" {
		t.Fatalf("first session: %s, want the standby's ORA-12526", got)
	}
	if err := h.p.Apply(mustParse(t, strings.Replace(cfg, `connect_budget = "2s"`, `connect_budget = "3s"`, 1))); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := answeredBy(t, h, "SALES"); got != "ORA-12526" {
			t.Fatalf("after the reload: %s, want the standby's ORA-12526", got)
		}
	}
	if n := old.Accepted(); n != 1 {
		t.Errorf("after the reload the old primary was dialed %d more times, want none", n-1)
	}
}

func TestServiceKeyIsSameService(t *testing.T) {
	for _, tc := range [][2]string{{"SALES", "sales"}, {"Sales.Example.COM", "sales.example.com"}, {"ſALES", "sales"},
		{"K", "\u212a"}, {"SALES", "SALE"}, {"", ""}, {"a-B_9", "A-b_9"}} {
		if got, want := serviceKey(tc[0]) == serviceKey(tc[1]), sameService(tc[0], tc[1]); got != want {
			t.Errorf("%q, %q: same key %v, sameService %v", tc[0], tc[1], got, want)
		}
	}
	if k := serviceKey(strings.Repeat("S", maxRememberedService+1)); k != "" {
		t.Errorf("a name of %d bytes has a key: it would be remembered", maxRememberedService+1)
	}
}

// refuseConnectsEchoTheRest is an old primary that refuses every CONNECT
// with ORA-12514 and echoes anything else.
func refuseConnectsEchoTheRest(c *net.TCPConn) {
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	if n >= tns.HeaderLen && tns.PacketType(buf[4]) == tns.TypeConnect {
		c.Write(tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))"))
		return
	}
	c.Write(buf[:n])
	echo(c)
}

// While a refusal is remembered, sessions wait for the app's CONNECT before
// they dial; an app that does not speak TNS (a TCPS client's ClientHello)
// names no service, and is dialed as soon as its first bytes say so, not
// at the end of connect_budget.
func TestNonTNSAppDoesNotWaitForAService(t *testing.T) {
	// The standby echoes.
	old := newServer(t, refuseConnectsEchoTheRest)
	standby := newServer(t, echo)
	cfg := strings.Replace(switchoverConfig("1h", "1h", old.address+";0", standby.address+";1"), `connect_budget = "2s"`, `connect_budget = "20s"`, 1)
	h := startProxy(t, cfg)
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeConnect { // the standby echoes the CONNECT
		t.Fatalf("first session: %v, want the standby's echo", got)
	}
	if !h.p.backend("b").ServiceRefusalsLive(time.Now()) {
		t.Fatal("the old primary's refusal of SALES is not remembered")
	}
	c := h.dial("l")
	hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}
	t0 := time.Now()
	if err := roundTrip(c, hello); err != nil {
		t.Fatalf("a TLS client: %v", err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Errorf("a TLS client waited %v for its answer: it waited for a CONNECT that never comes", took)
	}
}

// The wait for the service is the app's: an app that sends its CONNECT
// only after connect_budget (the wait ran out with nothing to read) is
// dialed then, as before, with a budget of its own, not turned away as a
// session no server took.
func TestLateCONNECTWhileARefusalIsRememberedIsServed(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	cfg := strings.Replace(switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1"), `connect_budget = "2s"`, `connect_budget = "500ms"`, 1)
	h := startProxy(t, strings.Replace(cfg, `connect_timeout = "1s"`, `connect_timeout = "500ms"`, 1))
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("first session: %v, want the standby's ACCEPT", got)
	}
	c := h.dial("l")
	time.Sleep(800 * time.Millisecond) // the app says nothing for longer than connect_budget
	if _, err := c.Write(goodConnect(t, "SALES")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if pkt, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || pkt.Type != tns.TypeAccept {
		t.Fatalf("a CONNECT sent after connect_budget: %v, %v; want the standby's ACCEPT", pkt.Type, err)
	}
}

// A CONNECT cut short ends at connect_budget as on a listener with routes
// (no listener could answer it), not as an app that no server took: no
// server is dialed for it, and TnsguardAppsRejected does not fire.
func TestCutConnectWhileARefusalIsRememberedDialsNothing(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	cfg := strings.Replace(switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1"), `connect_budget = "2s"`, `connect_budget = "1s"`, 1)
	h := startProxy(t, cfg)
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("first session: %v, want the standby's ACCEPT", got)
	}
	dialed := old.Accepted() + standby.Accepted()
	c := h.dial("l")
	half := goodConnect(t, "SALES")
	c.Write(half[:len(half)/2])
	if took, err := readErr(c, 10*time.Second); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a CONNECT cut short: the session did not end within %v", took)
	}
	if n := old.Accepted() + standby.Accepted(); n != dialed {
		t.Errorf("a CONNECT cut short: %d dials, want none", n-dialed)
	}
	if n := counter(h.m.SessionsRejected, "l", "no_backend"); n != 0 {
		t.Errorf("a CONNECT cut short counted as %v apps no server took", n)
	}
}

// Without "refuse" in retry_on a listener's ORA-12514 goes to the app as it
// came, and is remembered all the same: after a switchover the first app of
// the service gets it, and the sessions after it dial the standby first.
// Until 2026-12-01 nothing was remembered then, and every app of the
// service got the old primary's ORA-12514 (go-ora ORA-12514, node-oracledb
// NJS-518) until a reload or health.service.
func TestPassedOnServiceRefusalIsRemembered(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	cfg := strings.Replace(switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1"),
		`retry_on = ["connect", "reset", "refuse"]`, `retry_on = ["connect", "reset"]`, 1)
	h := startProxy(t, cfg)

	if got := answeredBy(t, h, "SALES"); got != "ORA-12514" {
		t.Fatalf("first session: %s, want the old primary's ORA-12514, passed on", got)
	}
	const n = 5
	for i := range n {
		if got := answeredBy(t, h, "SALES"); got != "ORA-12526" {
			t.Fatalf("session %d after the first: %s, want the standby's ORA-12526: the old primary's refusal of SALES was not remembered", i+2, got)
		}
	}
	if got := old.Accepted(); got != 1 {
		t.Errorf("%d sessions after the first: the old primary was dialed %d more times, want none", n, got-1)
	}
	if got := answeredBy(t, h, "OTHER"); got != "ORA-12528" {
		t.Errorf("a session for OTHER: %s, want the old primary's ORA-12528 (it is dialed first for other services)", got)
	}
}

// An app of another protocol whose first message is shorter than a TNS
// header (PING\r\n, an echo client's line) cannot be sending a CONNECT:
// while a refusal is remembered it is dialed as soon as its bytes say so,
// and so it is on a listener with routes (to the "*" route). Until
// 2026-12-01 it waited for the rest of a CONNECT until connect_budget, and
// then, its budget spent on the wait, was reset with no server dialed,
// counted as an app no server took.
func TestShortPlainMessageWhileARefusalIsRememberedIsServed(t *testing.T) {
	for _, routes := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "routes"}[routes], func(t *testing.T) {
			testShortPlainMessageIsServed(t, routes)
		})
	}
}

func testShortPlainMessageIsServed(t *testing.T, routes bool) {
	old := newServer(t, refuseConnectsEchoTheRest)
	standby := newServer(t, echo)
	cfg := switchoverConfig("1h", "1h", old.address+";0", standby.address+";1")
	if routes {
		cfg = strings.Replace(cfg, `services = ["SALES"]`, `routes = { "SALES" = "b", "*" = "b" }`, 1)
	}
	h := startProxy(t, cfg)
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeConnect { // the standby echoes the CONNECT
		t.Fatalf("first session: %v, want the standby's echo", got)
	}
	if !h.p.backend("b").ServiceRefusalsLive(time.Now()) {
		t.Fatal("the old primary's refusal of SALES is not remembered")
	}
	for _, msg := range []string{"PING\r\n", "hi\n"} {
		c := h.dial("l")
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if err := roundTrip(c, []byte(msg)); err != nil {
			t.Errorf("an app that sends %q: %v; want its echo", msg, err)
		}
		c.Close()
	}
	if n := counter(h.m.SessionsRejected, "l", "no_backend"); n != 0 {
		t.Errorf("%v sessions counted as apps no server took", n)
	}
}

// A reload that takes "refuse" out of retry_on ends the memory: the REFUSE
// of a server tried first now goes to the app, so a remembered refusal
// must not send the app there first. After a switch back the standby
// refuses the service and the old primary serves it again; until
// 2026-12-01 every app got the standby's ORA-12514 after such a reload,
// for as long as the old primary's refusal was remembered (up to
// max_open_for).
func TestReloadWithoutRefuseForgetsTheServiceRefusals(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"SALES"}})
	cfg := switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1")
	h := startProxy(t, cfg)
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("first session: %v, want the standby's ACCEPT", got)
	}
	if !h.p.backend("b").ServiceRefusalsLive(time.Now()) {
		t.Fatal("the old primary's refusal of SALES is not remembered")
	}
	old.SetServices("OTHER", "SALES") // a switch back
	standby.SetServices("OTHER")
	if err := h.p.Apply(mustParse(t, strings.Replace(cfg, `retry_on = ["connect", "reset", "refuse"]`, `retry_on = ["connect", "reset"]`, 1))); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
			t.Fatalf("session %d after the reload: %v, want the old primary's ACCEPT", i+1, got)
		}
	}
}

// refusedOn is what listener l's row of /api/links to server lists as the
// services it refused lately.
func refusedOn(t *testing.T, h *harness, server string) []RefusedService {
	t.Helper()
	for _, l := range h.p.Links() {
		if l.Listener == "l" && l.Server == server {
			return l.RefusedServices
		}
	}
	t.Fatalf("/api/links has no row for %s", server)
	return nil
}

// /api/links (and the status page, which reads it) shows the memory: the
// old primary's row names the service it refused, until when new sessions
// of the service dial it last, how often and with which code; the
// standby's row names none; once the old primary serves the service again
// the entry is gone. Until 2026-12-01 nothing showed it: an operator who
// saw sessions avoid a server, or wait for their CONNECT, could not see
// why, for which service, or until when.
func TestLinksShowTheServiceRefusals(t *testing.T) {
	old := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Services: []string{"OTHER"}})
	standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12526, Services: []string{"SALES"}})
	h := startProxy(t, switchoverConfig("1h", "1h", old.Addr()+";0", standby.Addr()+";1"))
	if got := refusedOn(t, h, old.Addr()); got == nil || len(got) != 0 {
		t.Fatalf("before any session the old primary's row lists %#v, want [] (an empty list, not null)", got)
	}
	began := time.Now()
	if got := answeredBy(t, h, "SALES"); got != "ORA-12526" { // go-ora: the old primary's ORA-12514 held back
		t.Fatalf("first session: %s, want the standby's ORA-12526", got)
	}
	got := refusedOn(t, h, old.Addr())
	if len(got) != 1 {
		t.Fatalf("after the old primary refused SALES its row lists %+v, want sales", got)
	}
	if r := got[0]; r.Service != "sales" || r.Error != "ORA-12514" || r.Refusals != 1 || r.ForSeconds != 3600 ||
		r.Until.Before(began.Add(time.Hour)) || r.Until.After(time.Now().Add(time.Hour)) {
		t.Errorf("the old primary's refusal: %+v; want sales, ORA-12514, 1 refusal, for 3600 s, until an hour after it", r)
	}
	if got := refusedOn(t, h, standby.Addr()); len(got) != 0 {
		t.Errorf("the standby refused nothing, yet its row lists %+v", got)
	}

	// A switch back: the old primary offers SALES again and the standby is
	// gone. The session dials the standby first, goes on to the old
	// primary, and is served: the entry is forgotten.
	old.SetServices("OTHER", "SALES")
	standby.Close()
	if got := tnsAnswer(t, h, "SALES"); got != tns.TypeAccept {
		t.Fatalf("after the switch back: %v, want the old primary's ACCEPT", got)
	}
	if got := refusedOn(t, h, old.Addr()); len(got) != 0 {
		t.Errorf("the old primary served SALES, yet its row still lists %+v", got)
	}
}
