package tns_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

// longConnectData is a client descriptor over 230 bytes, so clients send it
// in a DATA packet after the CONNECT.
var longConnectData = "(DESCRIPTION=(ADDRESS=(PROTOCOL=tcp)(HOST=db1.example.com)(PORT=1521))" +
	"(CONNECT_DATA=(SERVICE_NAME=" + strings.Repeat("S", 150) + ")" +
	"(CID=(PROGRAM=/usr/local/bin/orders-api)(HOST=app1)(USER=app))))"

// newConnect builds a CONNECT the way go-ora (offset 70) and python-oracledb
// (offset 74) do: 32-bit SDU and TDU at 58 and 62, connect data at offset,
// inline when short, else in a DATA packet.
func newConnect(offset int, version uint16, sdu uint32, data string) []byte {
	p := make([]byte, offset)
	p[4] = byte(tns.TypeConnect)
	binary.BigEndian.PutUint16(p[8:], version)
	binary.BigEndian.PutUint16(p[10:], 300)
	binary.BigEndian.PutUint16(p[14:], 0xffff)
	binary.BigEndian.PutUint16(p[16:], 0xffff)
	binary.BigEndian.PutUint16(p[24:], uint16(len(data)))
	binary.BigEndian.PutUint16(p[26:], uint16(offset))
	binary.BigEndian.PutUint32(p[58:], sdu)
	binary.BigEndian.PutUint32(p[62:], sdu)
	if len(data) <= tns.MaxInlineConnectData {
		p = append(p, data...)
		binary.BigEndian.PutUint16(p, uint16(len(p)))
		return p
	}
	binary.BigEndian.PutUint16(p, uint16(len(p)))
	return append(p, dataPacket(data)...)
}

// dataPacket is a DATA packet with data flags 0.
func dataPacket(data string) []byte {
	p := append([]byte{0, 0, 0, 0, byte(tns.TypeData), 0, 0, 0, 0, 0}, data...)
	binary.BigEndian.PutUint16(p, uint16(len(p)))
	return p
}

func TestParseConnectData(t *testing.T) {
	split := mustBuild(t, longConnectData)[:58] // CONNECT only, then two DATA packets
	split = append(split, dataPacket(longConnectData[:100])...)
	split = append(split, dataPacket(longConnectData[100:])...)

	tests := []struct {
		name        string
		in          []byte
		wantData    string
		wantFollows bool
		wantSDU     uint32
		wantService string
	}{
		{"tnsping layout, inline", mustBuild(t, "(CONNECT_DATA=(SERVICE_NAME=SALES))"), "(CONNECT_DATA=(SERVICE_NAME=SALES))", false, 2048, "SALES"},
		{"tnsping layout, DATA follows", mustBuild(t, longConnectData), longConnectData, true, 2048, strings.Repeat("S", 150)},
		{"go-ora layout, inline", newConnect(70, 317, 0x200000, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=HR)))"), "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=HR)))", false, 0x200000, "HR"},
		{"python-oracledb layout, DATA follows", newConnect(74, 319, 8192, longConnectData), longConnectData, true, 8192, strings.Repeat("S", 150)},
		{"connect data over two DATA packets", split, longConnectData, true, 2048, strings.Repeat("S", 150)},
		{"empty connect data", newConnect(70, 317, 8192, ""), "", false, 8192, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// What the app pipelines after its CONNECT is not part of it.
			in := append(append([]byte(nil), tt.in...), dataPacket("next")...)
			info, err := tns.ParseConnectData(in)
			if err != nil {
				t.Fatal(err)
			}
			if info.ConnectData != tt.wantData || info.DataFollows != tt.wantFollows || info.SDU != tt.wantSDU ||
				info.Description.ServiceName() != tt.wantService || info.Len != len(tt.in) {
				t.Errorf("ParseConnectData = %+v", info)
			}
			if tt.wantData == "" && info.Description != nil {
				t.Errorf("Description = %v for empty connect data", info.Description)
			}
			for n := range len(tt.in) {
				if _, err := tns.ParseConnectData(tt.in[:n]); !errors.Is(err, tns.ErrIncomplete) {
					t.Fatalf("ParseConnectData(%d of %d bytes) = %v, want ErrIncomplete", n, len(tt.in), err)
				}
			}
		})
	}
}

func TestParseConnectDataRejects(t *testing.T) {
	good := mustBuild(t, tns.PingConnectData)
	long := mustBuild(t, longConnectData)
	with := func(b []byte, f func([]byte)) []byte {
		b = append([]byte(nil), b...)
		f(b)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"not a CONNECT", tns.BuildResend(), tns.ErrUnexpectedType},
		{"not TNS", []byte("GET / HTTP/1.1\r\n"), tns.ErrUnexpectedType},
		{"length below header", []byte{0, 4, 0, 0, 1, 0, 0, 0}, tns.ErrBadLength},
		{"CONNECT too short for its fields", append([]byte{0, 20, 0, 0, 1, 0, 0, 0}, make([]byte, 12)...), tns.ErrMalformed},
		{"data offset inside fixed fields", with(good, func(b []byte) { binary.BigEndian.PutUint16(b[26:], 20) }), tns.ErrMalformed},
		{"data length beyond packet", with(good, func(b []byte) { binary.BigEndian.PutUint16(b[24:], 200) }), tns.ErrMalformed},
		{"connect data not a description", mustBuild(t, "(CONNECT_DATA=(COMMAND=ping)"), tns.ErrMalformed},
		{"DATA carries more than announced", append(long[:58:58], dataPacket(longConnectData+"(X=1)")...), tns.ErrMalformed},
		{"MARKER where DATA should follow", append(long[:58:58], 0, 11, 0, 0, byte(tns.TypeMarker), 0, 0, 0, 1, 0, 2), tns.ErrUnexpectedType},
		{"DATA without data flags", append(long[:58:58], 0, 8, 0, 0, byte(tns.TypeData), 0, 0, 0), tns.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := tns.ParseConnectData(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseConnectData = %+v, %v; want %v", info, err, tt.want)
			}
		})
	}
}

func mustBuild(t testing.TB, connectData string) []byte {
	t.Helper()
	b, err := tns.BuildConnect(connectData)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// piecemeal is a CONNECT whose connect data (size bytes, SERVICE_NAME=SALES)
// follows in DATA packets of chunk bytes each.
func piecemeal(t testing.TB, size, chunk int) []byte {
	head := "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(X="
	data := head + strings.Repeat("a", size-len(head)-2) + "))"
	b := mustBuild(t, data)
	b = b[:binary.BigEndian.Uint16(b)] // the CONNECT alone
	for i := 0; i < len(data); i += chunk {
		b = append(b, dataPacket(data[i:min(i+chunk, len(data))])...)
	}
	return b
}

// A CONNECT that arrives a byte at a time is ready once, at its last byte,
// and waiting for it costs no allocation: each packet is framed once, not
// the whole opening after every read. So is a REDIRECT's data.
func TestConnectWaitByteAtATime(t *testing.T) {
	for _, chunk := range []int{1, 100, 8000} {
		size := 5900
		if chunk > 1 {
			size = 59000
		}
		opening := piecemeal(t, size, chunk)
		if len(opening) > 65536 {
			t.Fatalf("opening of %d bytes, more than replay_bytes keeps", len(opening))
		}
		var w tns.ConnectWait
		allocs := testing.AllocsPerRun(1, func() {
			w.Reset()
			for n := 0; n < len(opening); n++ {
				if w.Ready(opening[:n]) {
					t.Fatalf("chunk %d: ready at %d of %d bytes", chunk, n, len(opening))
				}
			}
			if !w.Ready(opening) {
				t.Fatalf("chunk %d: not ready when whole", chunk)
			}
		})
		if allocs != 0 {
			t.Errorf("chunk %d: %v allocations", chunk, allocs)
		}
		info, err := tns.ParseConnectData(opening)
		if err != nil || info.Description.ServiceName() != "SALES" || info.Len != len(opening) {
			t.Fatalf("chunk %d: %v, service %q, Len %d of %d", chunk, err, info.Description.ServiceName(), info.Len, len(opening))
		}

		// A REDIRECT whose address follows in the same DATA packets.
		redirect := append([]byte{0, 10, 0, 0, byte(tns.TypeRedirect), 0, 0, 0, 0, 0}, opening[binary.BigEndian.Uint16(opening):]...)
		binary.BigEndian.PutUint16(redirect[8:], binary.BigEndian.Uint16(opening[24:]))
		var a tns.AnswerWait
		allocs = testing.AllocsPerRun(1, func() {
			a = tns.AnswerWait{}
			for n := 0; n < len(redirect); n++ {
				if a.Ready(redirect[:n]) {
					t.Fatalf("chunk %d: REDIRECT ready at %d of %d bytes", chunk, n, len(redirect))
				}
			}
			if !a.Ready(redirect) {
				t.Fatalf("chunk %d: REDIRECT not ready when whole", chunk)
			}
		})
		if allocs != 0 {
			t.Errorf("chunk %d: REDIRECT: %v allocations", chunk, allocs)
		}
		if first, err := tns.ClassifyFirst(redirect); err != nil || first.Len != len(redirect) {
			t.Fatalf("chunk %d: REDIRECT: %v, Len %d of %d", chunk, err, first.Len, len(redirect))
		}
	}
}
