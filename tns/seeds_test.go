package tns_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// TestWriteFuzzSeeds regenerates testdata/fuzz/ from the vectors and the
// shapes the tests build, including CONNECTs go-ora really sends. It runs
// only on request:
//
//	TNS_WRITE_FUZZ_SEEDS=1 go test ./tns -run TestWriteFuzzSeeds
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("TNS_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set TNS_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	packets := map[string][]byte{}
	for _, v := range vectorTests {
		packets[strings.TrimSuffix(filepath.Base(v.file), filepath.Ext(v.file))] = readVector(t, v.file)
	}
	long := mustBuild(t, longConnectData)
	packets["built_connect_data_follows"] = long
	packets["goora_layout_connect"] = newConnect(70, 317, 0x200000, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=HR)))")
	packets["python_layout_connect_data_follows"] = newConnect(74, 319, 8192, longConnectData)
	packets["connect_data_in_two_data_packets"] = append(append(long[:58:58], dataPacket(longConnectData[:100])...), dataPacket(longConnectData[100:])...)
	packets["redirect_flag2_data_follows"] = redirectFollowing(scanAddr, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)))")
	packets["accept_318"] = tns.BuildAccept(318, "")
	packets["refuse_12514"] = tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))")
	packets["refuse_text_in_data"] = tns.BuildRefuseApart(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))")
	packets["refuse_not_description"] = tns.BuildRefuse(4, 1, "listener said (err = 12516 ) and (more")
	packets["garbage_http"] = []byte(tnstest.DefaultGarbage)
	for i, c := range goOraConnects(t) {
		packets[fmt.Sprintf("goora_connect_%d", i)] = c
	}

	for name, p := range packets {
		writeSeed(t, "FuzzReadPacket", name, fmt.Sprintf("[]byte(%s)\nbool(false)", strconv.Quote(string(p))))
		writeSeed(t, "FuzzClassifyFirst", name, fmt.Sprintf("[]byte(%s)", strconv.Quote(string(p))))
		if info, err := tns.ParseConnectData(p); err == nil || p[4] == byte(tns.TypeConnect) {
			writeSeed(t, "FuzzParseConnectData", name, fmt.Sprintf("[]byte(%s)", strconv.Quote(string(p))))
			if err == nil && info.ConnectData != "" {
				writeSeed(t, "FuzzDescription", name, fmt.Sprintf("string(%s)", strconv.Quote(info.ConnectData)))
			}
		}
		if r, err := tns.ParseRefuse(p); err == nil && r.Data != "" {
			writeSeed(t, "FuzzDescription", name, fmt.Sprintf("string(%s)", strconv.Quote(r.Data)))
		}
	}
	writeSeed(t, "FuzzReadPacket", "length32", fmt.Sprintf("[]byte(%s)\nbool(true)", strconv.Quote("\x00\x00\x00\x0a\x06\x00\x00\x00\x00\x40")))
	writeSeed(t, "FuzzReadPacket", "length32_lie", fmt.Sprintf("[]byte(%s)\nbool(true)", strconv.Quote("\xff\xff\xff\xff\x06\x00\x00\x00")))
	writeSeed(t, "FuzzDescription", "quoted_and_escaped", fmt.Sprintf("string(%s)", strconv.Quote(`(CID=(PROGRAM="C:\Program Files (x86)\a.exe")(USER=svc\)x)(HOST= h ))`)))
}

// goOraConnects returns the CONNECT bytes go-ora sends for a short and a
// long connect descriptor.
func goOraConnects(t *testing.T) [][]byte {
	var out [][]byte
	for _, service := range []string{"SALES", "SALES_" + strings.Repeat("X", 120)} {
		l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse})
		db, err := sql.Open("oracle", "oracle://user:secret@"+l.Addr()+"/"+service)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = db.PingContext(ctx)
		cancel()
		_ = db.Close()
		out = append(out, l.Connects()...)
	}
	return out
}

func writeSeed(t *testing.T, target, name, body string) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n"+body+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
