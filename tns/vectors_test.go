package tns_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

// vectorTests checks every packet file under testdata (see
// testdata/README.txt for where each comes from). TestVectorsAllCovered fails
// when a file is added without a row here.
type vectorTest struct {
	file  string
	typ   tns.PacketType
	check func(t *testing.T, b []byte)
}

var vectorTests = []vectorTest{
	{"spiderlabs-net-tns/connect.raw", tns.TypeConnect, func(t *testing.T, b []byte) {
		info := mustConnect(t, b)
		wantConnect(t, info, tns.ConnectInfo{Version: 308, LowestVersion: 300, SDU: 2048, TDU: 32767, Len: 157})
		d := info.Description
		eq(t, "SID", d.SID(), "XE")
		eq(t, "ServiceName", d.ServiceName(), "")
		eq(t, "Program", d.Program(), "")
		eq(t, "ClientHost", d.ClientHost(), "__jdbc__")
		eq(t, "ClientUser", d.ClientUser(), "")
		if got := d.Addresses(); len(got) != 1 || got[0] != (tns.Address{Protocol: "tcp", Host: "testvm", Port: "1521"}) {
			t.Errorf("Addresses = %+v", got)
		}
	}},
	{"tnsping/ping_connect_tnsping-py.bin", tns.TypeConnect, func(t *testing.T, b []byte) {
		info := mustConnect(t, b)
		wantConnect(t, info, tns.ConnectInfo{Version: 312, LowestVersion: 300, SDU: 2048, TDU: 32767, Len: 87})
		eq(t, "ConnectData", info.ConnectData, tns.PingConnectData)
		eq(t, "Command", info.Description.Command(), "ping")
		built, err := tns.BuildConnect(tns.PingConnectData)
		if err != nil || !bytes.Equal(built, b) {
			t.Errorf("BuildConnect(ping) = %x, %v\nwant the tnsping bytes %x", built, err, b)
		}
	}},
	{"spiderlabs-net-tns/resend.raw", tns.TypeResend, func(t *testing.T, b []byte) {
		if !bytes.Equal(tns.BuildResend(), b) {
			t.Errorf("BuildResend() = %x, want %x", tns.BuildResend(), b)
		}
	}},
	{"spiderlabs-net-tns/accept.raw", tns.TypeAccept, func(t *testing.T, b []byte) {
		a, err := tns.ParseAccept(b)
		if err != nil {
			t.Fatal(err)
		}
		if a.Version != 308 || a.SDU != 2048 || a.TDU != 32767 || a.Data != "" || a.Description != nil {
			t.Errorf("ParseAccept = %+v", a)
		}
		if got := tns.BuildAccept(308, ""); !bytes.Equal(got, b) {
			t.Errorf("BuildAccept(308, \"\") = %x, want %x", got, b)
		}
	}},
	{"spiderlabs-net-tns/accept_with_data.raw", tns.TypeAccept, func(t *testing.T, b []byte) {
		a, err := tns.ParseAccept(b)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "Data", a.Data, "(DESCRIPTION=(TMP=)(VSNNUM=169869568)(ERR=0))")
		if code, ok := a.Description.Err(); !ok || code != 0 {
			t.Errorf("Err() = %d, %v", code, ok)
		}
		v, _ := a.Description.VSNNUM()
		eq(t, "version", tns.DecodeVSNNUM(v), "10.2.0.1.0") // 10g XE
	}},
	{"spiderlabs-net-tns/refuse.raw", tns.TypeRefuse, func(t *testing.T, b []byte) {
		r, err := tns.ParseRefuse(b)
		if err != nil {
			t.Fatal(err)
		}
		if r.UserReason != 0x22 || r.SystemReason != 0 {
			t.Errorf("reasons = %#x %#x", r.UserReason, r.SystemReason)
		}
		if code, ok := r.Err(); !ok || code != 12618 {
			t.Errorf("Err() = %d, %v, want 12618", code, ok)
		}
		eq(t, "ERROR_STACK CODE", val(r.Description, "ERROR_STACK", "ERROR", "CODE"), "12618")
		if got := tns.BuildRefuse(0x22, 0, r.Data); !bytes.Equal(got, b) {
			t.Errorf("BuildRefuse = %x, want %x", got, b)
		}
		f := mustClassify(t, b)
		if code, _ := f.Refuse.Err(); code != 12618 || f.Len != len(b) {
			t.Errorf("ClassifyFirst = %+v", f)
		}
	}},
	{"tnsping/ping_refuse_reply_RECONSTRUCTED.bin", tns.TypeRefuse, func(t *testing.T, b []byte) {
		r, err := tns.ParseRefuse(b)
		if err != nil {
			t.Fatal(err)
		}
		if code, ok := r.Err(); !ok || code != 0 {
			t.Errorf("Err() = %d, %v, want 0", code, ok)
		}
		v, ok := r.Description.VSNNUM()
		if !ok || v != 0 {
			t.Errorf("VSNNUM() = %d, %v", v, ok)
		}
		eq(t, "ALIAS", val(r.Description, "ALIAS"), "LISTENER")
		if got := tns.BuildRefuse(0x22, 0, r.Data); !bytes.Equal(got, b) {
			t.Errorf("BuildRefuse = %x, want %x", got, b)
		}
	}},
	{"spiderlabs-net-tns/redirect.raw", tns.TypeRedirect, func(t *testing.T, b []byte) {
		r, err := tns.ParseRedirect(b)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "Address", r.Address, "(ADDRESS=(PROTOCOL=tcp)(HOST=192.168.0.4)(PORT=2143))")
		if r.Flags != 0 || r.ReconnectData != "" || r.Len != len(b) {
			t.Errorf("ParseRedirect = %+v", r)
		}
		if a := r.Addresses(); len(a) != 1 || a[0].HostPort() != "192.168.0.4:2143" {
			t.Errorf("Addresses() = %+v", a)
		}
		if got := tns.BuildRedirect(r.Address); !bytes.Equal(got, b) {
			t.Errorf("BuildRedirect = %x, want %x", got, b)
		}
		f := mustClassify(t, b)
		eq(t, "ClassifyFirst address", f.Redirect.Address, r.Address)
	}},
	{"spiderlabs-net-tns/data_disconnect.raw", tns.TypeData, func(t *testing.T, b []byte) {
		p, _, err := tns.NextPacket(b, tns.Length16, 0)
		if err != nil || !bytes.Equal(p.Payload(), []byte{0x00, 0x40}) {
			t.Errorf("payload = %x, %v; want data flags 0x0040 (EOF)", p.Payload(), err)
		}
	}},
	{"spiderlabs-net-tns/marker_request.raw", tns.TypeMarker, func(t *testing.T, b []byte) {
		p, _, _ := tns.NextPacket(b, tns.Length16, 0)
		if !bytes.Equal(p.Payload(), []byte{1, 0, 2}) {
			t.Errorf("payload = %x", p.Payload())
		}
	}},
	{"spiderlabs-net-tns/marker_response.raw", tns.TypeMarker, func(t *testing.T, b []byte) {
		p, _, _ := tns.NextPacket(b, tns.Length16, 0)
		if !bytes.Equal(p.Payload(), []byte{1, 0, 1}) {
			t.Errorf("payload = %x", p.Payload())
		}
	}},
}

func TestVectors(t *testing.T) {
	for _, tt := range vectorTests {
		t.Run(tt.file, func(t *testing.T) {
			b := readVector(t, tt.file)

			// Every reader agrees on the framing.
			p, err := tns.ReadPacket(bytes.NewReader(b), tns.Length16, 0)
			if err != nil || p.Type != tt.typ || !bytes.Equal(p.Raw, b) || int(p.Length) != len(b) {
				t.Fatalf("ReadPacket = %v %d %x, %v; want %v, the whole file", p.Type, p.Length, p.Raw, err, tt.typ)
			}
			f := mustClassify(t, b)
			if f.Type != tt.typ || f.Len != len(b) {
				t.Errorf("ClassifyFirst = %v len %d, want %v len %d", f.Type, f.Len, tt.typ, len(b))
			}
			if tt.typ != tns.TypeConnect {
				if _, err := tns.ParseConnectData(b); !errors.Is(err, tns.ErrUnexpectedType) {
					t.Errorf("ParseConnectData(%v) = %v, want ErrUnexpectedType", tt.typ, err)
				}
			}

			// Every strict prefix is incomplete, never an answer or a panic.
			for n := range len(b) {
				if _, err := tns.ReadPacket(bytes.NewReader(b[:n]), tns.Length16, 0); n > 0 && !errors.Is(err, tns.ErrTruncated) || n == 0 && err != io.EOF {
					t.Fatalf("ReadPacket(%d of %d bytes) = %v", n, len(b), err)
				}
				if _, _, err := tns.NextPacket(b[:n], tns.Length16, 0); !errors.Is(err, tns.ErrIncomplete) {
					t.Fatalf("NextPacket(%d of %d bytes) = %v, want ErrIncomplete", n, len(b), err)
				}
				f, err := tns.ClassifyFirst(b[:n])
				holdsWhole := tt.typ == tns.TypeRefuse || tt.typ == tns.TypeRedirect
				if (n < tns.HeaderLen || holdsWhole) && !errors.Is(err, tns.ErrIncomplete) {
					t.Fatalf("ClassifyFirst(%d of %d bytes) = %+v, %v, want ErrIncomplete", n, len(b), f, err)
				}
				if tt.typ == tns.TypeConnect {
					if _, err := tns.ParseConnectData(b[:n]); !errors.Is(err, tns.ErrIncomplete) {
						t.Fatalf("ParseConnectData(%d of %d bytes) = %v, want ErrIncomplete", n, len(b), err)
					}
				}
			}
			tt.check(t, b)
		})
	}
}

func TestVectorsAllCovered(t *testing.T) {
	var files []string
	err := filepath.WalkDir("testdata", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "fuzz" {
			return fs.SkipDir
		}
		if !d.IsDir() && d.Name() != "LICENSE" && d.Name() != "README.txt" {
			files = append(files, filepath.ToSlash(strings.TrimPrefix(path, "testdata/")))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !slices.ContainsFunc(vectorTests, func(v vectorTest) bool { return v.file == f }) {
			t.Errorf("testdata/%s has no row in vectorTests", f)
		}
	}
	if len(files) != len(vectorTests) {
		t.Errorf("%d vector files, %d rows", len(files), len(vectorTests))
	}
	if _, err := os.Stat("testdata/spiderlabs-net-tns/LICENSE"); err != nil {
		t.Errorf("the Apache-2.0 licence must stay beside the SpiderLabs vectors: %v", err)
	}
}

func readVector(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustConnect(t *testing.T, b []byte) tns.ConnectInfo {
	t.Helper()
	info, err := tns.ParseConnectData(b)
	if err != nil {
		t.Fatalf("ParseConnectData: %v", err)
	}
	return info
}

// wantConnect compares the CONNECT's numeric fields and length.
func wantConnect(t *testing.T, got, want tns.ConnectInfo) {
	t.Helper()
	if got.Version != want.Version || got.LowestVersion != want.LowestVersion || got.SDU != want.SDU ||
		got.TDU != want.TDU || got.Len != want.Len || got.DataFollows != want.DataFollows {
		t.Errorf("CONNECT = v%d low %d SDU %d TDU %d len %d follows %v; want v%d low %d SDU %d TDU %d len %d follows %v",
			got.Version, got.LowestVersion, got.SDU, got.TDU, got.Len, got.DataFollows,
			want.Version, want.LowestVersion, want.SDU, want.TDU, want.Len, want.DataFollows)
	}
}

func mustClassify(t *testing.T, b []byte) tns.FirstPacket {
	t.Helper()
	f, err := tns.ClassifyFirst(b)
	if err != nil {
		t.Fatalf("ClassifyFirst: %v", err)
	}
	return f
}

func eq(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func val(d tns.Description, path ...string) string {
	v, _ := d.Value(path...)
	return v
}
