package tns_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

func TestReadPacketLengths(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		form    tns.LengthForm
		max     int
		wantErr error // nil: success
		wantLen int
	}{
		{"16-bit header only", []byte{0, 8, 0, 0, 11, 0, 0, 0}, tns.Length16, 0, nil, 8},
		{"16-bit ignores checksum bytes", []byte{0, 9, 0xab, 0xcd, 6, 0, 0, 0, 'x'}, tns.Length16, 0, nil, 9},
		{"32-bit form", []byte{0, 0, 0, 10, 6, 0, 0, 0, 0, 0x40}, tns.Length32, 0, nil, 10},
		{"32-bit form above 64 KiB", append([]byte{0, 1, 0, 0, 6, 0, 0, 0}, make([]byte, 65536-8)...), tns.Length32, 1 << 20, nil, 65536},
		{"length 0", []byte{0, 0, 0, 0, 1, 0, 0, 0}, tns.Length16, 0, tns.ErrBadLength, 0},
		{"length 7", []byte{0, 7, 0, 0, 1, 0, 0, 0}, tns.Length16, 0, tns.ErrBadLength, 0},
		{"above caller's max", []byte{0, 100, 0, 0, 4, 0, 0, 0}, tns.Length16, 99, tns.ErrTooLarge, 0},
		{"at caller's max", append([]byte{0, 100, 0, 0, 4, 0, 0, 0}, make([]byte, 92)...), tns.Length16, 100, nil, 100},
		{"32-bit 4 GiB lie", []byte{0xff, 0xff, 0xff, 0xff, 6, 0, 0, 0}, tns.Length32, 0, tns.ErrTooLarge, 0},
		{"32-bit read as 16-bit", []byte{0, 0, 0, 10, 6, 0, 0, 0, 0, 0x40}, tns.Length16, 0, tns.ErrBadLength, 0},
		{"truncated body", []byte{0, 20, 0, 0, 4, 0, 0, 0, 1, 2}, tns.Length16, 0, io.ErrUnexpectedEOF, 0},
		{"truncated header", []byte{0, 20, 0}, tns.Length16, 0, tns.ErrTruncated, 0},
		{"empty stream", nil, tns.Length16, 0, io.EOF, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tns.ReadPacket(bytes.NewReader(tt.in), tt.form, tt.max)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ReadPacket = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(p.Raw) != tt.wantLen || int(p.Length) != tt.wantLen || !bytes.Equal(p.Raw, tt.in[:tt.wantLen]) {
				t.Fatalf("ReadPacket = %d bytes, %v; want %d", len(p.Raw), err, tt.wantLen)
			}
			// NextPacket frames byte slices the same way.
			q, rest, err := tns.NextPacket(tt.in, tt.form, tt.max)
			if err != nil || !bytes.Equal(q.Raw, p.Raw) || len(rest) != len(tt.in)-tt.wantLen {
				t.Errorf("NextPacket = %d bytes rest %d, %v", len(q.Raw), len(rest), err)
			}
		})
	}
}

func TestReadPacketLeavesNextPacket(t *testing.T) {
	stream := bytes.NewReader(append(tns.BuildResend(), tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(ERR=12514))")...))
	first, err := tns.ReadPacket(stream, tns.Length16, 0)
	if err != nil || first.Type != tns.TypeResend {
		t.Fatalf("first = %v, %v", first.Type, err)
	}
	second, err := tns.ReadPacket(stream, tns.Length16, 0)
	if err != nil || second.Type != tns.TypeRefuse {
		t.Fatalf("second = %v, %v", second.Type, err)
	}
}

// TestLyingLengthsCostNoMemory: a header announcing far more than the limit is
// refused before anything is allocated for it, and one announcing more than
// the stream holds costs at most the announced (limited) size.
func TestLyingLengthsCostNoMemory(t *testing.T) {
	huge := []byte{0xff, 0xff, 0xff, 0xff, byte(tns.TypeData), 0, 0, 0}
	perCall := allocBytes(t, func() {
		if _, err := tns.ReadPacket(bytes.NewReader(huge), tns.Length32, tns.DefaultMaxPacket); !errors.Is(err, tns.ErrTooLarge) {
			t.Fatal(err)
		}
	})
	if perCall > 1024 {
		t.Errorf("refusing a 4 GiB length allocated %d bytes per call", perCall)
	}

	// A CONNECT announcing 65000 bytes of connect data to follow, with none
	// of it sent: incomplete, and no buffer of the announced size.
	connect, err := tns.BuildConnect(string(bytes.Repeat([]byte("x"), 65000)))
	if err != nil {
		t.Fatal(err)
	}
	head := connect[:58]
	perCall = allocBytes(t, func() {
		if _, err := tns.ParseConnectData(head); !errors.Is(err, tns.ErrIncomplete) {
			t.Fatal(err)
		}
	})
	if perCall > 1024 {
		t.Errorf("an incomplete CONNECT allocated %d bytes per call", perCall)
	}
}

func allocBytes(t *testing.T, f func()) uint64 {
	t.Helper()
	const runs = 100
	f() // warm up
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

func TestPacketTypeString(t *testing.T) {
	for typ, want := range map[tns.PacketType]string{
		tns.TypeConnect: "CONNECT", tns.TypeRefuse: "REFUSE", tns.TypeResend: "RESEND",
		tns.TypeControl: "CONTROL", 8: "TYPE(8)", 200: "TYPE(200)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("PacketType(%d).String() = %q, want %q", uint8(typ), got, want)
		}
	}
	if tns.LengthFormFor(314) != tns.Length16 || tns.LengthFormFor(315) != tns.Length32 {
		t.Error("LengthFormFor: 315 and later use 32-bit lengths")
	}
}
