package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gatedWriter is a log reader that hangs until open: Write blocks, as
// write(2) on a full pipe does.
type gatedWriter struct {
	open chan struct{}
	mu   sync.Mutex
	b    bytes.Buffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Write(p)
}

func (g *gatedWriter) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.String()
}

// An output that takes nothing blocks no Write: the lines the queue holds
// are written once it takes them again, the rest are dropped, and their
// count is reported after the lines written before them. The metric counts
// them at once, while the output still takes nothing.
func TestLogOutputNeverBlocksAndCountsWhatItDrops(t *testing.T) {
	gw := &gatedWriter{open: make(chan struct{})}
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	o := newLogOutput(gw, 100, counter) // ten lines of 10 bytes
	var reports []string
	o.report = func(n int, since time.Time) {
		reports = append(reports, fmt.Sprint(n))
		fmt.Fprintf(gw, "dropped=%d\n", n)
	}
	o.start()
	defer o.stop(time.Second)

	began := time.Now()
	for i := range 1000 {
		fmt.Fprintf(o, "line %04d\n", i)
	}
	if d := time.Since(began); d > 500*time.Millisecond {
		t.Fatalf("1000 lines took %v with the output blocked", d)
	}
	counted := testutil.ToFloat64(counter)
	if counted < 1000-40 {
		t.Errorf("tnsguard_log_lines_dropped_total %v with the output blocked and 1000 lines logged", counted)
	}
	close(gw.open)
	o.flush(2 * time.Second)
	out := gw.String()
	// The lines in order, each gap told (at once after the lines queued
	// before it) with its count, and nothing lost without a count. How
	// many are written depends on when the writer took its first batch
	// (at most 100 bytes queued at a time).
	next, written, dropped := 0, 0, 0
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var i, n int
		switch {
		case l == fmt.Sprintf("line %04d", next):
			next++
			written++
		case func() bool { _, err := fmt.Sscanf(l, "dropped=%d", &n); return err == nil }():
			next += n
			dropped += n
		case func() bool { _, err := fmt.Sscanf(l, "line %d", &i); return err == nil }():
			t.Fatalf("line %d where line %d was due; output:\n%s", i, next, out)
		default:
			t.Fatalf("line %q; output:\n%s", l, out)
		}
	}
	if float64(dropped) != counted {
		t.Errorf("%d lines reported dropped, %v counted", dropped, counted)
	}
	if next != 1000 || written > 40 || len(reports) == 0 {
		t.Fatalf("%d lines written, %d dropped in %d reports; output:\n%s", written, dropped, len(reports), out)
	}
}

// During an upgrade each line carries the writer's pid, in the line's own
// format: a JSON field, or a text field on the line's first line (hclog
// puts a value of several lines on lines of its own after it).
func TestLogLinesTaggedWithThePID(t *testing.T) {
	for _, c := range []struct {
		json      bool
		line, out string
	}{
		{true, `{"@level":"info","@message":"drained"}` + "\n", `{"@level":"info","@message":"drained","pid":42}` + "\n"},
		{false, "2026-11-30T09:00:00.000Z [INFO]  tnsguard: drained\n", "2026-11-30T09:00:00.000Z [INFO]  tnsguard: drained pid=42\n"},
		{false, "2026-11-30T09:00:00.000Z [ERROR] tnsguard: reload failed:\n  error=\n  | a\n  | b\n", "2026-11-30T09:00:00.000Z [ERROR] tnsguard: reload failed: pid=42\n  error=\n  | a\n  | b\n"},
	} {
		var b bytes.Buffer
		o := newLogOutput(&b, 1<<10, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}))
		o.json, o.pid = c.json, 42
		o.start()
		o.tag()
		o.Write([]byte(c.line))
		o.flush(time.Second)
		o.direct().Write([]byte(c.line)) // the dropped lines' count, past the queue
		o.untag()
		o.Write([]byte(c.line))
		o.stop(time.Second)
		if want := c.out + c.out + c.line; b.String() != want {
			t.Errorf("written:\n%q\nwant:\n%q", b.String(), want)
		}
	}
}

// A process started by an upgrade may be upgraded in turn while the process
// it replaced still drains: three processes write to the output. Its lines
// keep the pid until both reasons have ended, in either order (the old
// process ends while the next one serves, or the next one fails while the
// old one drains). Until this test the first end untagged them: the middle
// process's "drained" after the oldest had ended, or its lines after a
// failed upgrade while the oldest still drained, had no pid.
func TestLogLinesKeepThePIDWhileAnyUpgradeWrites(t *testing.T) {
	for _, c := range []struct{ name, first string }{
		{"the old process ends first", "old ended"},
		{"the new one fails first", "upgrade failed"},
	} {
		var b bytes.Buffer
		o := newLogOutput(&b, 1<<10, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}))
		o.pid = 42
		o.start()
		o.tag()   // started by an upgrade: the old process drains
		o.tag()   // SIGUSR2: a new process starts
		o.untag() // c.first
		o.Write([]byte("drained\n"))
		o.untag() // the other: alone again
		o.Write([]byte("alone\n"))
		o.stop(time.Second)
		if want := "drained pid=42\nalone\n"; b.String() != want {
			t.Errorf("%s (%s): written\n%q\nwant\n%q", c.name, c.first, b.String(), want)
		}
	}
}
