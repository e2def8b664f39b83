package tns

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PingConnectData is the connect data of tnsping.
const PingConnectData = "(CONNECT_DATA=(COMMAND=ping))"

// maxUint16Data is the most data one packet with a 16-bit length can carry
// after a header of hdr bytes.
func maxUint16Data(hdr int) int { return 0xFFFF - hdr }

// connectTemplate is the fixed part of the CONNECT tnsping, tnscmd and
// tnsping-py send: version 312, lowest 300, SDU 2048, TDU 32767, connect data
// at offset 58. Bytes 0-1 (length) and 24-25 (data length) are filled in.
var connectTemplate = [58]byte{
	0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // header, type CONNECT
	0x01, 0x38, 0x01, 0x2c, 0x00, 0x00, 0x08, 0x00, // version, lowest, options, SDU
	0x7f, 0xff, 0x7f, 0x08, 0x00, 0x00, 0x01, 0x00, // TDU, NT characteristics, turnaround, one
	0x00, 0x00, 0x00, 0x3a, 0x00, 0x00, 0x00, 0x00, // data length, data offset, max receivable
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x19, 0x30, 0x00, 0x00,
	0x00, 0x8d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00,
}

// BuildConnect returns the CONNECT a client sends for connectData, in the
// classic tnsping layout. Connect data over 230 bytes goes, as clients send
// it, in a DATA packet after the CONNECT, so the result may be two packets.
// BuildConnect(PingConnectData) is byte for byte the CONNECT of tnsping.
func BuildConnect(connectData string) ([]byte, error) {
	n := len(connectData)
	if n > maxUint16Data(HeaderLen+2) {
		return nil, fmt.Errorf("%w: %d bytes of connect data", ErrTooLarge, n)
	}
	out := make([]byte, len(connectTemplate), len(connectTemplate)+HeaderLen+2+n)
	copy(out, connectTemplate[:])
	binary.BigEndian.PutUint16(out[24:], uint16(n))
	if n <= MaxInlineConnectData {
		out = append(out, connectData...)
		binary.BigEndian.PutUint16(out, uint16(len(out)))
		return out, nil
	}
	binary.BigEndian.PutUint16(out, uint16(len(connectTemplate)))
	return appendData(out, connectData), nil
}

// appendData appends a DATA packet (data flags 0) carrying data.
func appendData(out []byte, data string) []byte {
	start := len(out)
	out = append(out, 0, 0, 0, 0, byte(TypeData), 0, 0, 0, 0, 0)
	out = append(out, data...)
	binary.BigEndian.PutUint16(out[start:], uint16(len(out)-start))
	return out
}

// BuildRefuse returns a REFUSE as listeners send it. data is the description,
// e.g. "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514))"; listeners use user
// reason 0x22 and system reason 0. It panics when data does not fit one packet
// (64 KiB): a programming error.
func BuildRefuse(userReason, sysReason byte, data string) []byte {
	mustFit("REFUSE", data, 12)
	out := make([]byte, 12, 12+len(data))
	binary.BigEndian.PutUint16(out, uint16(12+len(data)))
	out[4] = byte(TypeRefuse)
	out[8], out[9] = userReason, sysReason
	binary.BigEndian.PutUint16(out[10:], uint16(len(data)))
	return append(out, data...)
}

// BuildRefuseApart returns a REFUSE that holds no text, followed by a DATA
// packet carrying data: the layout a REDIRECT may use, which node-oracledb
// reads for a REFUSE too. It panics when data does not fit one packet.
func BuildRefuseApart(userReason, sysReason byte, data string) []byte {
	mustFit("REFUSE", data, HeaderLen+2)
	out := BuildRefuse(userReason, sysReason, "")
	binary.BigEndian.PutUint16(out[10:], uint16(len(data)))
	return appendData(out, data)
}

// BuildAccept returns an ACCEPT of version carrying data (often empty).
// Below 315 it is the 24-byte layout of 10g listeners; from 315 on it adds the
// 32-bit SDU and TDU fields newer clients read. It panics when data does not
// fit one packet.
func BuildAccept(version uint16, data string) []byte {
	fixed := 24
	if version >= 315 {
		fixed = 45
	}
	mustFit("ACCEPT", data, fixed)
	out := make([]byte, fixed, fixed+len(data))
	binary.BigEndian.PutUint16(out, uint16(fixed+len(data)))
	out[4] = byte(TypeAccept)
	binary.BigEndian.PutUint16(out[8:], version)
	binary.BigEndian.PutUint16(out[12:], 0x0800) // SDU
	binary.BigEndian.PutUint16(out[14:], 0x7fff) // TDU
	binary.BigEndian.PutUint16(out[16:], 0x0100) // histone
	binary.BigEndian.PutUint16(out[18:], uint16(len(data)))
	binary.BigEndian.PutUint16(out[20:], uint16(fixed))
	out[22], out[23] = 0x41, 0x01 // NSI flags as in the 10g capture
	if version >= 315 {
		binary.BigEndian.PutUint32(out[32:], 0x0800)
		binary.BigEndian.PutUint32(out[36:], 0x7fff)
	}
	return append(out, data...)
}

// BuildRedirect returns a REDIRECT carrying addr, e.g.
// "(ADDRESS=(PROTOCOL=tcp)(HOST=node1-vip)(PORT=1521))", inside the packet
// with flags 0. It panics when addr does not fit one packet.
func BuildRedirect(addr string) []byte {
	mustFit("REDIRECT", addr, 10)
	out := make([]byte, 10, 10+len(addr))
	binary.BigEndian.PutUint16(out, uint16(10+len(addr)))
	out[4] = byte(TypeRedirect)
	binary.BigEndian.PutUint16(out[8:], uint16(len(addr)))
	return append(out, addr...)
}

// BuildResend returns a RESEND: the listener asks for the CONNECT again.
func BuildResend() []byte {
	return []byte{0x00, 0x08, 0x00, 0x00, byte(TypeResend), 0x00, 0x00, 0x00}
}

func mustFit(what, data string, fixed int) {
	if len(data) > maxUint16Data(fixed) {
		panic(fmt.Sprintf("tns: %d bytes of %s data do not fit one packet", len(data), what))
	}
}

// connectRedirected is the CONNECT header flag of a client's CONNECT after
// a REDIRECT (node-oracledb's NSPFRDR).
const connectRedirected = 0x04

// BuildRedirectedConnect returns the CONNECT a client sends to the address
// a REDIRECT named: its own CONNECT (at the start of opening) with the
// same fields, header flag 0x04, and connectData (the REDIRECT's reconnect
// data, or the client's own connect data when it has none), inline up to
// 230 bytes, else in a DATA packet after it, as drivers send it.
func BuildRedirectedConnect(opening []byte, connectData string) ([]byte, error) {
	info, err := ParseConnectData(opening)
	if err != nil && !errors.Is(err, ErrDescription) {
		return nil, err // only the framing and fixed fields are needed: a description a listener reads but this parser does not (go-ora's unescaped CID) is replaced
	}
	raw := opening[:int(binary.BigEndian.Uint16(opening))]
	fixed := raw
	if off := int(binary.BigEndian.Uint16(raw[26:])); info.ConnectData != "" && off < len(raw) {
		fixed = raw[:off]
	}
	n := len(connectData)
	if n > maxUint16Data(HeaderLen+2) || len(fixed) > 0xFFFF-MaxInlineConnectData {
		return nil, fmt.Errorf("%w: %d bytes of connect data", ErrTooLarge, n)
	}
	out := make([]byte, len(fixed), len(fixed)+HeaderLen+2+n)
	copy(out, fixed)
	out[5] |= connectRedirected
	binary.BigEndian.PutUint16(out[24:], uint16(n))
	binary.BigEndian.PutUint16(out[26:], uint16(len(fixed)))
	if n <= MaxInlineConnectData {
		out = append(out, connectData...)
		binary.BigEndian.PutUint16(out, uint16(len(out)))
		return out, nil
	}
	binary.BigEndian.PutUint16(out, uint16(len(fixed)))
	return appendData(out, connectData), nil
}

// BuildRedirectTo returns a REDIRECT as a SCAN listener sends it: header
// flag 0x02, and data holding addr, a "\0" and the reconnect data (the
// description the client is to send to addr). It panics when they do not
// fit one packet.
func BuildRedirectTo(addr, reconnect string) []byte {
	data := addr + "\x00" + reconnect
	out := BuildRedirect(data)
	out[5] = redirectDataFollows
	return out
}
