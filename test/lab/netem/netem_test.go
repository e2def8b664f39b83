package netem

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
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

// packetMessage is a queued packet's netlink message as the kernel sends it:
// nlmsg_len not padded to 4 bytes when the packet's length is not a multiple of 4.
func packetMessage(id uint32, packet []byte) []byte {
	hdr := make([]byte, 7)
	binary.BigEndian.PutUint32(hdr, id)
	a := attr(attrPayload, packet)
	body := append(attr(attrPacketHdr, hdr), a[:4+len(packet)]...) // the payload unpadded
	m := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(body))
	binary.NativeEndian.PutUint16(m[4:], unix.NFNL_SUBSYS_QUEUE<<8|msgPacket)
	m = append(m, body...)
	binary.NativeEndian.PutUint32(m[0:], uint32(len(m)))
	return m
}

// A packet whose length is not a multiple of 4 (a segment of 6 bytes of data)
// comes last in a read unpadded; parsing it failed with EINVAL and ended the
// queue, so the delay stopped and flows went on undelayed.
func TestParseMessagesUnpaddedLastPacket(t *testing.T) {
	first := packetMessage(1, append(ipv4TCP(100), make([]byte, 100)...))
	last := packetMessage(2, append(ipv4TCP(6), "hello\n"...))
	if len(first)%4 != 0 || len(last)%4 == 0 {
		t.Fatalf("test messages of %d and %d bytes", len(first), len(last))
	}
	msgs, err := parseMessages(append(first, last...))
	if err != nil {
		t.Fatalf("parseMessages: %v", err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		id, payload, ok := parsePacket(m.Data[4:])
		if !ok || id != uint32(i+1) || !hasTCPPayload(payload) {
			t.Errorf("message %d: id %d ok %v payload %v", i, id, ok, hasTCPPayload(payload))
		}
	}
}
