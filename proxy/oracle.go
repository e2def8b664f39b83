package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/tns"
)

// Oracle Net awareness. tnsguard reads only the first packets of a session
// (tns package): the app's CONNECT, for its service name, and
// the backend's first answer, to hold back a REFUSE that another server may
// not give, to let a RESEND through, and to warn about a REDIRECT. Nothing
// after the backend's ACCEPT is ever read.

// ErrRefused: a listener refused the session (TNS REFUSE) with a code that
// means another server may take it.
var ErrRefused = errors.New("listener refused the session")

// refusedError carries the REFUSE packet, so the app gets it unchanged when
// no server takes the session.
type refusedError struct {
	code   int
	packet []byte
}

func (e *refusedError) Error() string        { return fmt.Sprintf("%v: ORA-%05d", ErrRefused, e.code) }
func (e *refusedError) Is(target error) bool { return target == ErrRefused }

// serviceRefusal tells a REFUSE about what the app asked for (a service or
// SID this listener does not know: ORA-12514, ORA-12505) from one about the
// instance (no handler, blocked, restricted): only the latter says anything
// about the server for other sessions.
func serviceRefusal(code int) bool { return code == 12514 || code == 12505 }

// telling reports whether REFUSE err should replace kept as the one the app
// gets if no server takes the session: a REFUSE about the instance (no
// handler, restricted, blocked) says what is wrong, and a later one about
// the name (ORA-12514 from a standby that does not offer the service)
// must not hide it. Otherwise the later REFUSE wins.
func telling(err, kept error) bool {
	var re, ke *refusedError
	if !errors.As(kept, &ke) || !errors.As(err, &re) {
		return true
	}
	return !serviceRefusal(re.code) || serviceRefusal(ke.code)
}

// looksLikeTNSLocked reports whether the app's opening bytes start with a
// TNS CONNECT header; only then is the backend's first packet read as TNS.
// The caller holds s.mu.
func (s *session) looksLikeTNSLocked() bool { return startsWithConnect(s.replay, nil) }

// mayBeginConnect reports whether b, the app's opening so far, may still be
// a TNS CONNECT or its start, by the rules openingUnfinishedLocked reads a
// short opening with. A wait for the CONNECT (waitForConnect) ends as soon
// as it cannot: an app of another protocol whose first message is shorter
// than a TNS header (PING\r\n, an echo's "hi\n") waits for its answer, and
// was held until connect_budget, then reset with no server dialed.
func mayBeginConnect(b []byte) bool {
	if len(b) >= tns.HeaderLen {
		return startsWithConnect(b, nil)
	}
	if tlsHandshake(b) || len(b) >= 2 && int(b[0])<<8|int(b[1]) < tns.HeaderLen {
		return false
	}
	for i := 2; i < min(len(b), 5); i++ {
		if i < 4 && b[i] != 0 || i == 4 && tns.PacketType(b[i]) != tns.TypeConnect {
			return false // bytes 2-3 are a first packet's checksum (0), byte 4 its type
		}
	}
	return true
}

// startsWithConnect reports whether the opening kept so far (kept) followed
// by b starts with a TNS CONNECT header: the app's opening as it is held
// (looksLikeTNSLocked), or, when it outgrows replay_bytes, with the bytes
// that overflowed it, so that a listener's REFUSE to such an app is still
// seen for what it is (refuseBeyondReplay).
func startsWithConnect(kept, b []byte) bool {
	var head [tns.HeaderLen]byte
	n := copy(head[:], kept)
	n += copy(head[n:], b)
	if n < tns.HeaderLen || tns.PacketType(head[4]) != tns.TypeConnect || tlsHandshake(head[:]) {
		return false // not a CONNECT, without building ParseHeader's error (called several times per session)
	}
	h, err := tns.ParseHeader(head[:], tns.Length16)
	return err == nil && h.Type == tns.TypeConnect
}

// refuseBeyondReplay counts and logs, as refusePassed does, a listener's
// REFUSE to an Oracle app whose CONNECT was longer than replay_bytes: it
// goes to the app as it came (there is nothing to replay to another server),
// and that app got no server all the same. A REDIRECT to such an app goes
// to it as it came too (nothing is kept to follow it with), and is counted
// and logged as one passed on: the app dials the node itself.
func (s *session) refuseBeyondReplay(srv *failover.Server, first []byte) {
	pkt, err := tns.ClassifyFirst(first)
	if h, herr := tns.ParseHeader(first, tns.Length16); errors.Is(err, tns.ErrIncomplete) && herr == nil && h.Type == tns.TypeRedirect {
		// The REDIRECT's data is still on its way (it is passed on as it
		// comes): counted all the same, without its address.
		s.redirectPassed(srv, "", s.backend.Config.Redirect == "follow")
		return
	}
	if err != nil {
		return
	}
	switch pkt.Type {
	case tns.TypeRefuse:
		if code, ok := pkt.Refuse.Err(); ok && code != 0 {
			s.refusePassed(srv, code)
		}
	case tns.TypeRedirect:
		s.redirectPassed(srv, pkt.Redirect.Address, s.backend.Config.Redirect == "follow")
	}
}

// tlsHandshake reports whether b starts like a TLS (or SSL 3) handshake
// record: type 0x16, version 3.x. That is a TCPS client's ClientHello, whose
// byte 4, the low byte of the record's length, is 1 (a TNS CONNECT's type)
// for one host name length in 256, for every connection of that app. Read
// as TNS, it is a CONNECT of 0x1603 bytes that never completes: such apps
// waited until connect_budget on a listener with routes, then were reset,
// and were reset instead of failed over when a server died before its
// ServerHello. No driver sends a CONNECT packet of 5635 bytes (connect
// data over 230 bytes goes in DATA packets).
func tlsHandshake(b []byte) bool {
	return len(b) >= 2 && b[0] == 0x16 && b[1] == 0x03
}

// wholeClientHello reports whether b starts with a whole TLS ClientHello:
// handshake records (type 0x16, version 3.0 to 3.4, a length no TLS record
// exceeds) that hold all of a ClientHello message (type 1): a TCPS app's
// whole opening, which a server answers with its ServerHello, as a
// listener answers a whole CONNECT. An app that closes while a server
// holds it has given up (appGaveUp): a TLS client whose FIN comes before
// the server's first flight can never send its Finished, and none sends
// it by itself (Go's crypto/tls refuses CloseWrite before the handshake
// completes; openssl s_client holds it until the handshake is done; node's
// tls sends it at once only for an app that calls end() before the
// handshake, within halfCloseGrace). A ClientHello may span records
// (openssl s_client -split_send_frag): until 2026-12-01 a first record
// whole was taken for all of it, and the server that waited for the rest
// was blamed for the app's close. One cut short is no opening a server
// can answer (openingUnfinishedLocked).
func wholeClientHello(b []byte) bool {
	if len(b) < 6 || !tlsHandshake(b) || b[5] != 1 {
		return false
	}
	var head [4]byte // the handshake message's type and length
	got := 0         // bytes of the message in whole records
	for len(b) >= 5 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 4 {
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > 1<<14 || len(b) < 5+n {
			return false
		}
		if got < len(head) {
			copy(head[got:], b[5:5+n])
		}
		got += n
		if got >= len(head) && got >= len(head)+(int(head[1])<<16|int(head[2])<<8|int(head[3])) {
			return true
		}
		b = b[5+n:]
	}
	return false
}

// openingUnfinishedLocked reports whether the app's opening is one that no
// listener can answer, so that a backend's failure before its first byte
// is the app's doing, not the server's: a listener waits for the rest of
// a packet, or drops what it cannot read. That is
//   - the start of a CONNECT header (5 to 7 bytes), or a CONNECT whose
//     packets are incomplete (a lying length, connect data that never
//     comes) or malformed, whatever the backend did;
//   - fewer than 5 bytes that may begin a TNS header, when the backend
//     stayed silent (no client sends its first packet piecemeal);
//   - with health.check = "tnsping", where the servers are known to be
//     listeners, any opening that is not a CONNECT (a port scanner).
//
// silent is true when the backend said nothing until connect_budget. The
// caller holds s.mu.
func (s *session) openingUnfinishedLocked(silent bool) bool {
	b := s.replay
	if s.overflow {
		return false
	}
	if len(b) == 0 {
		// The app has not sent its CONNECT again after a RESEND (or has
		// sent nothing). Its doing when the listener waited for it (silent,
		// or it ended after silentAppGrace: INBOUND_CONNECT_TIMEOUT); a
		// listener that died at once failed on its own, while the CONNECT
		// was still on its way: the next server gets it.
		return s.resendOwed && (silent || time.Since(s.resendAt) >= silentAppGrace)
	}
	if s.clientEOF && tlsHandshake(b) && !wholeClientHello(b) {
		// A TCPS app that closed with its ClientHello cut short (in its
		// record, or a record still to come): nothing more comes, and no
		// TLS server answers it. Until 2026-12-01 it was replayed to the
		// next server at answer_timeout, whose close without a byte was
		// that server's failure: one such app opened a healthy standby's
		// circuit (failures = 2), and the apps after it waited on the hung
		// primary.
		return true
	}
	listener := s.backend.Config.Health.Check == "tnsping"
	if len(b) < tns.HeaderLen {
		// Bytes 2-3 of a first packet's header are 0 (checksum), byte 4
		// is its type, bytes 0-1 its length.
		for i := 2; i < min(len(b), 4); i++ {
			if b[i] != 0 {
				return listener
			}
		}
		if len(b) < 5 {
			return silent || listener
		}
		return tns.PacketType(b[4]) == tns.TypeConnect && int(b[0])<<8|int(b[1]) >= tns.HeaderLen || listener
	}
	if !s.looksLikeTNSLocked() {
		return listener
	}
	info, err := tns.ParseConnectData(b)
	if errors.Is(err, tns.ErrDescription) {
		// A driver's unescaped CID (go-ora's os.Args[0]: C:\Program
		// Files (x86)\app.exe) is a CONNECT a listener answers. Nothing
		// else that fails to parse is: "()" or garbage would have every
		// server blamed in turn, and their circuits opened by one app.
		_, err = tns.ParseDescriptionCID(info.ConnectData)
	}
	return err != nil // text that does not parse here does not at the listener either
}

// noteConnectLocked reads the service name of the app's CONNECT once it is
// complete. Logs carry the service name and nothing else of the connect
// data: the CID's program, host and OS user are the client's business.
// The caller holds s.mu and is the session's own goroutine (it sets
// s.serviceName and s.service, which only that goroutine reads until the
// session has ended).
func (s *session) noteConnectLocked() {
	if s.connectSeen || len(s.replay) == 0 {
		return
	}
	if len(s.replay) >= tns.HeaderLen && (tns.PacketType(s.replay[4]) != tns.TypeConnect || tlsHandshake(s.replay)) {
		s.connectSeen = true // not Oracle Net, or not a CONNECT: nothing to read (and no parse error to build)
		return
	}
	if !s.connectWait.Ready(s.replay) {
		// Not whole yet. Routing calls this after every read of the app:
		// parsing the opening each time cost all its bytes so far, and a
		// 64 KiB CONNECT sent a byte per segment up to 8 GB of copying.
		return
	}
	info, err := tns.ParseConnectData(s.replay)
	if errors.Is(err, tns.ErrIncomplete) {
		return
	}
	s.connectSeen = true
	var name string
	switch {
	case errors.Is(err, tns.ErrDescription):
		name = tns.LooseService(info.ConnectData) // CID values with parentheses: the service still counts
	case err != nil:
		return
	default:
		name = info.Description.ServiceName()
		if name == "" {
			name = info.Description.SID()
		}
	}
	s.oracleApp = true
	s.resendOwed = false                // a RESEND's CONNECT came again, whole: the app waits for its answer
	s.serviceName = strings.Clone(name) // not a view into the connect data, which may be 64 KiB
	s.serviceShown = shownText(name, maxServiceLen)
	s.service = serviceLabel(s.lcfg, name)
}

// noteConnect is noteConnectLocked for a session whose dials failed: the
// app's CONNECT is read though no backend answered it, so that the end of a
// session that reached no server (an outage) carries its service in
// tnsguard_sessions_total, /api/resets and the log. Only the session's own
// goroutine calls it.
func (s *session) noteConnect() {
	s.mu.Lock()
	s.noteConnectLocked()
	s.mu.Unlock()
}

// shownText is v as logs and /api show text a peer wrote (a service name,
// a REDIRECT's address): control characters written as \xNN, so that no
// line break splits a text-format log line (hclog writes a value with one
// as an indented block of lines, where a client could start a line of its
// own); bytes that are not UTF-8 written as \xNN too (hclog writes them
// raw: grep then takes the log file for binary, journald the line for a
// blob); other characters that are not printable (bidi overrides such as
// U+202E, which make the status page show another name; U+2028) written as
// \uNNNN; cut to at most limit bytes at a character boundary, so that no
// peer makes a log line longer than pipelines keep (journald's 48 KiB,
// Docker's 16 KiB). A backslash is written as \\: these escapes are ours
// alone (a client's text \x0a is not shown as a line break is), and hclog's
// text format, which writes a quoted value's '"' as \" and its '\' as it
// is, would otherwise end the value at a client's \" for logfmt readers,
// and the client's text after it read as fields of the line (client=,
// cause=).
func shownText(v string, limit int) string {
	clean := true
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] >= 0x7f || v[i] == '\\' {
			clean = false
			break
		}
	}
	if clean && len(v) <= limit {
		return v
	}
	var b strings.Builder
	for i, r := range v {
		n := b.Len()
		switch {
		case r == utf8.RuneError && invalidAt(v, i):
			fmt.Fprintf(&b, `\x%02x`, v[i]) // one byte that is not UTF-8; range goes on at the next
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r == '\\':
			b.WriteString(`\\`)
		case !unicode.IsPrint(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		if b.Len() > limit {
			return b.String()[:n]
		}
	}
	return b.String()
}

// invalidAt tells whether v holds a byte that is not UTF-8 at i.
func invalidAt(v string, i int) bool {
	_, size := utf8.DecodeRuneInString(v[i:])
	return size == 1
}

// serviceLabel is the metric label of a service: its spelling in the
// listener's services or routes when listed there (case-insensitively),
// else "other", so labels stay bounded whatever apps send.
func serviceLabel(l *config.Listener, name string) string {
	if name == "" {
		return "other"
	}
	for _, s := range l.Services {
		if sameService(s, name) {
			return s
		}
	}
	for s := range l.Routes {
		if s != "*" && sameService(s, name) {
			return s
		}
	}
	return "other"
}

// sameService compares service names as Oracle does: ASCII letters in
// either case. strings.EqualFold also folds Unicode (the long s of "ſALES",
// the Kelvin sign), so such a name would be routed and counted as SALES,
// though the listener sees other bytes and refuses it.
func sameService(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// routeFor picks the backend of a service by the listener's routes:
// the route of its name (case-insensitive), else "*", else the listener's
// backend.
func routeFor(l *config.Listener, service string) string {
	if service != "" {
		for s, b := range l.Routes {
			if s != "*" && sameService(s, service) {
				return b
			}
		}
	}
	if b, ok := l.Routes["*"]; ok {
		return b
	}
	return l.Backend
}

// serviceBackends gives each service label a listener's sessions can carry
// (serviceLabel) the backend they end on (routeFor): its services and
// routes, and "other" (another service, or none read) on its default route.
func serviceBackends(l *config.Listener) map[string]string {
	out := map[string]string{}
	if b := routeFor(l, ""); b != "" {
		out["other"] = b
	}
	for _, s := range l.Services {
		if b := routeFor(l, s); b != "" {
			out[serviceLabel(l, s)] = b
		}
	}
	for s := range l.Routes {
		if s != "*" {
			out[serviceLabel(l, s)] = routeFor(l, s)
		}
	}
	return out
}

// route waits, on a listener with routes, until the app's CONNECT is in
// hand (waitForConnect), then gives the session the backend its service
// routes to. An opening still unfinished when connect_budget passed ends
// the session (ErrBadOpening): the budget is spent, and no listener could
// answer it.
func (s *session) route() error {
	cfg := s.lcfg
	if len(cfg.Routes) == 0 {
		return nil
	}
	name := s.waitForConnect()
	s.mu.Lock()
	stuck := s.routeWaitOver && !s.connectSeen && s.openingUnfinishedLocked(true)
	// An app that sent nothing at all named no service: no server was
	// dialed for it, and none failed (it is no no_backend).
	silent := s.routeWaitOver && !s.connectSeen && len(s.replay) == 0 && !s.overflow
	s.mu.Unlock()
	if stuck || silent {
		err := fmt.Errorf("%w: not complete within connect_budget", ErrBadOpening)
		if silent && !stuck {
			err = fmt.Errorf("%w: the app sent nothing within connect_budget", ErrBadOpening)
		}
		s.abort(SideClient, PhaseOpening, err, "reset", nil)
		return err
	}
	if b := s.backs[routeFor(cfg, name)]; b != nil && b != s.backend {
		s.switchBackend(b)
	}
	return nil
}

// waitForConnect waits until the app's CONNECT is in hand and returns its
// service name, or until the app stops, or connect_budget passes
// (routeWaitOver), or the opening outgrows replay_bytes or turns out not to
// be TNS (a TLS ClientHello, say): then its service cannot be read, and it
// is "".
func (s *session) waitForConnect() string {
	timer := time.AfterFunc(s.backend.Config.ConnectBudget.Duration, func() {
		s.mu.Lock()
		s.routeWaitOver = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noteConnectLocked()
	for !s.connectSeen && !s.routeWaitOver && !s.clientEOF && s.clientErr == nil && s.ctx.Err() == nil &&
		len(s.replay) < *s.backend.Config.ReplayBytes && !s.replayHeld && mayBeginConnect(s.replay) {
		s.cond.Wait()
		s.noteConnectLocked()
	}
	return s.serviceName
}

// serviceFirst is the service the session asks for, in the spelling the
// backend's memory of service refusals keys it by (serviceKey), when that
// memory may reorder its plan; and when the session's connect_budget
// begins. On a listener without routes, which dials before the CONNECT
// comes, the session then waits for the CONNECT as route does, so that a
// server that refused the service lately (the old primary after a
// switchover) is not dialed first. The wait is the app's: the budget
// begins when the app spoke (at once, for a driver), and at the wait's end
// for an app that has sent nothing yet, which is dialed then, as before.
// An opening still unfinished at the wait's end ends the session
// (ErrBadOpening), as on a listener with routes: no listener could answer
// it. A backend with no live refusal costs nothing: no wait, "" at once,
// and the budget begins at began.
func (s *session) serviceFirst(began time.Time) (string, time.Time, error) {
	if !s.backend.ServiceRefusalsLive(time.Now()) {
		return "", began, nil
	}
	if len(s.lcfg.Routes) > 0 {
		return serviceKey(s.serviceName), began, nil // route waited for it
	}
	name := serviceKey(s.waitForConnect())
	s.mu.Lock()
	stuck := s.routeWaitOver && !s.connectSeen && len(s.replay) > 0 && s.openingUnfinishedLocked(true)
	s.mu.Unlock()
	if stuck {
		err := fmt.Errorf("%w: not complete within connect_budget", ErrBadOpening)
		s.abort(SideClient, PhaseOpening, err, "reset", nil)
		return "", began, err
	}
	if spoke, ok := s.spoke(); !ok {
		began = time.Now()
	} else if spoke.After(began) {
		began = spoke
	}
	return name, began, nil
}

// serviceKey is name in the one spelling of every name sameService takes
// for the same (ASCII letters in lower case): the key of the backend's
// memory of service refusals. A name longer than maxRememberedService is
// "": none is remembered for it (256 entries of 64 KiB names would be
// 16 MiB per backend, and no listener registers such a name).
func serviceKey(name string) string {
	if len(name) > maxRememberedService {
		return ""
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}

// maxRememberedService bounds the service names the memory of service
// refusals keeps (serviceKey).
const maxRememberedService = 255

// serviceRefused notes that srv refused the session's service (a listener
// that does not offer it, serviceRefusal): new sessions for it try srv
// after the other servers for a while (failover.Server.RefusedService),
// and so do this session's later rounds (plan). The first time, a line
// says so (within the listener's log budget: the services are the apps').
// It returns the service's key ("" for none read).
func (s *session) serviceRefused(srv *failover.Server, plan *failover.Plan, code int) string {
	s.noteConnect() // the REFUSE answered it: it is here
	key := s.rememberRefusal(srv, code)
	if key != "" {
		plan.ForService(key)
	}
	return key
}

// rememberRefusal tells srv's backend that srv refused the session's
// service with code (failover.Server.RefusedService), with a line the first time,
// and returns the service's key ("" for none read: nothing is remembered).
// The session's CONNECT has been read (noteConnectLocked).
func (s *session) rememberRefusal(srv *failover.Server, code int) string {
	key := serviceKey(s.serviceName)
	if key == "" {
		return ""
	}
	if d := srv.RefusedService(key, code); d > 0 && s.l.takeLogLine("service-refused") {
		s.logger().Info("server refused service: new sessions for it try this server last", "server", srv.Address, "for", d.String())
	}
	return key
}

// servedService tells srv's backend that srv took the session for its
// service (its first answer, first, is no REFUSE): a refusal of the
// service it gave before is forgotten. Only the session's own goroutine
// calls it, after noteConnectLocked read the CONNECT.
func (s *session) servedService(srv *failover.Server, first []byte) {
	if len(first) >= tns.HeaderLen && tns.PacketType(first[4]) == tns.TypeRefuse {
		return // a REFUSE passed on (a code not in refuse_errors): not served
	}
	srv.Answered() // the stuck waits gated on srv's first session may come (failover.Server.takeScout)
	if !s.backend.ServiceRefusalsKept() {
		return // nothing to forget
	}
	if key := serviceKey(s.serviceName); key != "" {
		srv.ServedService(key)
	}
}

// inspectFirst reads the rest of the backend's first TNS packet (buf holds
// n bytes of it) and decides: a REFUSE that retry_on "refuse" covers is held
// back (refusedError); a RESEND goes to the app and the next packet is read
// on the same connection (the app sends its CONNECT again, which replaces
// the one kept for a replay); a REDIRECT is passed on with a warning; the
// rest is passed on. It returns the bytes to give the app, and the pooled
// buffer it holds now (nil for none): after a RESEND the next answer is
// awaited holding no buffer, as the first was (firstAnswer).
func (s *session) inspectFirst(conn *net.TCPConn, srv *failover.Server, buf *[]byte, n int, deadline time.Time) (*net.TCPConn, *[]byte, []byte, error) {
	cfg := s.backend.Config
	data := (*buf)[:n]
	hops := 0 // REDIRECTs followed
	// Follows are counted once the answer they led to goes to the app: an
	// attempt whose node could not be reached, or whose node's REFUSE is
	// held back for a re-dial, kept no app on tnsguard (each re-dial would
	// count again: 29 for one app during an instance restart).
	followed := func() {
		if hops > 0 {
			s.p.metrics.TNSFollowed.WithLabelValues(s.l.name, cfg.Name, srv.Address).Add(float64(hops))
		}
	}
	if owed := s.answerDeadline(deadline); owed.After(deadline) {
		// The app spoke late: the rest of the answer, and a REDIRECT's
		// node, get the time its first bytes bought (firstAnswer), not a
		// budget that ended before the app spoke.
		deadline = owed
	}
	var more []byte
	for {
		// The answer is classified once it is whole (wait frames each of
		// its packets once): classifying it after every read cost all its
		// bytes so far each time, seconds of CPU for a 64 KiB REDIRECT whose
		// data came in small DATA packets a byte per segment.
		var wait tns.AnswerWait
		for !wait.Ready(data) && len(data) < tns.DefaultMaxPacket {
			if more == nil {
				more = make([]byte, 4096)
			}
			conn.SetReadDeadline(deadline)
			m, rerr := conn.Read(more)
			conn.SetReadDeadline(time.Time{})
			if rerr != nil {
				if errors.Is(rerr, io.EOF) {
					rerr = fmt.Errorf("backend closed inside its first packet: %w", rerr)
				}
				return conn, buf, nil, rerr
			}
			data = append(data, more[:m]...)
		}
		pkt, err := tns.ClassifyFirst(data)
		if err != nil {
			followed()
			return conn, buf, data, nil // not TNS after all: pass it on untouched
		}
		switch pkt.Type {
		case tns.TypeRefuse:
			code, ok := pkt.Refuse.Err()
			if ok && cfg.Retries("refuse") && slices.Contains(cfg.RefuseErrors, code) {
				return conn, buf, nil, &refusedError{code: code, packet: append([]byte(nil), data[:pkt.Len]...)}
			}
			if ok && code != 0 { // ERR=0 is a tnsping's answer, not a refusal
				s.refusePassed(srv, code)
			}
		case tns.TypeRedirect:
			if target, ok := redirectTarget(pkt.Redirect); ok && cfg.Redirect == "follow" && hops < maxRedirectHops {
				if gone := s.appGone(); gone != nil {
					// The app closed while its CONNECT waited (its own
					// connect timeout): its driver would not dial the node
					// now, and a CONNECT there is a server process for no
					// one, as a re-dial's would be (appGone).
					return conn, buf, nil, gone
				}
				hops++
				next, nbuf, m, err := s.followRedirect(conn, target, pkt.Redirect, deadline)
				if next != nil {
					conn = next
				}
				if err != nil {
					return conn, buf, nil, fmt.Errorf("following the REDIRECT to %s: %w", target, err)
				}
				s.p.pool.put(buf)
				buf, data = nbuf, (*nbuf)[:m]
				continue
			}
			s.redirectPassed(srv, pkt.Redirect.Address, cfg.Redirect == "follow")
		case tns.TypeResend:
			if len(data) > pkt.Len || pkt.Len != tns.HeaderLen {
				followed()
				return conn, buf, data, nil // more than a bare RESEND: pass it all on
			}
			s.mu.Lock()
			s.replay, s.connectSeen, s.resendOwed, s.oracleApp = s.replay[:0], false, true, false // the app sends its CONNECT again
			s.connectWait.Reset()
			s.resendAt = time.Now()
			s.mu.Unlock()
			if _, err := s.client.Write(data); err != nil {
				return conn, buf, nil, err
			}
			s.toClient.Add(int64(len(data)))
			s.series.bytesDown.Add(float64(len(data)))
			s.p.pool.put(buf) // the app's CONNECT again, then the answer: maybe seconds
			var m int
			buf, m, err = s.firstAnswer(conn, deadline, answerBound{})
			if err != nil {
				return conn, nil, nil, err
			}
			data = (*buf)[:m]
			continue
		}
		followed()
		return conn, buf, data, nil
	}
}

// redirectPassed counts and logs a REDIRECT that goes to the app as it
// came: the app dials the address it names itself, around tnsguard.
// following tells a backend with redirect = "follow" (this REDIRECT is one
// it does not follow).
func (s *session) redirectPassed(srv *failover.Server, addr string, following bool) {
	cfg := s.backend.Config
	s.p.metrics.TNSRedirects.WithLabelValues(s.l.name, cfg.Name, srv.Address).Inc()
	if s.l.takeLogLine("REDIRECT") {
		msg := "backend sent a TNS REDIRECT: the app will dial this address directly, bypassing tnsguard; set redirect = \"follow\" on the backend, or point tnsguard at the node listeners, not a SCAN address"
		if following {
			msg = "backend sent a TNS REDIRECT that tnsguard does not follow (no TCP address, a third in a row, or a CONNECT longer than replay_bytes): the app will dial it directly, bypassing tnsguard"
		}
		s.logger().Warn(msg, "server", srv.Address, "redirect_to", shownText(addr, maxRedirectShown))
	}
}

// refusePassed counts and logs a REFUSE that goes to the app as it came
// (retry_on without "refuse", or a code not in refuse_errors): the app got
// no server, as one handed the last REFUSE at the end of the budget did, so
// it is a no_backend rejection (TnsguardAppsRejected), not a quiet session
// that worked. The session itself ends as any other whose backend closed.
func (s *session) refusePassed(srv *failover.Server, code int) {
	if serviceRefusal(code) {
		// Remembered as a held-back one is (serviceRefused): the app got
		// it, but the sessions after it for that service dial the other
		// servers first, and answer_timeout moves none of them to this
		// one. Without that, after a switchover every app of the
		// service met the old primary's ORA-12514, and in a logon storm
		// a slow primary's sessions were moved, one each, to a standby
		// that refused them.
		s.rememberRefusal(srv, code)
	}
	s.l.rejected("no_backend")
	if s.l.takeLogLine("no-backend") {
		s.logger().Warn("no backend for new session: the app gets the listener's REFUSE",
			"server", srv.Address, "error", fmt.Sprintf("ORA-%05d", code),
			"retry_on", fmt.Sprintf("%q", s.backend.Config.RetryOn))
	}
}

// deliverRefuse gives the app the last REFUSE a listener sent, unchanged,
// when no server took the session: its driver then reports the real
// ORA error instead of a broken connection.
func (s *session) deliverRefuse(err error) {
	var re *refusedError
	if !errors.As(err, &re) {
		return
	}
	s.client.SetWriteDeadline(time.Now().Add(time.Second))
	if n, werr := s.client.Write(re.packet); werr == nil {
		s.toClient.Add(int64(n))
		s.series.bytesDown.Add(float64(n))
		s.mu.Lock()
		s.refusedApp = re.code
		s.halfCloseLocked(SideClient, s.client) // the app's close that answers it is no reset
		s.mu.Unlock()
	}
}

// noAnswer maps the cause of the last dial's failure, when no server
// answered the app's CONNECT at all, to the ORA error the app's driver
// gives for that failure on a direct connection: no listener on the port,
// no answer within the connect timeout, no route to the host.
func noAnswer(cause string) (code int, ok bool) {
	switch cause {
	case "refused":
		return 12541, true
	case "timeout":
		return 12170, true
	case "unreachable":
		return 12543, true
	}
	return 0, false
}

// refuseFor is the REFUSE an Oracle client gets instead of a reset when no
// server answered its CONNECT (every dial failed, the last with last), or
// nil. A reset shows in drivers as a broken connection (NJS-500, "connection
// reset by peer"), which app teams take for a firewall; the REFUSE makes
// them show ORA-12541, ORA-12170, ORA-12543 or ORA-12545, as a direct connection to
// the dead server would. Only for an app whose opening was a whole TNS
// CONNECT tnsguard could read, that still waits for its answer.
func (s *session) refuseFor(last error) error {
	code, ok := noAnswer(Cause(last))
	if dnsErr := (*net.DNSError)(nil); errors.As(last, &dnsErr) && dnsErr.IsNotFound {
		// The server's name does not resolve: ORA-12545, as on a direct
		// connection to it (the "target host does not exist").
		code, ok = 12545, true
	}
	s.mu.Lock()
	s.noteConnectLocked()
	ok = ok && s.oracleApp && !s.overflow && !s.resendOwed && !s.clientEOF
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return &refusedError{code: code, packet: tns.BuildRefuse(0x22, 0, fmt.Sprintf(
		"(DESCRIPTION=(TMP=)(ERR=%d)(ERROR_STACK=(ERROR=(CODE=%d)(EMFI=4))))", code, code))}
}

// backendName is the name of the session's backend, for other goroutines
// (housekeeping): routing may switch it while they look.
func (s *session) backendName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backend.Config.Name
}

// switchBackend moves a session that has not dialed yet to another backend
// (routing by service), or one between two dials to its backend's new
// definition after a reload (open).
func (s *session) switchBackend(b *failover.Backend) {
	series := s.l.seriesFor(b.Config.Name)
	s.series.active.Dec()
	series.active.Inc()
	s.mu.Lock()
	s.backend, s.series, s.ka[legIndex(SideBackend)] = b, series, b.Config.Keepalive.Settings()
	s.mu.Unlock()
}

// maxRedirectHops bounds the REDIRECTs one session follows: a SCAN
// listener's to a node, and one more (a node's to a dispatcher).
const maxRedirectHops = 2

// redirectTarget is the "host:port" of the first TCP address a REDIRECT
// names; false when it names none tnsguard can dial for the app (TCPS,
// whose TLS is the app's to make; IPC).
func redirectTarget(r tns.Redirect) (string, bool) {
	for _, a := range r.Addresses() {
		if !strings.EqualFold(a.Protocol, "tcp") || a.Host == "" || a.Port == "" {
			continue
		}
		// HOST=[] (brackets around nothing) is "[]:1521", which a dial
		// takes for this host: not an address to dial for the app.
		if host, _, err := net.SplitHostPort(a.HostPort()); err == nil && host != "" {
			return a.HostPort(), true
		}
	}
	return "", false
}

// redirectLoopError: the address a REDIRECT named is one of tnsguard's
// own listeners that the session's app came through. A re-dial would be
// redirected there again: the session ends as a self-dial does, and the
// server that sent the REDIRECT is not blamed.
type redirectLoopError struct {
	loop    []string
	counted bool // the dial's accepted side counted it (selfDials.countedBy)
}

func (e *redirectLoopError) Error() string {
	return fmt.Sprintf("it leads back through tnsguard (%s)", strings.Join(e.loop, " -> "))
}

// followRedirect does for the app what its driver does with a REDIRECT:
// it dials target and sends the app's CONNECT there, with the REDIRECT's
// reconnect data (else the app's own connect data) and the flag Oracle's
// drivers set (tns.BuildRedirectedConnect), answers a RESEND itself, and
// returns the first answer: an ACCEPT goes to the app as if the first
// listener had sent it, and the app stays on tnsguard, its keepalive and
// its resets. The new connection replaces old as the session's backend
// connection as soon as it is made (old is closed then), and is returned
// whatever happens after. buf holds the answer's m bytes.
func (s *session) followRedirect(old *net.TCPConn, target string, r tns.Redirect, deadline time.Time) (conn *net.TCPConn, buf *[]byte, m int, err error) {
	s.mu.Lock()
	opening := slices.Clone(s.replay)
	s.mu.Unlock()
	data := r.ReconnectData
	if data == "" {
		info, err := tns.ParseConnectData(opening)
		if err != nil && !errors.Is(err, tns.ErrDescription) { // an unescaped CID: a listener reads it
			return nil, nil, 0, err
		}
		data = info.ConnectData
	}
	connect, err := tns.BuildRedirectedConnect(opening, data)
	if err != nil {
		return nil, nil, 0, err
	}
	dctx, cancel := context.WithDeadline(s.ctx, deadline)
	conn, err = s.backend.DialRedirected(dctx, target)
	cancel()
	if err != nil {
		return nil, nil, 0, err
	}
	if loop, counted := s.p.selfDials.add(conn, s.in.chain, s.l.name); loop != nil {
		conn.SetLinger(0)
		conn.Close()
		return nil, nil, 0, &redirectLoopError{loop: loop, counted: counted}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		conn.Close()
		return nil, nil, 0, net.ErrClosed
	}
	// The new leg's keepalive is still to be set (a dial leaves it when
	// Late), though housekeeping may have set it on old already.
	s.conn, s.kaLate = conn, s.backend.KeepaliveLate
	s.mu.Unlock()
	old.Close()
	for resends := 0; ; resends++ {
		conn.SetWriteDeadline(deadline)
		_, err = conn.Write(connect)
		conn.SetWriteDeadline(time.Time{})
		if err != nil {
			return conn, nil, 0, err
		}
		if buf, m, err = s.firstAnswer(conn, deadline, answerBound{}); err != nil {
			return conn, nil, 0, err
		}
		if resends < 2 && m == tns.HeaderLen && bytes.Equal((*buf)[:m], tns.BuildResend()) {
			s.p.pool.put(buf) // a listener's RESEND: the CONNECT again
			continue
		}
		return conn, buf, m, nil
	}
}
