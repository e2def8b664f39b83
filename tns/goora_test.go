package tns_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/sijms/go-ora/v2" // registers "oracle"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// TestGoOraConnect uses a real client, the pure-Go driver go-ora, as the
// source of CONNECT bytes: against a listener refusing ERR=12514 the app must
// see ORA-12514, and the CONNECT it sent must read as its service and
// program. A service name long enough makes go-ora send the connect data in
// a DATA packet after the CONNECT.
func TestGoOraConnect(t *testing.T) {
	tests := []struct {
		name        string
		service     string
		wantFollows bool
	}{
		{"short connect data", "SALES", false},
		{"connect data over 230 bytes", "SALES_" + strings.Repeat("X", 120), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
			db, err := sql.Open("oracle", "oracle://user:secret@"+l.Addr()+"/"+tt.service)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err = db.PingContext(ctx)
			if err == nil || !strings.Contains(err.Error(), "ORA-12514") {
				t.Fatalf("go-ora: %v, want ORA-12514", err)
			}

			connects := l.Connects()
			if len(connects) == 0 {
				t.Fatal("listener recorded no CONNECT")
			}
			info, err := tns.ParseConnectData(connects[0])
			if err != nil {
				t.Fatalf("go-ora's CONNECT: %v\n%x", err, connects[0])
			}
			d := info.Description
			if d.ServiceName() != tt.service || d.Program() != os.Args[0] {
				t.Errorf("service %q program %q; want %q %q\n%s", d.ServiceName(), d.Program(), tt.service, os.Args[0], info.ConnectData)
			}
			if info.DataFollows != tt.wantFollows || info.Len != len(connects[0]) {
				t.Errorf("%d bytes of connect data: DataFollows %v, Len %d of %d", len(info.ConnectData), info.DataFollows, info.Len, len(connects[0]))
			}
			if bytes.Contains(connects[0], []byte("secret")) {
				t.Error("the password is in the CONNECT")
			}
			t.Logf("go-ora CONNECT: v%d lowest %d SDU %d, %d bytes of connect data (follows: %v), %d CONNECT(s)",
				info.Version, info.LowestVersion, info.SDU, len(info.ConnectData), info.DataFollows, len(connects))
		})
	}
}

// The CONNECT a proxy sends the address a REDIRECT names on the app's
// behalf is the app's own (go-ora's real one here, short and with its
// connect data in a DATA packet) with the REDIRECT's reconnect data, and
// header flag 0x04, as Oracle's drivers send it there (node-oracledb's
// NSPFRDR, python-oracledb's TNS_PACKET_FLAG_REDIRECT; go-ora sets no
// flag and rewrites the description, so it is no reference here).
func TestBuildRedirectedConnectFromGoOra(t *testing.T) {
	for _, tc := range []struct {
		service   string
		reconnect string
	}{
		{"SALES", "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)))"},
		{"SALES", "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(INSTANCE_NAME=orcl1)(SERVER=dedicated)(CID=(PROGRAM=" + strings.Repeat("p", 200) + "))))"},
		{"SALES_" + strings.Repeat("X", 120), "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=S)))"},
	} {
		l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
		db, err := sql.Open("oracle", "oracle://user:secret@"+l.Addr()+"/"+tc.service)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		db.PingContext(ctx)
		cancel()
		db.Close()
		connects := l.Connects()
		if len(connects) == 0 {
			t.Fatal("listener recorded no CONNECT")
		}
		orig, err := tns.ParseConnectData(connects[0])
		if err != nil {
			t.Fatal(err)
		}
		built, err := tns.BuildRedirectedConnect(connects[0], tc.reconnect)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tns.ParseConnectData(built)
		if err != nil {
			t.Fatalf("the built CONNECT does not parse: %v\n%x", err, built)
		}
		if got.ConnectData != tc.reconnect || got.Len != len(built) || got.DataFollows != (len(tc.reconnect) > tns.MaxInlineConnectData) {
			t.Errorf("built CONNECT carries %q (follows %v, %d of %d bytes), want %q", got.ConnectData, got.DataFollows, got.Len, len(built), tc.reconnect)
		}
		if got.Version != orig.Version || got.LowestVersion != orig.LowestVersion || got.ServiceOptions != orig.ServiceOptions || got.SDU != orig.SDU || got.TDU != orig.TDU {
			t.Errorf("built CONNECT fields %+v, want the app's %+v", got, orig)
		}
		if built[5] != connects[0][5]|0x04 {
			t.Errorf("header flags 0x%02x, want the app's 0x%02x with 0x04", built[5], connects[0][5])
		}
		// Every byte of the fixed fields is the app's, but the lengths and flags.
		fixed := int(binary.BigEndian.Uint16(built[26:]))
		for i := 8; i < fixed; i++ {
			if i != 24 && i != 25 && built[i] != connects[0][i] {
				t.Errorf("byte %d of the fixed fields is 0x%02x, the app's 0x%02x", i, built[i], connects[0][i])
			}
		}
	}
}
