package tns

import "errors"

// Sentinel errors. Functions wrap them with %w and a detail, so test them
// with errors.Is.
var (
	// ErrIncomplete means the bytes end before the packet (or the packets it
	// needs) does: read more and call again.
	ErrIncomplete = errors.New("tns: incomplete packet")

	// ErrBadLength means a header's length field is below the 8-byte header
	// size: the bytes are not TNS, or the stream lost its framing.
	ErrBadLength = errors.New("tns: packet length below header size")

	// ErrTooLarge means a header's length field is above the limit the caller
	// set. The packet is not read, so a lying length costs no memory.
	ErrTooLarge = errors.New("tns: packet length above limit")

	// ErrTruncated means the stream ended inside a packet.
	ErrTruncated = errors.New("tns: stream ended inside a packet")

	// ErrUnexpectedType means a packet of another type than the one asked for.
	ErrUnexpectedType = errors.New("tns: unexpected packet type")

	// ErrMalformed means the packet's own fields contradict each other
	// (an offset or data length pointing outside the packet) or its
	// description text does not parse.
	ErrMalformed = errors.New("tns: malformed packet")

	// ErrDescription means a whole, well-framed CONNECT whose connect
	// data does not parse as a description (a value with an unescaped
	// parenthesis, say): the packet is complete, only its text is odd, and
	// the listener decides what it makes of it. ParseConnectData returns
	// the ConnectInfo with ConnectData set along with it.
	ErrDescription = errors.New("tns: connect data does not parse")

	// ErrUnexpectedAnswer means a listener answered a health check with
	// something that does not say "alive" (Ping) or cannot be read as an
	// answer about the service (ProbeService).
	ErrUnexpectedAnswer = errors.New("tns: unexpected answer from listener")
)
