package lab

import (
	"context"
	"errors"
	"io"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/test/lab/netem"
	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// The self-checks prove the lab without tnsguard: if they fail, a scenario's verdict
// about tnsguard means nothing.

func TestLabSelfCheckDropForgetsIdleFlows(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: netlab.StaleDrop})
	lab.StartEcho(t, lab.DB, ":1521")
	plain := dialN(t, lab.App, lab.DBAddr(1521), 2)

	// Control: the same kind of flow with kernel keepalive below the timeout survives.
	kept := dialN(t, lab.App, lab.DBAddr(1521), 1)[0]
	if err := kept.SetKeepAliveConfig(keepAlive(time.Second, time.Second, 3)); err != nil {
		t.Fatal(err)
	}

	idle := lab.Timeout + 1500*time.Millisecond
	time.Sleep(idle)
	start := time.Now()
	errs := roundTripAll(plain, 2*time.Second)
	t.Logf("after %v idle (timeout %v): plain flows %v in %v", idle, lab.Timeout, describe(errs), time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) && netlab.Classify(err) != "timeout" {
			t.Errorf("plain flow %d: want a black-holed round trip (timeout), got %v\n%s", i, err, lab.Rules())
		}
	}
	if err := roundTrip(kept, []byte("kept\n"), 2*time.Second); err != nil {
		t.Errorf("flow with 1s keepalive: want it alive after %v idle, got %v", idle, err)
	}
}

func TestLabSelfCheckResetAnswersIdleFlows(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 3 * time.Second, Stale: netlab.StaleReset})
	lab.StartEcho(t, lab.DB, ":1521")
	conns := dialN(t, lab.App, lab.DBAddr(1521), 2)
	time.Sleep(lab.Timeout + 1500*time.Millisecond)
	start := time.Now()
	errs := roundTripAll(conns, 2*time.Second)
	took := time.Since(start)
	t.Logf("reset mode: stale flows %v in %v", describe(errs), took.Round(time.Millisecond))
	for i, err := range errs {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("flow %d: want ECONNRESET from the firewall, got %v", i, err)
		}
	}
	if took > time.Second {
		t.Errorf("reset took %v, want it at once", took)
	}
}

func TestLabSelfCheckBlackHoleLiveFlow(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, ":1521")
	c := dialN(t, lab.App, lab.DBAddr(1521), 1)[0]
	restore := lab.BlackHolePort(t, 1521)
	if err := roundTrip(c, []byte("cut\n"), time.Second); netlab.Classify(err) != "timeout" {
		t.Errorf("black-holed live flow: want timeout, got %v", err)
	}
	restore()
	// TCP retransmits the bytes once the path is back: the first echo arrives late,
	// then the second.
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("back\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("cut\nback\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "cut\nback\n" {
		t.Errorf("after the black-hole was lifted: got %q, %v; want both echoes", got, err)
	}
}

func TestLabSelfCheckAppLegBlackHole(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{})
	ln, err := lab.Listen(lab.App, "127.0.0.1:1522")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 64)
			var n int
			for err == nil {
				n, err = c.Read(buf)
				if n > 0 {
					_, _ = c.Write(buf[:n])
				}
			}
		}
		accepted <- err
	}()
	c := dialN(t, lab.App, "127.0.0.1:1522", 1)[0]
	lab.BlackHoleAppLeg(t, 1522)
	if err := roundTrip(c, []byte("gone\n"), time.Second); netlab.Classify(err) != "timeout" {
		t.Errorf("black-holed app leg: want timeout, got %v", err)
	}
}

func TestLabSelfCheckNetemDelayAndLoss(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, ":1521")
	const delay = 50 * time.Millisecond
	stop := lab.Netem(t, netem.Config{Queue: 11, Delay: delay, Loss: 0.01},
		"-p", "tcp", "-d", lab.DBIP.String(), "--dport", "1521")
	c := dialN(t, lab.App, lab.DBAddr(1521), 1)[0]
	msg := make([]byte, 16<<10)
	var rtts []time.Duration
	for range 40 {
		start := time.Now()
		if err := roundTrip(c, msg, 10*time.Second); err != nil {
			t.Fatalf("round trip under netem: %v", err)
		}
		rtts = append(rtts, time.Since(start))
	}
	info := tcpInfo(t, c)
	st := stop()
	srtt := time.Duration(info.Rtt) * time.Microsecond
	t.Logf("netem %v delay, 1%% loss: kernel smoothed RTT %v (rttvar %v), retransmits %d; app round trips min %v; queue %+v",
		delay, srtt, time.Duration(info.Rttvar)*time.Microsecond, info.Total_retrans, minDur(rtts), st)
	// Within 30% of what the queue held; on a loaded machine a packet can
	// also leave up to MaxLate after its time, and the smoothed RTT rightly
	// carries that too (seen: 73.9 ms for a 53.6 ms mean hold, 69.9 ms late).
	if srtt < time.Duration(0.7*float64(st.MeanHeld)) || srtt > time.Duration(1.3*float64(st.MeanHeld))+st.MaxLate || st.MeanHeld < delay {
		t.Errorf("kernel RTT %v, want the queue's mean hold %v (configured %v) within 30%% (+%v late releases)", srtt, st.MeanHeld, delay, st.MaxLate)
	}
	if info.Total_retrans == 0 || st.Dropped == 0 {
		t.Errorf("want retransmits under loss: kernel %d, netem dropped %d", info.Total_retrans, st.Dropped)
	}
}

func tcpInfo(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}) *unix.TCPInfo {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

// Latency injected above TCP by Toxiproxy shows in application round trips (a tnsping
// answered by the echo server's listener imitation) but not in the kernel's RTT.
func TestLabSelfCheckToxiproxyLatencyAboveTCP(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 30 * time.Second})
	lab.StartEcho(t, lab.DB, ":1521")
	const latency = 100 * time.Millisecond
	lab.StartToxiproxy(t, lab.DB, netlab.ToxiproxyArgs{Listen: ":1531", Upstream: "127.0.0.1:1521", Latency: latency})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := lab.Dial(ctx, lab.App, lab.DBAddr(1531))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write(tnspingConnect()); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("tnsping via toxiproxy: %v", err)
	}
	took := time.Since(start)
	srtt := time.Duration(tcpInfo(t, c).Rtt) * time.Microsecond
	t.Logf("tnsping via toxiproxy (%v each way): answered in %v, packet type %d; kernel RTT of that socket %v", latency, took, hdr[4], srtt)
	if hdr[4] != 4 {
		t.Errorf("tnsping answer type %d, want 4 (REFUSE)", hdr[4])
	}
	if took < 2*latency {
		t.Errorf("tnsping took %v, want >= %v", took, 2*latency)
	}
	if srtt > 10*time.Millisecond {
		t.Errorf("kernel RTT %v, want < 10ms: toxiproxy latency is above TCP", srtt)
	}
}

// tnspingConnect is a TNS CONNECT carrying (CONNECT_DATA=(COMMAND=ping)), the layout
// tnsping uses (version 312, connect data at offset 58).
func tnspingConnect() []byte {
	data := []byte("(CONNECT_DATA=(COMMAND=ping))")
	const off = 58
	p := make([]byte, off+len(data))
	p[0], p[1] = byte(len(p)>>8), byte(len(p))
	p[4] = 1                  // CONNECT
	p[8], p[9] = 0x01, 0x38   // version 312
	p[10], p[11] = 0x01, 0x2c // lowest compatible 300
	p[14], p[15] = 0x08, 0x00 // SDU 2048
	p[16], p[17] = 0x7f, 0xff // TDU 32767
	p[24], p[25] = 0, byte(len(data))
	p[26], p[27] = 0, off
	copy(p[off:], data)
	return p
}
