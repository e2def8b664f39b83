package tns

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Refuse is a listener's REFUSE: the ORA error the client will show is in
// Data, e.g. "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=...))".
type Refuse struct {
	UserReason   uint8
	SystemReason uint8
	Data         string
	// Description is Data parsed; nil when Data is empty or does not parse.
	Description Description
	// Len is how many bytes the REFUSE and the DATA packets carrying its
	// data take.
	Len int
}

// Err returns the refusal's ERR=n (12514: service not registered, 0: the
// listener answering a ping) and whether Data carries one.
func (r Refuse) Err() (int, bool) {
	if r.Description != nil {
		return r.Description.Err()
	}
	return scanErr(r.Data)
}

// ParseRefuse reads the REFUSE packet at the start of b, and the DATA
// packets after it when the REFUSE announces data it does not hold: the
// layout a REDIRECT may use, which node-oracledb reads for a REFUSE too
// (its RefusePacket "overflow": a 12-byte REFUSE, the text in the next
// DATA packet).
func ParseRefuse(b []byte) (Refuse, error) {
	pkt, err := firstOfType(b, TypeRefuse)
	if err != nil {
		return Refuse{}, err
	}
	raw := pkt.Raw
	if len(raw) < 12 {
		return Refuse{}, fmt.Errorf("%w: REFUSE of %d bytes, need 12", ErrMalformed, len(raw))
	}
	n := int(binary.BigEndian.Uint16(raw[10:]))
	var data []byte
	used := 0
	switch {
	case 12+n <= len(raw):
		data = raw[12 : 12+n]
	case len(raw) > 12:
		return Refuse{}, fmt.Errorf("%w: REFUSE announces %d bytes of data, holds %d", ErrMalformed, n, len(raw)-12)
	default:
		if data, used, err = followingData(b[len(raw):], n, "REFUSE's data"); err != nil {
			return Refuse{}, err
		}
	}
	r := Refuse{UserReason: raw[8], SystemReason: raw[9], Data: string(data), Len: len(raw) + used}
	if n > 0 {
		r.Description, _ = ParseDescription(r.Data) // Err falls back to a text scan
	}
	return r, nil
}

// scanErr finds "(ERR=n)" in text that does not parse as a description,
// tolerating blanks as go-ora does.
func scanErr(s string) (int, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] != '(' {
			continue
		}
		j := skipBlanks(s, i+1)
		if j+3 > len(s) || !strings.EqualFold(s[j:j+3], "ERR") {
			continue
		}
		j = skipBlanks(s, j+3)
		if j >= len(s) || s[j] != '=' {
			continue
		}
		j = skipBlanks(s, j+1)
		n, digits := 0, 0
		for ; j < len(s) && s[j] >= '0' && s[j] <= '9' && digits < 9; j++ {
			n = n*10 + int(s[j]-'0')
			digits++
		}
		j = skipBlanks(s, j)
		if digits > 0 && j < len(s) && s[j] == ')' {
			return n, true
		}
	}
	return 0, false
}

func skipBlanks(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// Accept is a listener's ACCEPT: the session goes on, with the packets after
// it in LengthFormFor(Version).
type Accept struct {
	Version        uint16
	ServiceOptions uint16
	SDU            uint32
	TDU            uint32
	// Data is the accept data, e.g. "(DESCRIPTION=(TMP=)(VSNNUM=..)(ERR=0))"
	// from an old listener answering a ping; usually empty.
	Data string
	// Description is Data parsed; nil when Data is empty or does not parse.
	Description Description
}

// ParseAccept reads the ACCEPT packet at the start of b.
func ParseAccept(b []byte) (Accept, error) {
	pkt, err := firstOfType(b, TypeAccept)
	if err != nil {
		return Accept{}, err
	}
	raw := pkt.Raw
	if len(raw) < 24 {
		return Accept{}, fmt.Errorf("%w: ACCEPT of %d bytes, need 24", ErrMalformed, len(raw))
	}
	a := Accept{
		Version:        binary.BigEndian.Uint16(raw[8:]),
		ServiceOptions: binary.BigEndian.Uint16(raw[10:]),
		SDU:            uint32(binary.BigEndian.Uint16(raw[12:])),
		TDU:            uint32(binary.BigEndian.Uint16(raw[14:])),
	}
	n := int(binary.BigEndian.Uint16(raw[18:]))
	off := int(binary.BigEndian.Uint16(raw[20:]))
	fixedEnd := len(raw)
	if n > 0 {
		if off < 24 || off+n > len(raw) {
			return Accept{}, fmt.Errorf("%w: ACCEPT data (%d bytes at %d) outside its %d bytes", ErrMalformed, n, off, len(raw))
		}
		fixedEnd = off
		a.Data = string(raw[off : off+n])
		a.Description, _ = ParseDescription(a.Data)
	}
	// From version 315 the sizes are 32-bit fields at 32 and 36.
	if a.Version >= 315 && fixedEnd >= 40 {
		a.SDU = binary.BigEndian.Uint32(raw[32:])
		a.TDU = binary.BigEndian.Uint32(raw[36:])
	}
	return a, nil
}

// Redirect is a listener's REDIRECT: the client will close this connection
// and dial Address itself.
type Redirect struct {
	Flags uint8
	// Address is the address text, e.g.
	// "(ADDRESS=(PROTOCOL=tcp)(HOST=node1-vip)(PORT=1521))".
	Address string
	// ReconnectData is what follows the "\0" after the address when header
	// flag 0x02 is set: the description the client sends to Address.
	ReconnectData string
	// Len is how many bytes the REDIRECT and the DATA packets carrying its
	// data take.
	Len int
}

// Addresses returns the addresses Address names, nil when it does not parse.
func (r Redirect) Addresses() []Address {
	d, err := ParseDescription(r.Address)
	if err != nil {
		return nil
	}
	return d.Addresses()
}

// redirectDataFollows is the header flag saying the redirect data holds the
// address, a "\0" and reconnect data.
const redirectDataFollows = 0x02

// ParseRedirect reads the REDIRECT packet at the start of b, and the DATA
// packets after it when the REDIRECT announces data it does not hold.
func ParseRedirect(b []byte) (Redirect, error) {
	pkt, err := firstOfType(b, TypeRedirect)
	if err != nil {
		return Redirect{}, err
	}
	raw := pkt.Raw
	if len(raw) < 10 {
		return Redirect{}, fmt.Errorf("%w: REDIRECT of %d bytes, need 10", ErrMalformed, len(raw))
	}
	n := int(binary.BigEndian.Uint16(raw[8:]))
	r := Redirect{Flags: pkt.Flags, Len: len(raw)}
	var data []byte
	switch {
	case 10+n <= len(raw):
		data = raw[10 : 10+n]
	case len(raw) > 10:
		return Redirect{}, fmt.Errorf("%w: REDIRECT announces %d bytes of data, holds %d", ErrMalformed, n, len(raw)-10)
	default:
		var used int
		var err error
		if data, used, err = followingData(b[len(raw):], n, "REDIRECT's data"); err != nil {
			return Redirect{}, err
		}
		r.Len += used
	}
	r.Address = string(data)
	if r.Flags&redirectDataFollows != 0 {
		if addr, reconnect, ok := strings.Cut(r.Address, "\x00"); ok {
			r.Address, r.ReconnectData = addr, reconnect
		}
	}
	return r, nil
}

// followingData gathers n bytes that a packet announced and left to the
// DATA packets after it (rest starts with them); used is how many bytes of
// rest those packets took. what names the data in errors.
func followingData(rest []byte, n int, what string) (data []byte, used int, err error) {
	for len(data) < n {
		d, next, err := NextPacket(rest, Length16, 0)
		if err != nil {
			return nil, 0, err
		}
		if d.Type != TypeData {
			return nil, 0, fmt.Errorf("%w: %s where %s should follow", ErrUnexpectedType, d.Type, what)
		}
		payload, err := dataPayload(d)
		if err != nil {
			return nil, 0, err
		}
		if len(data)+len(payload) > n {
			return nil, 0, fmt.Errorf("%w: DATA carries more than the %d bytes of %s announced", ErrMalformed, n, what)
		}
		data = append(data, payload...)
		used += len(d.Raw)
		rest = next
	}
	return data, used, nil
}

// firstOfType splits off the first packet of b, a first packet of a
// connection (16-bit length), and checks its type before waiting for more
// bytes.
func firstOfType(b []byte, want PacketType) (Packet, error) {
	h, err := ParseHeader(b, Length16)
	if err != nil {
		return Packet{}, err
	}
	if h.Type != want {
		return Packet{}, fmt.Errorf("%w: %s, want %s", ErrUnexpectedType, h.Type, want)
	}
	pkt, _, err := NextPacket(b, Length16, 0)
	return pkt, err
}

// FirstPacket is what ClassifyFirst makes of the first bytes a backend sent.
type FirstPacket struct {
	// Type is the first packet's type: TypeRefuse, TypeRedirect, TypeResend,
	// TypeAccept, or anything else (a proxy passes those through).
	Type PacketType
	// Len is the length of the first packet (REFUSE, REDIRECT: with the DATA
	// packets carrying its data). For REFUSE and REDIRECT all Len bytes are in hand;
	// for other types only the header was read and Len may exceed the input.
	Len int
	// Refuse is set when Type is TypeRefuse.
	Refuse Refuse
	// Redirect is set when Type is TypeRedirect.
	Redirect Redirect
}

// ClassifyFirst tells a proxy what a backend's first bytes are, so it can
// hold back a REFUSE and retry elsewhere, or log a REDIRECT. It returns
// ErrIncomplete while fewer than 8 bytes are in hand, or while a REFUSE or
// REDIRECT is not complete; ErrBadLength when the bytes are not TNS framing.
// Every other type is decided from the header alone.
func ClassifyFirst(b []byte) (FirstPacket, error) {
	h, err := ParseHeader(b, Length16)
	if err != nil {
		return FirstPacket{}, err
	}
	f := FirstPacket{Type: h.Type, Len: int(h.Length)}
	switch h.Type {
	case TypeRefuse:
		if f.Refuse, err = ParseRefuse(b); err != nil {
			return FirstPacket{}, err
		}
		f.Len = f.Refuse.Len
	case TypeRedirect:
		if f.Redirect, err = ParseRedirect(b); err != nil {
			return FirstPacket{}, err
		}
		f.Len = f.Redirect.Len
	}
	return f, nil
}
