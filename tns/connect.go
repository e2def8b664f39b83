package tns

import (
	"encoding/binary"
	"fmt"
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
