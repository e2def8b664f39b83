package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/tns"
)

// urgentSeen is urgent data as a receiver saw it: the byte, how many bytes
// of the stream came before it, when it was seen, and when the read that
// took the last of the bytes in front of it returned (zero: no byte was in
// front of it).
type urgentSeen struct {
	b      byte
	at     int
	when   time.Time
	behind time.Time
}

// urgentReader reads a connection as an Oracle server does: the stream,
// and urgent data at its mark (poll with POLLPRI, SIOCATMARK, recv
// MSG_OOB).
type urgentReader struct {
	c        *net.TCPConn
	stream   []byte
	urgent   []urgentSeen
	lastRead time.Time // the last read that returned bytes
}

// readUntil reads until cond holds, the stream ends or the timeout passes.
func (r *urgentReader) readUntil(timeout time.Duration, cond func(*urgentReader) bool) {
	rc, err := r.c.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(timeout)
	for !cond(r) && time.Now().Before(deadline) {
		ended := false
		rc.Control(func(fd uintptr) {
			unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI}}, 20)
			if atMark(fd) {
				if b, e := recvUrgent(fd); e == 0 {
					r.urgent = append(r.urgent, urgentSeen{b: b, at: len(r.stream), when: time.Now(), behind: r.lastRead})
				}
			}
			n, err := unix.Read(int(fd), buf)
			if n > 0 {
				r.stream = append(r.stream, buf[:n]...)
				r.lastRead = time.Now()
			}
			ended = n == 0 || (err != nil && err != unix.EAGAIN)
		})
		if ended {
			return
		}
	}
}

// sendOOB sends b as urgent data, as Oracle Net clients send a break.
func sendOOB(t *testing.T, c *net.TCPConn, b byte) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var e syscall.Errno
	rc.Write(func(fd uintptr) bool { e = sendUrgent(fd, b); return e != syscall.EAGAIN })
	if e != 0 {
		t.Fatal(os.NewSyscallError("send MSG_OOB", e))
	}
}

// An app's urgent byte (an Oracle Net break) reaches the database as urgent
// data, at its place in the stream, with every other byte intact: whether
// the direction was idle, busy, in bulk, or the whole session dormant; and
// a bulk transfer goes on past it at once. Before, the byte was dropped
// (reads skip it), so a break sent on an OOB session never interrupted the
// call, and a bulk transfer stopped in front of it until the pump parked.
func TestUrgentByteReachesTheDatabaseAtItsPlace(t *testing.T) {
	const tail = "after the break"
	cases := []struct {
		name   string
		before int           // bytes sent first
		pause  time.Duration // then this pause before the urgent byte
		alone  bool          // nothing follows the urgent byte until it has arrived
		within time.Duration // the urgent byte reaches the database within this
		splice bool          // bulk spliced, as to another host (copied to this one)
	}{
		{"idle session (parked)", 100, 400 * time.Millisecond, false, time.Second, false},
		{"idle session, the byte alone", 100, 400 * time.Millisecond, true, time.Second, false},
		{"busy direction, the byte alone", 100, 20 * time.Millisecond, true, time.Second, false}, // seen at the pump's idle deadline
		{"in bulk", 8 << 20, 0, false, time.Second, false},
		{"in spliced bulk", 8 << 20, 0, false, time.Second, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, got := sessionToUrgentReader(t, tc.splice, 20*time.Second, func(r *urgentReader) bool {
				return len(r.stream) >= tc.before+len(tail)
			})
			before := bytes.Repeat([]byte("0123456789abcdef"), tc.before/16+1)[:tc.before]
			if _, err := c.Write(before); err != nil {
				t.Fatal(err)
			}
			if tc.pause > 0 {
				time.Sleep(tc.pause)
			}
			sent := time.Now()
			sendOOB(t, c, '!')
			if tc.alone {
				time.Sleep(tc.within)
			}
			if _, err := c.Write([]byte(tail)); err != nil {
				t.Fatal(err)
			}
			var r *urgentReader
			select {
			case r = <-got:
			case <-time.After(25 * time.Second):
				t.Fatal("the database never got the stream")
			}
			if want := string(before) + tail; string(r.stream) != want {
				i := 0
				for i < len(want) && i < len(r.stream) && want[i] == r.stream[i] {
					i++
				}
				t.Fatalf("the database got %d bytes, want %d intact (first difference at %d; urgent %+v)", len(r.stream), len(want), i, r.urgent)
			}
			if len(r.urgent) != 1 || r.urgent[0].b != '!' || r.urgent[0].at != tc.before {
				t.Fatalf("urgent data at the database: %+v; want '!' once, after the %d bytes before it", r.urgent, tc.before)
			}
			// Counted from when it was sent, or, when the database was
			// still reading the bulk in front of it then, from its read
			// of the last of those bytes: how long the byte was held
			// back, not how fast a loaded test machine drains 8 MiB.
			from := sent
			if r.urgent[0].behind.After(from) {
				from = r.urgent[0].behind
			}
			if d := r.urgent[0].when.Sub(from); d > tc.within {
				t.Errorf("the urgent byte reached the database %v after it was sent and the bytes in front of it were read (%v after it was sent), want at most %v", d, r.urgent[0].when.Sub(sent), tc.within)
			}
		})
	}
}

// A break the database sends reaches the app the same way, also when the
// session is dormant (both directions parked).
func TestUrgentByteFromTheDatabaseReachesTheApp(t *testing.T) {
	h, c, db := sessionWithDatabase(t, false)
	if _, err := db.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the session to go dormant", sessionOf(t, h.p, c).isDormant)
	sendOOB(t, db, 'x')
	if _, err := db.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	r := &urgentReader{c: c}
	r.readUntil(5*time.Second, func(r *urgentReader) bool { return len(r.stream) >= len("answermore") })
	if string(r.stream) != "answermore" || len(r.urgent) != 1 || r.urgent[0] != (urgentSeen{b: 'x', at: len("answer"), when: r.urgent[0].when, behind: r.urgent[0].behind}) {
		t.Fatalf("the app got %q with urgent data %+v; want \"answermore\" with 'x' after \"answer\"", r.stream, r.urgent)
	}
}

// sessionToUrgentReader is an app's established session (the database
// greeted it) through a proxy to a database that reads it with an
// urgentReader until done or timeout, and then hands the reader over.
func sessionToUrgentReader(t *testing.T, splice bool, timeout time.Duration, done func(*urgentReader) bool) (*net.TCPConn, <-chan *urgentReader) {
	t.Helper()
	got := make(chan *urgentReader, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("ready")) // the session is established: the database answered
		r := &urgentReader{c: c}
		r.readUntil(timeout, done)
		got <- r
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.pool.spliceLocal.Store(splice)
	c := h.dial("l")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len("ready"))); err != nil {
		t.Fatal(err)
	}
	return c, got
}

// sessionWithDatabase is an app's session through a proxy to a database
// that reads and drops what it gets: the app's conn, and the database's
// conn to write to the app. With splice, bulk is spliced as to another
// host, not copied as to this one (bufPool.spliceLocal).
func sessionWithDatabase(t *testing.T, splice bool) (*harness, *net.TCPConn, *net.TCPConn) {
	t.Helper()
	conns := make(chan *net.TCPConn, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		conns <- c
		io.Copy(io.Discard, c)
	})
	h := startProxy(t, oneBackendConfig(be.addr()))
	h.p.pool.spliceLocal.Store(splice)
	c := h.dial("l")
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	return h, c, <-conns
}

// oobListener answers a CONNECT with an ACCEPT that grants urgent data
// (service option 0x0400, as a database that takes OOB breaks sends), and
// reports what came after it.
func oobListener(t *testing.T, after func(r *urgentReader) bool) (*backendServer, <-chan *urgentReader) {
	got := make(chan *urgentReader, 1)
	be := newBackend(t, func(c *net.TCPConn) {
		var raw []byte
		for range 4 { // the CONNECT, and the DATA packet of long connect data (go-ora)
			pkt, err := tns.ReadPacket(c, tns.Length16, 0)
			if err != nil {
				return
			}
			raw = append(raw, pkt.Raw...)
			if _, err := tns.ParseConnectData(raw); err == nil {
				break
			}
		}
		accept := tns.BuildAccept(318, "")
		binary.BigEndian.PutUint16(accept[10:], 0x0401)
		if _, err := c.Write(accept); err != nil {
			return
		}
		r := &urgentReader{c: c}
		r.readUntil(5*time.Second, after)
		got <- r
	})
	return be, got
}

// python-oracledb (thin) checks right after the ACCEPT whether urgent data
// reaches the database: an urgent byte, and at once a RESET marker. The
// database sees the byte at the mark in front of the marker, so it keeps
// urgent-data breaks on for the session, as it does directly. Lost on the
// way, the check fails and the session's breaks go in-band.
func TestOracleUrgentDataCheckPasses(t *testing.T) {
	marker := []byte{0x00, 0x0b, 0x00, 0x00, byte(tns.TypeMarker), 0x00, 0x00, 0x00, 0x01, 0x00, 0x02} // python-oracledb's RESET marker
	db, got := oobListener(t, func(r *urgentReader) bool { return len(r.stream) >= len(marker) })
	logs := &logBuffer{}
	h := startProxyWith(t, oracleConfig("", db.addr()), hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs}))
	c := h.dial("l")
	connect, err := os.ReadFile("../tns/testdata/spiderlabs-net-tns/connect.raw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	accept := make([]byte, 45)
	if _, err := io.ReadFull(c, accept); err != nil {
		t.Fatalf("ACCEPT: %v", err)
	}
	sendOOB(t, c, '!')
	if _, err := c.Write(marker); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if !bytes.Equal(r.stream, marker) || len(r.urgent) != 1 || r.urgent[0].b != '!' || r.urgent[0].at != 0 {
		t.Fatalf("after the ACCEPT the database got %x with urgent data %+v; want the marker, with '!' at the mark in front of it", r.stream, r.urgent)
	}
	// The line names the session's server, as every session line does
	// (README "Logs and the admin listener"): with several servers an
	// operator reads which database got the break. It had no server.
	if l := logs.lines("urgent byte passed on", "to=backend", "service=XE", "server="+db.addr()); len(l) != 1 {
		t.Errorf("debug log of the break: %q, want one line naming the server\n%s", l, logs)
	}
}

// A running pump that has no wake to tell it of an urgent byte does not
// read past it: a break sent a few milliseconds after the last of a run of
// small messages (the pump is still running when its idle deadline comes,
// and reads again without parking), and one right behind the short last
// round of a bulk transfer (the round ends the bulk and gives the pipe
// back, and the read that replaces the splice would skip the byte). Before,
// the read skipped the byte in both cases: the break was lost, the stream
// intact.
func TestUrgentByteBehindARunningDirectionIsNotReadPast(t *testing.T) {
	const tail = "after the break"
	bulkRound := func(c *net.TCPConn) []byte {
		bulk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
		c.Write(bulk)
		time.Sleep(30 * time.Millisecond) // the pump waits in bulk, holding its pipe or buffer
		// With the urgent byte, in one segment: the splice or read stops at it.
		if err := sendOOBBehind(c, "last piece", '!'); err != nil {
			t.Error(err)
		}
		return append(bulk, "last piece"...)
	}
	cases := []struct {
		name   string
		send   func(c *net.TCPConn) []byte // sends what goes before the urgent byte, and '!' as urgent data
		alone  bool                        // nothing follows the urgent byte until it has arrived
		splice bool                        // bulk spliced, as to another host (copied to this one)
	}{
		{"small messages, then the byte alone", func(c *net.TCPConn) []byte {
			var sent []byte
			for i := range 10 {
				if i > 0 {
					time.Sleep(20 * time.Millisecond)
				}
				c.Write([]byte("message"))
				sent = append(sent, "message"...)
			}
			time.Sleep(5 * time.Millisecond)
			sendOOB(t, c, '!')
			return sent
		}, true, false},
		{"a bulk round shorter than a chunk", bulkRound, false, false},
		{"a spliced bulk round shorter than a chunk", bulkRound, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, got := sessionToUrgentReader(t, tc.splice, 10*time.Second, func(r *urgentReader) bool { return bytes.HasSuffix(r.stream, []byte(tail)) })
			sent := time.Now()
			before := tc.send(c)
			if tc.alone {
				time.Sleep(time.Second)
			}
			if _, err := c.Write([]byte(tail)); err != nil {
				t.Fatal(err)
			}
			r := <-got
			if string(r.stream) != string(before)+tail {
				t.Fatalf("the database got %d bytes, want %d intact", len(r.stream), len(before)+len(tail))
			}
			if len(r.urgent) != 1 || r.urgent[0].b != '!' || r.urgent[0].at != len(before) {
				t.Fatalf("urgent data at the database: %+v; want '!' once, after the %d bytes before it", r.urgent, len(before))
			}
			if d := r.urgent[0].when.Sub(sent); d > time.Second {
				t.Errorf("the urgent byte took %v to reach the database, want at most 1s", d)
			}
		})
	}
}

// The same from the database to the app: a break right behind the short
// last round of a bulk result reaches the app at its place.
func TestUrgentByteFromTheDatabaseBehindABulkRoundReachesTheApp(t *testing.T) {
	for _, splice := range []bool{false, true} {
		t.Run(map[bool]string{false: "copied", true: "spliced"}[splice], func(t *testing.T) {
			_, c, db := sessionWithDatabase(t, splice)
			bulk := bytes.Repeat([]byte("0123456789abcdef"), 1<<18)
			sendErr := make(chan error, 1) // not t.Error: the goroutine may outlive a failed test
			go func() {
				db.Write(bulk)
				time.Sleep(30 * time.Millisecond)
				sendErr <- sendOOBBehind(db, "last piece", 'x')
				db.Write([]byte("more"))
			}()
			want := string(bulk) + "last piece" + "more"
			r := &urgentReader{c: c}
			r.readUntil(5*time.Second, func(r *urgentReader) bool { return len(r.stream) >= len(want) })
			if string(r.stream) != want || len(r.urgent) != 1 || r.urgent[0].b != 'x' || r.urgent[0].at != len(bulk)+len("last piece") {
				t.Fatalf("the app got %d bytes (want %d) with urgent data %+v; want 'x' after the last piece", len(r.stream), len(want), r.urgent)
			}
			if err := <-sendErr; err != nil {
				t.Error(err)
			}
		})
	}
}

// sendOOBBehind sends b and then u as urgent data in one send (MSG_OOB
// makes the last byte of a send urgent): one segment, whose bytes a splice
// or read takes up to the mark.
func sendOOBBehind(c *net.TCPConn, b string, u byte) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), append([]byte(b), u), unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("send MSG_OOB", serr)
	}
	return nil
}

// An urgent byte, the bytes after it and the end of the stream, sent at
// once behind a bulk transfer (a break during a large upload or result, and
// the peer's close right after: Ctrl-C, then the process exits), reach the
// other side intact, in both directions: with the bulk still arriving, and
// after it paused (the pump waits holding its pipe). A splice at the mark
// returns 0, not EAGAIN, once the FIN is in too; that was taken for the end
// of the stream: the urgent byte and every byte behind it were dropped, and
// the other side got a clean FIN after a stream cut at the mark.
func TestUrgentByteAndTheEndBehindABulkTransferLoseNoBytes(t *testing.T) {
	const tail = "the break's marker, then the close"
	type bulkCase struct {
		name   string
		bulk   int           // bytes sent first
		pause  time.Duration // then this pause
		more   int           // and these bytes before the urgent one
		splice bool          // bulk spliced, as to another host (copied to this one)
	}
	var cases []bulkCase
	for _, splice := range []bool{false, true} {
		suffix := map[bool]string{false: "", true: ", spliced"}[splice]
		cases = append(cases,
			bulkCase{"in bulk" + suffix, 8 << 20, 0, 0, splice},
			bulkCase{"bulk that paused" + suffix, 100_000, 20 * time.Millisecond, 40_000, splice},
			bulkCase{"bulk that paused, the byte first" + suffix, 100_000, 20 * time.Millisecond, 0, splice}, // the pump's first splice (or read) of the wake stops at it
		)
	}
	for _, tc := range cases {
		before := bytes.Repeat([]byte("0123456789abcdef"), tc.bulk/16)
		before = append(before, bytes.Repeat([]byte("fedcba9876543210"), tc.more/16)...)
		send := func(c *net.TCPConn) {
			c.Write(before[:tc.bulk])
			time.Sleep(tc.pause)
			c.Write(before[tc.bulk:])
			sendOOB(t, c, '!')
			c.Write([]byte(tail))
			c.CloseWrite()
		}
		check := func(t *testing.T, who string, r *urgentReader) {
			t.Helper()
			if want := string(before) + tail; string(r.stream) != want {
				t.Fatalf("%s got %d bytes, want %d intact (urgent %+v)", who, len(r.stream), len(want), r.urgent)
			}
			if len(r.urgent) != 1 || r.urgent[0].b != '!' || r.urgent[0].at != len(before) {
				t.Fatalf("urgent data at %s: %+v; want '!' once, after the %d bytes before it", who, r.urgent, len(before))
			}
		}
		t.Run(tc.name+", app to database", func(t *testing.T) {
			c, got := sessionToUrgentReader(t, tc.splice, 10*time.Second, func(*urgentReader) bool { return false }) // until the end
			go send(c)
			select {
			case r := <-got:
				check(t, "the database", r)
			case <-time.After(15 * time.Second):
				t.Fatal("the database never got the stream")
			}
		})
		t.Run(tc.name+", database to app", func(t *testing.T) {
			_, c, db := sessionWithDatabase(t, tc.splice)
			go send(db)
			r := &urgentReader{c: c}
			r.readUntil(10*time.Second, func(*urgentReader) bool { return false }) // until the end
			check(t, "the app", r)
		})
	}
}

// A break right behind a bulk result, with nothing after it, reaches the
// app as soon as the bytes in front of it: the pump that stops at the mark
// in the middle of a bulk round takes the byte at once, rather than
// waiting for src (for the idle deadline, parkAfter later, since nothing
// more arrives to wake it). The app reads late, so that the pump waits
// for room in the middle of its round while the rest of the result and
// the break come in behind.
func TestUrgentByteRightBehindBulkIsNotHeldBack(t *testing.T) {
	for _, splice := range []bool{false, true} {
		t.Run(map[bool]string{false: "copied", true: "spliced"}[splice], func(t *testing.T) {
			_, c, db := sessionWithDatabase(t, splice)
			bulk := bytes.Repeat([]byte("0123456789abcdef"), 1<<19)
			sent := make(chan error, 1) // not t.Error: the goroutine may outlive a failed test
			go func() {
				db.Write(bulk)
				sent <- sendOOBBehind(db, "last piece", 'x')
			}()
			select { // all of it on its way: the pump waits for room in its round
			case err := <-sent:
				if err != nil {
					t.Fatal(err)
				}
				sent <- nil // for the look at the end
			case <-time.After(2 * time.Second): // more than the kernel's buffers take
				t.Log("the database's writes wait for the app")
			}
			time.Sleep(100 * time.Millisecond) // the last bytes in: the pump has read what it could
			// The result at full speed (reads that cannot reach the mark),
			// so that the app is there when the pump gets to the mark.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, len(bulk))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, bulk) {
				t.Fatalf("the result: %v (intact: %v)", err, bytes.Equal(got, bulk))
			}
			c.SetReadDeadline(time.Time{})
			before := len("last piece")
			r := &urgentReader{c: c}
			r.readUntil(5*time.Second, func(r *urgentReader) bool { return len(r.urgent) > 0 })
			if string(r.stream) != "last piece" || len(r.urgent) != 1 || r.urgent[0].b != 'x' || r.urgent[0].at != before {
				t.Fatalf("after the result the app got %q with urgent data %+v; want 'x' after the last piece", r.stream, r.urgent)
			}
			if err := <-sent; err != nil { // the app has read it all: the sends are over
				t.Fatal(err)
			}
			gap := r.urgent[0].when.Sub(r.urgent[0].behind) // since the app had every byte in front of the mark
			t.Logf("the urgent byte came %v after the bytes in front of it", gap)
			if gap > 40*time.Millisecond {
				t.Errorf("the urgent byte came %v after the bytes in front of it, want at once (held until the idle deadline: %v)", gap, parkAfter)
			}
		})
	}
}
