package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// requireTool returns the path of an external command, or skips the test
// when it is missing; with CI set in the environment a missing tool fails.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; CI must install it", name)
	}
	t.Skipf("SKIPPED: %s is not installed (set CI=1 to make this a failure)", name)
	return ""
}

// headerBackend accepts connections that start with a PROXY header and
// reports, for each, the header's source address and the SHA-256 and
// length of everything after it; it echoes nothing, it answers "ok" at EOF.
type headerBackend struct {
	ln   net.Listener
	got  chan headerSeen
	wg   sync.WaitGroup
	echo bool
}

type headerSeen struct {
	src  string
	sum  []byte
	n    int64
	data []byte // the first 256 bytes
	err  error
}

func newHeaderBackend(t *testing.T, echo bool) *headerBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &headerBackend{ln: ln, got: make(chan headerSeen, 16), echo: echo}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				hdr, err := proxyproto.Read(br)
				if err != nil {
					b.report(headerSeen{err: err})
					return
				}
				var seen headerSeen
				if hdr.SourceAddr != nil { // a health check's LOCAL header has none
					seen.src = hdr.SourceAddr.String()
				}
				sum := sha256.New()
				var head bytes.Buffer
				w := io.MultiWriter(sum, &limitWriter{&head, 256})
				if b.echo {
					w = io.MultiWriter(w, c)
				}
				seen.n, seen.err = io.Copy(w, br)
				seen.sum, seen.data = sum.Sum(nil), head.Bytes()
				b.report(seen)
				c.Write([]byte("ok"))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

// report never blocks the connection's goroutine (the test may not read).
func (b *headerBackend) report(s headerSeen) {
	select {
	case b.got <- s:
	default:
	}
}

type limitWriter struct {
	b *bytes.Buffer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// Interoperability with HAProxy, an independent implementation, both ways:
// app -> HAProxy (send-proxy-v2) -> tnsguard (proxy_protocol required)
// -> tnsguard sends v1 or v2 -> HAProxy (accept-proxy, then send-proxy to
// the server) -> server. The server is told the app's own address and port
// (everything is loopback: the port tells the app apart), so every hop
// read the previous one's header, and the bytes arrive intact.
func TestProxyProtocolWithHAProxy(t *testing.T) {
	haproxy := requireTool(t, "haproxy")
	for _, out := range []string{"v1", "v2"} {
		t.Run("tnsguard sends "+out, func(t *testing.T) {
			final := newHeaderBackend(t, false)
			front, back, admin, tg := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
			cfg := fmt.Sprintf(`global
  maxconn 100
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend apps
  bind %s
  default_backend tnsguard
backend tnsguard
  server tg %s send-proxy-v2
frontend from_tnsguard
  bind %s accept-proxy
  default_backend db
backend db
  server db %s send-proxy
`, front, tg, back, final.ln.Addr())
			path := filepath.Join(t.TempDir(), "haproxy.cfg")
			os.WriteFile(path, []byte(cfg), 0o600)
			if out, err := exec.Command(haproxy, "-c", "-f", path).CombinedOutput(); err != nil {
				t.Fatalf("haproxy -c: %v\n%s", err, out)
			}
			hp := exec.Command(haproxy, "-db", "-f", path)
			var hlog bytes.Buffer
			hp.Stdout, hp.Stderr = &hlog, &hlog
			if err := hp.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				hp.Process.Kill()
				hp.Wait()
				if t.Failed() {
					t.Logf("haproxy log:\n%s", hlog.String())
				}
			})
			start(t, admin, config(admin, "", []listenerConf{{name: "apps", listen: tg, backend: "db", extra: `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`}}, []backendConf{{name: "db", servers: []string{back}, extra: fmt.Sprintf("send_proxy_protocol = %q", out)}}), true)
			waitFor(t, 5*time.Second, "haproxy listening", func() bool {
				c, err := net.Dial("tcp", front)
				if err == nil {
					c.Close()
				}
				return err == nil
			})
			// The probe above was a port check through the whole chain: its
			// report may come at any time (4 hops); the app's is told apart
			// by the address the server is told, below.

			c, err := net.Dial("tcp", front)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			payload := make([]byte, 1<<20)
			rand.Read(payload)
			want := sha256.Sum256(payload)
			c.Write(payload)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			reply, err := io.ReadAll(c)
			if err != nil || string(reply) != "ok" {
				t.Fatalf("app got %q, %v", reply, err)
			}
			var seen headerSeen
			var others []string
			for timeout := time.After(5 * time.Second); seen.src != c.LocalAddr().String(); {
				select {
				case seen = <-final.got:
					if seen.src != c.LocalAddr().String() {
						others = append(others, fmt.Sprintf("client %q (%d bytes, %v)", seen.src, seen.n, seen.err))
					}
				case <-timeout:
					t.Fatalf("the server was never told the app's address %s; it saw: %v", c.LocalAddr(), others)
				}
			}
			if seen.err != nil {
				t.Fatalf("server: %v", seen.err)
			}
			if seen.n != int64(len(payload)) || !bytes.Equal(seen.sum, want[:]) {
				t.Fatalf("the server got %d bytes (SHA-256 %x), the app sent %d (%x)", seen.n, seen.sum, len(payload), want)
			}
		})
	}
}

// After a PROXY header in, and with one sent out, the bulk of a transfer
// still takes the pumps' bulk path: splice(2), or, to a destination on this
// host as here, reads of up to 1 MiB (a pump's small reads take 16 KiB at
// most). Measured with strace on the binary. Long: strace slows every
// syscall; TNSGUARD_E2E_STRACE=1 runs it.
func TestProxyProtocolKeepsSplice(t *testing.T) {
	if os.Getenv("TNSGUARD_E2E_STRACE") == "" {
		t.Skip("set TNSGUARD_E2E_STRACE=1 to count splice calls under strace")
	}
	strace := requireTool(t, "strace")
	const size = 64 << 20
	be := newHeaderBackend(t, false)
	admin, addr := freeAddr(t), freeAddr(t)
	g := start(t, admin, config(admin, "", []listenerConf{{name: "l", listen: addr, backend: "db", extra: `proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]`}}, []backendConf{{name: "db", servers: []string{be.ln.Addr().String()}, extra: `send_proxy_protocol = "v2"`}}), true)
	trace := filepath.Join(t.TempDir(), "strace.out")
	// -f with -p attaches every thread of the running process.
	st := exec.Command(strace, "-f", "-qq", "-e", "trace=splice,read", "-e", "abbrev=all", "-s", "0", "-o", trace, "-p", strconv.Itoa(g.cmd.Process.Pid))
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { st.Process.Signal(os.Interrupt); st.Wait() }()
	time.Sleep(time.Second) // attached
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 5555}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1521}).Format()
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	c.Write(append(hdr, chunk[:100]...)) // app bytes with the header: read past it
	sent := int64(100)
	for sent < size {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		sent += int64(len(chunk))
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	io.ReadAll(c)
	var seen headerSeen
	for seen.src == "" { // skip the health checks' connections
		seen = <-be.got
	}
	if seen.err != nil || seen.src != "203.0.113.7:5555" || seen.n != sent {
		t.Fatalf("backend: src %s, %d bytes, %v", seen.src, seen.n, seen.err)
	}
	st.Process.Signal(os.Interrupt) // detach
	st.Wait()
	b, _ := os.ReadFile(trace)
	var spliced, calls, copied, reads int64
	spliceRe := regexp.MustCompile(`splice\(.*\)\s+=\s+(\d+)`)
	readRe := regexp.MustCompile(`read\(.*, (\d+)\)\s+=\s+(\d+)`)
	for _, line := range strings.Split(string(b), "\n") {
		if m := spliceRe.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			spliced += n
			calls++
		} else if m := readRe.FindStringSubmatch(line); m != nil {
			if asked, _ := strconv.ParseInt(m[1], 10, 64); asked > 16<<10 { // a bulk read, not a small one
				n, _ := strconv.ParseInt(m[2], 10, 64)
				copied += n
				reads++
			}
		}
	}
	// Each spliced byte is counted twice (socket -> pipe -> socket); each
	// copied one once, at its read.
	t.Logf("%d MiB through a PROXY listener with a PROXY backend: %d splice calls moved %d MiB (counting both halves), %d bulk reads %d MiB",
		size>>20, calls, spliced>>20, reads, copied>>20)
	if spliced/2+copied < size/2 {
		t.Fatalf("bulk moved %d bytes of a %d-byte transfer: the data path after the PROXY header is not the pumps' bulk path", spliced/2+copied, size)
	}
}
