package main

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// logOutput is the log's writer. hclog writes each line under a lock that
// every logger derived from it shares; written straight to stderr, one
// write blocked on a full pipe (journald, a Docker log driver or a
// `| logger` that stopped reading: the pipe holds 64 KiB) held that lock,
// and with it every goroutine that logs: a reload that added a listener
// then held the proxy's lock, so that no new connection was served and
// /readyz and /metrics hung; SIGTERM did not drain; an app refused for want
// of a backend waited on its socket. Lines are queued here instead (up to
// max bytes) and written by a goroutine of its own; what the queue cannot
// take is dropped and counted (at once in counter, the metric an alert can
// watch while the log itself is stuck), and once the output takes lines
// again one line (report) says how many were lost.
type logOutput struct {
	w       io.Writer
	max     int                                // bytes queued at most
	report  func(dropped int, since time.Time) // writes the count to w (not through Write); set before start
	counter prometheus.Counter                 // tnsguard_log_lines_dropped_total
	json    bool                               // lines are hclog's JSON (log.format), else its text

	// pid is added to every line as pid while tags (the reasons to tag
	// that hold: tag, untag) is over 0: during an upgrade two processes
	// write to one output (a container's log, a file), and the old one's
	// drain lines ("drained", its sessions' resets) could not be told
	// from the new one's. A process started by an upgrade may start one
	// of its own while the process it replaced still drains, and either
	// may end first.
	pid  int64 // this process's
	tags atomic.Int32

	mu      sync.Mutex
	queue   [][]byte
	queued  int       // bytes in queue
	dropped int       // lines dropped since the last report
	since   time.Time // the first of them
	writing bool      // the writer holds lines taken from the queue
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
}

// logQueueBytes bounds the lines waiting for the output: a reset storm's
// lines are rate-limited, so that a minute of them fits many times over.
const logQueueBytes = 1 << 20

// logFlushLimit is how long an exiting process waits for its last lines
// to be taken (a drain's "drained"): a reader that hung must not hold the
// exit that systemd or Docker wait for.
const logFlushLimit = time.Second

func newLogOutput(w io.Writer, max int, dropped prometheus.Counter) *logOutput {
	return &logOutput{w: w, max: max, counter: dropped, report: func(int, time.Time) {}, pid: int64(os.Getpid()),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// tag adds pid=PID to the lines from now on, for one reason, until untag
// takes that reason back: a process started by an upgrade tags until the
// old one, and any older one still draining (elders), has ended, and from
// its own upgrade's start (SIGUSR2) until that fails or forever. Each
// untag follows a tag of its own.
func (o *logOutput) tag() { o.tags.Add(1) }

func (o *logOutput) untag() { o.tags.Add(-1) }

// tagging is the pid to add to a line, or 0.
func (o *logOutput) tagging() int64 {
	if o.tags.Load() > 0 {
		return o.pid
	}
	return 0
}

// tagged is line with pid added: in JSON as the object's last
// field, in text at the end of the first line (a value of several lines
// follows it on lines of its own).
func tagged(line []byte, pid int64, json bool) []byte {
	n := strconv.FormatInt(pid, 10)
	if json {
		i := bytes.LastIndexByte(line, '}')
		if i < 0 {
			return bytes.Clone(line)
		}
		return bytes.Join([][]byte{line[:i], []byte(`,"pid":` + n), line[i:]}, nil)
	}
	i := bytes.IndexByte(line, '\n')
	if i < 0 {
		i = len(line)
	}
	return bytes.Join([][]byte{line[:i], []byte(" pid=" + n), line[i:]}, nil)
}

// direct is a writer straight to the output, past the queue (for the
// count of the lines dropped, written by the queue's own writer), whose
// lines carry the pid as the queued ones do.
func (o *logOutput) direct() io.Writer { return directOutput{o} }

type directOutput struct{ o *logOutput }

func (d directOutput) Write(p []byte) (int, error) {
	if pid := d.o.tagging(); pid != 0 {
		if _, err := d.o.w.Write(tagged(p, pid, d.o.json)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return d.o.w.Write(p)
}

// Write queues a copy of p (one log line) and never blocks on the output.
func (o *logOutput) Write(p []byte) (int, error) {
	size := len(p)
	if pid := o.tagging(); pid != 0 {
		p = tagged(p, pid, o.json)
	} else {
		p = bytes.Clone(p) // hclog reuses its buffer
	}
	o.mu.Lock()
	if o.queued+len(p) > o.max {
		if o.dropped == 0 {
			o.since = time.Now()
		}
		o.dropped++
		o.counter.Inc()
	} else {
		o.queue = append(o.queue, p)
		o.queued += len(p)
	}
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return size, nil
}

// start runs the writer until stop.
func (o *logOutput) start() {
	go func() {
		defer close(o.done)
		for {
			select {
			case <-o.wake:
				for o.writeQueued() {
				}
			case <-o.quit:
				return
			}
		}
	}()
}

// writeQueued writes what is queued and reports what was dropped; it
// says whether there was anything.
func (o *logOutput) writeQueued() bool {
	o.mu.Lock()
	batch, n, since := o.queue, o.dropped, o.since
	o.queue, o.queued, o.dropped = nil, 0, 0
	busy := len(batch) > 0 || n > 0
	o.writing = busy
	o.mu.Unlock()
	if !busy {
		return false
	}
	for _, b := range batch {
		o.w.Write(b) // errors (EPIPE: the reader is gone) lose the line, as before
	}
	if n > 0 {
		// Straight to w, after the lines queued before the drops: a
		// line queued through Write could be dropped in turn.
		o.report(n, since)
	}
	return true
}

// flush waits until every queued line was written, or limit passes.
func (o *logOutput) flush(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		empty := len(o.queue) == 0 && o.dropped == 0 && !o.writing
		o.mu.Unlock()
		if empty {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop flushes (within limit) and ends the writer; lines logged after it
// are queued and not written. A writer blocked on an output that takes
// nothing is left to the process's exit.
func (o *logOutput) stop(limit time.Duration) {
	o.flush(limit)
	close(o.quit)
	select {
	case <-o.done:
	case <-time.After(100 * time.Millisecond):
	}
}
