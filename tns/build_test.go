package tns_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

func TestBuildConnectInlineLimit(t *testing.T) {
	for _, n := range []int{0, 1, 230, 231, 4000, 65525} {
		data := "(A=" + strings.Repeat("x", max(n-4, 0)) + ")"
		if n == 0 {
			data = ""
		}
		b, err := tns.BuildConnect(data)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		info, err := tns.ParseConnectData(b)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if info.ConnectData != data || info.DataFollows != (len(data) > 230) || info.Len != len(b) {
			t.Errorf("%d bytes: follows %v len %d of %d", len(data), info.DataFollows, info.Len, len(b))
		}
	}
	if _, err := tns.BuildConnect(strings.Repeat("x", 65526)); !errors.Is(err, tns.ErrTooLarge) {
		t.Errorf("65526 bytes: %v, want ErrTooLarge", err)
	}
}

func TestBuildAnswersParseBack(t *testing.T) {
	for _, v := range []uint16{300, 308, 314, 315, 318, 319} {
		a, err := tns.ParseAccept(tns.BuildAccept(v, "(DESCRIPTION=(TMP=))"))
		if err != nil || a.Version != v || a.SDU != 2048 || a.TDU != 32767 {
			t.Errorf("BuildAccept(%d) parses to %+v, %v", v, a, err)
		}
	}
	r, err := tns.ParseRefuse(tns.BuildRefuse(0x22, 0x01, "(DESCRIPTION=(ERR=12528))"))
	if code, _ := r.Err(); err != nil || code != 12528 || r.UserReason != 0x22 || r.SystemReason != 0x01 {
		t.Errorf("BuildRefuse parses to %+v, %v", r, err)
	}
}

// A CONNECT whose description this package does not read (go-ora writes
// os.Args[0] unescaped: C:\Program Files (x86)\app.exe) is one a listener
// answers, a SCAN listener with a REDIRECT too: the CONNECT to send where
// it points needs only the app's framing and fixed fields.
func TestBuildRedirectedConnectFromAnUnescapedCID(t *testing.T) {
	const reconnect = "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)))"
	for _, desc := range []string{
		`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=C:\Program Files (x86)\app.exe)(HOST=w)(USER=u))))`,
		`(DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=scan)(PORT=1521))(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=C:\Program Files (x86)\Vendor\` + strings.Repeat("x", 150) + `.exe)(HOST=w)(USER=u))))`,
	} {
		opening, err := tns.BuildConnect(desc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tns.ParseConnectData(opening); !errors.Is(err, tns.ErrDescription) {
			t.Fatalf("%s: parsed with %v; the test needs a description the parser does not read", desc, err)
		}
		built, err := tns.BuildRedirectedConnect(opening, reconnect)
		if err != nil {
			t.Fatalf("%d bytes of connect data: %v", len(desc), err)
		}
		got, err := tns.ParseConnectData(built)
		if err != nil || got.ConnectData != reconnect || built[5] != 0x04 {
			t.Errorf("built %q (flags 0x%02x), %v; want the reconnect data, flag 0x04", got.ConnectData, built[5], err)
		}
	}
}
