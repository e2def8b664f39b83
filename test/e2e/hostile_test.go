package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	be "encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// Hostile clients against the built binary: garbage, PROXY headers that
// never end or trickle, TNS openings that lie about their length, and a
// flood of half-open connects, all at once, while one honest session keeps
// doing round trips. Each hostile connection must end within its timeout;
// the tnsguard process's fds and memory stay bounded and come back; the
// honest session sees no error and no stall.

// procStats is what /proc says about a process.
type procStats struct {
	rssKiB, hwmKiB int // VmRSS, VmHWM (peak RSS)
	fds            int
	sockets, pipes int // of fds
	threads        int
}

// statusFields calls f with each "Key: value" line of a /proc status
// file and the value as a number (kB for sizes).
func statusFields(status []byte, f func(key string, n int)) {
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		f(k, n)
	}
}

func readProc(t *testing.T, pid int) procStats {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var s procStats
	statusFields(status, func(k string, n int) {
		switch k {
		case "VmRSS":
			s.rssKiB = n
		case "VmHWM":
			s.hwmKiB = n
		case "Threads":
			s.threads = n
		}
	})
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.fds = len(fds)
	for _, fd := range fds {
		target, _ := os.Readlink(dir + "/" + fd.Name())
		switch {
		case strings.HasPrefix(target, "socket:"):
			s.sockets++
		case strings.HasPrefix(target, "pipe:"):
			s.pipes++
		}
	}
	return s
}

// cpuTime is the process's user + system CPU time so far (/proc/PID/stat
// utime and stime, in USER_HZ = 100 ticks a second).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces: fields are counted after its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// victim is one honest session doing a round trip every 20 ms and keeping
// its slowest.
type victim struct {
	stop    chan struct{}
	done    chan struct{}
	rounds  atomic.Int64
	slowest atomic.Int64
	err     error
}

func startVictim(t *testing.T, addr string) *victim {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	v := &victim{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(v.done)
		defer c.Close()
		for i := 0; ; i++ {
			select {
			case <-v.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			if err := roundTrip(c, fmt.Appendf(nil, "honest round %08d", i), 5*time.Second); err != nil {
				v.err = fmt.Errorf("round %d: %w", i, err)
				return
			}
			if d := int64(time.Since(start)); d > v.slowest.Load() {
				v.slowest.Store(d)
			}
			v.rounds.Add(1)
		}
	}()
	t.Cleanup(v.end)
	return v
}

func (v *victim) end() {
	select {
	case <-v.stop:
	default:
		close(v.stop)
	}
	<-v.done
}

// hostileEnd is how one hostile connection ended, seen from the client.
type hostileEnd struct {
	name string
	took time.Duration // from connect to the close
	err  error         // the read error that showed the close (nil: EOF)
}

// closedWithin dials addr, sends first, then sends rest one byte a second,
// and waits (up to limit) for tnsguard to close the connection.
func closedWithin(addr string, first, rest []byte, limit time.Duration) (time.Duration, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(start.Add(limit))
	if len(first) > 0 {
		if _, err := c.Write(first); err != nil {
			return time.Since(start), nil
		}
	}
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				readErr <- err
				return
			}
		}
	}()
	for _, b := range rest {
		select {
		case err := <-readErr:
			return time.Since(start), closedErr(err)
		case <-time.After(time.Second):
		}
		c.Write([]byte{b})
	}
	err = <-readErr
	return time.Since(start), closedErr(err)
}

// closedErr turns "closed by the peer" (EOF, reset) into nil and keeps
// anything else (the deadline: still open).
func closedErr(err error) error {
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}

func v2Header() []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	return append(b, 192, 0, 2, 1, 192, 0, 2, 2, 0x03, 0xe8, 0x05, 0xdc)
}

// CI runs 2,000 half-open connects against max_sessions = 100; a bigger
// flood (the test process needs about one fd per connect):
//
//	TNSGUARD_HOSTILE_HALFOPEN=20000 TNSGUARD_HOSTILE_MAX_SESSIONS=2000 \
//	  go test -run TestHostileClientsEndToEnd -v -timeout 10m ./test/e2e/
func TestHostileClientsEndToEnd(t *testing.T) {
	maxSessions, halfOpen := envInt(t, "TNSGUARD_HOSTILE_MAX_SESSIONS", 100), envInt(t, "TNSGUARD_HOSTILE_HALFOPEN", 2000)
	halfOpen = halfOpen / 8 * 8 // dialed by 8 goroutines
	raiseOwnFileLimit(t, uint64(halfOpen)+1024)
	echo := newEcho(t)
	ora := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	admin, plain, pp, oraAddr, limited := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`[log]
level = "info"
format = "json"
[admin]
listen = %q
[[listener]]
name = "plain"
listen = %q
backend = "echo"
[[listener]]
name = "pp"
listen = %q
backend = "echo"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.0/8"]
proxy_header_timeout = "2s"
[[listener]]
name = "ora"
listen = %q
backend = "ora"
[[listener]]
name = "limited"
listen = %q
backend = "echo"
max_sessions = %d
[[backend]]
name = "echo"
connect_timeout = "1s"
connect_budget = "3s"
  [backend.health]
  interval = "1s"
  timeout = "500ms"
  [[backend.server]]
  address = %q
[[backend]]
name = "ora"
connect_timeout = "1s"
connect_budget = "2s"
  [backend.health]
  interval = "1s"
  timeout = "500ms"
  [backend.breaker]
  failures = 1
  [[backend.server]]
  address = %q
`, admin, plain, pp, oraAddr, limited, maxSessions, echo.addr(), ora.Addr())
	g := start(t, admin, cfg, true)
	pid := g.cmd.Process.Pid

	v := startVictim(t, plain)
	time.Sleep(200 * time.Millisecond)
	before := readProc(t, pid)

	connect, err := tns.BuildConnect("(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app)(HOST=h)(USER=u))))")
	if err != nil {
		t.Fatal(err)
	}
	lying := slices.Clone(connect)
	be.BigEndian.PutUint16(lying, 2000) // the header promises 2000 bytes

	// Each attack: where, what it sends at once, what it then trickles
	// (one byte a second), and within how long tnsguard must close it.
	type attack struct {
		name        string
		addr        string
		first, rest []byte
		limit       time.Duration
	}
	attacks := []attack{
		{"random bytes to a PROXY listener", pp, nil, nil, time.Second},
		{"PROXY v1 prefix with no end", pp, []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000"), nil, 3 * time.Second},
		{"PROXY v2 prefix with no end", pp, v2Header()[:20], nil, 3 * time.Second},
		{"PROXY v1 trickled", pp, nil, []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000\r\n"), 3 * time.Second},
		{"PROXY v2 trickled", pp, nil, v2Header(), 3 * time.Second},
		{"TNS CONNECT with a lying length", oraAddr, lying, nil, 3 * time.Second},
		{"TNS CONNECT trickled", oraAddr, nil, connect, 3 * time.Second},
	}
	random := make([]byte, 1024)
	rand.Read(random)
	random[0] = 'x' // neither PROXY signature
	attacks[0].first = random

	var wg sync.WaitGroup
	ends := make(chan hostileEnd, 100)
	for _, a := range attacks {
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				took, err := closedWithin(a.addr, a.first, a.rest, a.limit+2*time.Second)
				if took > a.limit {
					err = errors.Join(err, fmt.Errorf("closed after %v, want within %v", took.Round(time.Millisecond), a.limit))
				}
				ends <- hostileEnd{a.name, took, err}
			}()
		}
	}
	// Random bytes to a plain listener: the backend decides, and this one
	// echoes: every byte comes back intact, nothing else is affected.
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := garbageEcho(plain, 256<<10)
			ends <- hostileEnd{fmt.Sprintf("256 KiB of random bytes to a plain listener (%d)", i), time.Since(start), err}
		}()
	}

	// The half-open flood: connects that never send a byte.
	flood := make([]net.Conn, 0, halfOpen)
	var floodMu sync.Mutex
	floodStart := time.Now()
	var fwg sync.WaitGroup
	for w := range 8 {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			for range halfOpen / 8 {
				c, err := net.Dial("tcp", limited)
				if errors.Is(err, syscall.ECONNRESET) {
					continue // over max_sessions: the reset came before connect returned
				}
				if err != nil {
					t.Errorf("half-open connect %d: %v", w, err)
					return
				}
				floodMu.Lock()
				flood = append(flood, c)
				floodMu.Unlock()
			}
		}()
	}
	fwg.Wait()
	waitFor(t, 10*time.Second, "every connect over max_sessions rejected", func() bool {
		v, _ := g.metricOK("tnsguard_sessions_rejected_total", "listener", "limited", "reason", "max_sessions")
		return v >= float64(halfOpen-maxSessions)
	})
	t.Logf("%d half-open connects in %v", halfOpen, time.Since(floodStart).Round(time.Millisecond))

	wg.Wait()
	close(ends)
	during := readProc(t, pid) // the other attacks are over, the flood's sessions are held
	for e := range ends {
		if e.err != nil {
			t.Errorf("%s: %v", e.name, e.err)
		} else {
			t.Logf("%-52s closed after %v", e.name, e.took.Round(time.Millisecond))
		}
	}

	// Over max_sessions every connect was closed and counted; the held
	// ones cost two fds each (app and backend), no more.
	if got := g.metric("tnsguard_sessions_rejected_total", "listener", "limited", "reason", "max_sessions"); got != float64(halfOpen-maxSessions) {
		t.Errorf("rejected{limited,max_sessions} = %v, want %d", got, halfOpen-maxSessions)
	}
	if got := g.metric("tnsguard_sessions_active", "listener", "limited"); got != float64(maxSessions) {
		t.Errorf("sessions_active{limited} = %v during the flood, want %d", got, maxSessions)
	}
	if bound := before.fds + 2*maxSessions + 10; during.fds > bound {
		t.Errorf("tnsguard holds %d fds during the flood, want at most %d (before %d, + 2 per held session + 10)", during.fds, bound, before.fds)
	}
	for _, c := range flood {
		c.Close()
	}
	waitFor(t, 10*time.Second, "the flood's sessions to end", func() bool {
		return g.metric("tnsguard_sessions_active", "listener", "limited") == 0
	})
	if err := roundTrip(dialOK(t, limited), []byte("after the flood"), 5*time.Second); err != nil {
		t.Errorf("a new session after the flood: %v", err)
	}

	// PROXY rejections are counted by reason; the hostile TNS openings
	// were not held against the database server.
	var ppRejected float64
	for _, reason := range []string{"proxy_missing", "proxy_invalid", "proxy_timeout"} {
		n, _ := g.metricOK("tnsguard_sessions_rejected_total", "listener", "pp", "reason", reason)
		t.Logf("rejected{pp,%s} = %v", reason, n)
		ppRejected += n
	}
	if ppRejected != 25 {
		t.Errorf("PROXY listener rejections = %v, want 25", ppRejected)
	}
	if got, _ := g.metricOK("tnsguard_breaker_state", "backend", "ora"); got != 0 {
		t.Errorf("the ora server's breaker = %v, want 0 (closed): hostile openings were held against it", got)
	}
	if n, _ := g.metricOK("tnsguard_redials_total", "listener", "ora"); n != 0 {
		t.Errorf("redials on ora = %v, want 0", n)
	}

	time.Sleep(200 * time.Millisecond) // a few more honest rounds after it all
	v.end()
	if v.err != nil {
		t.Errorf("the honest session failed: %v", v.err)
	}
	slowest := time.Duration(v.slowest.Load())
	if slowest > 500*time.Millisecond {
		t.Errorf("the honest session's slowest round trip took %v", slowest)
	}

	// Every socket is closed again (a health check's may be open). Pipes
	// may stay: Go keeps splice pipes (2 fds each) in a pool that only its
	// GC empties, at most one per direction that spliced at once; the 5
	// bulk echo sessions spliced both ways.
	var after procStats
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = readProc(t, pid)
		if after.sockets <= before.sockets+1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if after.sockets > before.sockets+1 || after.pipes > before.pipes+2*2*5 {
		out, _ := exec.Command("ls", "-l", fmt.Sprintf("/proc/%d/fd", pid)).CombinedOutput()
		t.Errorf("tnsguard holds %d sockets and %d pipe ends after the attacks, had %d and %d before:\n%s",
			after.sockets, after.pipes, before.sockets, before.pipes, out)
	}
	t.Logf("tnsguard: fds %d before (%d sockets), %d during the flood (%d sessions held), %d after (%d sockets, %d pipe ends); RSS %d KiB before, %d during, peak %d, %d after; threads %d/%d/%d",
		before.fds, before.sockets, during.fds, maxSessions, after.fds, after.sockets, after.pipes, before.rssKiB, during.rssKiB, after.hwmKiB, after.rssKiB,
		before.threads, during.threads, after.threads)
	t.Logf("honest session: %d round trips, slowest %v", v.rounds.Load(), slowest.Round(time.Microsecond))
	// Memory follows the sessions held (goroutines, socket buffers are the
	// kernel's), not the number of hostile connects.
	if growth, bound := after.hwmKiB-before.rssKiB, 32<<10+64*maxSessions; growth > bound {
		t.Errorf("tnsguard's peak RSS grew by %d KiB over the attacks, want under %d KiB (32 MiB + 64 KiB per held session)", growth, bound)
	}
	if strings.Contains(g.log.String(), "panic") {
		t.Errorf("panic in tnsguard's log")
	}
	select {
	case <-g.done:
		t.Fatalf("tnsguard exited (code %d)", g.exit)
	default:
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// raiseOwnFileLimit lifts the test process's soft open-files limit to at
// least want (up to the hard limit), or skips.
func raiseOwnFileLimit(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	lim.Cur = min(lim.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < want {
		t.Skipf("SKIPPED: needs %d open files, the hard limit is %d", want, lim.Max)
	}
}

// garbageEcho sends n random bytes through a plain listener to the echo
// backend and checks every byte comes back.
func garbageEcho(addr string, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

func dialOK(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
