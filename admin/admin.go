// Package admin serves tnsguard's operator endpoints on the admin listener:
// /metrics, /healthz, /readyz, /api/links, /api/resets and the status page
// (/ and /status).
//
// Typical use:
//
//	srv, err := admin.Start(cfg.Admin, reg, proxy, logger)
//	...
//	srv.Close()
package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/proxy"
)

// Source is what the admin endpoints show: the running proxy.
type Source interface {
	Ready() (bool, string)
	Links() []proxy.LinkStatus
	Resets(limit int) []proxy.ResetEvent // newest first
}

// Server is the running admin HTTP listener.
type Server struct {
	http    *http.Server
	ln      net.Listener
	done    chan struct{}
	allow   atomic.Pointer[[]netip.Prefix] // admin.allow; a reload replaces it (SetAllow)
	spare   *spareFDs                      // fds kept for answering when sessions hold every other one
	conns   atomic.Int64                   // connections accepted and not yet closed (http.Server.ConnState)
	open    openConns                      // the same connections, longest without a word first: beyond maxConns one that sent nothing is closed first
	closing atomic.Bool                    // CloseWithin closed the listener: Serve's error is no failure
}

// Listen binds the admin listener's address: plain TCP, as the proxy's
// listeners. Go makes listeners Multipath TCP by default, and the kernel's
// MPTCP getsockname leaves a link-local address without its scope, so the
// socket's address ([fe80::1]:9521) lost the zone it was bound with.
func Listen(address string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", address)
}

// Start binds cfg.Listen and serves until Close.
func Start(cfg config.Admin, reg *prometheus.Registry, src Source, log hclog.Logger) (*Server, error) {
	ln, err := Listen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	return StartOn(ln, cfg, reg, src, log), nil
}

// StartOn serves on ln (bound to cfg.Listen: a socket handed over by an
// upgrade) until Close.
func StartOn(ln net.Listener, cfg config.Admin, reg *prometheus.Registry, src Source, log hclog.Logger) *Server {
	mux := http.NewServeMux()
	spare := newSpareFDs()
	heavy := newHeavyGate()
	mux.Handle("GET /metrics", heavy.wrap(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ready, reason := src.Ready()
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ready, "reason": reason})
	})
	mux.Handle("GET /api/links", heavy.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"links": src.Links()})
	})))
	handleStatus(mux, src, heavy) // / and /status, /api/resets (status.go)
	s := &Server{ln: ln, done: make(chan struct{}), spare: spare}
	s.SetAllow(cfg.AllowNets)
	// Every wait is bounded: the admin port shares the process's fds and
	// memory with the proxy, and a client that holds connections open
	// (idle keep-alives, a trickled body) must not starve it.
	// No endpoint takes more than a URL and a few headers: net/http's
	// default (1 MiB) let each connection grow the heap by that much.
	s.http = &http.Server{Handler: s.allowOnly(s.hostOnly(mux)), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second,
		MaxHeaderBytes: 16 << 10,
		ConnState:      s.track,
		ErrorLog:       log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn})} // accept errors (EMFILE), panics: not info
	go func() {
		defer close(s.done)
		defer spare.close()
		if err := s.http.Serve(&allowListener{Listener: ln, s: s, refusing: make(chan struct{}, maxRefusing)}); err != nil && err != http.ErrServerClosed && !s.closing.Load() {
			log.Error("admin listener failed", "error", err)
		}
	}()
	log.Info("admin listening", "address", ln.Addr().String())
	return s
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// DupSocket duplicates the listening socket (proxy.DupSocket), for a
// process that is to take it over.
func (s *Server) DupSocket() (int, error) {
	c, ok := s.ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("admin listener %T has no socket", s.ln)
	}
	return proxy.DupSocket(c)
}

// Close stops the listener, lets requests being served finish for a
// moment, and waits for the serving goroutine. The moment is short: a
// connection that has sent nothing yet (a load balancer's TCP check) counts
// as being served, and the process's exit waited out the whole timeout for
// it, after the drain.
func (s *Server) Close() error { return s.CloseWithin(300 * time.Millisecond) }

// CloseWithin is Close giving the connections accepted up to d to send
// their request and get its answer. After an upgrade the old process
// closes its admin server while the new one serves on the same socket: a
// monitor's request on a connection that the old one accepted last is
// answered, not cut (its exit waits for the drain anyway).
//
// Not http.Server.Shutdown: a connection whose request it reads once
// Shutdown has begun is closed unanswered (net/http's conn.serve returns
// when the server is shutting down), and a connection accepted just before
// the listener closed has mostly not been read yet: the monitor got EOF.
// Its client does not retry (the connection was new).
func (s *Server) CloseWithin(d time.Duration) error {
	deadline := time.Now().Add(d)
	// Answers from now on say Connection: close, each connection closes
	// after its answer, and idle keep-alive connections close now.
	s.http.SetKeepAlivesEnabled(false)
	s.closing.Store(true)
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed by an earlier call
	}
	<-s.done // Serve has returned: every connection it accepted is counted
	for s.conns.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.http.Close() // what is left: silent connections, answers not done within d
	return err
}

// track counts the connections open (http.Server.ConnState): StateNew is
// reported in Serve's loop before the next Accept, StateClosed (or
// StateHijacked) once per connection at its end.
// Beyond maxConns open connections one is closed (openConns); the hook
// runs in Serve's loop (StateNew) or in the connection's goroutine.
func (s *Server) track(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.conns.Add(1)
		if old := s.open.add(c, maxConns); old != nil {
			old.Close()
		}
	case http.StateActive, http.StateIdle:
		s.open.set(c, st == http.StateActive)
	case http.StateClosed, http.StateHijacked:
		s.conns.Add(-1)
		s.open.remove(c)
	}
}

// maxConns bounds the admin connections open at once. Monitors need a
// few (Prometheus, the kubelet's probes, a load balancer's health checks,
// a browser's 6 per status page); each connection holds an fd and about
// 20 KB (its goroutine and buffers) for up to the idle timeout (60 s).
// Without a bound, one client in admin.allow (anyone, by default, on this
// host) that opened 20,000 connections and left them idle took every fd
// of the process (the proxy's accepts and health checks failed:
// "too many open files") and 400 MB of memory (the shipped Kubernetes
// limit is 256 MiB).
const maxConns = 128

// openConns lists the open admin connections, the one that has done
// nothing for longest first (by its accept, or by its last answer for a
// connection idle between requests). When a new one makes more than the
// bound, one goes, in this order:
//
//  1. the first that is not being answered and has sent nothing: silent
//     since its connect (or closed by its client before a byte), or idle
//     since its last answer;
//  2. the first that is not being answered: it has sent (part of) a request
//     that has not been read whole yet, often not at all (its goroutine
//     has not run);
//  3. the first: every other one is being answered.
//
// Whoever floods the port closes its own connections, not the next
// monitor's. Closing the oldest whatever it did cut a scrape being
// answered (or waiting its turn at the heavy gate) when maxConns newer
// connections came within its answer: at 10,000 connections a second from
// one client, a fifth of the scrapes and probes failed
// (TestConnectionBoundSparesAnswersUnderWay). Step 1 before step 2: a
// monitor's request is in the socket as soon as it connects, but its
// connection only counts as answered (StateActive) once its goroutine has
// read the whole head, and with one client opening 4,000-8,000
// connections a second maxConns newer ones came in the 16-32 ms before
// that on two busy cores: 2-16% of the kubelet's probes and up to 11% of
// the scrapes got a reset or EOF (TestConnectionBoundSparesRequestsNotYetRead).
// A client that sends a byte and no more (slowloris) ranks with the
// requests (step 2) until the header timeout: one that floods the port
// with such connections can still crowd a monitor out.
// Step 3: answers that do not end (a client that asks and never reads,
// until the write timeout) must not keep the next monitor out.
type openConns struct {
	mu    sync.Mutex
	conns []openConn
}

type openConn struct {
	c      net.Conn
	active bool // a request read and not yet answered (StateActive)
}

// add appends c and, beyond max, takes the connection to close (see
// openConns) out of the list and returns it (its StateClosed then finds it
// gone).
func (o *openConns) add(c net.Conn, max int) net.Conn {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.conns = append(o.conns, openConn{c: c})
	if len(o.conns) <= max {
		return nil
	}
	i, waiting := -1, -1 // step 1; step 2
	for j, x := range o.conns[:len(o.conns)-1] {
		if x.active {
			continue
		}
		if sentNothing(x.c) {
			i = j
			break
		}
		if waiting < 0 {
			waiting = j
		}
	}
	if i < 0 {
		i = waiting // step 2
	}
	if i < 0 {
		i = 0 // step 3
	}
	old := o.conns[i].c
	o.conns = append(o.conns[:i], o.conns[i+1:]...)
	return old
}

// set records whether c is being answered; a connection that goes idle
// after an answer moves to the end (it did something just now) and has
// sent nothing of its next request.
func (o *openConns) set(c net.Conn, active bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range o.conns {
		if o.conns[i].c == c {
			if active {
				o.conns[i].active = true
				return
			}
			if hc, ok := c.(*headerConn); ok {
				// StateIdle: its goroutine reads the next request only
				// after this hook.
				hc.heard.Store(false)
			}
			o.conns = append(append(o.conns[:i], o.conns[i+1:]...), openConn{c: c})
			return
		}
	}
}

func (o *openConns) remove(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, x := range o.conns {
		if x.c == c {
			o.conns = append(o.conns[:i], o.conns[i+1:]...)
			return
		}
	}
}

// sentNothing tells whether c's client has sent nothing since its connect
// (or its last answer): its goroutine has read no byte of it, and none
// waits in the socket (SIOCINQ: a request that came before the goroutine
// ran). A connection without a socket, or closed, counts as silent.
// Called with openConns.mu held: bytes found waiting mark c heard, so that
// the next connections beyond the bound do not ask its socket again (a
// flood of requests that are not read yet cost up to maxConns ioctls per
// accept, under the lock that every connection's state hook takes); the
// reset at its answer's StateIdle takes the lock too, so it comes after.
func sentNothing(c net.Conn) bool {
	hc, _ := c.(*headerConn)
	if hc != nil {
		if hc.heard.Load() {
			return false
		}
		c = hc.Conn
	}
	n := queued(c)
	if n > 0 && hc != nil {
		hc.heard.Store(true)
	}
	return n <= 0
}

// queued is how many bytes wait unread in c's socket (SIOCINQ); -1 when c
// has no socket, or it is closed.
func queued(c net.Conn) int {
	if sc, ok := c.(*spareConn); ok {
		c = sc.Conn
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	rc.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// SetAllow makes nets the admin.allow list from the next request on (a
// reload); empty allows everyone.
func (s *Server) SetAllow(nets []netip.Prefix) { s.allow.Store(&nets) }

// allowed tells whether admin.allow lets addr in (an empty list lets
// everyone in).
func (s *Server) allowed(addr string) bool {
	nets := *s.allow.Load()
	if len(nets) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && config.Allowed(nets, ap.Addr().Unmap())
}

// maxRefusing bounds the connections from outside admin.allow that are
// being answered at once; beyond it they are closed unanswered.
const maxRefusing = 32

// refuseLinger bounds how long a turned-away connection is read before its
// 403 is written and it is closed.
const refuseLinger = 500 * time.Millisecond

// forbidden is the whole answer a client outside admin.allow gets.
const forbidden = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Connection: close\r\nContent-Length: 25\r\n\r\nforbidden by admin.allow\n"

// allowListener turns clients outside admin.allow away as they connect,
// before a byte of their request is read: each would otherwise hold an fd
// (and a request's memory) until the header timeout, with no bound on how
// many (a scanner, or an attacker who can reach the port). The request's
// head is read for at most refuseLinger, the 403 written, and the
// connection closed.
type allowListener struct {
	net.Listener
	s        *Server
	refusing chan struct{} // a token per connection being turned away
}

func (l *allowListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		used := false
		if err != nil && failover.OutOfFDs(err) {
			c, used, err = acceptSpare(l.Listener, l.s.spare, err)
		} else if err == nil {
			l.s.spare.refill() // spares spent while out of fds (a no-op when all are held)
		}
		if err != nil {
			if l.s.closing.Load() {
				// CloseWithin: not an EMFILE for Serve to retry after a
				// pause (acceptSpare says so when the listener closes).
				return nil, net.ErrClosed
			}
			return nil, err
		}
		if l.s.allowed(c.RemoteAddr().String()) {
			if used {
				return &headerConn{Conn: &spareConn{Conn: c, spare: l.s.spare}}, nil
			}
			return &headerConn{Conn: c}, nil
		}
		select {
		case l.refusing <- struct{}{}:
			go func() {
				defer func() { <-l.refusing }()
				if used {
					defer l.s.spare.refill() // after lingeringClose's Close
				}
				c.SetReadDeadline(time.Now().Add(refuseLinger))
				readHead(c)
				c.SetWriteDeadline(time.Now().Add(refuseLinger)) // a slow head still gets its answer
				io.WriteString(c, forbidden)
				lingeringClose(c)
			}()
		default:
			c.Close() // too many at once: no answer
			if used {
				l.s.spare.refill()
			}
		}
	}
}

// headerConn reads past a PROXY header that its first bytes may hold
// (proxy.SkipHeader) before the HTTP server reads the request: a load
// balancer that sends PROXY headers to its targets sends one on its health
// checks of /readyz too (an AWS NLB with proxy protocol v2 on its target
// group), and net/http answered those 400. The header's addresses are not
// used: admin.allow judged the socket's peer at Accept. net/http reads a
// connection from one goroutine at a time.
type headerConn struct {
	net.Conn
	br    *bufio.Reader // nil until the first Read
	err   error         // a malformed header: every Read fails
	heard atomic.Bool   // the socket gave bytes of a request (not only a PROXY header) since the connect or the last answer (openConns)
}

// CloseWrite is the TCP connection's, so that net/http still half-closes
// before it closes a connection it answered "Connection: close" on (an
// unread request body then does not turn the answer into a reset).
func (c *headerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *headerConn) Read(b []byte) (int, error) {
	if c.br == nil {
		// A PROXY header alone does not count as heard: a flood of
		// connections that each send one and hold (2,000 a second) then
		// counted as not silent, and the new monitor's connection, silent
		// for the moment before its request, was the one closed beyond
		// the bound (a fifth of the probes and scrapes failed; none while
		// such connections counted as silent). A request that came with
		// the header is in the buffer after it, and counts.
		c.br = bufio.NewReaderSize(c.Conn, 512)
		c.err = proxy.SkipHeader(c.br)
		if c.br.Buffered() > 0 {
			c.heard.Store(true)
		}
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.br.Buffered() > 0 {
		return c.br.Read(b)
	}
	return socketReader{c}.Read(b)
}

// socketReader reads c's socket and marks c heard when bytes come.
type socketReader struct{ c *headerConn }

func (r socketReader) Read(b []byte) (int, error) {
	n, err := r.c.Conn.Read(b)
	if n > 0 && !r.c.heard.Load() {
		r.c.heard.Store(true)
	}
	return n, err
}

// refuseDrain bounds how long a turned-away connection's leftovers (a
// request body) are read after its 403 (lingeringClose).
const refuseDrain = 200 * time.Millisecond

// lingeringClose ends a connection whose answer is written: a FIN, then
// what the client still sends (a request body) is read and dropped for at
// most refuseDrain, then the close. Closed with a body unread, the socket
// would answer the client's next bytes with a reset, and the client, still
// writing its body, would get the reset instead of the answer.
func lingeringClose(c net.Conn) {
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(refuseDrain))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// readHead reads a request's head (up to its blank line, at most 16 KiB,
// within c's deadline) so that the 403 comes after the question: an HTTP
// client drops an answer that comes before its request (Go's says
// "unsolicited response").
func readHead(c net.Conn) {
	head := make([]byte, 0, 1024)
	buf := make([]byte, 1024)
	for len(head) < 16<<10 {
		n, err := c.Read(buf)
		head = append(head, buf[:n]...)
		if err != nil || bytes.Contains(head, []byte("\r\n\r\n")) || bytes.Contains(head, []byte("\n\n")) { // net/http takes bare LFs too
			return
		}
	}
}

// allowOnly answers 403 to clients outside admin.allow (when it is not
// empty). allowListener turns them away as they connect; this catches a
// connection that a reload's new list no longer allows.
func (s *Server) allowOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.allowed(r.RemoteAddr) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Connection", "close") // a refused client keeps no connection
		http.Error(w, "forbidden by admin.allow", http.StatusForbidden)
	})
}
