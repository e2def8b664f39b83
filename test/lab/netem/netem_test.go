package netem

import (
	"encoding/binary"
	"testing"
)

// ipv4TCP returns an IPv4+TCP header (no options) claiming payload bytes of data.
func ipv4TCP(payload int) []byte {
	p := make([]byte, 40)
	p[0] = 0x45 // IPv4, IHL 5
	binary.BigEndian.PutUint16(p[2:], uint16(40+payload))
	p[9] = 6          // TCP
	p[20+12] = 5 << 4 // data offset 5 words
	return p
}

func TestParsePacketAndPayload(t *testing.T) {
	hdr := make([]byte, 7)
	binary.BigEndian.PutUint32(hdr, 0xdeadbeef)
	msg := append(attr(attrPacketHdr, hdr), attr(attrPayload, ipv4TCP(100))...)
	id, payload, ok := parsePacket(msg)
	if !ok || id != 0xdeadbeef {
		t.Fatalf("parsePacket: id %x ok %v", id, ok)
	}
	if !hasTCPPayload(payload) {
		t.Error("a segment with 100 bytes of data has payload")
	}
	if hasTCPPayload(ipv4TCP(0)) {
		t.Error("a pure ACK has no payload")
	}
	udp := ipv4TCP(10)
	udp[9] = 17
	if hasTCPPayload(udp) {
		t.Error("UDP is not TCP")
	}
	if _, _, ok := parsePacket(attr(attrPayload, ipv4TCP(1))); ok {
		t.Error("a message without a packet header has no id")
	}
}
