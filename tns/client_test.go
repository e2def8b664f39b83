package tns_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A listener that sends VSNNUM=0 keeps its version to itself (the captured
// tnsping reply does): the ping reports none, where it reported 0.0.0.0.0,
// which tnsguard_oracle_listener_info exported as a version.
func TestPingVersionWithheld(t *testing.T) {
	reply, err := os.ReadFile("testdata/tnsping/ping_refuse_reply_RECONSTRUCTED.bin")
	if err != nil {
		t.Fatal(err)
	}
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Garbage, Garbage: reply})
	res, err := tns.Ping(ctxFor(t, 5*time.Second), dial(t, l.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != "" || res.VSNNUM != 0 {
		t.Errorf("Ping = %+v, want no version", res)
	}
}

func TestPingAlive(t *testing.T) {
	ping := mustBuild(t, tns.PingConnectData)
	tests := []struct {
		name       string
		cfg        tnstest.Config
		wantAnswer tns.PacketType
		wantVer    string
		connects   int
	}{
		{"REFUSE ERR=0 (current listeners)", tnstest.Config{Mode: tnstest.Refuse, Err: 12514}, tns.TypeRefuse, "19.0.0.0.0", 1},
		{"ACCEPT ERR=0 (old listeners)", tnstest.Config{PingAccept: true, VSNNUM: 0x0A200100}, tns.TypeAccept, "10.2.0.1.0", 1},
		{"after a RESEND", tnstest.Config{Mode: tnstest.Accept, Resends: 1, VSNNUM: 0x17400000}, tns.TypeRefuse, "23.4.0.0.0", 2},
		// Until 2026-11-30 every check of such a listener failed (ErrMalformed).
		{"REFUSE ERR=0, its text in a DATA packet", tnstest.Config{Mode: tnstest.Refuse, RefuseApart: true}, tns.TypeRefuse, "19.0.0.0.0", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tnstest.New(t, tt.cfg)
			res, err := tns.Ping(ctxFor(t, 5*time.Second), dial(t, l.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			if res.Answer != tt.wantAnswer || res.Version != tt.wantVer || !strings.Contains(res.Data, "(ERR=0)") {
				t.Errorf("Ping = %+v", res)
			}
			got := l.Connects()
			if len(got) != tt.connects {
				t.Fatalf("listener got %d CONNECTs, want %d", len(got), tt.connects)
			}
			for _, c := range got {
				if !bytes.Equal(c, ping) {
					t.Errorf("listener got %x, want the tnsping CONNECT", c)
				}
			}
			if errs := l.Errors(); len(errs) > 0 {
				t.Errorf("listener: %v", errs)
			}
		})
	}
}

func TestPingFailures(t *testing.T) {
	tests := []struct {
		name    string
		cfg     tnstest.Config
		timeout time.Duration
		want    []error
	}{
		{"listener resets", tnstest.Config{Mode: tnstest.Reset}, 5 * time.Second, []error{syscall.ECONNRESET}},
		{"garbage answer", tnstest.Config{Mode: tnstest.Garbage}, 5 * time.Second, []error{tns.ErrTruncated}},
		{"length below header", tnstest.Config{Mode: tnstest.Garbage, Garbage: []byte{0, 3, 0, 0, 4, 0, 0, 0}}, 5 * time.Second, []error{tns.ErrBadLength}},
		{"REFUSE with ERR=12514", tnstest.Config{Mode: tnstest.Garbage, Garbage: tns.BuildRefuse(0x22, 0, "(DESCRIPTION=(ERR=12514))")}, 5 * time.Second, []error{tns.ErrUnexpectedAnswer}},
		{"REFUSE without ERR", tnstest.Config{Mode: tnstest.Garbage, Garbage: tns.BuildRefuse(0x22, 0, "")}, 5 * time.Second, []error{tns.ErrUnexpectedAnswer}},
		{"ACCEPT without ERR", tnstest.Config{Mode: tnstest.Garbage, Garbage: tns.BuildAccept(318, "")}, 5 * time.Second, []error{tns.ErrUnexpectedAnswer}},
		{"REDIRECT", tnstest.Config{Mode: tnstest.Garbage, Garbage: tns.BuildRedirect(scanAddr)}, 5 * time.Second, []error{tns.ErrUnexpectedAnswer}},
		{"RESEND forever", tnstest.Config{Mode: tnstest.Accept, Resends: 10}, 5 * time.Second, []error{tns.ErrUnexpectedAnswer}},
		{"silent listener", tnstest.Config{Mode: tnstest.Silent}, 200 * time.Millisecond, []error{context.DeadlineExceeded, os.ErrDeadlineExceeded}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tnstest.New(t, tt.cfg)
			start := time.Now()
			res, err := tns.Ping(ctxFor(t, tt.timeout), dial(t, l.Addr()))
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("Ping = %+v, %v; want an error matching %v", res, err, want)
				}
			}
			if took := time.Since(start); took > tt.timeout+time.Second {
				t.Errorf("Ping took %v with a %v context", took, tt.timeout)
			}
		})
	}
}

func TestPingCancel(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := tns.Ping(ctx, dial(t, l.Addr()))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Ping = %v, want context.Canceled", err)
	}
	if _, err := tns.Ping(ctx, dial(t, l.Addr())); !errors.Is(err, context.Canceled) {
		t.Errorf("Ping with a done context = %v", err)
	}
}

func TestProbeService(t *testing.T) {
	tests := []struct {
		name           string
		cfg            tnstest.Config
		service        string
		wantRegistered bool
		wantRefuse     int
	}{
		{"not registered (12514)", tnstest.Config{Mode: tnstest.Refuse, Err: 12514}, "SALES", false, 12514},
		{"SID unknown (12505)", tnstest.Config{Mode: tnstest.Refuse, Err: 12505}, "SALES", false, 12505},
		{"registered, no handler (12516)", tnstest.Config{Mode: tnstest.Refuse, Err: 12516}, "SALES", true, 12516},
		{"accepted", tnstest.Config{Mode: tnstest.Accept}, "SALES", true, 0},
		{"registered among services", tnstest.Config{Mode: tnstest.Accept, Services: []string{"HR", "SALES"}}, "sales", true, 0},
		{"other service registered", tnstest.Config{Mode: tnstest.Accept, Services: []string{"HR"}}, "SALES", false, 12514},
		{"after a RESEND", tnstest.Config{Mode: tnstest.Refuse, Err: 12514, Resends: 1}, "SALES", false, 12514},
		{"redirected", tnstest.Config{Mode: tnstest.Redirect, RedirectTo: "10.0.0.7:1521"}, "SALES", true, 0},
		{"long service name, DATA follows", tnstest.Config{Mode: tnstest.Refuse}, strings.Repeat("LONG_", 50), false, 12514},
		{"not registered, the REFUSE's text in a DATA packet", tnstest.Config{Mode: tnstest.Refuse, Err: 12514, RefuseApart: true}, "SALES", false, 12514},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tnstest.New(t, tt.cfg)
			registered, code, err := tns.ProbeService(ctxFor(t, 5*time.Second), dial(t, l.Addr()), tt.service)
			if err != nil || registered != tt.wantRegistered || code != tt.wantRefuse {
				t.Fatalf("ProbeService = %v, %d, %v; want %v, %d", registered, code, err, tt.wantRegistered, tt.wantRefuse)
			}
			connects := l.Connects()
			if len(connects) == 0 {
				t.Fatal("listener got no CONNECT")
			}
			info, err := tns.ParseConnectData(connects[len(connects)-1])
			if err != nil {
				t.Fatal(err)
			}
			d := info.Description
			_, port, _ := net.SplitHostPort(l.Addr())
			if d.ServiceName() != tt.service || d.Program() != "tnsguard" || info.DataFollows != (len(info.ConnectData) > 230) ||
				len(d.Addresses()) != 1 || d.Addresses()[0] != (tns.Address{Protocol: "TCP", Host: "127.0.0.1", Port: port}) {
				t.Errorf("probe CONNECT = %s", info.ConnectData)
			}
		})
	}
}

func TestProbeServiceFailures(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	if _, _, err := tns.ProbeService(ctxFor(t, 200*time.Millisecond), dial(t, l.Addr()), "SALES"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent listener: %v, want DeadlineExceeded", err)
	}
	r := tnstest.New(t, tnstest.Config{Mode: tnstest.Reset})
	if _, _, err := tns.ProbeService(ctxFor(t, 5*time.Second), dial(t, r.Addr()), "SALES"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("resetting listener: %v, want ECONNRESET", err)
	}
	g := tnstest.New(t, tnstest.Config{Mode: tnstest.Garbage, Garbage: []byte{0, 11, 0, 0, byte(tns.TypeMarker), 0, 0, 0, 1, 0, 2}})
	if _, _, err := tns.ProbeService(ctxFor(t, 5*time.Second), dial(t, g.Addr()), "SALES"); !errors.Is(err, tns.ErrUnexpectedAnswer) {
		t.Errorf("MARKER answer: %v, want ErrUnexpectedAnswer", err)
	}
	for _, bad := range []string{"", "A)(B=", "a b", `x"y`} {
		if _, _, err := tns.ProbeService(ctxFor(t, time.Second), dial(t, l.Addr()), bad); err == nil {
			t.Errorf("ProbeService(%q) sent a CONNECT", bad)
		}
	}
}

// A listener that answers tnsping with a refusal (ERR other than 0) had its
// whole description quoted in the error, which the health check logs at
// warn: a REFUSE of 60 KB (a broken or hostile listener, or something else
// on the port) made one 60 KB "health check failed" line, longer than log
// pipelines keep (journald 48 KiB, Docker 16 KiB), as shownText in the
// proxy prevents for the text peers write in session lines.
func TestPingRefusalErrorIsBounded(t *testing.T) {
	data := "(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=1)(MSG=" + strings.Repeat("A", 60000) + "))"
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Garbage, Garbage: tns.BuildRefuse(0x22, 0, data)})
	_, err := tns.Ping(ctxFor(t, 5*time.Second), dial(t, l.Addr()))
	if !errors.Is(err, tns.ErrUnexpectedAnswer) {
		t.Fatalf("Ping = %v, want ErrUnexpectedAnswer", err)
	}
	if !strings.Contains(err.Error(), "(ERR=1)") {
		t.Errorf("the error no longer says what the listener answered: %.200s", err)
	}
	if n := len(err.Error()); n > 1024 {
		t.Errorf("a %d-byte REFUSE made a %d-byte error (logged whole by the health check)", len(data), n)
	}
}
