package tns_test

// Fuzz targets for every parser of untrusted bytes. Seeds are the vectors in
// testdata/fuzz/<target>/ (made from testdata/*/ and the shapes the tests
// build). A short run, as CI does it:
//
//	go test ./tns -run '^$' -fuzz FuzzClassifyFirst -fuzztime 10s

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

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

// FuzzConnectWait feeds bytes to ConnectWait.Ready and AnswerWait.Ready in
// steps of step bytes, as reads deliver them, and checks them against
// ParseConnectData and ClassifyFirst at every step: Ready is false exactly
// while the parser says ErrIncomplete, so a caller that parses only once
// Ready misses nothing.
func FuzzConnectWait(f *testing.F) {
	split := mustBuild(f, longConnectData)[:58]
	split = append(split, dataPacket(longConnectData[:100])...)
	split = append(split, dataPacket(longConnectData[100:])...)
	f.Add(mustBuild(f, longConnectData), uint8(0))
	f.Add(split, uint8(6))
	f.Add(newConnect(70, 317, 8192, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=S)))"), uint8(1))
	f.Add(append(split[:58:58], []byte{0, 8, 0, 0, byte(tns.TypeData), 0, 0, 0}...), uint8(3)) // DATA with no data flags
	f.Add(append(split[:58:58], tns.BuildResend()...), uint8(0))                               // not DATA where connect data should be
	f.Add(tns.BuildRedirectTo("(ADDRESS=(PROTOCOL=tcp)(HOST=node1)(PORT=1521))", longConnectData), uint8(2))
	f.Add(tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(ERR=12514))"), uint8(4))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		var w tns.ConnectWait
		var a tns.AnswerWait
		for n := 0; ; n += 1 + int(step) {
			n = min(n, len(in))
			_, err := tns.ParseConnectData(in[:n])
			if ready := w.Ready(in[:n]); ready == errors.Is(err, tns.ErrIncomplete) {
				t.Fatalf("ConnectWait.Ready(first %d bytes) = %v, ParseConnectData: %v", n, ready, err)
			}
			_, err = tns.ClassifyFirst(in[:n])
			if ready := a.Ready(in[:n]); ready == errors.Is(err, tns.ErrIncomplete) {
				t.Fatalf("AnswerWait.Ready(first %d bytes) = %v, ClassifyFirst: %v", n, ready, err)
			}
			if n == len(in) {
				break
			}
		}
		// The same bytes after Reset, at once.
		w.Reset()
		_, err := tns.ParseConnectData(in)
		if ready := w.Ready(in); ready == errors.Is(err, tns.ErrIncomplete) {
			t.Fatalf("Ready after Reset = %v, ParseConnectData: %v", ready, err)
		}
	})
}

// FuzzListenerAnswer is a health check's tnsping and service probe against
// a listener that answers with the fuzzer's bytes and closes, over
// loopback: whatever comes back, Ping and ProbeService return (an error,
// not a hang or a panic), and Ping says alive only for an ACCEPT or REFUSE
// carrying ERR=0.
func FuzzListenerAnswer(f *testing.F) {
	for _, name := range []string{"spiderlabs-net-tns/accept_with_data.raw", "spiderlabs-net-tns/refuse.raw",
		"spiderlabs-net-tns/redirect.raw", "tnsping/ping_refuse_reply_RECONSTRUCTED.bin"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(append(tns.BuildResend(), b...), true)
	}
	f.Add(tns.BuildAccept(318, ""), false)
	f.Add(tns.BuildRefuseApart(0x22, 0, "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=0)(ALIAS=LISTENER))"), false)
	f.Add(tns.BuildRefuseApart(0x22, 0, "(DESCRIPTION=(ERR=12514))"), true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, answer []byte, probe bool) {
		served := make(chan struct{})
		go func() {
			defer close(served)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.Write(answer)
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c) // the CONNECTs, until the client closes
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if probe {
			_, _, err = tns.ProbeService(ctx, c, "SALES")
		} else {
			var res tns.PingResult
			res, err = tns.Ping(ctx, c)
			if err == nil && res.Answer != tns.TypeAccept && res.Answer != tns.TypeRefuse {
				t.Fatalf("alive on a %v", res.Answer)
			}
		}
		c.Close()
		<-served
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("answer of %d bytes then FIN: the check waited until its timeout: %v", len(answer), err)
		}
	})
}
