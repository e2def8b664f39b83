package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tnsguard/tnsguard/config"
)

// PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary), in
// and out.
//
// In: a listener with proxy_protocol = "optional" or "required" reads the
// header itself, before the session begins, from a small bufio.Reader over
// the bare socket, under a read deadline of proxy_header_timeout. The
// socket is never wrapped: once the header is read the session works on the
// bare *net.TCPConn (spliced data path), and the few app bytes the reader
// took past the header become the session's early bytes, sent to the
// backend before anything else (session.sendEarly, the one place).
// Headers are honoured only from trusted_proxies; an untrusted source that
// sends one is closed, so no client can choose the address tnsguard
// checks, limits and logs. Memory per connection is bounded: the reader
// holds headerBufSize bytes and the library refuses a v2 header longer than
// proxyproto.MaxV2HeaderSize (4 KiB); a v1 line longer than 107 bytes or
// split over several reads is refused at once, and a header that trickles
// is closed at the timeout.
//
// Out: a backend with send_proxy_protocol = "v1" or "v2" gets a header on
// every connection, right after the dial and before the replayed opening
// bytes, so a re-dial sends it again.

// headerBufSize is the reader's buffer: a v1 line fits (107 bytes), and at
// most this many app bytes are read past a header.
const headerBufSize = 512

// Reasons a connection is refused before its session (the reason label of
// tnsguard_sessions_rejected_total).
const (
	rejectProxyUntrusted = "proxy_untrusted" // required: source not in trusted_proxies; or an untrusted source sent a header
	rejectProxyMissing   = "proxy_missing"   // required: a trusted source sent no header
	rejectProxyInvalid   = "proxy_invalid"   // a malformed, oversized or non-TCP header
	rejectProxyTimeout   = "proxy_timeout"   // the header did not arrive within proxy_header_timeout
)

// localCheck is not a rejection: a LOCAL connection (the load balancer's
// own) that ended before its first byte, a health check. It is closed
// without a count.
const localCheck = "local_check"

// errHeaderTimeout is a header read cut by proxy_header_timeout or shutdown.
var errHeaderTimeout = errors.New("PROXY header not complete within proxy_header_timeout")

// inbound is who a new connection really comes from: the socket's peer, or
// the client named by a trusted PROXY header.
type inbound struct {
	client netip.AddrPort // the app; used for allow, per-source limits, logs
	dst    net.Addr       // where the app connected to (the header's destination, or our socket)
	via    netip.Addr     // the load balancer that sent the header; invalid when none
	early  []byte         // app bytes read past the header: the backend gets them first
	chain  []string       // when the app is a dial of this proxy's own: the listeners it came through (selfdial.go)
}

// socketInbound is the connection as the socket sees it.
func socketInbound(c *net.TCPConn) inbound {
	in := inbound{dst: c.LocalAddr()}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		in.client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return in
}

// readInbound applies the listener's proxy_protocol to a new connection.
// On refusal it returns the reject reason and the error to log; the
// connection has not been used for anything else yet.
func readInbound(ctx context.Context, c *net.TCPConn, cfg *config.Listener) (inbound, string, error) {
	in := socketInbound(c)
	if cfg.ProxyProtocol == "off" || cfg.ProxyProtocol == "" {
		return in, "", nil
	}
	trusted := len(cfg.TrustedNets) > 0 && config.Allowed(cfg.TrustedNets, in.client.Addr()) // an empty list trusts no one
	required := cfg.ProxyProtocol == "required"
	if required && !trusted {
		return in, rejectProxyUntrusted, fmt.Errorf("source %s is not in trusted_proxies", in.client.Addr())
	}

	hdr, early, err := readHeader(ctx, c, cfg.ProxyHeaderTimeout.Duration)
	switch {
	case errors.Is(err, errHeaderTimeout):
		return in, rejectProxyTimeout, err
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		if required {
			return in, rejectProxyMissing, errors.New("no PROXY header from a trusted source, and proxy_protocol is required")
		}
		in.early = early // optional: plain app bytes
		return in, "", nil
	case err != nil:
		if !trusted {
			// Starts like a header but is not one: still no plain data
			// from a client that tried to name its own address.
			return in, rejectProxyUntrusted, fmt.Errorf("untrusted source sent what looks like a PROXY header: %w", err)
		}
		return in, rejectProxyInvalid, err
	case !trusted:
		return in, rejectProxyUntrusted, fmt.Errorf("PROXY header from %s, which is not in trusted_proxies", in.client.Addr())
	}

	in.early = early
	if hdr.Command.IsLocal() {
		// The load balancer's own connection: its address is the real one.
		// Most are health checks (HAProxy's `send-proxy-v2 check`, a
		// tnsguard upstream's check) that end without a byte: wait for the
		// first bytes, as optional mode does, and end a check before it
		// dials, counted as no session and no reset.
		if len(in.early) == 0 {
			b, err := readFirstBytes(ctx, c, cfg.ProxyHeaderTimeout.Duration)
			if err != nil {
				return in, localCheck, err
			}
			in.early = b // nil after a silent timeout: a server-speaks-first protocol
		}
		return in, "", nil
	}
	src, srcOK := hdr.SourceAddr.(*net.TCPAddr)
	dst, dstOK := hdr.DestinationAddr.(*net.TCPAddr)
	if !srcOK || !dstOK || hdr.TransportProtocol.IsDatagram() {
		return in, rejectProxyInvalid, fmt.Errorf("PROXY header for %s: only TCP over IPv4 or IPv6 is proxied", transportName(byte(hdr.TransportProtocol)))
	}
	sap := src.AddrPort()
	in.via = in.client.Addr()
	in.client = netip.AddrPortFrom(sap.Addr().Unmap(), sap.Port())
	in.dst = dst
	return in, "", nil
}

// readHeader reads a PROXY header from the bare socket within timeout (or
// until ctx ends). It returns the header and the bytes read past it;
// proxyproto.ErrNoProxyProtocol with the bytes read so far when the
// connection does not start with a header signature (including a client
// that sent nothing at all before the timeout, or left without a byte); errHeaderTimeout when bytes
// came but no complete header in time; another error for a malformed one,
// or for one the connection ended in (even within its signature).
func readHeader(ctx context.Context, c *net.TCPConn, timeout time.Duration) (*proxyproto.Header, []byte, error) {
	src := &headerSource{c: c}
	br := bufio.NewReaderSize(src, headerBufSize)
	var hdr *proxyproto.Header
	var err error
	clearErr, cut := readWithin(ctx, c, timeout, func() {
		if err = awaitSignature(br); err == nil {
			hdr, err = proxyproto.Read(br)
		}
	})
	if cut != nil {
		return nil, nil, cut
	}
	if clearErr != nil && err == nil {
		err = clearErr
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		if src.n == 0 {
			// Nothing at all arrived: no header, a client that waits for
			// the server (optional mode lets it through).
			return nil, nil, proxyproto.ErrNoProxyProtocol
		}
		return nil, nil, fmt.Errorf("%w: %w", errHeaderTimeout, err)
	}
	if errors.Is(err, proxyproto.ErrNoProxyProtocol) && src.n > 0 {
		// The library says "no header" also when the connection ended (a
		// FIN) before the whole signature came: 10 bytes of a v2
		// signature, "PROX". Bytes that are only the start of a
		// signature, then the end, are a header cut short, as a reset
		// there or a FIN after the signature is: not app data, which
		// would carry the header's bytes to the backend.
		if b, _ := br.Peek(br.Buffered()); len(b) == src.n && signaturePrefix(b) {
			return nil, nil, fmt.Errorf("PROXY header cut short: the connection ended %d bytes into its signature: %w", len(b), io.ErrUnexpectedEOF)
		}
	}
	if err != nil && !errors.Is(err, proxyproto.ErrNoProxyProtocol) {
		if src.n == 0 {
			// The client left (a FIN, a reset) before its first byte: it
			// sent no header, bad or good, and no data, as a silent one.
			return nil, nil, proxyproto.ErrNoProxyProtocol
		}
		return nil, nil, err
	}
	var early []byte
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		early = append([]byte(nil), b...)
	}
	return hdr, early, err
}

// awaitSignature reads until the client's first bytes either hold a whole
// PROXY v1 or v2 signature (nil: proxyproto.Read takes it from there) or
// differ from both (proxyproto.ErrNoProxyProtocol: plain app bytes, left
// in br). proxyproto.Read peeks 5 bytes after a "P" or a "\r", and then
// 12 whatever the 5 were: a plain message shorter than that which starts
// so ("PING\r\n") waited for bytes its client would never send, and was
// reset at proxy_header_timeout. A read error is returned as
// proxyproto.Read returns it (io.EOF as ErrNoProxyProtocol).
func awaitSignature(br *bufio.Reader) error {
	for n := 1; ; {
		if _, err := br.Peek(n); err != nil {
			if errors.Is(err, io.EOF) {
				return proxyproto.ErrNoProxyProtocol
			}
			return err
		}
		b, _ := br.Peek(br.Buffered())
		if bytes.HasPrefix(b, proxyproto.SIGV1) || bytes.HasPrefix(b, proxyproto.SIGV2) {
			return nil
		}
		if !signaturePrefix(b) {
			return proxyproto.ErrNoProxyProtocol
		}
		n = len(b) + 1
	}
}

// SkipHeader reads past a PROXY header (v1 or v2) at the start of br, if
// its first bytes are one, and drops it: for the admin listener, where a
// load balancer that sends PROXY headers puts one on its health checks too
// (an AWS NLB target group with proxy protocol v2 on does). It returns nil
// when the bytes are not a header (they stay in br), an error for a
// malformed one or a failed read.
func SkipHeader(br *bufio.Reader) error {
	if err := awaitSignature(br); err != nil {
		if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
			return nil
		}
		return err
	}
	_, err := proxyproto.Read(br)
	return err
}

// signaturePrefix tells whether b is the start of a PROXY v1 or v2
// signature, shorter than the signature: what proxyproto.Read saw when the
// connection ended before it could tell a header from app data.
func signaturePrefix(b []byte) bool {
	for _, sig := range [][]byte{proxyproto.SIGV1, proxyproto.SIGV2} {
		if len(b) > 0 && len(b) < len(sig) && bytes.HasPrefix(sig, b) {
			return true
		}
	}
	return false
}

// readFirstBytes waits up to timeout (or until ctx ends) for the first
// bytes after a LOCAL header. It returns them; nil and no error when
// nothing came in time; an error when the peer left (a FIN or a reset)
// without a byte, or at shutdown.
func readFirstBytes(ctx context.Context, c *net.TCPConn, timeout time.Duration) ([]byte, error) {
	buf := make([]byte, headerBufSize)
	var n int
	var err error
	clearErr, cut := readWithin(ctx, c, timeout, func() { n, err = c.Read(buf) })
	if cut != nil {
		return nil, cut
	}
	if clearErr != nil && n > 0 {
		return nil, clearErr
	}
	if n > 0 {
		return buf[:n:n], nil
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		return nil, nil
	}
	if err == nil {
		err = io.EOF
	}
	return nil, fmt.Errorf("the load balancer's own connection (PROXY LOCAL) ended before a byte: a health check: %w", err)
}

// readWithin runs read, which reads c, with c's read deadline timeout from
// now, brought forward to now when ctx ends (a shutdown), and clears the
// deadline after. cut is the error that ends the caller's read at once: the
// deadline could not be set (read did not run), or ctx cut the read
// (errHeaderTimeout, "shutting down"); clearErr is that of clearing it.
func readWithin(ctx context.Context, c *net.TCPConn, timeout time.Duration, read func()) (clearErr, cut error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	read()
	if !stop() {
		return nil, fmt.Errorf("%w: shutting down", errHeaderTimeout)
	}
	return c.SetReadDeadline(time.Time{}), nil
}

// headerSource counts the bytes read while looking for a header, to tell
// a silent client from a header that trickles.
type headerSource struct {
	c *net.TCPConn
	n int
}

func (h *headerSource) Read(b []byte) (int, error) {
	n, err := h.c.Read(b)
	h.n += n
	return n, err
}

// sendEarly sends the app bytes read past a PROXY header (or while looking
// for one) before the client pump starts: they go through openingBytes like
// any other opening bytes, so they are replayed on a re-dial too.
func (s *session) sendEarly() error {
	b := s.in.early
	s.in.early = nil
	if len(b) == 0 {
		return nil
	}
	return s.openingBytes(b)
}

// sendProxyHeader writes the backend's send_proxy_protocol header on a new
// backend connection, naming the real client and the address it connected
// to.
func (s *session) sendProxyHeader(conn *net.TCPConn) error {
	version := s.backend.Config.SendProxyVersion()
	if version == 0 {
		return nil
	}
	src := net.TCPAddrFromAddrPort(s.in.client)
	dst := s.in.dst
	if dst == nil {
		dst = s.client.LocalAddr()
	}
	if _, err := proxyproto.HeaderProxyFromAddrs(version, src, dst).WriteTo(conn); err != nil {
		return fmt.Errorf("sending the PROXY header: %w", err)
	}
	return nil
}

// transportName says a PROXY v2 header's address family and protocol
// byte in words (0x31: a UNIX stream socket), for an error message.
func transportName(b byte) string {
	family := map[byte]string{0: "an unspecified family", 1: "IPv4", 2: "IPv6", 3: "a UNIX socket"}[b>>4]
	proto := map[byte]string{0: "unspecified", 1: "stream", 2: "datagram"}[b&0xf]
	if family == "" || proto == "" {
		return fmt.Sprintf("transport 0x%02x", b)
	}
	return family + ", " + proto
}
