package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
)

// Oracle clients that use TLS (TCPS: Autonomous Database on 1522, on-prem
// listeners on 2484) send a TLS ClientHello first; their TNS CONNECT is
// inside TLS. tnsguard carries such sessions as it carries any TCP: these
// tests run Go's crypto/tls client and server through it.

// selfSigned is a certificate for a TLS server made for the test.
func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "db.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"db.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsServe is a server handler that completes a TLS handshake, then hands
// the TLS connection to fn.
func tlsServe(cert tls.Certificate, fn func(tc *tls.Conn, raw *net.TCPConn)) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return
		}
		tc.SetDeadline(time.Time{})
		fn(tc, c)
	}
}

// tlsEcho echoes inside TLS; at the app's close_notify it closes its own
// TLS write side, then the TCP connection.
func tlsEcho(tc *tls.Conn, raw *net.TCPConn) {
	io.Copy(tc, tc)
	tc.CloseWrite()
	raw.CloseWrite()
}

// tlsDial runs a TLS handshake with serverName (sent as SNI) through addr.
func tlsDial(addr, serverName string, limit time.Duration) (*tls.Conn, *net.TCPConn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(limit))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, nil, err
	}
	tc.SetDeadline(time.Time{})
	return tc, c.(*net.TCPConn), nil
}

// clientHello is the first bytes Go's TLS client sends with serverName.
func clientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	b.SetReadDeadline(time.Now().Add(2 * time.Second))
	head := make([]byte, 5)
	if _, err := io.ReadFull(b, head); err != nil {
		t.Fatal(err)
	}
	return head
}

// helloLike is a server name whose ClientHello's byte 4 (the low byte of
// the TLS record length) is want. A TNS header keeps its packet type in
// byte 4, so with want 1 (CONNECT) the ClientHello starts like a TNS
// CONNECT header of 0x1603 bytes: it happens for one host name length in
// 256, deterministically for every connection of that app.
func helloLike(t testing.TB, want byte) string {
	t.Helper()
	for n := 1; n < 300; n++ {
		name := "db" + strings.Repeat("x", n%50)
		for i := 0; i < n/50; i++ {
			name = strings.Repeat("y", 50) + "." + name
		}
		name += ".test"
		if h := clientHello(t, name); h[0] == 0x16 && h[4] == want {
			return name
		}
	}
	t.Fatalf("no server name gives a ClientHello with byte 4 = %d", want)
	return ""
}

// helloNotLike is a server name whose ClientHello's byte 4 is neither a
// CONNECT's type nor, to be safe, a REFUSE's or REDIRECT's.
func helloNotLike(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"db.test", "dbx.test", "dbxx.test"} {
		if h := clientHello(t, name); h[4] > 5 {
			return name
		}
	}
	t.Fatal("no ordinary server name")
	return ""
}

// tlsRoundTrips checks small and bulk echoes inside TLS, then the app's
// close: close_notify and a TCP half-close, answered in kind.
func tlsRoundTrips(t *testing.T, tc *tls.Conn, raw *net.TCPConn) {
	t.Helper()
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	small := make([]byte, 17)
	for i := 0; i < 200; i++ {
		msg := []byte(fmt.Sprintf("ping %03d ........", i))
		if _, err := tc.Write(msg); err != nil {
			t.Fatalf("small write %d: %v", i, err)
		}
		if _, err := io.ReadFull(tc, small); err != nil || !bytes.Equal(small, msg) {
			t.Fatalf("small echo %d: %q, %v", i, small, err)
		}
	}
	bulk := make([]byte, 8<<20)
	rand.Read(bulk)
	werr := make(chan error, 1)
	go func() {
		_, err := tc.Write(bulk)
		if err == nil {
			err = tc.CloseWrite() // close_notify
		}
		if err == nil {
			err = raw.CloseWrite() // and the TCP half-close
		}
		werr <- err
	}()
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatalf("bulk echo: read %d bytes, then %v; want the whole echo and the server's close_notify", len(got), err)
	}
	if !bytes.Equal(got, bulk) {
		t.Fatalf("bulk echo: %d bytes, differ from the %d sent", len(got), len(bulk))
	}
	if err := <-werr; err != nil {
		t.Fatalf("bulk write and half-close: %v", err)
	}
	if _, err := readErr(raw, 3*time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("after the server's close_notify: %v; want its FIN", err)
	}
}

// A TLS session works end to end through tnsguard: small and bulk
// messages, close_notify with half-closes both ways; it is counted as a
// session of service "other", ended ok.
func TestTLSSessionEndToEnd(t *testing.T) {
	cert := selfSigned(t)
	be := newServer(t, tlsServe(cert, tlsEcho))
	h, logs := startProxyLog(t, oneBackendConfig(be.address))
	tc, raw, err := tlsDial(h.addr("l"), helloNotLike(t), 3*time.Second)
	if err != nil {
		t.Fatalf("handshake through tnsguard: %v", err)
	}
	defer raw.Close()
	tlsRoundTrips(t, tc, raw)
	raw.Close()
	waitFor(t, 3*time.Second, "the session's end, ok, service other", func() bool {
		return counter(h.m.SessionsTotal, "l", "b", "other", "ok") == 1
	})
	if s := logs.String(); strings.Contains(s, "\\x16\\x03") || strings.Contains(s, "service=\\x") {
		t.Fatalf("log quotes TLS bytes:\n%s", s)
	}
}

// A backend that resets a TLS session after its handshake: the app gets
// the reset (ECONNRESET), not an end of stream it would take for a close.
func TestTLSBackendResetPassedOnAsRST(t *testing.T) {
	cert := selfSigned(t)
	be := newServer(t, tlsServe(cert, func(tc *tls.Conn, raw *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(tc, buf)
		resetConn(raw)
	}))
	h := startProxy(t, oneBackendConfig(be.address))
	tc, raw, err := tlsDial(h.addr("l"), helloNotLike(t), 3*time.Second)
	if err != nil {
		t.Fatalf("handshake through tnsguard: %v", err)
	}
	defer raw.Close()
	tc.Write([]byte("hello"))
	tc.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = tc.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read %v; want ECONNRESET", err)
	}
}

// dieBeforeServerHello is a server that reads part of the ClientHello and
// resets: a listener restarting, or a node dying, before it answers.
func dieBeforeServerHello(c *net.TCPConn) {
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	c.Read(make([]byte, 5))
	time.Sleep(20 * time.Millisecond)
	resetConn(c)
}

// helloCase is a server name to dial with, and which ClientHello it makes.
type helloCase struct {
	name       string
	serverName string
}

// helloCases are an ordinary ClientHello and one whose byte 4 is 1, which
// starts like a TNS CONNECT header.
func helloCases(t *testing.T) []helloCase {
	return []helloCase{
		{"ordinary ClientHello", helloNotLike(t)},
		{"ClientHello with byte 4 = 1", helloLike(t, 1)},
	}
}

// A server that dies before its ServerHello: the ClientHello is replayed to
// the next server, and the handshake completes there. Checked with an
// ordinary ClientHello and with one whose byte 4 is 1, which starts like a
// TNS CONNECT header: tnsguard took the latter for a cut-short CONNECT
// ("bad opening") and reset the app instead of trying the next server.
func TestTLSClientHelloReplayedToNextServer(t *testing.T) {
	cert := selfSigned(t)
	for _, tc := range helloCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			dying := newServer(t, dieBeforeServerHello)
			good := newServer(t, tlsServe(cert, tlsEcho))
			h := startProxy(t, backendTOML(`connect_timeout = "500ms"
connect_budget = "3s"
backoff = "20ms"
retry_on = ["connect", "reset"]
  [backend.health]
  check = "off"`, fmt.Sprintf("address = %q", dying.address), fmt.Sprintf("address = %q;priority = 1", good.address)))
			conn, raw, err := tlsDial(h.addr("l"), tc.serverName, 5*time.Second)
			if err != nil {
				t.Fatalf("handshake through tnsguard, first server dying: %v (first server accepted %d, second %d)", err, dying.accepts(), good.accepts())
			}
			defer raw.Close()
			tlsRoundTrips(t, conn, raw)
			if v := counter(h.m.Redials, "l", "b", "reset"); v != 1 {
				t.Fatalf("tnsguard_redials_total{reason=reset} = %v, want 1", v)
			}
		})
	}
}

// tlsRoutesConfig is routesConfig with a short connect_budget on both
// backends, so that a wait for a CONNECT that never comes shows.
func tlsRoutesConfig(sales, orders string) string {
	return strings.ReplaceAll(routesConfig(sales, orders), "  [backend.health]", "connect_timeout = \"500ms\"\nconnect_budget = \"2s\"\n  [backend.health]")
}

// On a listener with routes, a TLS app's session goes to the "*" route at
// once (no CONNECT can be read): neither does it wait for connect_budget,
// nor is it reset. Until this fix, a ClientHello whose byte 4 is 1 was
// taken for the start of a CONNECT of 0x1603 bytes: the session waited for
// the rest until connect_budget, then the app was reset ("bad opening").
func TestTLSOnRoutesListenerGoesToDefaultRoute(t *testing.T) {
	cert := selfSigned(t)
	for _, tc := range helloCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			sales := newServer(t, tlsServe(cert, tlsEcho))
			orders := newServer(t, tlsServe(cert, tlsEcho))
			h := startProxy(t, tlsRoutesConfig(sales.address, orders.address))
			start := time.Now()
			conn, raw, err := tlsDial(h.addr("l"), tc.serverName, 5*time.Second)
			if err != nil {
				t.Fatalf("handshake through a routing listener: %v after %v", err, time.Since(start).Round(time.Millisecond))
			}
			defer raw.Close()
			if took := time.Since(start); took > time.Second {
				t.Fatalf("handshake took %v: the session waited for a CONNECT", took)
			}
			tlsRoundTrips(t, conn, raw)
			if sales.accepts() != 0 || orders.accepts() != 1 {
				t.Fatalf("sales accepted %d, orders %d; want the default route's server only", sales.accepts(), orders.accepts())
			}
			raw.Close()
			waitFor(t, 3*time.Second, "the session's end, labelled other", func() bool {
				return counter(h.m.SessionsTotal, "l", "orders-db", "other", "ok") == 1
			})
		})
	}
}

// When no server answers a TLS app, it gets a reset: never a TNS REFUSE
// written into its TLS stream (its TLS stack would report a garbled record,
// not ORA-12541), whatever its ClientHello's bytes look like.
func TestTLSAppGetsNoTNSRefuseWhenNoServerAnswers(t *testing.T) {
	for _, tc := range helloCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			h := startProxy(t, backendTOML(`connect_timeout = "200ms"
connect_budget = "1s"
backoff = "20ms"
  [backend.health]
  check = "off"`, fmt.Sprintf("address = %q", closedPort(t))))
			_, _, err := tlsDial(h.addr("l"), tc.serverName, 5*time.Second)
			if err == nil {
				t.Fatal("handshake succeeded with no server")
			}
			if strings.Contains(err.Error(), "record") || strings.Contains(err.Error(), "alert") {
				t.Fatalf("app's TLS stack got bytes: %v; want a reset", err)
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("handshake failed with %v; want ECONNRESET", err)
			}
		})
	}
}

// tcpsListener plays a listener inside TLS: it reads the app's CONNECT
// (with the DATA packets of long connect data) and refuses it with code,
// as a listener whose service is not registered does.
func tcpsListener(cert tls.Certificate, code int, got chan<- string) func(c *net.TCPConn) {
	return tlsServe(cert, func(tc *tls.Conn, raw *net.TCPConn) {
		defer raw.Close()
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		var opening []byte
		for i := 0; i < 16; i++ {
			pkt, err := tns.ReadPacket(tc, tns.Length16, 0)
			if err != nil {
				return
			}
			opening = append(opening, pkt.Raw...)
			info, err := tns.ParseConnectData(opening)
			if errors.Is(err, tns.ErrIncomplete) {
				continue
			}
			got <- info.Description.ServiceName()
			tc.Write(tns.BuildRefuse(0x22, 0, fmt.Sprintf(
				"(DESCRIPTION=(TMP=)(ERR=%d)(ERROR_STACK=(ERROR=(CODE=%d)(EMFI=4))))", code, code)))
			tc.CloseWrite()
			// Read on to the app's close_notify and FIN: closing with
			// them unread would reset the connection (the kernel answers
			// what arrives after close with RST), and the session would
			// end as a reset or as ok depending on which came first.
			io.Copy(io.Discard, tc)
			return
		}
	})
}

// go-ora with SSL=true through tnsguard: its TNS CONNECT travels inside
// TLS, so tnsguard neither reads the service (the session is "other", the
// listener's routes send it to "*") nor holds back a REFUSE: the listener's
// ORA-12514 reaches the app unchanged, with no failover to the next server
// even though retry_on has "refuse" (the REFUSE is encrypted).
func TestGoOraTCPSThroughTnsguard(t *testing.T) {
	cert := selfSigned(t)
	salesGot, ordersGot := make(chan string, 4), make(chan string, 4)
	sales := newServer(t, tcpsListener(cert, 12514, salesGot))
	orders := newServer(t, tcpsListener(cert, 12514, ordersGot))
	h := startProxy(t, strings.ReplaceAll(tlsRoutesConfig(sales.address, orders.address), "connect_budget", "retry_on = [\"connect\", \"reset\", \"refuse\"]\nconnect_budget"))
	db, err := sql.Open("oracle", "oracle://scott:tiger@"+h.addr("l")+"/SALES?SSL=true&SSL%20VERIFY=false")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = db.PingContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "ORA-12514") {
		t.Fatalf("go-ora over TLS: %v; want the listener's ORA-12514", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("go-ora waited %v", took)
	}
	select {
	case svc := <-ordersGot:
		if svc != "SALES" {
			t.Fatalf("the listener read service %q inside TLS", svc)
		}
	default:
		t.Fatalf("the default route's server got no CONNECT (sales accepted %d, orders %d)", sales.accepts(), orders.accepts())
	}
	if sales.accepts() != 0 || orders.accepts() != 1 {
		t.Fatalf("sales accepted %d, orders %d; want the \"*\" route's server once", sales.accepts(), orders.accepts())
	}
	// The fake listener closes after its REFUSE; whether its close reaches
	// the app as a FIN or, with the app's close crossing it, a reset is
	// the kernels' race, not tnsguard's: the label is what counts here.
	waitFor(t, 5*time.Second, "the session's end, labelled other", func() bool {
		return counter(h.m.SessionsTotal, "l", "orders-db", "other", "ok")+counter(h.m.SessionsTotal, "l", "orders-db", "other", "reset") == 1
	})
}
