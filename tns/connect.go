package tns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// MaxInlineConnectData is the longest connect data a client puts inside its
// CONNECT packet; longer connect data follows in DATA packets.
const MaxInlineConnectData = 230

// connectFixedLen is the end of the fixed CONNECT fields every layout has
// (version through the two NSI flag bytes at 32-33). 10g clients put the
// connect data right there.
const connectFixedLen = 34

// connectLargeSizesEnd is the end of the 32-bit SDU (58) and TDU (62) fields
// newer clients (go-ora, python-oracledb) add before the connect data.
const connectLargeSizesEnd = 66

// ConnectInfo is what a client's CONNECT says.
type ConnectInfo struct {
	Version        uint16 // protocol version the client wants, e.g. 317
	LowestVersion  uint16 // lowest version it accepts
	ServiceOptions uint16
	SDU            uint32 // session data unit the client asks for
	TDU            uint32 // transport data unit

	// ConnectData is the connect descriptor text, e.g.
	// "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=...))(ADDRESS=...))".
	ConnectData string
	// Description is ConnectData parsed; nil when the connect data is empty.
	Description Description
	// DataFollows is true when the connect data came in DATA packets after the
	// CONNECT (clients do so when it is longer than 230 bytes).
	DataFollows bool
	// Len is how many bytes of the opening the CONNECT and its DATA packets
	// take.
	Len int
}

// ParseConnectData reads the CONNECT at the start of opening, the bytes a
// client sent first, together with the DATA packets that carry its connect
// data when that did not fit inside. It returns ErrIncomplete while more
// bytes are needed, ErrUnexpectedType as soon as the first header is not a
// CONNECT, and ErrMalformed when fields point outside the packet or the
// connect data does not parse. It never reads past what the packets announce
// and allocates at most the connect data's length (below 64 KiB).
func ParseConnectData(opening []byte) (ConnectInfo, error) {
	pkt, err := firstOfType(opening, TypeConnect)
	if err != nil {
		return ConnectInfo{}, err
	}
	raw := pkt.Raw
	if len(raw) < connectFixedLen {
		return ConnectInfo{}, fmt.Errorf("%w: CONNECT of %d bytes, need %d", ErrMalformed, len(raw), connectFixedLen)
	}
	info := ConnectInfo{
		Version:        binary.BigEndian.Uint16(raw[8:]),
		LowestVersion:  binary.BigEndian.Uint16(raw[10:]),
		ServiceOptions: binary.BigEndian.Uint16(raw[12:]),
		SDU:            uint32(binary.BigEndian.Uint16(raw[14:])),
		TDU:            uint32(binary.BigEndian.Uint16(raw[16:])),
		Len:            len(raw),
	}
	dataLen := int(binary.BigEndian.Uint16(raw[24:]))
	dataOff := int(binary.BigEndian.Uint16(raw[26:]))
	fixedEnd := len(raw)
	if dataLen > 0 {
		if dataOff < connectFixedLen {
			return ConnectInfo{}, fmt.Errorf("%w: CONNECT data offset %d inside the fixed fields", ErrMalformed, dataOff)
		}
		fixedEnd = min(dataOff, len(raw))
	}
	if fixedEnd >= connectLargeSizesEnd {
		if sdu := binary.BigEndian.Uint32(raw[58:]); sdu != 0 {
			info.SDU = sdu
		}
		if tdu := binary.BigEndian.Uint32(raw[62:]); tdu != 0 {
			info.TDU = tdu
		}
	}

	var data []byte
	switch {
	case dataLen == 0:
		return info, nil
	case dataOff+dataLen <= len(raw):
		data = raw[dataOff : dataOff+dataLen]
	case dataOff < len(raw):
		return ConnectInfo{}, fmt.Errorf("%w: CONNECT holds part of its %d bytes of connect data", ErrMalformed, dataLen)
	default:
		info.DataFollows = true
		var used int
		if data, used, err = followingData(opening[len(raw):], dataLen, "CONNECT's connect data"); err != nil {
			return ConnectInfo{}, err
		}
		info.Len += used
	}
	info.ConnectData = string(data)
	desc, err := ParseDescription(info.ConnectData)
	if err != nil {
		return info, fmt.Errorf("CONNECT: %w: %w", ErrDescription, err)
	}
	info.Description = desc
	return info, nil
}

// dataPayload returns what a DATA packet carries after its 2-byte data flags.
func dataPayload(p Packet) ([]byte, error) {
	if len(p.Raw) < HeaderLen+2 {
		return nil, fmt.Errorf("%w: DATA of %d bytes has no data flags", ErrMalformed, len(p.Raw))
	}
	return p.Raw[HeaderLen+2:], nil
}

// ConnectWait follows an opening that grows as the client's bytes arrive,
// so that a caller waiting for its CONNECT calls ParseConnectData once, when
// it can say more than ErrIncomplete, instead of after every read: each
// packet of the opening is framed once, however many reads it came in.
// Parsing the whole opening after each read cost the time of all the bytes
// so far, again and again: a client sending a 64 KiB CONNECT (its connect
// data in many DATA packets) a byte per segment made the proxy copy some
// 8 GB. The zero value waits for a new opening.
type ConnectWait struct{ w dataWait }

// Ready reports whether ParseConnectData(opening) returns anything but
// ErrIncomplete. opening must be the one of the previous call with bytes
// appended; call Reset when the opening starts again. Ready costs the bytes
// of the packets completed since the previous call, and constant time for
// a packet still incomplete.
func (c *ConnectWait) Ready(opening []byte) bool {
	return c.w.ready(opening, func(raw []byte) (int, bool) {
		if len(raw) < connectFixedLen {
			return 0, true // malformed
		}
		dataLen := int(binary.BigEndian.Uint16(raw[24:]))
		dataOff := int(binary.BigEndian.Uint16(raw[26:]))
		if dataLen == 0 || dataOff < len(raw) {
			return 0, true // no connect data, inline, or malformed
		}
		return dataLen, false
	}, TypeConnect)
}

// Reset makes c wait for a new opening.
func (c *ConnectWait) Reset() { c.w = dataWait{} }

// AnswerWait is ConnectWait for a backend's first answer: Ready reports
// whether ClassifyFirst(b) returns anything but ErrIncomplete, framing
// each packet once (a REDIRECT's data, or a REFUSE's, may follow in DATA packets).
type AnswerWait struct{ w dataWait }

// Ready reports whether ClassifyFirst(b) returns anything but
// ErrIncomplete; b must be the b of the previous call with bytes appended.
func (a *AnswerWait) Ready(b []byte) bool {
	h, err := ParseHeader(b, Length16)
	if err != nil {
		return !errors.Is(err, ErrIncomplete)
	}
	switch h.Type {
	case TypeRefuse:
		return a.w.ready(b, func(raw []byte) (int, bool) {
			if len(raw) < 12 {
				return 0, true // malformed
			}
			n := int(binary.BigEndian.Uint16(raw[10:]))
			if 12+n <= len(raw) || len(raw) > 12 {
				return 0, true // inline, or malformed
			}
			return n, false // the text follows in DATA packets (ParseRefuse)
		}, TypeRefuse)
	case TypeRedirect:
		return a.w.ready(b, func(raw []byte) (int, bool) {
			if len(raw) < 10 {
				return 0, true // malformed
			}
			n := int(binary.BigEndian.Uint16(raw[8:]))
			if 10+n <= len(raw) || len(raw) > 10 {
				return 0, true // inline, or malformed
			}
			return n, false
		}, TypeRedirect)
	}
	return true // decided from the header
}

// dataWait frames the packets of an opening as it grows: the first packet
// (of type first), then the DATA packets carrying the data it announced
// and left to them (followingData).
type dataWait struct {
	// int32: a session keeps one (ConnectWait), and an opening is far
	// shorter (replay_bytes).
	next    int32 // offset of the first packet not yet framed; 0: the first packet is not framed yet
	pending int32 // data still to come in DATA packets
	seen    int32 // length of the bytes of the previous call
	done    bool  // the parser decides: more bytes change nothing (it reads no further)
}

// ready: follows, given the whole first packet, returns how many bytes of
// data follow it in DATA packets, or true when none do (the parser decides
// from the first packet alone).
func (w *dataWait) ready(b []byte, follows func(raw []byte) (int, bool), first PacketType) bool {
	if len(b) < int(w.seen) || len(b) > math.MaxInt32 {
		*w = dataWait{} // not the same bytes: start again
	}
	w.seen = int32(min(len(b), math.MaxInt32))
	if !w.done {
		w.done = w.frame(b, follows, first)
	}
	return w.done
}

func (w *dataWait) frame(b []byte, follows func(raw []byte) (int, bool), first PacketType) bool {
	if w.next == 0 {
		pkt, err := firstOfType(b, first)
		if err != nil {
			return !errors.Is(err, ErrIncomplete)
		}
		n, decided := follows(pkt.Raw)
		if decided {
			return true
		}
		w.next, w.pending = int32(len(pkt.Raw)), int32(n)
	}
	for {
		d, _, err := NextPacket(b[w.next:], Length16, 0)
		if err != nil {
			return !errors.Is(err, ErrIncomplete)
		}
		if d.Type != TypeData || len(d.Raw) < HeaderLen+2 {
			return true // ErrUnexpectedType, ErrMalformed
		}
		w.next += int32(len(d.Raw))
		w.pending -= int32(len(d.Raw) - (HeaderLen + 2))
		if w.pending <= 0 {
			return true // whole, or more than announced (ErrMalformed)
		}
	}
}
