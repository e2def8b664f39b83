package tnstest_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func dial(t *testing.T, l *tnstest.Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

func connect(t *testing.T, data string) []byte {
	t.Helper()
	b, err := tns.BuildConnect(data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRecordsWholeConnect: the listener waits for the DATA packet of long
// connect data, even when it trickles in a byte at a time, and records the
// exact bytes before it answers.
func TestRecordsWholeConnect(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12528})
	long := connect(t, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME="+strings.Repeat("S", 250)+")))")
	c := dial(t, l)
	for i := range long {
		if _, err := c.Write(long[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	p, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tns.ParseRefuse(p.Raw)
	if code, _ := r.Err(); err != nil || code != 12528 || r.UserReason != 0x22 {
		t.Errorf("answer = %+v, %v", r, err)
	}
	if got := l.Connects(); len(got) != 1 || !bytes.Equal(got[0], long) {
		t.Errorf("recorded %x, want %x", got, long)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after REFUSE: %v, want the listener to close", err)
	}
}

func TestAcceptEchoes(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept, AcceptVersion: 319})
	c := dial(t, l)
	if _, err := c.Write(connect(t, "(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=S)))")); err != nil {
		t.Fatal(err)
	}
	p, err := tns.ReadPacket(c, tns.Length16, 0)
	if err != nil || p.Type != tns.TypeAccept {
		t.Fatalf("answer = %v, %v", p.Type, err)
	}
	if a, _ := tns.ParseAccept(p.Raw); a.Version != 319 {
		t.Errorf("ACCEPT version %d", a.Version)
	}
	msg := []byte("after the handshake")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("echo = %q, %v", got, err)
	}
}

func TestResetAndErrors(t *testing.T) {
	r := tnstest.New(t, tnstest.Config{Mode: tnstest.Reset})
	c := dial(t, r)
	if _, err := c.Write(connect(t, tns.PingConnectData)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("Reset mode: %v, want ECONNRESET", err)
	}

	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse})
	_ = dial(t, l).Close() // a TCP health check: no error
	bad := dial(t, l)
	if _, err := bad.Write(tns.BuildResend()); err != nil {
		t.Fatal(err)
	}
	_, _ = bad.Read(make([]byte, 1))
	deadline := time.Now().Add(5 * time.Second)
	for len(l.Errors()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if errs := l.Errors(); len(errs) != 1 || !errors.Is(errs[0], tns.ErrUnexpectedType) {
		t.Errorf("Errors() = %v, want one ErrUnexpectedType", errs)
	}
	if l.Accepted() != 2 {
		t.Errorf("Accepted() = %d, want 2", l.Accepted())
	}
}

// TestCloseEndsSilentSessions: Close returns with clients still connected to
// a silent listener, and leaves no goroutine behind (goleak in TestMain).
func TestCloseEndsSilentSessions(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Silent})
	c := dial(t, l)
	if _, err := c.Write(connect(t, tns.PingConnectData)); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); len(l.Connects()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("CONNECT not recorded")
		}
	}
	done := make(chan error, 1)
	go func() { done <- l.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs with a silent session open")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("session still open after Close")
	}
}
