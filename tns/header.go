package tns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderLen is the size of every TNS packet header.
const HeaderLen = 8

// DefaultMaxPacket is the packet size limit used when a caller passes 0.
// The first packets of a connection carry a 16-bit length, so 64 KiB holds
// any of them.
const DefaultMaxPacket = 64 << 10

// PacketType is byte 4 of the header.
type PacketType uint8

// Packet types (Wireshark packet-tns.c, python-oracledb packet.pyx).
const (
	TypeConnect   PacketType = 1
	TypeAccept    PacketType = 2
	TypeAck       PacketType = 3
	TypeRefuse    PacketType = 4
	TypeRedirect  PacketType = 5
	TypeData      PacketType = 6
	TypeNull      PacketType = 7
	TypeAbort     PacketType = 9
	TypeResend    PacketType = 11
	TypeMarker    PacketType = 12
	TypeAttention PacketType = 13
	TypeControl   PacketType = 14
)

var typeNames = [...]string{
	TypeConnect:   "CONNECT",
	TypeAccept:    "ACCEPT",
	TypeAck:       "ACK",
	TypeRefuse:    "REFUSE",
	TypeRedirect:  "REDIRECT",
	TypeData:      "DATA",
	TypeNull:      "NULL",
	TypeAbort:     "ABORT",
	TypeResend:    "RESEND",
	TypeMarker:    "MARKER",
	TypeAttention: "ATTENTION",
	TypeControl:   "CONTROL",
}

// String returns the name used in Oracle Net traces, e.g. "REFUSE", or
// "TYPE(n)" for a number without one.
func (t PacketType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("TYPE(%d)", uint8(t))
}

// LengthForm says how to read the length field of a header.
type LengthForm uint8

const (
	// Length16 is the form of the first packets of every connection
	// (CONNECT, its DATA, RESEND, ACCEPT, REFUSE, REDIRECT): bytes 0-1 are
	// the length, bytes 2-3 a packet checksum (0).
	Length16 LengthForm = iota
	// Length32 is the form of all packets after an ACCEPT that negotiated
	// version 315 or later: bytes 0-3 are one length.
	Length32
)

// LengthFormFor returns the form of the packets that follow an ACCEPT
// carrying the given version.
func LengthFormFor(acceptedVersion uint16) LengthForm {
	if acceptedVersion >= 315 {
		return Length32
	}
	return Length16
}

// Header is the 8-byte packet header.
type Header struct {
	Length uint32 // whole packet, header included
	Type   PacketType
	Flags  uint8
}

// ParseHeader reads the header at the start of b. It returns ErrIncomplete
// when b is shorter than a header and ErrBadLength when the length field is
// below 8.
func ParseHeader(b []byte, form LengthForm) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrIncomplete
	}
	h := Header{Type: PacketType(b[4]), Flags: b[5]}
	if form == Length32 {
		h.Length = binary.BigEndian.Uint32(b)
	} else {
		h.Length = uint32(binary.BigEndian.Uint16(b))
	}
	if h.Length < HeaderLen {
		return h, fmt.Errorf("%w: %s packet says %d bytes", ErrBadLength, h.Type, h.Length)
	}
	return h, nil
}

// Packet is one whole packet.
type Packet struct {
	Header
	// Raw is the packet as it was on the wire, header included.
	Raw []byte
}

// Payload returns the bytes after the header.
func (p Packet) Payload() []byte {
	if len(p.Raw) < HeaderLen {
		return nil
	}
	return p.Raw[HeaderLen:]
}

// NextPacket splits the first packet off b without copying: pkt.Raw aliases b.
// It returns ErrIncomplete when b does not hold the whole packet yet, and
// ErrTooLarge when the header announces more than limit bytes (limit <= 0
// means DefaultMaxPacket).
func NextPacket(b []byte, form LengthForm, limit int) (pkt Packet, rest []byte, err error) {
	h, err := ParseHeader(b, form)
	if err != nil {
		return Packet{}, b, err
	}
	if err := checkLimit(h, limit); err != nil {
		return Packet{}, b, err
	}
	if uint64(len(b)) < uint64(h.Length) {
		return Packet{}, b, ErrIncomplete
	}
	n := int(h.Length)
	return Packet{Header: h, Raw: b[:n:n]}, b[n:], nil
}

// ReadPacket reads one whole packet from r. It reads the header first and
// checks the length before it allocates, so a lying length costs at most
// limit bytes (limit <= 0 means DefaultMaxPacket). A stream that ends before the first
// byte returns io.EOF; one that ends inside the packet returns an error
// matching both ErrTruncated and io.ErrUnexpectedEOF.
func ReadPacket(r io.Reader, form LengthForm, limit int) (Packet, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Packet{}, truncated(err, "header")
	}
	h, err := ParseHeader(hdr[:], form)
	if err != nil {
		return Packet{}, err
	}
	if err := checkLimit(h, limit); err != nil {
		return Packet{}, err
	}
	raw := make([]byte, h.Length)
	copy(raw, hdr[:])
	if _, err := io.ReadFull(r, raw[HeaderLen:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Packet{}, truncated(err, h.Type.String())
	}
	return Packet{Header: h, Raw: raw}, nil
}

func checkLimit(h Header, limit int) error {
	if limit <= 0 {
		limit = DefaultMaxPacket
	}
	if uint64(h.Length) > uint64(limit) {
		return fmt.Errorf("%w: %s packet says %d bytes, limit %d", ErrTooLarge, h.Type, h.Length, limit)
	}
	return nil
}

// truncated marks an end of stream inside a packet; other read errors
// (deadline, reset) pass through wrapped so errors.Is still sees them.
func truncated(err error, what string) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: in %s: %w", ErrTruncated, what, err)
	}
	if err == io.EOF {
		return err
	}
	return fmt.Errorf("tns: reading %s: %w", what, err)
}
