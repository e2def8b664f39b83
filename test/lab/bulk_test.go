package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// Beside the app (tnsguard in app, the database across the firewall), bulk
// from the database to the app is copied through tnsguard's 1 MiB buffer:
// its destination is on this host, where the copy moved 12-21% more than a
// splice. Bulk from the app to the database is spliced: into a socket to
// another host a splice costs a third less CPU per GB. Which one ran shows
// in the pipes the process holds while each transfer runs; both arrive
// intact.
func TestLabBulkSplicesToTheDatabaseAndCopiesToTheApp(t *testing.T) {
	lab := netlab.New(t, netlab.Config{EstablishedTimeout: 600 * time.Second})
	startAppServer(t, lab)
	guard := startGuard(t, lab, link{Name: "orders", Listen: guardAddr, Servers: []string{lab.DBAddr(dbPort)}})
	pid := guard.Pid()
	idle := pipeFDsOf(t, pid) // its log's: no bulk yet
	// noBulkPipes waits until the pipes a bulk left (kept for the next bulk
	// for a second) are closed, and returns the count then.
	noBulkPipes := func(t *testing.T) int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for pipeFDsOf(t, pid) > idle {
			if time.Now().After(deadline) {
				t.Fatalf("tnsguard still holds %d pipe ends 5 s after a bulk, %d before any", pipeFDsOf(t, pid), idle)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return idle
	}
	const size = 256 << 20
	want := sha256.New()
	io.Copy(want, io.LimitReader(&gen{x: 88172645463325252}, size))
	wantSum := hex.EncodeToString(want.Sum(nil))

	dial := func(t *testing.T) (*net.TCPConn, *bufio.Reader) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := netlab.Dial(ctx, lab.App, guardAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(60 * time.Second))
		return c, bufio.NewReader(c)
	}

	t.Run("database to app: copied", func(t *testing.T) {
		c, r := dial(t)
		base := noBulkPipes(t)
		var sum string
		var n int64
		most := pipesWhile(pid, func() {
			fmt.Fprintf(c, "SEND %d fin bulk\n", size)
			h := sha256.New()
			n, _ = io.Copy(h, r)
			sum = hex.EncodeToString(h.Sum(nil))
		})
		if n != size || sum != wantSum {
			t.Fatalf("the app got %d bytes (sha256 %s), want %d (%s)", n, sum, size, wantSum)
		}
		if most > base {
			t.Errorf("tnsguard held %d pipes during the transfer to the app (%d before): bulk to this host was spliced, want copied", most, base)
		}
	})

	t.Run("app to database: spliced", func(t *testing.T) {
		c, r := dial(t)
		fmt.Fprintf(c, "RECV\n")
		if line, err := r.ReadString('\n'); err != nil || line != "OK\n" {
			t.Fatalf("the database's greeting: %q, %v", line, err)
		}
		base := noBulkPipes(t)
		var answer string
		most := pipesWhile(pid, func() {
			io.Copy(c, io.LimitReader(&gen{x: 88172645463325252}, size))
			c.CloseWrite()
			answer, _ = r.ReadString('\n')
		})
		if want := fmt.Sprintf("%d %s\n", size, wantSum); answer != want {
			t.Fatalf("the database got %q, want %q", answer, want)
		}
		if most < base+2 {
			t.Errorf("tnsguard held at most %d pipe ends during the transfer to the database (%d before): bulk to another host was not spliced", most, base)
		}
	})
}

// pipeFDsOf counts the pipe ends process pid holds.
func pipeFDsOf(t *testing.T, pid int) int {
	t.Helper()
	n, err := countPipes(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func countPipes(pid int) (int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n, nil
}

// pipesWhile runs f and returns the most pipe ends process pid held
// meanwhile, looked at every millisecond.
func pipesWhile(pid int, f func()) int {
	var most atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			if n, err := countPipes(pid); err == nil && int64(n) > most.Load() {
				most.Store(int64(n))
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return int(most.Load())
}
