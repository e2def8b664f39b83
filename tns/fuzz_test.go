package tns_test

// Fuzz targets for every parser of untrusted bytes. Seeds are the vectors in
// testdata/fuzz/<target>/ (made from testdata/*/ and the shapes the tests
// build). A short run, as CI does it:
//
//	go test ./tns -run '^$' -fuzz FuzzClassifyFirst -fuzztime 10s

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

const fuzzMax = 4096

func FuzzReadPacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte, large bool) {
		form := tns.Length16
		if large {
			form = tns.Length32
		}
		p, err := tns.ReadPacket(bytes.NewReader(in), form, fuzzMax)
		q, rest, nerr := tns.NextPacket(in, form, fuzzMax)
		if err != nil {
			// The two framers fail alike: both on lengths, or the stream
			// was short where the slice is incomplete.
			short := errors.Is(nerr, tns.ErrIncomplete)
			if !short && (nerr == nil || errors.Is(err, tns.ErrTooLarge) != errors.Is(nerr, tns.ErrTooLarge)) {
				t.Fatalf("ReadPacket: %v, NextPacket: %v", err, nerr)
			}
			return
		}
		if nerr != nil || !bytes.Equal(p.Raw, q.Raw) || len(q.Raw)+len(rest) != len(in) {
			t.Fatalf("ReadPacket %x, NextPacket %x, %v", p.Raw, q.Raw, nerr)
		}
		if len(p.Raw) < tns.HeaderLen || int(p.Length) != len(p.Raw) || cap(p.Raw) > fuzzMax || !bytes.HasPrefix(in, p.Raw) {
			t.Fatalf("packet of %d bytes (cap %d) from %d bytes, header says %d", len(p.Raw), cap(p.Raw), len(in), p.Length)
		}
	})
}

func FuzzParseConnectData(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		info, err := tns.ParseConnectData(in)
		if err != nil {
			return
		}
		if info.Len < tns.HeaderLen || info.Len > len(in) || len(info.ConnectData) > 0xFFFF {
			t.Fatalf("Len %d of %d bytes, %d bytes of connect data", info.Len, len(in), len(info.ConnectData))
		}
		if (info.ConnectData == "") != (info.Description == nil) {
			t.Fatalf("connect data %q, description %v", info.ConnectData, info.Description)
		}
		// The CONNECT is exactly its Len bytes.
		again, err := tns.ParseConnectData(in[:info.Len])
		if err != nil || !reflect.DeepEqual(again, info) {
			t.Fatalf("re-parse of the first %d bytes: %+v, %v", info.Len, again, err)
		}
		if _, err := tns.ParseConnectData(in[:info.Len-1]); !errors.Is(err, tns.ErrIncomplete) {
			t.Fatalf("one byte short: %v, want ErrIncomplete", err)
		}
	})
}

func FuzzClassifyFirst(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		fp, err := tns.ClassifyFirst(in)
		if err != nil {
			if len(in) < tns.HeaderLen && !errors.Is(err, tns.ErrIncomplete) {
				t.Fatalf("%d bytes: %v", len(in), err)
			}
			return
		}
		if fp.Len < tns.HeaderLen {
			t.Fatalf("Len %d", fp.Len)
		}
		switch fp.Type {
		case tns.TypeRefuse, tns.TypeRedirect:
			if fp.Len > len(in) {
				t.Fatalf("%v of %d bytes decided from %d", fp.Type, fp.Len, len(in))
			}
			if _, err := tns.ClassifyFirst(in[:fp.Len-1]); !errors.Is(err, tns.ErrIncomplete) {
				t.Fatalf("%v one byte short: %v, want ErrIncomplete", fp.Type, err)
			}
			_ = fp.Redirect.Addresses()
			_, _ = fp.Refuse.Err()
		}
	})
}

func FuzzDescription(f *testing.F) {
	f.Add("(\xff\xfc(SERVICE_NAME=X)(CID=(PROGRAM=a (b))))") // LooseService's offsets
	f.Add("(0=(PROGRAM=\"(\"))")                             // a quoted '(' is no pair
	f.Add("(A=(CID=(PROGRAM=x (1) \"(\" y)(HOST=(a)b)))")
	f.Fuzz(func(t *testing.T, s string) {
		// Every input, parsed or not: the proxy calls LooseService on
		// connect data that does not parse.
		if v := tns.LooseService(s); !strings.Contains(s, v) {
			t.Fatalf("LooseService(%q) = %q, not part of it", s, v)
		}
		// And ParseDescriptionCID, which only ever lets more through.
		_, cidErr := tns.ParseDescriptionCID(s)
		d, err := tns.ParseDescription(s)
		if err == nil && cidErr != nil {
			t.Fatalf("%q parses, but not with CID values masked: %v", s, cidErr)
		}
		if err != nil {
			return
		}
		out := d.String()
		again, err := tns.ParseDescription(out)
		if err != nil || !reflect.DeepEqual(d, again) {
			t.Fatalf("%q renders as %q, which parses to %v, %v", s, out, again, err)
		}
		if again.String() != out {
			t.Fatalf("String not stable: %q then %q", out, again.String())
		}
		d.ServiceName()
		d.Program()
		d.Addresses()
		d.Err()
		d.VSNNUM()
	})
}
