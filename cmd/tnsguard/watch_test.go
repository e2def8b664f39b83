package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kubeletDir is a ConfigMap volume as kubelet writes it: the file is a
// link through ..data to a directory of the version, and an update makes
// a new directory and swaps ..data with a rename.
type kubeletDir struct {
	t       *testing.T
	dir     string
	version int
}

func newKubeletDir(t *testing.T, text string) (*kubeletDir, string) {
	k := &kubeletDir{t: t, dir: t.TempDir()}
	k.update(text)
	if err := os.Symlink(filepath.Join("..data", "tnsguard.toml"), filepath.Join(k.dir, "tnsguard.toml")); err != nil {
		t.Fatal(err)
	}
	return k, filepath.Join(k.dir, "tnsguard.toml")
}

func (k *kubeletDir) update(text string) {
	k.version++
	v := fmt.Sprintf("..2026_11_30_%02d", k.version)
	if err := os.Mkdir(filepath.Join(k.dir, v), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(k.dir, v, "tnsguard.toml"), []byte(text), 0o644); err != nil {
		k.t.Fatal(err)
	}
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(v, tmp); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		k.t.Fatal(err)
	}
}

// With reload.watch, a ConfigMap update reaches the running process as a
// SIGHUP would, without one (in Kubernetes nothing can send it: the image
// has no shell, and a rollout restart drained every pooled session). A
// file that does not load is reported once, not at every read, and the
// running configuration stays; a file that did not change is not
// reloaded.
func TestReloadWatchFollowsAConfigMapUpdate(t *testing.T) {
	admin := freePort(t)
	withWatch := func(allow string) string {
		return runConfig(admin, allow) + "[reload]\nwatch = \"1s\"\n"
	}
	k, path := newKubeletDir(t, withWatch("[]"))
	log, stop := runFile(t, admin, path)
	reloads := func() int { return strings.Count(log.String(), "configuration reloaded") }
	failures := func() int { return strings.Count(log.String(), "reload failed") }

	time.Sleep(1500 * time.Millisecond) // a read of an unchanged file, at least
	if n := reloads(); n != 0 {
		t.Fatalf("%d reloads of a file that did not change:\n%s", n, log.String())
	}

	k.update(withWatch(`["192.0.2.0/24"]`))
	waitLogged(t, log, "the watch's reload", func() bool { return reloads() == 1 })
	if got := metricsStatus(t, admin); got != "403 Forbidden" {
		t.Errorf("after the ConfigMap narrowed admin.allow, 127.0.0.1 gets %s, want 403", got)
	}

	k.update(withWatch(`["192.0.2.0/24"]`) + "max_sessions = \"ten\"\n")
	waitLogged(t, log, "the failed reload", func() bool { return failures() > 0 })
	time.Sleep(1500 * time.Millisecond) // more reads of the same bad file
	if n := failures(); n != 1 {
		t.Errorf("a bad file read again was reported %d times, want 1:\n%s", n, log.String())
	}
	if got := metricsStatus(t, admin); got != "403 Forbidden" {
		t.Errorf("after a bad file, 127.0.0.1 gets %s, want 403 (the running configuration)", got)
	}

	// A SIGHUP reload of a new file is the only reload of it. The watch
	// loads a new file itself once it has gone unwritten for watchSettle:
	// should this goroutine or the signal be held up that long between the
	// write and the SIGHUP's reload (a loaded machine), the watch's reload
	// comes first and the SIGHUP's is a second, as it should be. The log
	// tells which came first (the watch's has its "file changed" line), and
	// then the step is done again with another file.
	watchFirst := 0
	for {
		before := reloads()
		k.update(withWatch(`["127.0.0.0/8"]`) + fmt.Sprintf("# attempt %d\n", watchFirst+1))
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		waitLogged(t, log, "the SIGHUP's reload", func() bool { return reloads() > before })
		if !watchReloadedFirst(log.String(), before) {
			break
		}
		if watchFirst++; watchFirst == 3 {
			t.Fatalf("the watch's reload came before the SIGHUP's 3 times in a row:\n%s", log.String())
		}
		waitLogged(t, log, "the SIGHUP's reload after the watch's", func() bool { return reloads() == before+2 })
	}
	time.Sleep(1500 * time.Millisecond)
	if n := reloads(); n != 2+2*watchFirst {
		t.Errorf("%d reloads after SIGHUP of one new file, want %d in all:\n%s", n, 2+2*watchFirst, log.String())
	}
	if got := metricsStatus(t, admin); got != "200 OK" {
		t.Errorf("after admin.allow = [127.0.0.0/8], 127.0.0.1 gets %s, want 200", got)
	}

	if c := stop(); c != 0 {
		t.Errorf("exit %d after SIGTERM", c)
	}
	if n := strings.Count(log.String(), "configuration file changed: reloading"); n != 2+watchFirst {
		t.Errorf("%d lines say the file changed, want %d (the allow list, the bad file, %d files the watch read before the SIGHUP came):\n%s", n, 2+watchFirst, watchFirst, log.String())
	}
}

// watchReloadedFirst tells whether the first reload logged after the n-th
// was the watch's: the line before it of the lines that begin or end a
// reload is the watch's "configuration file changed".
func watchReloadedFirst(log string, n int) bool {
	last := "" // of the lines that begin or end a reload
	for _, line := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(line, "configuration reloaded"):
			if n == 0 {
				return last == "changed"
			}
			n--
			last = "reloaded"
		case strings.Contains(line, "configuration file changed: reloading"):
			last = "changed"
		case strings.Contains(line, "reload failed"):
			last = "failed"
		}
	}
	return false
}

// waitLogged is waitUntil with the log shown if the wait times out.
func waitLogged(t *testing.T, log *lockedBuffer, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; log:\n%s", what, log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A file that loads but cannot be put to use for the host's reason (its
// new listen address is taken, or not yet this host's) is tried again at
// each read while reload.watch is on, reported once: the file will not
// change for it, and in Kubernetes nothing can send the SIGHUP that would
// try again. It was never retried: the listener stayed unbound and
// tnsguard_config_last_reload_successful 0 until the next edit.
func TestReloadWatchRetriesAListenTheHostRefused(t *testing.T) {
	taken, log, stop := reloadOntoATakenAddress(t, "")
	time.Sleep(1500 * time.Millisecond) // a read of the same file, the address still taken
	if n := strings.Count(log.String(), "reload failed"); n != 1 {
		t.Errorf("the same refused listen was reported %d times, want 1:\n%s", n, log.String())
	}
	taken.Close()
	waitLogged(t, log, "the listener on the freed address", func() bool {
		c, err := net.Dial("tcp", taken.Addr().String())
		if err != nil {
			return false
		}
		defer c.Close()
		// A dial to a free port in the ephemeral range can pick that
		// port as its own and connect to itself (taken's is outside it
		// now: kept as a guard).
		return c.LocalAddr().String() != c.RemoteAddr().String()
	})
	// The listener opens before the reload's log line is written.
	waitLogged(t, log, "the reload's line once the listener serves", func() bool { return strings.Contains(log.String(), "configuration reloaded") })
	if c := stop(); c != 0 {
		t.Errorf("exit %d after SIGTERM", c)
	}
}

// A reload that turns reload.watch off (watch = "0s", or a [reload] table
// left out: configs/tnsguard.toml, copied into a ConfigMap, has "0s") ends
// the watch that applied it: the next ConfigMap edit is never read, and in
// Kubernetes nothing can send the SIGHUP that would. The log must say so
// at that reload; it said nothing, and later edits were silently ignored.
func TestReloadThatTurnsTheWatchOffSaysSo(t *testing.T) {
	admin := freePort(t)
	k, path := newKubeletDir(t, runConfig(admin, "[]")+"[reload]\nwatch = \"1s\"\n")
	log, stop := runFile(t, admin, path)
	k.update(runConfig(admin, "[]")) // no [reload]: watch = "0s"
	waitLogged(t, log, "the watch's reload", func() bool { return strings.Contains(log.String(), "configuration reloaded") })
	stop()
	if !strings.Contains(log.String(), "reload.watch is off now") {
		t.Errorf("a reload turned reload.watch off and the log does not say so:\n%s", log.String())
	}
}

// A file written in place while reload.watch reads it (an editor, `cat >`,
// a config tool writing piece by piece) is loaded once, whole: the watch
// waits until it has gone unwritten for watchSettle. Until 2026-11-30 a
// read between two writes loaded what was written so far: here the part
// without the file's last listener, whose apps were refused until the next
// read, or a part that ended mid-table, a "reload failed" (and its alert)
// for a file that was fine a moment later.
func TestReloadWatchWaitsForAFileBeingWritten(t *testing.T) {
	admin, extra := freePort(t), freePort(t)
	head := func(allow string) string { return runConfig(admin, allow) + "[reload]\nwatch = \"1s\"\n" }
	tail := []string{"[[listener]]\n", "name = \"extra\"\n", fmt.Sprintf("listen = %q\n", extra), "backend = \"b\"\n"}
	path := filepath.Join(t.TempDir(), "tnsguard.toml")
	if err := os.WriteFile(path, []byte(head("[]")+strings.Join(tail, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	log, stop := runFile(t, admin, path)
	reloads := func() int { return strings.Count(log.String(), "configuration reloaded") }

	refused := make(chan error, 1)
	done := make(chan struct{})
	go func() { // the extra listener's apps, all along
		defer close(refused)
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			c, err := net.Dial("tcp", extra)
			if err != nil {
				refused <- err
				return
			}
			c.Close()
		}
	}()

	// The writer: the new head (admin.allow changed), then the listener a
	// line at a time, 300 ms apart: at least one of the watch's reads
	// falls within.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var held time.Duration // the longest time the file went unwritten meanwhile
	last := time.Now()
	for i, part := range append([]string{head(`["127.0.0.0/8"]`)}, tail...) {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		held = max(held, time.Since(last))
		if _, err := f.WriteString(part); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
	}
	f.Close()
	if held >= watchSettle {
		// This goroutine was held up (a loaded machine): the file went
		// unwritten for watchSettle, and its part loads, as it should.
		close(done)
		<-refused
		stop()
		t.Skipf("the writer was held up %v between two writes, watchSettle is %v: not a file being written", held, watchSettle)
	}
	waitLogged(t, log, "the watch's reload", func() bool { return reloads() == 1 })
	time.Sleep(1500 * time.Millisecond) // and no reload after it
	close(done)
	if err := <-refused; err != nil {
		t.Errorf("the extra listener refused an app while its table was being written: %v", err)
	}
	if n := strings.Count(log.String(), "reload failed"); n != 0 || reloads() != 1 {
		t.Errorf("%d failed reloads and %d reloads of one file written in place, want 0 and 1:\n%s", n, reloads(), log.String())
	}
	if c := stop(); c != 0 {
		t.Errorf("exit %d after SIGTERM", c)
	}
}

// A file whose listener's address was not free at its first reload, and
// that reload.watch then put to use, sets max_sessions past what the
// open-files limit holds: the warning that run and every other reload give
// (fileLimitWarning) must come once the file runs. The first attempt
// failed before it, and the retry that applied the file skipped it, so the
// config ran without a word about the limit it cannot keep.
func TestReloadWatchRetryWarnsOfTheFileLimit(t *testing.T) {
	taken, log, stop := reloadOntoATakenAddress(t, "max_sessions = 100000000\n")
	defer stop()
	taken.Close()
	waitLogged(t, log, "the retried reload", func() bool { return strings.Contains(log.String(), "configuration reloaded") })
	if !strings.Contains(log.String(), "needs about") {
		t.Errorf("max_sessions = 100000000 applied by a retried reload, with no open-files warning:\n%s", log.String())
	}
}

// reloadOntoATakenAddress runs tnsguard with reload.watch on, then writes a
// file that adds a listener (with extra keys) on an address another socket
// holds, and waits for the failed reload. It returns that socket, the log
// and the stop of the run.
func reloadOntoATakenAddress(t *testing.T, extra string) (net.Listener, *lockedBuffer, func() int) {
	t.Helper()
	// Outside the ephemeral range: once taken is closed, the retried listen
	// must get the port, and a connect (another process's, or a test's dial
	// of it) could take a freed port of that range as its own first.
	var taken net.Listener
	for tries := 0; taken == nil; tries++ {
		ln, err := net.Listen("tcp", freePort(t))
		if err != nil && tries == 10 {
			t.Fatal(err)
		}
		taken = ln
	}
	admin := freePort(t)
	withWatch := func(extra string) string {
		return runConfig(admin, "[]") + "[reload]\nwatch = \"1s\"\n" + extra
	}
	k, path := newKubeletDir(t, withWatch(""))
	log, stop := runFile(t, admin, path)
	k.update(withWatch(fmt.Sprintf("[[listener]]\nname = \"m\"\nlisten = %q\nbackend = \"b\"\n%s", taken.Addr(), extra)))
	waitLogged(t, log, "the failed reload", func() bool { return strings.Contains(log.String(), "reload failed") })
	return taken, log, stop
}
