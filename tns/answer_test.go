package tns_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

const scanAddr = "(ADDRESS=(PROTOCOL=TCP)(HOST=node1-vip)(PORT=1521))"

// redirectFollowing is a REDIRECT as SCAN listeners send it: header flag 0x02,
// no data inside, the address, "\0" and a new description in a DATA packet.
func redirectFollowing(addr, reconnect string) []byte {
	data := addr + "\x00" + reconnect
	p := []byte{0, 10, 0, 0, byte(tns.TypeRedirect), 0x02, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(p[8:], uint16(len(data)))
	return append(p, dataPacket(data)...)
}

func TestParseRedirect(t *testing.T) {
	const reconnect = "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))"
	inline := []byte(nil)
	{
		data := scanAddr + "\x00" + reconnect
		inline = append([]byte{0, 0, 0, 0, byte(tns.TypeRedirect), 0x02, 0, 0, 0, byte(len(data))}, data...)
		binary.BigEndian.PutUint16(inline, uint16(len(inline)))
	}
	tests := []struct {
		name          string
		in            []byte
		wantReconnect string
	}{
		{"flag 0x02, data in following DATA", redirectFollowing(scanAddr, reconnect), reconnect},
		{"flag 0x02, data inline", inline, reconnect},
		{"flag 0, address only", tns.BuildRedirect(scanAddr), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append(append([]byte(nil), tt.in...), tns.BuildResend()...) // bytes after it are not part of it
			r, err := tns.ParseRedirect(in)
			if err != nil {
				t.Fatal(err)
			}
			if r.Address != scanAddr || r.ReconnectData != tt.wantReconnect || r.Len != len(tt.in) {
				t.Errorf("ParseRedirect = %+v", r)
			}
			if a := r.Addresses(); len(a) != 1 || a[0].HostPort() != "node1-vip:1521" {
				t.Errorf("Addresses() = %+v", a)
			}
			f, err := tns.ClassifyFirst(in)
			if err != nil || f.Type != tns.TypeRedirect || f.Len != len(tt.in) || f.Redirect.Address != scanAddr {
				t.Errorf("ClassifyFirst = %+v, %v", f, err)
			}
			for n := range len(tt.in) {
				if _, err := tns.ClassifyFirst(tt.in[:n]); !errors.Is(err, tns.ErrIncomplete) {
					t.Fatalf("ClassifyFirst(%d of %d bytes) = %v, want ErrIncomplete", n, len(tt.in), err)
				}
			}
		})
	}
	// Flag 0 keeps a NUL in the address text as it is.
	r, err := tns.ParseRedirect(tns.BuildRedirect("a\x00b"))
	if err != nil || r.Address != "a\x00b" {
		t.Errorf("flag 0 = %+v, %v", r, err)
	}
}

func TestParseRefuse(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		wantErr int
		hasErr  bool
	}{
		{"service not registered", tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))"), 12514, true},
		{"no data", tns.BuildRefuse(0x22, 0, ""), 0, false},
		{"data that is no description", tns.BuildRefuse(4, 1, "listener said (err = 12516 ) and (more"), 12516, true},
		{"data without ERR", tns.BuildRefuse(4, 1, "(DESCRIPTION=(TMP=))"), 0, false},
		// node-oracledb reads this layout (its RefusePacket "overflow"); until
		// 2026-11-30 it was ErrMalformed here, and a proxy passed it on.
		{"text in a following DATA packet", tns.BuildRefuseApart(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))"), 12514, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tns.ParseRefuse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if code, ok := r.Err(); code != tt.wantErr || ok != tt.hasErr {
				t.Errorf("Err() = %d, %v; want %d, %v", code, ok, tt.wantErr, tt.hasErr)
			}
			in := append(append([]byte(nil), tt.in...), tns.BuildResend()...) // bytes after it are not part of it
			f, err := tns.ClassifyFirst(in)
			if code, ok := f.Refuse.Err(); err != nil || f.Type != tns.TypeRefuse || f.Len != len(tt.in) || code != tt.wantErr || ok != tt.hasErr {
				t.Errorf("ClassifyFirst = %+v, %v", f, err)
			}
			var wait tns.AnswerWait
			for n := range len(tt.in) {
				if _, err := tns.ClassifyFirst(tt.in[:n]); !errors.Is(err, tns.ErrIncomplete) {
					t.Fatalf("ClassifyFirst(%d of %d bytes) = %v, want ErrIncomplete", n, len(tt.in), err)
				}
				if wait.Ready(tt.in[:n]) {
					t.Fatalf("AnswerWait.Ready(%d of %d bytes) = true", n, len(tt.in))
				}
			}
			if !wait.Ready(tt.in) {
				t.Errorf("AnswerWait.Ready(the whole REFUSE) = false")
			}
		})
	}
}

func TestParseAccept(t *testing.T) {
	a, err := tns.ParseAccept(tns.BuildAccept(318, "(DESCRIPTION=(ERR=0))"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 318 || a.SDU != 2048 || a.TDU != 32767 || a.Data != "(DESCRIPTION=(ERR=0))" {
		t.Errorf("ParseAccept = %+v", a)
	}
	if code, ok := a.Description.Err(); !ok || code != 0 {
		t.Errorf("Err() = %d, %v", code, ok)
	}
	if tns.LengthFormFor(a.Version) != tns.Length32 {
		t.Error("after an ACCEPT of 318 packets have 32-bit lengths")
	}
}

func TestAnswersReject(t *testing.T) {
	refuse := tns.BuildRefuse(0x22, 0, "(ERR=1)")
	accept := tns.BuildAccept(308, "(ERR=0)")
	corrupt := func(b []byte, off int, v uint16) []byte {
		b = append([]byte(nil), b...)
		binary.BigEndian.PutUint16(b[off:], v)
		return b
	}
	tests := []struct {
		name  string
		parse func([]byte) error
		in    []byte
		want  error
	}{
		{"REFUSE data length beyond packet", parseRefuse, corrupt(refuse, 10, 200), tns.ErrMalformed},
		{"REFUSE shorter than its fields", parseRefuse, []byte{0, 10, 0, 0, 4, 0, 0, 0, 0, 0}, tns.ErrMalformed},
		{"REFUSE wanted, ACCEPT given", parseRefuse, accept, tns.ErrUnexpectedType},
		{"ACCEPT data offset inside fields", parseAccept, corrupt(accept, 20, 10), tns.ErrMalformed},
		{"ACCEPT data beyond packet", parseAccept, corrupt(accept, 18, 100), tns.ErrMalformed},
		{"ACCEPT shorter than its fields", parseAccept, []byte{0, 12, 0, 0, 2, 0, 0, 0, 1, 0x34, 0, 0}, tns.ErrMalformed},
		{"REFUSE followed by MARKER", parseRefuse, append(tns.BuildRefuseApart(0x22, 0, "(ERR=1)")[:12:12], 0, 11, 0, 0, 12, 0, 0, 0, 1, 0, 2), tns.ErrUnexpectedType},
		{"REFUSE DATA longer than announced", parseRefuse, append(tns.BuildRefuseApart(0x22, 0, "(ERR=1)")[:12:12], dataPacket("(ERR=1)xxxx")...), tns.ErrMalformed},
		{"REDIRECT partly inline", parseRedirect, corrupt(tns.BuildRedirect(scanAddr), 8, 200), tns.ErrMalformed},
		{"REDIRECT followed by MARKER", parseRedirect, append(redirectFollowing(scanAddr, "")[:10:10], 0, 11, 0, 0, 12, 0, 0, 0, 1, 0, 2), tns.ErrUnexpectedType},
		{"REDIRECT DATA longer than announced", parseRedirect, append(redirectFollowing(scanAddr, "")[:10:10], dataPacket(scanAddr+"xxxx")...), tns.ErrMalformed},
		{"ClassifyFirst on non-TNS bytes", classify, []byte{0, 3, 'x', 'y', 4, 0, 0, 0}, tns.ErrBadLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.parse(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("= %v, want %v", err, tt.want)
			}
		})
	}
}

func parseRefuse(b []byte) error   { _, err := tns.ParseRefuse(b); return err }
func parseAccept(b []byte) error   { _, err := tns.ParseAccept(b); return err }
func parseRedirect(b []byte) error { _, err := tns.ParseRedirect(b); return err }
func classify(b []byte) error      { _, err := tns.ClassifyFirst(b); return err }

// TestClassifyFirstDecidesOnHeader: for types a proxy passes through, the
// header is enough; it need not wait for the rest.
func TestClassifyFirstDecidesOnHeader(t *testing.T) {
	for _, b := range [][]byte{tns.BuildAccept(318, ""), tns.BuildResend(), dataPacket("x")} {
		f, err := tns.ClassifyFirst(b[:tns.HeaderLen])
		if err != nil || f.Len != len(b) {
			t.Errorf("ClassifyFirst(header of %x) = %+v, %v", b, f, err)
		}
	}
}
