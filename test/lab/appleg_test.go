package lab

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netem"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// The app's leg slow and lossy (an app across a VPN or a congested WAN):
// tnsguard beside the database, in db, and netem in fw on the way between
// the app and tnsguard (the scenarios above put it on the database's leg).

// gen is a deterministic byte stream.
type gen struct{ x uint64 }

func (g *gen) Read(b []byte) (int, error) {
	for i := 0; i+8 <= len(b); i += 8 {
		g.x ^= g.x << 13
		g.x ^= g.x >> 7
		g.x ^= g.x << 17
		binary.LittleEndian.PutUint64(b[i:], g.x)
	}
	return len(b) &^ 7, nil
}

// appServer is the "database": a listener in db (0.0.0.0:1521) that serves by a
// header line: "SEND n fin|rst tag", "RECV", "ECHO".
type appServer struct {
	ln      *net.TCPListener
	mu      sync.Mutex
	resetAt map[string]time.Time // header tag -> when the RST/FIN was sent
}

func startAppServer(t *testing.T, lab *netlab.Lab) *appServer {
	ln, err := lab.Listen(lab.DB, fmt.Sprintf(":%d", dbPort))
	if err != nil {
		t.Fatal(err)
	}
	s := &appServer{ln: ln, resetAt: map[string]time.Time{}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *appServer) serve(c *net.TCPConn) {
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return
	}
	switch f[0] {
	case "SEND": // SEND n fin|rst tag
		n, _ := strconv.ParseInt(f[1], 10, 64)
		g := &gen{x: 88172645463325252}
		if _, err := io.Copy(c, io.LimitReader(g, n)); err != nil {
			return
		}
		s.mu.Lock()
		s.resetAt[f[3]] = time.Now()
		s.mu.Unlock()
		if f[2] == "rst" {
			c.SetLinger(0)
			c.Close()
			return
		}
		c.CloseWrite()
		io.Copy(io.Discard, br)
	case "RECV":
		c.Write([]byte("OK\n"))
		h := sha256.New()
		n, err := io.Copy(h, br)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
		c.CloseWrite()
	case "WAIT": // WAIT d: the answer d after the app's FIN (a long result)
		d, _ := time.ParseDuration(f[1])
		c.Write([]byte("OK\n"))
		io.Copy(io.Discard, br)
		time.Sleep(d)
		c.Write([]byte("DONE\n"))
	case "ECHO":
		c.Write([]byte("OK\n"))
		buf := make([]byte, 64<<10)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

func (s *appServer) endedAt(tag string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resetAt[tag]
}

// dialRcvbuf dials from ns with SO_RCVBUF set before connect (0: default).
func dialRcvbuf(ns, addr string, rcvbuf int) (*net.TCPConn, error) {
	var c net.Conn
	d := net.Dialer{KeepAlive: -1, Timeout: 10 * time.Second}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
			return serr
		}
	}
	err := netlab.Do(ns, func() error {
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

type appLegLab struct {
	lab    *netlab.Lab
	srv    *appServer
	guard  *netlab.Tnsguard
	via    string // tnsguard's listener, in db
	direct string
}

func newAppLegLab(t *testing.T, app keepalive) *appLegLab {
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 600 * time.Second})
	srv := startAppServer(t, lab)
	via := lab.DBAddr(1522)
	l := link{Name: "orders", Listen: via, Servers: []string{fmt.Sprintf("127.0.0.1:%d", dbPort)}, App: app, DB: dbKeepalive}
	guard := lab.StartTnsguard(t, tnsguardBin.Path(t), lab.DB, adminAddr, guardConfig(l))
	return &appLegLab{lab: lab, srv: srv, guard: guard, via: via, direct: lab.DBAddr(dbPort)}
}

// What an app on a slow, lossy path notices through tnsguard (100 ms each
// way, 1% of data segments lost, on the app's leg): large transfers arrive
// whole both ways, half-closes included; the database's FIN reaches an app
// with a small window that reads slowly after the last byte, and its RST
// within 600 ms: one way across the path, after the direction waiting for
// room in the app has had its source watched (stallWatch; until 2026-11-30
// it was looked at once a second, and the RST came 1.2-1.9 s late); 32
// sessions of small messages get every answer, in order, none twice.
func TestLabSlowLossyAppLeg(t *testing.T) {
	t.Parallel()
	a := newAppLegLab(t, appKeepalive)
	stop := a.lab.Netem(t, netem.Config{Queue: 36, Delay: 100 * time.Millisecond, Loss: 0.01}, "-p", "tcp")
	const size, slow = 8 << 20, 96 << 10
	want := func() string {
		h := sha256.New()
		io.Copy(h, io.LimitReader(&gen{x: 88172645463325252}, size))
		return hex.EncodeToString(h.Sum(nil))
	}()
	var wg sync.WaitGroup
	// The slow app's end, checked once the queue's own lateness is known:
	// the FIN and the RST cross it too, and on a loaded machine it holds a
	// packet hundreds of ms past its 100 ms (MaxLate). By how: its check.
	var ends sync.Map
	wg.Go(func() { // download, the app half-closed at once
		c, err := dialRcvbuf(a.lab.App, a.via, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		fmt.Fprintf(c, "SEND %d fin dl\n", size)
		c.CloseWrite()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if got := hex.EncodeToString(h.Sum(nil)); err != nil || n != size || got != want {
			t.Errorf("download: %d of %d bytes, %v, sha256 %s, want %s", n, size, err, got, want)
		}
	})
	wg.Go(func() { // upload, then the database answers after the app's FIN
		c, err := dialRcvbuf(a.lab.App, a.via, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		fmt.Fprintf(c, "RECV\n")
		br := bufio.NewReader(c)
		if l, err := br.ReadString('\n'); err != nil || l != "OK\n" {
			t.Errorf("upload: opening answer %q %v", l, err)
			return
		}
		if _, err := io.Copy(c, io.LimitReader(&gen{x: 88172645463325252}, size)); err != nil {
			t.Errorf("upload: %v", err)
			return
		}
		c.CloseWrite()
		ans, err := io.ReadAll(br)
		if got := strings.TrimSpace(string(ans)); err != nil || got != fmt.Sprintf("%d %s", size, want) {
			t.Errorf("upload: the database got %q (%v), want %d bytes with sha256 %s", got, err, size, want)
		}
	})
	for _, how := range []string{"fin", "rst"} {
		wg.Go(func() { // 96 KiB to an app with a 4 KiB window that reads 4 KiB every 20 ms
			c, err := dialRcvbuf(a.lab.App, a.via, 4096)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			fmt.Fprintf(c, "SEND %d %s slow-%s\n", slow, how, how)
			buf := make([]byte, 4096)
			var got int64
			var last time.Time
			for {
				n, err := c.Read(buf)
				got += int64(n)
				if n > 0 {
					last = time.Now()
				}
				if err != nil {
					ended, sent := time.Now(), a.srv.endedAt("slow-"+how)
					t.Logf("%s to a slow app: it got %d bytes, then %s %v after the database's %s, %v after its last byte",
						how, got, netlab.Classify(err), ended.Sub(sent).Round(time.Millisecond), how, ended.Sub(last).Round(time.Millisecond))
					ends.Store(how, func(late time.Duration) {
						switch {
						case how == "fin" && (err != io.EOF || got != slow || ended.Sub(last) > 200*time.Millisecond+late):
							t.Errorf("fin: %d bytes, %v %v after the last byte; want all 96 KiB, then EOF at once (within 200ms and the queue's lateness, %v)", got, err, ended.Sub(last), late)
						case how == "rst" && (netlab.Classify(err) != "reset" || ended.Sub(sent) > 600*time.Millisecond+late):
							t.Errorf("rst: %v %v after the database's reset; want ECONNRESET within 600ms and the queue's lateness, %v", err, ended.Sub(sent), late)
						}
					})
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	// 32 sessions of small messages: each pauses a round trip (200 ms) between
	// messages, so they go dormant and the parking lot moves their messages.
	var mu sync.Mutex
	trips, lats := 0, []time.Duration{}
	until := time.Now().Add(5 * time.Second)
	for i := range 32 {
		wg.Go(func() {
			c, err := dialRcvbuf(a.lab.App, a.via, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			fmt.Fprintf(c, "ECHO\n")
			if l, err := br.ReadString('\n'); err != nil || l != "OK\n" {
				t.Errorf("session %d: opening answer %q %v", i, l, err)
				return
			}
			g := &gen{x: uint64(i + 1)}
			for seq := uint64(0); time.Now().Before(until); seq++ {
				g.Read(make([]byte, 8))
				msg := make([]byte, 16+int(g.x%1000))
				g.Read(msg[16:])
				binary.LittleEndian.PutUint64(msg, seq)
				binary.LittleEndian.PutUint64(msg[8:], uint64(i))
				s := time.Now()
				back := make([]byte, len(msg))
				if _, err := c.Write(msg); err != nil {
					t.Errorf("session %d, message %d: %v", i, seq, err)
					return
				}
				if _, err := io.ReadFull(br, back); err != nil || string(back) != string(msg) {
					t.Errorf("session %d, message %d: answer %v, equal %v (got message %d)", i, seq, err, string(back) == string(msg), binary.LittleEndian.Uint64(back))
					return
				}
				mu.Lock()
				trips++
				lats = append(lats, time.Since(s))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	st := stop()
	ends.Range(func(_, check any) bool { check.(func(time.Duration))(st.MaxLate); return true })
	var worst time.Duration
	for _, d := range lats {
		worst = max(worst, d)
	}
	t.Logf("%d round trips of small messages in 32 sessions, slowest %v; netem %+v", trips, worst.Round(time.Millisecond), st)
	if st.Dropped == 0 {
		t.Errorf("netem dropped nothing: the app's leg was not lossy")
	}
}

// An app that half-closes (shutdown(SHUT_WR)) and waits for a long result,
// behind a firewall that forgets half-closed flows sooner than the app's
// keepalive idle (3 s against 5 s) and resets what comes after: the
// keepalive probe is answered by the firewall's RST. That is the idle death
// keepalive exists to prevent, with the advice to shorten it. Since
// 2026-11-30 (a reset of a leg whose peer had closed counts active) it
// counted active, with no advice: tnsguard had read the app's FIN, and took
// the firewall's reset for the app's own.
func TestLabHalfClosedAppForgottenByTheFirewallIsIdle(t *testing.T) {
	t.Parallel()
	requireGuard(t)
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 600 * time.Second, Stale: netlab.StaleReset})
	for _, k := range []string{"time_wait", "close_wait", "fin_wait", "last_ack"} {
		lab.Exec(t, lab.FW, "sysctl", "-qw", fmt.Sprintf("net.netfilter.nf_conntrack_tcp_timeout_%s=3", k))
	}
	startAppServer(t, lab)
	via := lab.DBAddr(1522)
	app := keepalive{Idle: "5s", Interval: "1s", Count: 3, UserTimeout: "10s"} // idle too long for this firewall
	l := link{Name: "orders", Listen: via, Servers: []string{fmt.Sprintf("127.0.0.1:%d", dbPort)}, App: app, DB: dbKeepalive}
	guard := lab.StartTnsguard(t, tnsguardBin.Path(t), lab.DB, adminAddr, guardConfig(l))
	c, err := dialRcvbuf(lab.App, via, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "WAIT 15s\n")
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if l, err := br.ReadString('\n'); err != nil || l != "OK\n" {
		t.Fatalf("opening answer %q %v", l, err)
	}
	c.CloseWrite()
	m := guard.MetricsWhen(t, 12*time.Second, func(m netlab.Metrics) bool {
		got, _ := m.Sum("tnsguard_resets_total", netlab.Labels{"side": "client"})
		return got >= 1
	})
	want := netlab.Labels{"side": "client", "cause": "rst", "phase": "idle"}
	if got, _ := m.Sum("tnsguard_resets_total", want); got != 1 {
		t.Errorf("tnsguard_resets_total%v = %v, want 1: the firewall's reset of a half-closed flow counted as the app's close\n%s", want, got, m.Dump("tnsguard_resets_total"))
	}
	if log := adviceLogged(guard); !strings.Contains(log, "sessions on this link die while idle") {
		t.Errorf("no keepalive advice in the log:\n%s", log)
	}
}
