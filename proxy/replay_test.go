package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// recorder is an echo server that keeps, per connection, every byte it
// received, to compare with what each app sent.
type recorder struct {
	*server
	mu  sync.Mutex
	got [][]byte
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.server = newServer(t, func(c *net.TCPConn) {
		var all bytes.Buffer
		io.Copy(io.MultiWriter(c, &all), c)
		if all.Len() > 0 { // not a health check; kept before the FIN ends the app
			r.mu.Lock()
			r.got = append(r.got, all.Bytes())
			r.mu.Unlock()
		}
		c.CloseWrite()
	})
	return r
}

func (r *recorder) received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.got...)
}

// app sends msg in parts with pauses in between (so bytes arrive while
// tnsguard dials, waits and re-dials), expects exactly msg echoed back,
// then half-closes and expects the echo server's FIN.
func app(addr string, msg []byte, parts int, pause time.Duration) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	errc := make(chan error, 1)
	go func() {
		step := (len(msg) + parts - 1) / parts
		for i := 0; i < len(msg); i += step {
			if i > 0 {
				time.Sleep(pause)
			}
			if _, err := c.Write(msg[i:min(i+step, len(msg))]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got other bytes than the %d sent", len(msg))
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		return fmt.Errorf("after half-close: %d more bytes, %v; want the backend's FIN", len(rest), err)
	}
	return nil
}

func message(id, size int) []byte {
	b := make([]byte, size)
	rand.Read(b)
	copy(b, fmt.Sprintf("app-%03d:", id))
	return b
}

// A load balancer in front of a dead database accepts, reads, then resets
// (or closes before sending a byte). It is the preferred server (priority
// 0, and its TCP health check passes); an echo server is the standby. Every
// app's session succeeds, and the standby receives exactly the bytes each
// app sent, byte for byte, once: those that reached the load balancer and
// those that arrived while tnsguard re-dialed.
func TestAcceptThenResetFailsOverWithReplay(t *testing.T) {
	for _, mode := range []string{"rst", "fin"} {
		t.Run(mode, func(t *testing.T) {
			var lbMu sync.Mutex
			var lbGot int
			lb := newServer(t, func(c *net.TCPConn) {
				buf := make([]byte, 64<<10)
				c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
				for {
					n, err := c.Read(buf)
					lbMu.Lock()
					lbGot += n
					lbMu.Unlock()
					if err != nil {
						break
					}
				}
				if mode == "rst" {
					resetConn(c)
				} else {
					c.Close()
				}
			})
			standby := newRecorder(t)
			h := startProxy(t, backendTOML(`connect_budget = "3s"
backoff = "20ms"
backoff_max = "100ms"
[backend.health]
check = "tcp"
interval = "1h"
timeout = "1s"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q;priority = 0", lb.address), fmt.Sprintf("address = %q;priority = 1", standby.address)))
			// Servers start down until their first check: until the load
			// balancer's has passed, sessions go straight to the standby.
			waitFor(t, 2*time.Second, "both servers checked up", func() bool {
				return gauge(h.m.BackendUp, "b", lb.address) == 1 && gauge(h.m.BackendUp, "b", standby.address) == 1
			})

			const apps = 10
			sent := map[string][]byte{}
			errc := make(chan error, apps)
			for i := range apps {
				msg := message(i, 1000+i*3000) // up to ~28 KiB, under replay_bytes
				sent[string(msg[:8])] = msg
				go func() { errc <- app(h.addr("l"), msg, 4, 15*time.Millisecond) }()
			}
			for range apps {
				if err := <-errc; err != nil {
					t.Error(err)
				}
			}
			got := standby.received()
			if len(got) != apps {
				t.Fatalf("standby had %d connections, want %d", len(got), apps)
			}
			for _, g := range got {
				if len(g) < 8 || !bytes.Equal(g, sent[string(g[:8])]) {
					t.Errorf("standby received %d bytes that are not exactly one app's bytes", len(g))
				}
			}
			if v := counter(h.m.Redials, "l", "b", "reset"); v != apps {
				t.Errorf("redials{reset} = %v, want %d (connect %v, timeout %v); load balancer accepted %d",
					v, apps, counter(h.m.Redials, "l", "b", "connect"), counter(h.m.Redials, "l", "b", "timeout"), lb.accepts())
			}
			lbMu.Lock()
			defer lbMu.Unlock()
			if lbGot == 0 {
				t.Error("the load balancer never received opening bytes: the replay was not exercised")
			}
			t.Logf("%s: %d apps ok; the load balancer took %d opening bytes before failing, all replayed to the standby", mode, apps, lbGot)
		})
	}
}

// The only server fails the first two connections (a reset after reading,
// then a close before any byte) and answers the third. The app keeps
// sending during the pauses between rounds, when no backend connection
// exists at all: the third connection gets every byte exactly once.
func TestReplayOfBytesSentWhileRedialing(t *testing.T) {
	var mu sync.Mutex
	var seen [][]byte
	n := 0
	srv := newServer(t, func(c *net.TCPConn) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		var got bytes.Buffer
		switch k {
		case 1:
			c.SetReadDeadline(time.Now().Add(40 * time.Millisecond))
			io.Copy(&got, c)
			resetConn(c)
		case 2:
			c.Close()
		default:
			io.Copy(io.MultiWriter(c, &got), c)
		}
		mu.Lock()
		seen = append(seen, got.Bytes())
		mu.Unlock()
		c.CloseWrite() // after recording: the app ends at this FIN
	})
	h := startProxy(t, backendTOML(`connect_budget = "3s"
backoff = "100ms"
backoff_max = "200ms"
[backend.health]
check = "off"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q", srv.address)))
	msg := message(1, 6000)
	if err := app(h.addr("l"), msg, 6, 40*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("server saw %d connections, want 3", len(seen))
	}
	if first := len(seen[0]); first == 0 || first >= len(msg) {
		t.Errorf("first connection received %d of %d bytes; want a part (the rest came while re-dialing)", first, len(msg))
	}
	if !bytes.Equal(seen[2], msg) {
		t.Errorf("third connection received %d bytes, want exactly the app's %d", len(seen[2]), len(msg))
	}
	if v := counter(h.m.Redials, "l", "b", "reset"); v != 2 {
		t.Errorf("redials{reset} = %v, want 2", v)
	}
	t.Logf("first backend got %d bytes before its reset; the rest arrived while re-dialing; the third got all %d", len(seen[0]), len(msg))
}

// More than replay_bytes sent before the backend's first byte, then the
// backend resets: the app's connection is reset and nothing is replayed.
// The reset is counted with cause proxy (tnsguard chose not to re-dial),
// as the README's table says; it was counted as the backend's rst.
func TestReplayOverflowResetsApp(t *testing.T) {
	const sent = 4096
	lb := newServer(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, sent))
		resetConn(c)
	})
	standby := newRecorder(t)
	h := startProxy(t, backendTOML(`replay_bytes = 1024
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", lb.address), fmt.Sprintf("address = %q;priority = 1", standby.address)))
	c := h.dial("l")
	if _, err := c.Write(make([]byte, sent)); err != nil {
		t.Fatal(err)
	}
	took, err := readErr(c, 3*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v, want ECONNRESET", err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := standby.accepts(); n != 0 {
		t.Errorf("standby got %d connections: bytes beyond replay_bytes were replayed", n)
	}
	if v := counter(h.m.Redials, "l", "b", "reset"); v != 0 {
		t.Errorf("redials{reset} = %v, want 0", v)
	}
	waitFor(t, time.Second, "reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", lb.address, "backend", "opening", "proxy") == 1
	})
	t.Logf("app reset %v after the backend's reset, nothing replayed", took.Round(time.Millisecond))
}

// The same while the app goes on sending: the app's direction, writing past
// replay_bytes, may take the backend's reset before the opening does. It
// was counted as the backend's rst, in phase active (the opening read the
// 0 that follows a reset taken elsewhere as a half-close) or on server
// "none" (the opening let go of the server first), 20-40% of the time.
func TestReplayOverflowResetWhileAppSends(t *testing.T) {
	lb := newServer(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 4096))
		resetConn(c)
	})
	h := startProxy(t, backendTOML(`replay_bytes = 1024
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", lb.address)))
	const sessions = 20
	for i := range sessions {
		c := h.dial("l")
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(make([]byte, 8<<20))
			werr <- err
		}()
		// The app's write may take the reset first; its read then finds a
		// 0, as any socket's would.
		_, rerr := readErr(c, 3*time.Second)
		c.Close()
		if err := <-werr; !errors.Is(rerr, syscall.ECONNRESET) && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("session %d: app's read saw %v, its write %v; want ECONNRESET", i, rerr, err)
		}
		waitFor(t, time.Second, "the reset counted", func() bool { return len(h.p.Resets(0)) == i+1 })
	}
	for _, r := range h.p.Resets(0) {
		if r.Server != lb.address || r.Side != SideBackend || r.Phase != PhaseOpening || r.Cause != "proxy" {
			t.Errorf("reset counted as server %s, %s / %s / %s; want %s, backend / opening / proxy", r.Server, r.Side, r.Phase, r.Cause, lb.address)
		}
	}
}

// Once a backend byte reached the app, nothing is replayed: a later reset
// resets the app.
func TestNoReplayAfterBackendByte(t *testing.T) {
	lb := newServer(t, func(c *net.TCPConn) {
		c.Write([]byte("hi"))
		io.ReadFull(c, make([]byte, 5))
		resetConn(c)
	})
	standby := newRecorder(t)
	h := startProxy(t, backendTOML(`[backend.health]
check = "off"`, fmt.Sprintf("address = %q", lb.address), fmt.Sprintf("address = %q;priority = 1", standby.address)))
	c := h.dial("l")
	got := make([]byte, 2)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "hi" {
		t.Fatalf("app read %q, %v", got, err)
	}
	c.Write([]byte("hello"))
	_, err := readErr(c, 3*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v, want ECONNRESET", err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := standby.accepts(); n != 0 {
		t.Errorf("standby got %d connections after a backend byte had reached the app", n)
	}
	waitFor(t, time.Second, "reset counted", func() bool {
		return counter(h.m.Resets, "l", "b", lb.address, "backend", "active", "rst") == 1
	})
}

// A backend that accepts and reads but never answers (a load balancer
// whose database is black-holed) owes the app an answer once the app has
// spoken: the wait for its first byte ends with connect_budget, and the
// app's connection is reset instead of hanging.
func TestSilentBackendEndsAtBudget(t *testing.T) {
	silent := newServer(t, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
	h, logs := startProxyLog(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "1s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", silent.address)))
	start := time.Now()
	c := h.dial("l")
	c.Write([]byte("CONNECT"))
	_, err := readErr(c, 3*time.Second)
	took := time.Since(start)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v, want ECONNRESET", err)
	}
	if took < 900*time.Millisecond || took > 1300*time.Millisecond { // 1.03 s seen on a loaded machine
		t.Errorf("app reset after %v, want connect_budget (1s): 0.9-1.3 s", took)
	}
	waitFor(t, time.Second, "no_backend counted", func() bool { return counter(h.m.SessionsRejected, "l", "no_backend") == 1 })
	if l := logs.lines("no backend for new session", silent.address, "timeout"); len(l) != 1 {
		t.Errorf("want the silent server's timeout in the no-backend log line; log:\n%s", logs)
	}
	t.Logf("silent backend: app reset after %v (budget 1s)", took.Round(time.Millisecond))
}

// An app that says nothing for longer than connect_budget is not cut off:
// its backend owes it nothing yet.
func TestSilentAppOutlivesBudget(t *testing.T) {
	be := newServer(t, echo)
	h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "300ms"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", be.address)))
	c := h.dial("l")
	time.Sleep(600 * time.Millisecond)
	if err := roundTrip(c, []byte("late hello")); err != nil {
		t.Fatalf("round trip after a silent 600ms (budget 300ms): %v", err)
	}
	if v := counter(h.m.SessionsRejected, "l", "no_backend"); v != 0 {
		t.Errorf("no_backend = %v", v)
	}
}

// The app sends its request and half-closes before any backend answered;
// the first backend resets, or closes without a byte (FIN): the re-dialed
// one gets the request and the FIN, and its answer reaches the app. (An app
// that closes without sending anything, a port check, has nothing to
// replay; this one has.)
func TestReplayCarriesHalfClose(t *testing.T) {
	for _, mode := range []string{"rst", "fin"} {
		t.Run(mode, func(t *testing.T) {
			var mu sync.Mutex
			n := 0
			srv := newServer(t, func(c *net.TCPConn) {
				mu.Lock()
				n++
				k := n
				mu.Unlock()
				if k == 1 {
					io.ReadAll(c) // the request and the app's FIN
					if mode == "rst" {
						resetConn(c)
					} else {
						c.Close()
					}
					return
				}
				req, _ := io.ReadAll(c) // ends at the app's FIN, carried through
				c.Write(append([]byte("answer to "), req...))
				c.CloseWrite()
			})
			h := startProxy(t, backendTOML(`[backend.health]
check = "off"
[backend.breaker]
failures = 0`, fmt.Sprintf("address = %q", srv.address)))
			c := h.dial("l")
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("request"))
			c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "answer to request" {
				t.Fatalf("app got %q, %v; want %q then EOF: a backend that ended before its first byte was not re-dialed with the app's request", got, err, "answer to request")
			}
			if v := counter(h.m.Redials, "l", "b", "reset"); v != 1 {
				t.Errorf("redials{reset} = %v, want 1", v)
			}
		})
	}
}

// A replay that the next server does not take (it accepted, then reads
// nothing, and the replay is larger than the socket buffers hold) ends at
// connect_budget as a silent server would: the app is reset, and a
// shutdown meanwhile is not held up. The replay used to be written under the
// session's lock with no deadline: the app hung, and so did housekeeping
// and Shutdown, which wait for that lock.
func TestReplayToServerThatTakesNothing(t *testing.T) {
	const sent = 8 << 20 // more than loopback's socket buffers take
	for _, tc := range []struct {
		name     string
		shutdown bool
	}{{"the budget ends it", false}, {"a shutdown ends it", true}} {
		t.Run(tc.name, func(t *testing.T) {
			first := newServer(t, func(c *net.TCPConn) {
				io.ReadFull(c, make([]byte, sent))
				resetConn(c) // before any byte: the session re-dials and replays
			})
			deaf := make(chan struct{})
			accepted := make(chan struct{}, 1)
			second := newServer(t, func(c *net.TCPConn) {
				accepted <- struct{}{}
				<-deaf // takes no byte until the test ends
			})
			t.Cleanup(func() { close(deaf) }) // before the servers' own cleanups wait for it
			h := startProxy(t, backendTOML(`replay_bytes = 16777216
connect_budget = "5s"
[backend.health]
check = "off"`, fmt.Sprintf("address = %q", first.address), fmt.Sprintf("address = %q;priority = 1", second.address)))
			c := h.dial("l")
			go c.Write(make([]byte, sent))
			start := time.Now()
			select {
			case <-accepted:
			case <-time.After(5 * time.Second):
				t.Fatal("the session never re-dialed the second server")
			}
			if tc.shutdown {
				done := make(chan struct{})
				go func() { h.p.Shutdown(0, 200*time.Millisecond); close(done) }()
				select {
				case <-done:
				case <-time.After(3 * time.Second):
					t.Fatal("Shutdown did not return within 3s: held up by the replay's write")
				}
			}
			took, err := readErr(c, 10*time.Second)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("app saw %v after %v; want a reset", err, took)
			}
			// From the app's first byte: the budget also runs while the
			// first server reads the 8 MiB (a second or more under -race),
			// and the second server must still have more than fairAttempt.
			if since := time.Since(start); !tc.shutdown && (since < 4500*time.Millisecond || since > 8*time.Second) {
				t.Fatalf("app reset %v after it started sending; want it at the end of the 5s connect_budget", since)
			}
			if up := gauge(h.m.BackendUp, "b", second.address); !tc.shutdown && up != 0 {
				t.Errorf("tnsguard_backend_up of the server that took nothing = %v; want 0 (a failure, as a silent server)", up)
			}
			t.Logf("app reset %v after it started sending", time.Since(start).Round(time.Millisecond))
		})
	}
}

// The openings sessions keep for a re-dial (up to replay_bytes each, until
// their server answers) have a budget together: a quarter of the memory
// limit. 3,000 apps that each sent 60 KB of a CONNECT a listener waits out
// took a 256 MiB pod past its limit, and the OOM killer ended every
// session. Past the budget an opening is sent on without a copy (no
// replay for it), its bytes reach the server all the same, a warning says
// so, and what was kept is let go with the sessions.
func TestOpeningsKeptForReplayStayWithinTheBudget(t *testing.T) {
	const each, apps, budget = 60_000, 5, 150_000
	got := make(chan int, apps)
	be := newBackend(t, func(c *net.TCPConn) {
		n, _ := io.ReadFull(c, make([]byte, each))
		got <- n
		io.Copy(io.Discard, c) // the listener waits for the rest: no answer
	})
	h, logs := startProxyLog(t, strings.Replace(oneBackendConfig(be.addr()), `connect_budget = "3s"`, `connect_budget = "20s"`, 1))
	h.p.replayBudget.Store(budget)
	opening := bytes.Repeat([]byte{'x'}, each)
	var conns []*net.TCPConn
	for range apps {
		c := h.dial("l")
		conns = append(conns, c)
		if _, err := c.Write(opening); err != nil {
			t.Fatal(err)
		}
	}
	for i := range apps {
		select {
		case n := <-got:
			if n != each {
				t.Fatalf("the server got %d of an opening's %d bytes", n, each)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d openings reached the server", i, apps)
		}
	}
	held := h.p.replayHeld.Load()
	if held > budget+each {
		t.Errorf("%d apps' openings of %d bytes: %d bytes kept for a replay, budget %d", apps, each, held, budget)
	}
	if lines := logs.lines("reached their memory budget"); len(lines) != 1 {
		t.Errorf("%d warnings that the budget is spent, want 1:\n%s", len(lines), logs)
	}
	for _, c := range conns {
		resetConn(c) // the apps give up
	}
	waitFor(t, 5*time.Second, "the kept openings let go with their sessions", func() bool { return h.p.replayHeld.Load() == 0 })
}

// The replay budget is the proxy's, shared by every listener: openings
// that other apps' sessions keep (here 32 KB of a CONNECT that a listener
// waits out, on another listener) can spend it. A routed listener must
// still read a small CONNECT's service: past the budget, the bytes went on
// without a copy, routing took the CONNECT for one longer than
// replay_bytes, and the app for SALES was sent to the default route's
// database.
func TestRoutedConnectIsRoutedWhenTheReplayBudgetIsSpent(t *testing.T) {
	const each, budget = 32 << 10, 49_200 // the held opening's buffer grows to 48 KiB
	held := make(chan struct{}, 1)
	slow := newBackend(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, each))
		held <- struct{}{}
		io.Copy(io.Discard, c) // the listener waits for the rest: no answer
	})
	sales := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12560})
	orders := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12560})
	cfg := routesConfig(sales.Addr(), orders.Addr()) + fmt.Sprintf(`
[[listener]]
name = "hold"
listen = "127.0.0.1:0"
backend = "slow-db"
[[backend]]
name = "slow-db"
connect_budget = "20s"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, slow.addr())
	h := startProxy(t, cfg)
	h.p.replayBudget.Store(budget)
	c := h.dial("hold")
	for _, n := range []int{16 << 10, 16 << 10} { // read as written
		if _, err := c.Write(bytes.Repeat([]byte{'x'}, n)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the held opening did not reach its server")
	}
	if got := h.p.replayHeld.Load(); got < budget-100 {
		t.Fatalf("%d bytes kept for a replay; the test wants the budget (%d) spent", got, budget)
	}
	goOraPing(t, h.addr("l"), "SALES")
	if len(sales.Connects()) != 1 || len(orders.Connects()) != 0 {
		t.Fatalf("an app for SALES, with the replay budget spent by another listener's openings: sales got %d CONNECTs, the default route (orders) %d; want 1 and 0",
			len(sales.Connects()), len(orders.Connects()))
	}
	resetConn(c)
	waitFor(t, 5*time.Second, "the kept openings let go with their sessions", func() bool { return h.p.replayHeld.Load() == 0 })
}

// An opening sent on without a copy because the replay budget was spent
// (other sessions' openings hold it) is not one past replay_bytes: when
// its server fails before answering, the session's error must say which
// limit stopped the re-dial. It said "opening bytes exceeded replay_bytes"
// for a 5-byte opening, and the operator raised replay_bytes, which the
// budget makes no difference to.
func TestOpeningSentWithoutACopyForTheBudgetSaysSo(t *testing.T) {
	be := newBackend(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 5))
		resetConn(c) // fails before its first byte
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.replayBudget.Store(0) // spent
	c := h.dial("l")
	defer c.Close()
	var s *session
	waitFor(t, 2*time.Second, "the session", func() bool {
		ss := h.p.liveSessions()
		if len(ss) == 1 {
			s = ss[0]
		}
		return s != nil
	})
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	readErr(c, 5*time.Second)
	waitFor(t, 5*time.Second, "session ended", func() bool { return len(h.p.liveSessions()) == 0 })
	s.mu.Lock()
	end := s.end
	s.mu.Unlock()
	if !errors.Is(end.err, ErrReplayOverflow) || Cause(end.err) != "proxy" {
		t.Fatalf("ended %s cause %s: %v; want the opening's overflow (cause proxy)", end.outcome, Cause(end.err), end.err)
	}
	if msg := end.err.Error(); strings.Contains(msg, "exceeded replay_bytes") || !strings.Contains(msg, "budget") {
		t.Errorf("a 5-byte opening sent on without a copy for the memory budget ended with %q: it names replay_bytes, not the budget", msg)
	}
}
