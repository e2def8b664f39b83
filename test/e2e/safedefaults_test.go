package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/sijms/go-ora/v2" // registers "oracle": a real client logging in

	"github.com/tnsguard/tnsguard/tns"
)

// Safe defaults: nothing listens off loopback unless configured, an admin
// listener opened to the network without admin.allow is warned about, and
// the logs carry no credentials or connect strings, at any level.

// The embedded default configuration (`tnsguard run` without -config)
// binds every socket on loopback.
func TestDefaultConfigListensOnLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9521", "127.0.0.1:1522"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("SKIPPED: %s is in use, the default configuration cannot start here: %v", addr, err)
		}
		ln.Close()
	}
	log := &logSink{}
	cmd := exec.Command(binary(t), "run")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	g := &instance{t: t, admin: "127.0.0.1:9521"}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if code, _ := g.get("/healthz"); code == http.StatusOK {
			break
		}
		select {
		case <-done:
			t.Skipf("SKIPPED: the default configuration did not start (a port was taken meanwhile?):\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz of the default configuration not 200 after 15s; log:\n%s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	addrs := listeningAddrs(t, cmd.Process.Pid)
	if len(addrs) < 2 {
		t.Fatalf("found %d listening sockets (%v), want the admin and the orders listener", len(addrs), addrs)
	}
	for _, a := range addrs {
		if !a.Addr().IsLoopback() {
			t.Errorf("the default configuration listens on %v, off loopback", a)
		}
	}
	t.Logf("default configuration listens on %v", addrs)
}

// listeningAddrs returns the addresses of the TCP sockets a process
// listens on, from its fds and /proc/PID/net/tcp{,6}.
func listeningAddrs(t *testing.T, pid int) []netip.AddrPort {
	t.Helper()
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, _ := os.Readlink(dir + "/" + fd.Name())
		if ino, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []netip.AddrPort
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
				continue
			}
			host, port, _ := strings.Cut(f[1], ":")
			raw, err := hex.DecodeString(host)
			if err != nil {
				t.Fatalf("%s: %q", table, line)
			}
			for i := 0; i+4 <= len(raw); i += 4 { // 32-bit words in host (little-endian) order
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			a, _ := netip.AddrFromSlice(raw)
			p, _ := strconv.ParseUint(port, 16, 16)
			out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(p)))
		}
	}
	return out
}

// An admin listener on all interfaces without admin.allow is warned
// about when tnsguard starts; with admin.allow it is not.
func TestAdminOffLoopbackWarns(t *testing.T) {
	const warning = "is reachable from other hosts and admin.allow is empty"
	echo := newEcho(t)
	for _, allow := range []string{"", `allow = ["127.0.0.0/8"]`} {
		t.Run(fmt.Sprintf("allow=%q", allow), func(t *testing.T) {
			_, port, _ := net.SplitHostPort(freeAddr(t))
			admin := "0.0.0.0:" + port
			cfg := fmt.Sprintf(`[log]
format = "json"
[admin]
listen = %q
%s
[[listener]]
name = "l"
listen = %q
backend = "b"
[[backend]]
name = "b"
  [[backend.server]]
  address = %q
`, admin, allow, freeAddr(t), echo.addr())
			g := start(t, admin, cfg, false)
			// The warning is written before the admin port opens, but read
			// from the pipe by another goroutine: once the later "tnsguard
			// started" is in, so is every line before it.
			waitFor(t, 5*time.Second, `"tnsguard started" logged`, func() bool { return len(g.log.find("tnsguard started")) > 0 })
			var warned []string
			g.log.mu.Lock()
			for _, l := range g.log.lines {
				if msg, _ := l["@message"].(string); l["@level"] == "warn" && strings.Contains(msg, warning) {
					warned = append(warned, msg)
				}
			}
			g.log.mu.Unlock()
			switch {
			case allow == "" && len(warned) != 1:
				t.Errorf("admin on %s without admin.allow: %d warnings, want 1; log:\n%s", admin, len(warned), g.log)
			case allow != "" && len(warned) != 0:
				t.Errorf("admin on %s with admin.allow: warned %q", admin, warned)
			case len(warned) == 1:
				t.Logf("warned: %s", warned[0])
			}
		})
	}
}

// captureListener answers a CONNECT with ACCEPT, then echoes, and keeps
// every byte it received: what crossed tnsguard.
type captureListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns [][]byte // per connection
	open  map[*net.TCPConn]bool
	wg    sync.WaitGroup
}

func newCaptureListener(t *testing.T) *captureListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &captureListener{ln: ln, open: map[*net.TCPConn]bool{}}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			i := len(l.conns)
			l.conns = append(l.conns, nil)
			l.open[c.(*net.TCPConn)] = true
			l.mu.Unlock()
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer func() {
					l.mu.Lock()
					delete(l.open, c.(*net.TCPConn))
					l.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				pkt, err := tns.ReadPacket(c, tns.Length16, 0)
				if err != nil {
					return
				}
				l.keep(i, pkt.Raw)
				if info, err := tns.ParseConnectData(pkt.Raw); err == nil && info.Description.Command() == "ping" {
					c.Write(tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=0)(ALIAS=LISTENER))"))
					return
				}
				if _, err := c.Write(tns.BuildAccept(318, "")); err != nil {
					return
				}
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					l.keep(i, buf[:n])
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); l.wg.Wait() })
	return l
}

// resetOpen resets every connection still open: a database that drops its
// sessions.
func (l *captureListener) resetOpen() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.open {
		c.SetLinger(0)
		c.Close()
	}
}

func (l *captureListener) keep(i int, b []byte) {
	l.mu.Lock()
	l.conns[i] = append(l.conns[i], b...)
	l.mu.Unlock()
}

// received returns the bytes of every connection, in the order accepted.
func (l *captureListener) received() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([][]byte, len(l.conns))
	for i, b := range l.conns {
		out[i] = append([]byte(nil), b...)
	}
	return out
}

// A login through tnsguard at debug level: go-ora connects with a user
// and password, and an app sends its credentials after the ACCEPT (as the
// authentication phase does). The database side receives them; tnsguard's
// log names the service and nothing else of the client's connect data: no
// user, no password, no connect descriptor, not even the program.
func TestLogsCarryNoCredentials(t *testing.T) {
	const (
		service  = "SALES_LOGTEST"
		user     = "hostile_login_user"
		password = "S3cret-Pa55w0rd-xyzzy"
	)
	db := newCaptureListener(t)
	admin, addr := freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`[log]
level = "debug"
format = "json"
[admin]
listen = %q
[[listener]]
name = "ora"
listen = %q
backend = "ora"
services = [%q]
[[backend]]
name = "ora"
  [backend.health]
  check = "tnsping"
  interval = "1s"
  timeout = "500ms"
  [[backend.server]]
  address = %q
`, admin, addr, service, db.ln.Addr())
	g := start(t, admin, cfg, true)

	// go-ora's login: against this fake it stops after the ACCEPT (its
	// network negotiation gets its own bytes back), having sent its real
	// CONNECT through tnsguard.
	sqldb, err := sql.Open("oracle", fmt.Sprintf("oracle://%s:%s@%s/%s", user, password, addr, service))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = sqldb.PingContext(ctx)
	cancel()
	sqldb.Close()
	t.Logf("go-ora login through tnsguard: %v", err)
	// go-ora (v2.8.24) does not close its socket when a login fails: only
	// the garbage collector's finalizer did, so its session through
	// tnsguard ended at the next GC, and the wait below for every session's
	// end failed when none came in time (seen in CI). The database drops
	// it instead; tnsguard passes the reset on and the session ends.
	db.resetOpen()

	// The credentials on the wire: the CONNECT go-ora sent, then, after the
	// ACCEPT, a DATA packet shaped like the authentication request.
	var connect []byte
	for _, got := range db.received() {
		if info, err := tns.ParseConnectData(got); err == nil && info.Description.ServiceName() == service {
			connect = got[:info.Len]
		}
	}
	if connect == nil {
		t.Fatal("the database side saw no CONNECT from go-ora")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(connect)
	if pkt, err := tns.ReadPacket(c, tns.Length16, 0); err != nil || pkt.Type != tns.TypeAccept {
		t.Fatalf("app's CONNECT: %v %v, want ACCEPT", pkt.Type, err)
	}
	auth := fmt.Appendf(nil, "\x00\x00\x03\x76\x02AUTH_USERNAME\x00%s\x00AUTH_PASSWORD\x00%s\x00", user, password)
	data := append([]byte{0, 0, 0, 0, byte(tns.TypeData), 0, 0, 0, 0, 0}, auth...)
	data[0], data[1] = byte(len(data)>>8), byte(len(data))
	c.Write(data)
	if _, err := io.ReadFull(c, make([]byte, len(data))); err != nil {
		t.Fatalf("the authentication packet's echo: %v", err)
	}
	c.Close()
	waitFor(t, 15*time.Second, "the sessions' end logged", func() bool {
		v, _ := g.metricOK("tnsguard_sessions_active", "listener", "ora")
		return v == 0
	})
	if code := g.stop(syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}

	wire := bytes.Join(db.received(), nil)
	for _, secret := range []string{user, password} {
		if !strings.Contains(string(wire), secret) {
			t.Fatalf("%q never crossed tnsguard: the test proves nothing", secret)
		}
	}
	log := g.log.String()
	if !strings.Contains(log, service) {
		t.Errorf("no log line names the service %s: the sessions were not logged at debug; log:\n%s", service, log)
	}
	// go-ora's CID names its program: this test binary.
	for _, leak := range []string{user, password, "AUTH_", "CONNECT_DATA", "DESCRIPTION=", "CID=", os.Args[0]} {
		if strings.Contains(log, leak) {
			t.Errorf("tnsguard's log contains %q", leak)
		}
	}
	t.Logf("%d bytes crossed tnsguard to the database side, credentials included; %d log lines at debug",
		len(wire), strings.Count(log, "\n"))
}
