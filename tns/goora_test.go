package tns_test

import (
	"bytes"
	"context"
	"database/sql"
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
