package netlab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netem"
)

// Helper processes are the test binary itself, re-executed inside a namespace with
// `ip netns exec NS /proc/self/exe` and a role in the environment. They are real
// processes, so they can be killed like a crashed database server.

const (
	roleEnv = "NETLAB_HELPER_ROLE"
	argsEnv = "NETLAB_HELPER_ARGS"
)

// RunHelper turns this process into a helper and exits when it was started as one by
// [Lab.StartHelper]; otherwise it returns at once. Call it first in TestMain.
func RunHelper() {
	role := os.Getenv(roleEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "echo":
		err = echoMain(os.Getenv(argsEnv))
	case "toxiproxy":
		err = toxiproxyMain(os.Getenv(argsEnv))
	case "netem":
		err = netemMain(os.Getenv(argsEnv))
	default:
		err = fmt.Errorf("unknown helper role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netlab helper:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// Event is one JSON line a helper printed on stdout.
type Event struct {
	Event  string `json:"event"`            // ready, accept, data, close, ...
	Addr   string `json:"addr,omitempty"`   // the helper's listen address
	Remote string `json:"remote,omitempty"` // the peer of a connection
	How    string `json:"how,omitempty"`    // close: eof, reset, timeout, error text
	Bytes  int64  `json:"bytes,omitempty"`  // close: bytes echoed; data: bytes of the first read
	// Stats is what a netem helper did (event "stats", when it stops).
	Stats *netem.Stats `json:"stats,omitempty"`
	// At is when the test process read the line.
	At time.Time `json:"-"`
}

// Proc is a running helper process.
type Proc struct {
	// Events delivers the helper's JSON lines after "ready", in order and without
	// loss; it is closed when the process has ended and all were read.
	Events <-chan Event
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{}
	err    error
}

// StartHelper starts this test binary as helper role in namespace ns, with args encoded
// as JSON for it, and waits for its "ready" line. The package's TestMain must call
// [RunHelper]. The process is killed at cleanup.
func (l *Lab) StartHelper(t testing.TB, ns, role string, args any) *Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("netlab: own executable: %v", err)
	}
	js, err := json.Marshal(args)
	if err != nil {
		t.Fatalf("netlab: helper args: %v", err)
	}
	cmd := l.Command(ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, argsEnv+"="+string(js))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &Proc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{w: p.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatalf("netlab: start helper %s: %v", role, err)
	}
	// Events are queued without bound: a helper must never stall on a test that does
	// not read them (health checks alone make an accept and a close every interval).
	events := make(chan Event)
	p.Events = events
	ready := make(chan Event, 1)
	var (
		qmu    sync.Mutex
		queue  []Event
		ended  bool
		signal = make(chan struct{}, 1)
		stop   = make(chan struct{})
	)
	notify := func() {
		select {
		case signal <- struct{}{}:
		default:
		}
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue // not ours (e.g. a stray print)
			}
			ev.At = time.Now()
			if first && ev.Event == "ready" {
				first = false
				ready <- ev
				continue
			}
			qmu.Lock()
			queue = append(queue, ev)
			qmu.Unlock()
			notify()
		}
		p.err = cmd.Wait()
		qmu.Lock()
		ended = true
		qmu.Unlock()
		notify()
		close(p.done)
	}()
	go func() {
		defer close(events)
		for {
			qmu.Lock()
			var next *Event
			if len(queue) > 0 {
				next = &queue[0]
				queue = queue[1:]
			}
			over := ended && next == nil
			qmu.Unlock()
			if over {
				return
			}
			if next == nil {
				select {
				case <-signal:
				case <-stop:
					return
				}
				continue
			}
			select {
			case events <- *next:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		p.Kill()
		close(stop)
		if out := p.Stderr(); t.Failed() && out != "" {
			t.Logf("netlab: helper %s stderr:\n%s", role, out)
		}
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("netlab: helper %s ended before ready: %v\n%s", role, p.err, p.Stderr())
	case <-time.After(20 * time.Second):
		t.Fatalf("netlab: helper %s not ready after 20s\n%s", role, p.Stderr())
	}
	return p
}

// Kill ends the helper with SIGKILL, as a crash would, and waits for it. The kernel then
// closes its sockets as it does for any killed process.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	// ip netns exec execs the helper in place, so the pid is the helper's.
	<-p.done
}

// Done is closed when the helper has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stderr returns what the helper wrote to stderr so far.
func (p *Proc) Stderr() string {
	w := p.cmd.Stderr.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	return p.stderr.String()
}

// Next returns the next event named name (others are skipped), or false at timeout or
// when the helper ended.
func (p *Proc) Next(name string, timeout time.Duration) (Event, bool) {
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-p.Events:
			if !ok {
				return Event{}, false
			}
			if ev.Event == name {
				return ev, true
			}
		case <-deadline:
			return Event{}, false
		}
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// EchoArgs configures the "echo" helper.
type EchoArgs struct {
	// Listen is the address to listen on, e.g. ":1521".
	Listen string
	// Repeat, when over 1, sends each chunk read back that many times: a
	// result set larger than its query, so that the way to the app stays
	// full (bytes in flight to it at every moment) even when the app
	// pauses between writes.
	Repeat int
}

// StartEcho starts an echo server in namespace ns listening on addr (e.g. ":1521"). It
// echoes every byte, answers a tnsping CONNECT ((COMMAND=ping)) with the listener's
// REFUSE ERR=0 like an Oracle listener, has keepalive off, and reports each accepted
// connection and how it closed (eof, reset, timeout) as events.
func (l *Lab) StartEcho(t testing.TB, ns, addr string) *Proc {
	t.Helper()
	return l.StartHelper(t, ns, "echo", EchoArgs{Listen: addr})
}

// writeEvent prints one event line; the helper's stdout is a pipe read by Proc.
func writeEvent(mu *sync.Mutex, ev Event) {
	b, _ := json.Marshal(ev)
	mu.Lock()
	defer mu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

// tnspingRefuse is an Oracle listener's answer to a tnsping: REFUSE carrying ERR=0.
func tnspingRefuse() []byte {
	data := []byte("(DESCRIPTION=(TMP=)(VSNNUM=0)(ERR=0)(ALIAS=LISTENER))")
	n := 12 + len(data)
	pkt := []byte{byte(n >> 8), byte(n), 0, 0, 4, 0, 0, 0, 0x22, 0, byte(len(data) >> 8), byte(len(data))}
	return append(pkt, data...)
}

func echoMain(args string) error {
	var a EchoArgs
	if err := json.Unmarshal([]byte(args), &a); err != nil {
		return err
	}
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", a.Listen)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	writeEvent(&mu, Event{Event: "ready", Addr: ln.Addr().String()})
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go echoConn(&mu, c.(*net.TCPConn), max(a.Repeat, 1))
	}
}

func echoConn(mu *sync.Mutex, c *net.TCPConn, repeat int) {
	defer c.Close()
	remote := c.RemoteAddr().String()
	writeEvent(mu, Event{Event: "accept", Remote: remote})
	buf := make([]byte, 64<<10)
	var total int64
	first := true
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if first && n >= 8 && buf[4] == 1 && bytes.Contains(buf[:n], []byte("(COMMAND=ping)")) {
				_, _ = c.Write(tnspingRefuse())
				writeEvent(mu, Event{Event: "close", Remote: remote, How: "tnsping"})
				return
			}
			if first {
				writeEvent(mu, Event{Event: "data", Remote: remote, Bytes: int64(n)}) // once per connection
			}
			first = false
			for range repeat {
				if _, werr := c.Write(buf[:n]); werr != nil {
					writeEvent(mu, Event{Event: "close", Remote: remote, How: classify(werr), Bytes: total})
					return
				}
				total += int64(n)
			}
		}
		if err != nil {
			writeEvent(mu, Event{Event: "close", Remote: remote, How: classify(err), Bytes: total})
			return
		}
	}
}

// Classify names how a connection ended: "eof" (FIN), "reset" (RST), "timeout"
// (keepalive or user timeout, or a deadline), "closed", or the error text.
func Classify(err error) string { return classify(err) }

func classify(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, io.EOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	default:
		return strings.TrimSpace(err.Error())
	}
}
