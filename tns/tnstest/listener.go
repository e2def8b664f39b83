// Package tnstest runs fake Oracle listeners on real TCP sockets for tests:
// each reads a client's whole CONNECT (with the DATA packet that carries long
// connect data), records its exact bytes, and answers the way its Config says
// - refuse, accept and echo, redirect, resend, reset, stay silent or send
// garbage. tnsping CONNECTs are answered as a live listener does.
//
//	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
//	db, _ := sql.Open("oracle", "oracle://u:p@"+l.Addr()+"/SALES")
//	err := db.PingContext(ctx) // ORA-12514
//	connects := l.Connects()   // the CONNECT bytes the driver sent
package tnstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

// Mode is how a listener answers a CONNECT for a service.
type Mode int

const (
	// Refuse answers REFUSE with Config.Err (12514 when 0) and closes.
	Refuse Mode = iota
	// Accept answers ACCEPT, then echoes every byte back until the client
	// closes.
	Accept
	// Redirect answers REDIRECT to Config.RedirectTo and closes.
	Redirect
	// Reset resets the connection (RST, SO_LINGER 0) after reading the
	// CONNECT, pings included.
	Reset
	// Silent reads the CONNECT and never answers, pings included.
	Silent
	// Garbage answers Config.Garbage verbatim and closes, pings included:
	// by default bytes that are not TNS, or any hand-made answer a test needs.
	Garbage
)

// DefaultVSNNUM is the version listeners report when Config.VSNNUM is 0:
// 19.0.0.0.0.
const DefaultVSNNUM = 318767104

// DefaultGarbage is what Garbage mode sends when Config.Garbage is empty.
const DefaultGarbage = "HTTP/1.1 400 Bad Request\r\n\r\n"

// Config is the behaviour of one fake listener.
type Config struct {
	Mode Mode
	// Err is the ERR of Refuse mode; 0 means 12514 (service not registered).
	Err int
	// VSNNUM goes into REFUSE and ping answers; 0 means DefaultVSNNUM.
	VSNNUM uint32
	// AcceptVersion is the version of Accept mode's ACCEPT; 0 means 318.
	AcceptVersion uint16
	// PingAccept answers tnsping with ACCEPT carrying (ERR=0), as pre-10g
	// listeners did, instead of REFUSE (ERR=0).
	PingAccept bool
	// Resends is how many CONNECTs of every connection are answered with
	// RESEND before the Mode's answer (listeners send one).
	Resends int
	// RedirectTo is the "host:port" Redirect mode sends clients to.
	RedirectTo string
	// RedirectData, when set, is the reconnect data of Redirect mode's
	// REDIRECT (header flag 0x02, as a RAC SCAN listener sends it): the
	// description the client is to send to RedirectTo.
	RedirectData string
	// Services, when set, are the registered services: CONNECTs for any
	// other SERVICE_NAME or SID are refused with ERR=12514 whatever the Mode.
	// SetServices changes them while the listener runs.
	Services []string
	// Garbage is what Garbage mode sends; empty means DefaultGarbage.
	Garbage []byte
	// RefuseApart sends every REFUSE (Refuse mode's, the ERR=12514 of
	// Services, the answer to a ping) as a REFUSE holding no text,
	// followed by a DATA packet with the text (tns.BuildRefuseApart).
	RefuseApart bool
}

// Listener is a fake Oracle listener on 127.0.0.1.
type Listener struct {
	cfg  Config
	ln   net.Listener
	wg   sync.WaitGroup
	once sync.Once

	mu       sync.Mutex
	closed   bool
	services []string // Config.Services, or what SetServices set since
	conns    map[net.Conn]struct{}
	accepted int
	connects [][]byte
	errs     []error
}

// New starts a listener on 127.0.0.1:0 and closes it when the test ends.
func New(tb testing.TB, cfg Config) *Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("tnstest: %v", err)
	}
	return NewOn(tb, ln, cfg)
}

// NewOn is New on a listening socket of the test's own (one in a network
// namespace, say); it is closed when the test ends.
func NewOn(tb testing.TB, ln net.Listener, cfg Config) *Listener {
	tb.Helper()
	if cfg.Mode == Redirect && cfg.RedirectTo == "" {
		ln.Close()
		tb.Fatal("tnstest: Redirect mode needs RedirectTo")
	}
	l := &Listener{cfg: cfg, ln: ln, services: slices.Clone(cfg.Services), conns: make(map[net.Conn]struct{})}
	l.wg.Add(1)
	go l.acceptLoop()
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// Addr is the "host:port" the listener listens on (127.0.0.1 for New).
func (l *Listener) Addr() string { return l.ln.Addr().String() }

// Connects returns the exact bytes of every CONNECT received so far (each
// with the DATA packet carrying its connect data, if any), in arrival order.
// A CONNECT is recorded before it is answered, so once a client has its
// answer, its CONNECT is here.
func (l *Listener) Connects() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([][]byte, len(l.connects))
	for i, c := range l.connects {
		out[i] = slices.Clone(c)
	}
	return out
}

// SetServices replaces the registered services (Config.Services) for the
// CONNECTs that come from now on: a switchover that moves a service to
// this listener's database, or away from it.
func (l *Listener) SetServices(services ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.services = slices.Clone(services)
}

// Accepted returns how many TCP connections the listener accepted.
func (l *Listener) Accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

// Errors returns what went wrong on the listener's side: a client whose
// first bytes were not a CONNECT, a failed write. A client that connects
// and closes without sending anything (a TCP health check) is no error.
func (l *Listener) Errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// Close stops the listener, closes every connection and waits for their
// goroutines.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		err = l.ln.Close()
		for c := range l.conns {
			_ = c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				l.fail(fmt.Errorf("accept: %w", err))
			}
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.accepted++
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serve(c.(*net.TCPConn))
	}
}

func (l *Listener) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

func (l *Listener) serve(c *net.TCPConn) {
	defer l.wg.Done()
	defer func() {
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
		_ = c.Close()
	}()
	resends := l.cfg.Resends
	for {
		raw, info, err := readConnect(c)
		if err != nil {
			if !clientGone(err) {
				l.fail(err)
			}
			return
		}
		l.mu.Lock()
		l.connects = append(l.connects, raw)
		l.mu.Unlock()
		if resends > 0 {
			resends--
			if !l.write(c, tns.BuildResend()) {
				return
			}
			continue
		}
		l.answer(c, info)
		return
	}
}

// answer sends the Mode's answer to one CONNECT; the connection closes after.
func (l *Listener) answer(c *net.TCPConn, info tns.ConnectInfo) {
	vsn := l.cfg.VSNNUM
	if vsn == 0 {
		vsn = DefaultVSNNUM
	}
	switch l.cfg.Mode {
	case Reset:
		_ = c.SetLinger(0)
		return
	case Silent:
		_, _ = io.Copy(io.Discard, c)
		return
	case Garbage:
		g := l.cfg.Garbage
		if len(g) == 0 {
			g = []byte(DefaultGarbage)
		}
		l.write(c, g)
		return
	}
	d := info.Description
	if d.Command() == "ping" {
		if l.cfg.PingAccept {
			l.write(c, tns.BuildAccept(308, fmt.Sprintf("(DESCRIPTION=(TMP=)(VSNNUM=%d)(ERR=0))", vsn)))
		} else {
			l.write(c, l.refuse(fmt.Sprintf("(DESCRIPTION=(TMP=)(VSNNUM=%d)(ERR=0)(ALIAS=LISTENER))", vsn)))
		}
		return
	}
	if !l.registered(d) {
		l.write(c, l.refuse(refuseText(vsn, 12514)))
		return
	}
	switch l.cfg.Mode {
	case Refuse:
		code := l.cfg.Err
		if code == 0 {
			code = 12514
		}
		l.write(c, l.refuse(refuseText(vsn, code)))
	case Accept:
		v := l.cfg.AcceptVersion
		if v == 0 {
			v = 318
		}
		if l.write(c, tns.BuildAccept(v, "")) {
			_, _ = io.Copy(c, c)
		}
	case Redirect:
		host, port, err := net.SplitHostPort(l.cfg.RedirectTo)
		if err != nil {
			l.fail(fmt.Errorf("RedirectTo: %w", err))
			return
		}
		addr := fmt.Sprintf("(ADDRESS=(PROTOCOL=tcp)(HOST=%s)(PORT=%s))", host, port)
		if l.cfg.RedirectData != "" {
			l.write(c, tns.BuildRedirectTo(addr, l.cfg.RedirectData))
		} else {
			l.write(c, tns.BuildRedirect(addr))
		}
	}
}

// registered tells whether d asks for a registered service (any, when no
// Services are set).
func (l *Listener) registered(d tns.Description) bool {
	l.mu.Lock()
	services := l.services
	l.mu.Unlock()
	if len(services) == 0 {
		return true
	}
	for _, s := range services {
		if (d.ServiceName() != "" && strings.EqualFold(s, d.ServiceName())) || (d.SID() != "" && strings.EqualFold(s, d.SID())) {
			return true
		}
	}
	return false
}

// refuseText is the text of a REFUSE shaped like the captured 10g one: the
// ERR and an ERROR_STACK.
func refuseText(vsn uint32, code int) string {
	return fmt.Sprintf("(DESCRIPTION=(TMP=)(VSNNUM=%d)(ERR=%d)(ERROR_STACK=(ERROR=(CODE=%d)(EMFI=4))))", vsn, code, code)
}

// refuse is a REFUSE carrying text with user reason 0x22, as the captured
// one, in the layout the Config asks for.
func (l *Listener) refuse(text string) []byte {
	if l.cfg.RefuseApart {
		return tns.BuildRefuseApart(0x22, 0, text)
	}
	return tns.BuildRefuse(0x22, 0, text)
}

func (l *Listener) write(c net.Conn, b []byte) bool {
	if _, err := c.Write(b); err != nil {
		if !clientGone(err) && !errors.Is(err, syscall.EPIPE) {
			l.fail(fmt.Errorf("write answer: %w", err))
		}
		return false
	}
	return true
}

// clientGone reports errors that mean the client left (closed, reset) or
// the listener was closed: not the listener's failure.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// maxConnectPackets bounds how many packets make one CONNECT: the CONNECT
// and the DATA packets of its connect data.
const maxConnectPackets = 16

// readConnect reads a whole CONNECT, with the DATA packets carrying long
// connect data, and returns its exact bytes.
func readConnect(c net.Conn) ([]byte, tns.ConnectInfo, error) {
	var raw []byte
	for range maxConnectPackets {
		pkt, err := tns.ReadPacket(c, tns.Length16, 0)
		if err != nil {
			return nil, tns.ConnectInfo{}, err
		}
		raw = append(raw, pkt.Raw...)
		info, err := tns.ParseConnectData(raw)
		if errors.Is(err, tns.ErrIncomplete) {
			continue
		}
		if err != nil {
			return nil, tns.ConnectInfo{}, fmt.Errorf("client's CONNECT: %w", err)
		}
		return raw, info, nil
	}
	return nil, tns.ConnectInfo{}, fmt.Errorf("client's CONNECT: no connect data after %d packets", maxConnectPackets)
}
