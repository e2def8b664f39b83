package proxy

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	goora "github.com/sijms/go-ora/v2"

	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// scanReconnect is what a RAC SCAN listener's REDIRECT tells the client
// to send the node listener.
const scanReconnect = "(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=node1-vip)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)))"

// With redirect = "follow", a SCAN listener's REDIRECT never reaches the
// app: tnsguard dials the node the REDIRECT names, sends it the app's
// CONNECT with the reconnect data (as Oracle's drivers do: flag 0x04, the
// app's own fields), and the app gets the node's ACCEPT and goes on, its
// bytes through tnsguard. A long connect data goes in a DATA packet, and a
// node's RESEND is answered by tnsguard. With "pass" the app gets the
// REDIRECT, as before.
func TestRedirectFollowedForTheApp(t *testing.T) {
	for _, tc := range []struct {
		name    string
		service string
		resends int
	}{
		{"short", "SALES", 0},
		{"node sends RESEND", "SALES", 1},
		{"connect data over 230 bytes", "SALES", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, Resends: tc.resends})
			reconnect := scanReconnect
			if strings.Contains(tc.name, "230") {
				reconnect = strings.Replace(scanReconnect, "(SERVER=dedicated)", "(SERVER=dedicated)(CID=(PROGRAM="+strings.Repeat("p", 200)+"))", 1)
			}
			scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: reconnect})
			h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.Addr()))
			c := h.dial("l")
			connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=tnsguard)(PORT=1522)))")
			c.Write(connect)
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			pkt, err := tns.ReadPacket(c, tns.Length16, 0)
			if err != nil || pkt.Type != tns.TypeAccept {
				t.Fatalf("the app got %v, %v; want the node's ACCEPT", pkt.Type, err)
			}
			// The session goes on through tnsguard to the node (which echoes).
			c.Write([]byte("after the ACCEPT"))
			got := make([]byte, len("after the ACCEPT"))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "after the ACCEPT" {
				t.Fatalf("after the ACCEPT the app read %q, %v; want its bytes back from the node", got, err)
			}
			want, err := tns.BuildRedirectedConnect(connect, reconnect)
			if err != nil {
				t.Fatal(err)
			}
			sent := node.Connects()
			if len(sent) != 1+tc.resends || !bytes.Equal(sent[len(sent)-1], want) {
				t.Fatalf("the node got %d CONNECTs, the last %x; want %d, the app's with the reconnect data: %x", len(sent), sent[len(sent)-1], 1+tc.resends, want)
			}
			if got := scan.Connects(); len(got) != 1 || !bytes.Equal(got[0], connect) {
				t.Errorf("the SCAN listener got %d CONNECTs; want the app's, once", len(got))
			}
			if v := counter(h.m.TNSFollowed, "l", "b", scan.Addr()); v != 1 {
				t.Errorf("tnsguard_tns_redirects_followed_total = %v, want 1", v)
			}
			if v := counter(h.m.TNSRedirects, "l", "b", scan.Addr()); v != 0 {
				t.Errorf("tnsguard_tns_redirects_total = %v, want 0 (none passed to the app)", v)
			}
		})
	}
}

// A node that refuses (switchover, ORA-12514 in refuse_errors) is a
// refusal of the server that redirected: the session fails over to the
// next server, which gets the app's own CONNECT byte for byte. A node that
// cannot be reached is a failure of that server too, re-dialed the same
// way.
func TestRedirectedNodeFailureFailsOver(t *testing.T) {
	for _, tc := range []struct {
		name string
		node func(t *testing.T) string
	}{
		{"node refuses", func(t *testing.T) string {
			return tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514}).Addr()
		}},
		{"node not listening", func(t *testing.T) string {
			// Held bound: a port only freed can be taken by another
			// listener or, as a dial's own port, connect to itself.
			return closedPort(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: tc.node(t), RedirectData: scanReconnect})
			standby := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12560})
			h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.Addr()+";0", standby.Addr()+";1"))
			c := h.dial("l")
			connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
			c.Write(connect)
			if code := readRefuse(t, c, 3*time.Second); code != 12560 {
				t.Fatalf("the app got ORA-%d; want the standby's ORA-12560", code)
			}
			if got := standby.Connects(); len(got) != 1 || !bytes.Equal(got[0], connect) {
				t.Fatalf("the standby got %d CONNECTs; want the app's, byte for byte", len(got))
			}
		})
	}
}

// dialLog is a go-ora dialer that records every address the driver dials.
type dialLog struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dialLog) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, address)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

func (d *dialLog) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.addrs)
}

// go-ora, a real driver that follows REDIRECTs itself: with "pass" it
// dials the node on its own (behind NAT it could not, and its session
// would have none of tnsguard's keepalive); with "follow" it dials
// tnsguard only and still gets the node's answer.
func TestGoOraStaysOnTnsguardThroughARedirect(t *testing.T) {
	for _, mode := range []string{"pass", "follow"} {
		t.Run(mode, func(t *testing.T) {
			node := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
			scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: strings.ReplaceAll(scanReconnect, "node1-vip", "127.0.0.1")})
			h := startProxy(t, oracleConfig(`redirect = "`+mode+`"`, scan.Addr()))
			connector := goora.NewConnector("oracle://scott:tiger@" + h.addr("l") + "/SALES")
			dials := &dialLog{}
			connector.(*goora.OracleConnector).Dialer(dials)
			db := sql.OpenDB(connector)
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := db.PingContext(ctx); err == nil || !strings.Contains(err.Error(), "ORA-12528") {
				t.Fatalf("go-ora: %v; want the node's ORA-12528", err)
			}
			got := dials.dialed()
			want := []string{h.addr("l")}
			if mode == "pass" {
				want = append(want, node.Addr())
			}
			if !slices.Equal(got, want) {
				t.Errorf("go-ora dialed %q; want %q", got, want)
			}
		})
	}
}

// A REDIRECT whose HOST is an IPv6 address in brackets (HOST=[::1]) was
// followed to "[[::1]]:P", which no dial takes: the session failed as if
// the SCAN listener were down, its circuit opened, and go-ora waited out
// its budget. The node is dialed, and go-ora, which dials tnsguard only,
// gets the node's answer.
func TestGoOraThroughARedirectToABracketedIPv6Host(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	node := tnstest.NewOn(t, ln, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
	_, port, _ := net.SplitHostPort(node.Addr())
	scan := newBackend(t, func(c *net.TCPConn) {
		defer c.Close()
		var raw []byte
		for {
			p, err := tns.ReadPacket(c, tns.Length16, 0)
			if err != nil {
				return
			}
			raw = append(raw, p.Raw...)
			if _, err := tns.ParseConnectData(raw); !errors.Is(err, tns.ErrIncomplete) {
				break
			}
		}
		c.Write(tns.BuildRedirectTo("(ADDRESS=(PROTOCOL=tcp)(HOST=[::1])(PORT="+port+"))", strings.ReplaceAll(scanReconnect, "node1-vip", "[::1]")))
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.addr()))
	connector := goora.NewConnector("oracle://scott:tiger@" + h.addr("l") + "/SALES")
	dials := &dialLog{}
	connector.(*goora.OracleConnector).Dialer(dials)
	db := sql.OpenDB(connector)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err == nil || !strings.Contains(err.Error(), "ORA-12528") {
		t.Fatalf("go-ora: %v; want the node's ORA-12528", err)
	}
	if got, want := dials.dialed(), []string{h.addr("l")}; !slices.Equal(got, want) {
		t.Errorf("go-ora dialed %q; want %q", got, want)
	}
	if len(node.Connects()) == 0 { // its REFUSE is retried within the budget: one or more
		t.Error("the node got no CONNECT")
	}
}

// slowScan is a SCAN listener that answers every CONNECT with a REDIRECT
// to node (reconnect data scanReconnect) after delay: a SCAN listener
// under a logon storm. It reads any whole CONNECT, whether tnsguard's
// parser reads its description or not, as a listener does.
func slowScan(t *testing.T, node string, delay time.Duration) *backendServer {
	host, port, _ := net.SplitHostPort(node)
	return newBackend(t, func(c *net.TCPConn) {
		defer c.Close()
		var raw []byte
		for {
			p, err := tns.ReadPacket(c, tns.Length16, 0)
			if err != nil {
				return
			}
			raw = append(raw, p.Raw...)
			if _, err := tns.ParseConnectData(raw); !errors.Is(err, tns.ErrIncomplete) {
				break
			}
		}
		time.Sleep(delay)
		c.Write(tns.BuildRedirectTo(fmt.Sprintf("(ADDRESS=(PROTOCOL=tcp)(HOST=%s)(PORT=%s))", host, port), scanReconnect))
		io.Copy(io.Discard, c)
	})
}

// The node leg of a followed REDIRECT gets the backend's keepalive, as
// any backend leg: also when the SCAN listener took over keepaliveAfter
// to answer, so that housekeeping set the keepalive (left to it by the
// dial: keepalive.Settings.Late) on the SCAN connection, which the follow
// then closed.
func TestRedirectedLegKeepsTheBackendKeepalive(t *testing.T) {
	node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	scan := slowScan(t, node.Addr(), 2200*time.Millisecond) // past keepaliveAfter and a housekeeping round
	h := startProxy(t, strings.Replace(oracleConfig(`redirect = "follow"`, scan.addr()), `connect_budget = "2s"`, `connect_budget = "5s"`, 1))
	c := acceptedThrough(t, h, 4*time.Second, "node")
	echoed(t, c, "hello")
	s := sessionOf(t, h.p, c)
	time.Sleep(2200 * time.Millisecond) // past the next housekeeping round
	legSettings(t, s, keepalive.Settings{Idle: 60 * time.Second, Interval: 15 * time.Second, Count: 4},
		keepalive.Settings{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3, UserTimeout: time.Minute})
}

// go-ora writes os.Args[0] into its CONNECT unescaped (an app under
// C:\Program Files (x86)\ sends a description tnsguard's parser cannot
// read), and the SCAN listener redirects it all the same: the CONNECT
// tnsguard sends the node only needs the app's fixed fields, so the app
// gets the node's answer, and the SCAN server is not blamed.
func TestRedirectFollowedForAnUnescapedCID(t *testing.T) {
	saved := os.Args[0] // read by go-ora when it builds a CONNECT; no test here runs in parallel
	t.Cleanup(func() { os.Args[0] = saved })
	os.Args[0] = `C:\Program Files (x86)\app.exe`
	// ORA-12560 is not in refuse_errors: the app gets it at once. tnstest's
	// listener does not read such a CONNECT; slowScan does, as a listener.
	node := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12560})
	scan := slowScan(t, node.Addr(), 0)
	h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.addr()))
	if err := goOraPing(t, h.addr("l"), "SALES"); err == nil || !strings.Contains(err.Error(), "ORA-12560") {
		t.Errorf("go-ora: %v; want the node's ORA-12560", err)
	}
	if n := len(node.Connects()); n != 1 {
		t.Errorf("the node got %d CONNECTs, want 1", n)
	}
	if v := testutil.ToFloat64(h.m.BreakerState.WithLabelValues("b", scan.addr())); v != metrics.BreakerClosed {
		t.Errorf("the SCAN server's breaker is %v, want closed", v)
	}
	// Another app is served as before.
	os.Args[0] = saved
	c := h.dial("l")
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect)
	if code := readRefuse(t, c, 3*time.Second); code != 12560 {
		t.Errorf("the next app got ORA-%d; want the node's ORA-12560", code)
	}
}

// A REDIRECT that leads back to tnsguard's own listener (a node's
// LOCAL_LISTENER set to tnsguard's address) is a loop, as a server that is
// the listener is: the session ends at once, counted as a self_dial
// rejection, rather than re-dialing the SCAN server (which redirects there
// again) until connect_budget, each time blamed on the SCAN server, whose
// circuit then opens.
func TestRedirectBackToTnsguardEndsAtOnce(t *testing.T) {
	var own sync.Mutex
	var listener string
	scan := newBackend(t, func(c *net.TCPConn) {
		defer c.Close()
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
			return
		}
		own.Lock()
		host, port, _ := net.SplitHostPort(listener)
		own.Unlock()
		c.Write(tns.BuildRedirectTo(fmt.Sprintf("(ADDRESS=(PROTOCOL=tcp)(HOST=%s)(PORT=%s))", host, port), scanReconnect))
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, strings.Replace(oracleConfig(`redirect = "follow"`, scan.addr()), `connect_budget = "2s"`, `connect_budget = "5s"`, 1))
	own.Lock()
	listener = h.addr("l")
	own.Unlock()
	c := h.dial("l")
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect)
	start := time.Now()
	if _, err := readErr(c, 6*time.Second); err == nil || time.Since(start) > time.Second {
		t.Errorf("the app got %v after %v; want its connection ended within 1s", err, time.Since(start).Round(time.Millisecond))
	}
	// One app, one rejection: the follow's dial that the listener resets is
	// tnsguard's own, no app (until 2026-11-30 it counted too: 2).
	waitFor(t, 3*time.Second, "no session live", func() bool { return sumGauges(h.m.SessionsActive) == 0 })
	time.Sleep(200 * time.Millisecond) // the dial's accept, if it counts too
	if n := counter(h.m.SessionsRejected, "l", "self_dial"); n != 1 {
		t.Errorf("%v self_dial rejections for one app, want 1", n)
	}
	if v := testutil.ToFloat64(h.m.BreakerState.WithLabelValues("b", scan.addr())); v != metrics.BreakerClosed {
		t.Errorf("the SCAN server's breaker is %v, want closed: the loop was blamed on it", v)
	}
}

// tnsguard_tns_redirects_followed_total says the app stayed on tnsguard
// (README: "Each followed REDIRECT counts"): a REDIRECT whose node could not
// be reached is no follow. Until this test every attempt counted, so one app
// whose node was behind a closed firewall counted 6 follows (one per re-dial)
// and no session: the counter read as if follow worked.
func TestRedirectFollowedCountsOnlyWhenTheNodeAnswered(t *testing.T) {
	dead := closedPort(t) // held bound: see TestRedirectedNodeFailureFailsOver
	scanDead := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: dead, RedirectData: scanReconnect})
	node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	scanLive := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: scanReconnect})
	h := startProxy(t, oracleConfig(`redirect = "follow"`, scanDead.Addr()+";0", scanLive.Addr()+";1"))
	acceptedThrough(t, h, 3*time.Second, "live node")
	if v := counter(h.m.TNSFollowed, "l", "b", scanDead.Addr()); v != 0 {
		t.Errorf("tnsguard_tns_redirects_followed_total of the SCAN whose node was unreachable = %v, want 0", v)
	}
	if v := counter(h.m.TNSFollowed, "l", "b", scanLive.Addr()); v != 1 {
		t.Errorf("tnsguard_tns_redirects_followed_total of the SCAN whose node answered = %v, want 1", v)
	}
}

// An app that first speaks late (after connect_budget from its accept) is
// owed its answer connect_budget after its first bytes (firstAnswer), and
// that holds through a REDIRECT that tnsguard follows: the dial to the node
// and the CONNECT sent there get the same time. Until the fix they were
// bounded by the budget's end, already past: the follow failed at once and
// the app got ORA-12170 from a healthy SCAN and node.
func TestRedirectFollowedForALateApp(t *testing.T) {
	node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: scanReconnect})
	h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.Addr()))
	c := h.dial("l")
	time.Sleep(2200 * time.Millisecond) // past the 2s budget
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(PROTOCOL=TCP)(HOST=tnsguard)(PORT=1522)))")
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil || pkt.Type != tns.TypeAccept {
		t.Fatalf("an app that spoke 2.2s after its accept (budget 2s) got %v, %v; want the node's ACCEPT", pkt.Type, err)
	}
}

// A node that refuses the followed session (its instance restarting:
// ORA-12528, in refuse_errors) keeps no app on tnsguard: the REFUSE is held
// back and the SCAN re-dialed, so that follow is not counted, as one whose
// node could not be reached is not. Until the fix every such attempt
// counted: one go-ora connection that failed with ORA-12528 after 2 s of
// re-dials counted 29 follows and no session, and during an instance
// restart tnsguard_tns_redirects_followed_total read as if follow worked.
func TestRedirectFollowedNotCountedWhenTheNodeRefused(t *testing.T) {
	t.Run("another SCAN's node accepts", func(t *testing.T) {
		refusing := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
		scanRefused := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: refusing.Addr(), RedirectData: scanReconnect})
		node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
		scanLive := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: scanReconnect})
		h := startProxy(t, oracleConfig(`redirect = "follow"`, scanRefused.Addr()+";0", scanLive.Addr()+";1"))
		acceptedThrough(t, h, 3*time.Second, "live node")
		if n := len(refusing.Connects()); n == 0 {
			t.Fatal("the refusing node got no CONNECT: the test did not test anything")
		}
		if v := counter(h.m.TNSFollowed, "l", "b", scanRefused.Addr()); v != 0 {
			t.Errorf("tnsguard_tns_redirects_followed_total of the SCAN whose node refused = %v, want 0", v)
		}
		if v := counter(h.m.TNSFollowed, "l", "b", scanLive.Addr()); v != 1 {
			t.Errorf("tnsguard_tns_redirects_followed_total of the SCAN whose node accepted = %v, want 1", v)
		}
	})
	t.Run("the only SCAN's node refuses until the budget ends", func(t *testing.T) {
		refusing := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
		scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: refusing.Addr(), RedirectData: scanReconnect})
		h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.Addr()))
		if err := goOraPing(t, h.addr("l"), "SALES"); err == nil || !strings.Contains(err.Error(), "ORA-12528") {
			t.Fatalf("go-ora: %v; want the node's ORA-12528", err)
		}
		if n := len(refusing.Connects()); n < 2 {
			t.Fatalf("the node got %d CONNECTs; want the re-dials' (at least 2)", n)
		}
		if v := counter(h.m.TNSFollowed, "l", "b", scan.Addr()); v > 1 {
			t.Errorf("tnsguard_tns_redirects_followed_total = %v for one app that got ORA-12528; want at most 1", v)
		}
	})
}

// A REDIRECT to an app whose CONNECT was longer than replay_bytes
// (replay_bytes = 0, say) goes to it as it came, as a REFUSE does
// (TestRefuseToAnAppBeyondReplayBytesIsCountedAsRejected): that app dials
// the node itself all the same, so the REDIRECT is counted in
// tnsguard_tns_redirects_total and logged, and TnsguardRedirectsPassed
// fires. Until the fix it left no trace: go-ora went around tnsguard
// with the metric at 0 and nothing in the log.
func TestRedirectToAnAppBeyondReplayBytesIsCounted(t *testing.T) {
	for _, replay := range []string{"0", "200"} {
		t.Run("replay_bytes="+replay, func(t *testing.T) {
			node := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
			scan := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: node.Addr(), RedirectData: strings.ReplaceAll(scanReconnect, "node1-vip", "127.0.0.1")})
			h, logs := startProxyLog(t, oracleConfig("replay_bytes = "+replay, scan.Addr()))
			if err := goOraPing(t, h.addr("l"), "SALES"); err == nil || !strings.Contains(err.Error(), "ORA-12528") {
				t.Fatalf("go-ora: %v; want the node's ORA-12528 (it followed the REDIRECT itself)", err)
			}
			if n := len(node.Connects()); n != 1 {
				t.Fatalf("the node got %d CONNECTs; want go-ora's own", n)
			}
			waitFor(t, time.Second, "the REDIRECT passed on counted", func() bool {
				return counter(h.m.TNSRedirects, "l", "b", scan.Addr()) == 1
			})
			waitFor(t, time.Second, "the log line", func() bool {
				return len(logs.lines("backend sent a TNS REDIRECT", "redirect_to=")) == 1
			})
		})
	}
}

// An Oracle client that closed while its CONNECT waited for the SCAN
// listener (its own connect timeout, in a logon storm) gave up: the
// REDIRECT that comes after is not followed, as no re-dial is made for
// such an app (appGone). Direct, its driver would never dial the node.
// Until the fix tnsguard dialed the node and sent it the CONNECT all the
// same: a dedicated server process for no one on every node the storm's
// REDIRECTs named, counted as a follow, and the SCAN server blamed for
// nothing.
func TestRedirectNotFollowedForAnAppThatGaveUp(t *testing.T) {
	node := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	scan := slowScan(t, node.Addr(), 500*time.Millisecond)
	h := startProxy(t, oracleConfig(`redirect = "follow"`, scan.addr()))
	c := h.dial("l")
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect)
	time.Sleep(100 * time.Millisecond)
	c.Close() // the app's connect timeout, before the SCAN listener answers
	time.Sleep(1200 * time.Millisecond)
	if n := node.Accepted(); n != 0 {
		t.Errorf("the node got %d connections (%d CONNECTs) for an app that had closed; want none", n, len(node.Connects()))
	}
	if v := counter(h.m.TNSFollowed, "l", "b", scan.addr()); v != 0 {
		t.Errorf("tnsguard_tns_redirects_followed_total = %v, want 0", v)
	}
	if v := testutil.ToFloat64(h.m.BreakerState.WithLabelValues("b", scan.addr())); v != metrics.BreakerClosed {
		t.Errorf("the SCAN server's breaker is %v, want closed", v)
	}
}

// acceptedThrough sends an app's CONNECT (service SALES) through h's
// listener "l" and returns the app's conn once the ACCEPT of who (the
// node that a followed REDIRECT reached) came back within timeout (the
// read deadline stays).
func acceptedThrough(t *testing.T, h *harness, timeout time.Duration, who string) *net.TCPConn {
	t.Helper()
	c := h.dial("l")
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(timeout))
	pkt, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil || pkt.Type != tns.TypeAccept {
		t.Fatalf("the app got %v (%v); want the %s's ACCEPT", pkt.Type, err, who)
	}
	return c
}

// A listener's REDIRECT whose address comes in small DATA packets, sent a
// byte per segment, is read once it is whole (not classified again after
// every read, which cost all its bytes so far each time), counted, and
// reaches the app unchanged.
func TestRedirectSentAByteAtATimeIsReadWhole(t *testing.T) {
	addr := "(ADDRESS=(PROTOCOL=tcp)(HOST=" + strings.Repeat("n", 3000) + ")(PORT=1521))"
	redirect := []byte{0, 10, 0, 0, byte(tns.TypeRedirect), 0, 0, 0, byte(len(addr) >> 8), byte(len(addr))}
	for i := 0; i < len(addr); i += 100 {
		p := append([]byte{0, 0, 0, 0, byte(tns.TypeData), 0, 0, 0, 0, 0}, addr[i:min(i+100, len(addr))]...)
		p[0], p[1] = byte(len(p)>>8), byte(len(p))
		redirect = append(redirect, p...)
	}
	be := newBackend(t, func(c *net.TCPConn) {
		if _, err := tns.ReadPacket(c, tns.Length16, 0); err != nil {
			return
		}
		c.SetNoDelay(true)
		for i := range redirect {
			if _, err := c.Write(redirect[i : i+1]); err != nil {
				return
			}
		}
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, oracleConfig("", be.addr()))
	c := h.dial("l")
	connect, _ := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	c.Write(connect)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(redirect))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, redirect) {
		t.Fatalf("the app got %d bytes (%v), not the REDIRECT of %d", len(got), err, len(redirect))
	}
	waitFor(t, 2*time.Second, "the REDIRECT counted", func() bool {
		return testutil.ToFloat64(h.m.TNSRedirects.WithLabelValues("l", "b", be.addr())) == 1
	})
}

// A REDIRECT to HOST=[] (brackets around nothing) named "[]:PORT", which a
// dial takes for this host: tnsguard would have dialed whatever listens on
// that port here. It is not followed; an address after it is.
func TestRedirectToEmptyBracketsIsNotFollowed(t *testing.T) {
	if target, ok := redirectTarget(tns.Redirect{Address: "(ADDRESS=(PROTOCOL=tcp)(HOST=[])(PORT=1521))"}); ok {
		t.Fatalf("HOST=[] gave %q to dial", target)
	}
	r := tns.Redirect{Address: "(ADDRESS_LIST=(ADDRESS=(PROTOCOL=tcp)(HOST=[])(PORT=1521))(ADDRESS=(PROTOCOL=tcp)(HOST=[::1])(PORT=1522)))"}
	if target, ok := redirectTarget(r); !ok || target != "[::1]:1522" {
		t.Fatalf("got %q %v, want the second address, [::1]:1522", target, ok)
	}
}
