package tns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// maxResends is how often a health check sends its CONNECT again when the
// listener answers RESEND. Listeners ask once; more is a loop.
const maxResends = 2

// PingResult is a live listener's answer to tnsping.
type PingResult struct {
	// Answer is TypeRefuse (current listeners) or TypeAccept (old ones).
	Answer PacketType
	// VSNNUM is the listener's version number, 0 when it sent none.
	VSNNUM uint32
	// Version is VSNNUM decoded, e.g. "19.0.0.0.0"; "" when it sent none.
	Version string
	// Data is the description the listener sent, e.g.
	// "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=0)(ALIAS=LISTENER))".
	Data string
}

// Ping does what tnsping does on conn, a fresh connection to a listener: it
// sends a CONNECT with (CONNECT_DATA=(COMMAND=ping)) and reads the answer. A
// REFUSE or ACCEPT carrying ERR=0 means the listener is alive; it proves
// nothing about the services behind it. Anything else returns an error
// matching ErrUnexpectedAnswer, or the I/O error. ctx bounds the whole
// exchange (errors.Is(err, context.DeadlineExceeded) when it ran out). The
// caller closes conn.
func Ping(ctx context.Context, conn net.Conn) (PingResult, error) {
	connect, err := BuildConnect(PingConnectData)
	if err != nil {
		return PingResult{}, err
	}
	pkt, err := exchange(ctx, conn, connect)
	if err != nil {
		return PingResult{}, fmt.Errorf("tns: ping: %w", err)
	}
	res := PingResult{Answer: pkt.Type}
	var desc Description
	code, hasCode := 0, false
	switch pkt.Type {
	case TypeRefuse:
		r, err := ParseRefuse(pkt.Raw)
		if err != nil {
			return PingResult{}, fmt.Errorf("tns: ping: %w", err)
		}
		res.Data, desc = r.Data, r.Description
		code, hasCode = r.Err()
	case TypeAccept:
		a, err := ParseAccept(pkt.Raw)
		if err != nil {
			return PingResult{}, fmt.Errorf("tns: ping: %w", err)
		}
		res.Data, desc = a.Data, a.Description
		code, hasCode = desc.Err()
	default:
		return PingResult{}, fmt.Errorf("%w: ping answered with %s", ErrUnexpectedAnswer, pkt.Type)
	}
	if !hasCode || code != 0 {
		return PingResult{}, fmt.Errorf("%w: ping answered with %s %s", ErrUnexpectedAnswer, pkt.Type, quoteShort(res.Data))
	}
	if v, ok := desc.VSNNUM(); ok && v != 0 { // 0: the listener keeps its version to itself
		res.VSNNUM, res.Version = v, DecodeVSNNUM(v)
	}
	return res, nil
}

// maxQuoted bounds how many characters of a listener's answer an error
// quotes: the health check logs the error, and a listener (or whatever
// answers on its port) may send 64 KiB of text.
const maxQuoted = 512

// quoteShort is data quoted (%q: control characters and invalid UTF-8
// escaped), cut to maxQuoted characters, with the size when cut.
func quoteShort(data string) string {
	if utf8.RuneCountInString(data) <= maxQuoted {
		return strconv.Quote(data)
	}
	return fmt.Sprintf("%.*q... (%d bytes)", maxQuoted, data, len(data))
}

// ProbeService asks the listener on conn whether service is registered, by
// sending the CONNECT a client would. REFUSE with ERR=12514 (service unknown)
// or 12505 (SID unknown) means not registered; ACCEPT, REDIRECT and other
// refusals mean registered, with the refusal's ERR in refuseErr. An ACCEPT
// makes the listener start a server process: the caller must close conn at
// once, and probe rarely. Answers that are none of these return an error
// matching ErrUnexpectedAnswer. ctx bounds the exchange.
func ProbeService(ctx context.Context, conn net.Conn, service string) (registered bool, refuseErr int, err error) {
	if service == "" || strings.ContainsAny(service, "()=\"\\ \t\r\n") {
		return false, 0, fmt.Errorf("tns: probe: invalid service name %q", service)
	}
	connect, err := BuildConnect(probeConnectData(service, conn.RemoteAddr()))
	if err != nil {
		return false, 0, fmt.Errorf("tns: probe %s: %w", service, err)
	}
	pkt, err := exchange(ctx, conn, connect)
	if err != nil {
		return false, 0, fmt.Errorf("tns: probe %s: %w", service, err)
	}
	switch pkt.Type {
	case TypeAccept, TypeRedirect:
		return true, 0, nil
	case TypeRefuse:
		r, err := ParseRefuse(pkt.Raw)
		if err != nil {
			return false, 0, fmt.Errorf("tns: probe %s: %w", service, err)
		}
		code, _ := r.Err()
		return code != 12514 && code != 12505, code, nil
	default:
		return false, 0, fmt.Errorf("%w: probe %s answered with %s", ErrUnexpectedAnswer, service, pkt.Type)
	}
}

// probeConnectData is the connect descriptor of a service probe, shaped like
// a thin driver's so the listener log reads naturally.
func probeConnectData(service string, remote net.Addr) string {
	var host, port string
	if remote != nil {
		var err error
		if host, port, err = net.SplitHostPort(remote.String()); err != nil {
			host = remote.String()
		}
	}
	leaf := func(k, v string) Node { return Node{Key: k, Value: v} }
	d := Description{{Key: "DESCRIPTION", Children: []Node{
		{Key: "CONNECT_DATA", Children: []Node{
			leaf("SERVICE_NAME", service),
			{Key: "CID", Children: []Node{leaf("PROGRAM", "tnsguard"), leaf("HOST", "tnsguard"), leaf("USER", "tnsguard")}},
		}},
		{Key: "ADDRESS", Children: []Node{leaf("PROTOCOL", "TCP"), leaf("HOST", host), leaf("PORT", port)}},
	}}}
	return d.String()
}

// exchange sends connect and returns the listener's answer, sending connect
// again when the listener answers RESEND.
func exchange(ctx context.Context, conn net.Conn, connect []byte) (pkt Packet, err error) {
	if err := ctx.Err(); err != nil {
		return Packet{}, err
	}
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		if err := conn.SetDeadline(deadline); err != nil {
			return Packet{}, err
		}
	}
	// A cancel without deadline interrupts the blocked read as well.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if stop() {
			_ = conn.SetDeadline(time.Time{})
		}
		if err != nil && (ctx.Err() != nil || hasDeadline && errors.Is(err, os.ErrDeadlineExceeded)) {
			cause := ctx.Err()
			if cause == nil {
				cause = context.DeadlineExceeded
			}
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}()
	for resends := 0; ; resends++ {
		if _, err := conn.Write(connect); err != nil {
			return Packet{}, err
		}
		pkt, err := ReadPacket(conn, Length16, DefaultMaxPacket)
		if err != nil {
			return Packet{}, err
		}
		if pkt.Type == TypeRefuse {
			return withRefuseData(conn, pkt)
		}
		if pkt.Type != TypeResend {
			return pkt, nil
		}
		if resends == maxResends {
			return Packet{}, fmt.Errorf("%w: RESEND after %d resent CONNECTs", ErrUnexpectedAnswer, resends)
		}
	}
}

// withRefuseData returns the REFUSE pkt with the DATA packets that carry
// its text appended to Raw, when it announces text it does not hold (a
// 12-byte REFUSE, the text in the next DATA packet, as node-oracledb reads
// it): ParseRefuse reads them. A listener answering a ping so would
// otherwise fail every check. The text is at most 64 KiB (a 16-bit length).
func withRefuseData(conn net.Conn, pkt Packet) (Packet, error) {
	if len(pkt.Raw) != 12 {
		return pkt, nil
	}
	n := int(binary.BigEndian.Uint16(pkt.Raw[10:]))
	raw := pkt.Raw
	for got := 0; got < n; {
		d, err := ReadPacket(conn, Length16, DefaultMaxPacket)
		if err != nil {
			return Packet{}, err
		}
		// An empty DATA packet is refused too: each one must bring text,
		// or a listener sending empty ones would grow raw until the
		// check's deadline.
		payload, err := dataPayload(d)
		if d.Type != TypeData || err != nil || len(payload) == 0 {
			return Packet{}, fmt.Errorf("%w: %s where the REFUSE's data should follow", ErrUnexpectedAnswer, d.Type)
		}
		got += len(payload)
		raw = append(raw, d.Raw...)
	}
	pkt.Raw = raw
	return pkt, nil
}
