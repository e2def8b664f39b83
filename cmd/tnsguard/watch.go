package main

import (
	"crypto/sha256"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
)

// fileWatch reads the config file every reload.watch, for a file that
// changes where no one can send SIGHUP (a Kubernetes ConfigMap, which
// kubelet replaces by swapping a symbolic link: a path read anew sees it,
// where inotify on the file would watch the old one).
type fileWatch struct {
	path     string
	interval time.Duration
	ticker   *time.Ticker
	failing  bool // the last read failed: logged once until one succeeds
}

func newWatch(path string) *fileWatch { return &fileWatch{path: path} }

// every sets the interval: 0 (or no file, the embedded default) stops it.
func (w *fileWatch) every(d time.Duration) {
	if w.path == "" {
		d = 0
	}
	if d == w.interval {
		return
	}
	w.interval = d
	w.stop()
	if d > 0 {
		w.ticker = time.NewTicker(d)
	}
}

// ticks is the channel of the next read; nil (never) when off.
func (w *fileWatch) ticks() <-chan time.Time {
	if w.ticker == nil {
		return nil
	}
	return w.ticker.C
}

func (w *fileWatch) stop() {
	if w.ticker != nil {
		w.ticker.Stop()
		w.ticker = nil
	}
}

// fileState is what a read of the watched file found.
type fileState int

const (
	fileSame    fileState = iota // the text last loaded or tried, or unreadable
	fileChanged                  // other text, written at least watchSettle ago
	fileWriting                  // other text, written less than watchSettle ago
)

// watchSettle is how long a changed file must have gone unwritten before
// the watch loads it. A file written in place (an editor, `cat >`, a
// config tool) is read at a moment of the watch's own choosing, which may
// fall between two of the writer's writes: the part written so far may
// load (a config without its last listener, whose apps are then refused
// until the next read) or not (a "reload failed" and its alert for a file
// that was fine a moment later). Each write sets the file's mtime, so a
// change is loaded at the first read at least this long after the last
// write. kubelet's update is a rename of whole files: it waits at most
// one read.
const watchSettle = time.Second

// changed reads the file and says whether its text is other than loaded
// (the text last loaded or tried, so that a file that does not load is
// reported once, not at every read), and whether it may still be being
// written. A file that cannot be read (being replaced, or removed) is no
// change: the running config stays, and the error is logged once.
func (w *fileWatch) changed(log hclog.Logger, loaded [sha256.Size]byte) fileState {
	// The mtime is taken after the read: a write during the read is seen.
	data, err := os.ReadFile(w.path)
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(w.path)
	}
	if err != nil {
		if !w.failing {
			log.Warn("reload.watch: cannot read the configuration file; the running configuration stays", "error", err)
		}
		w.failing = true
		return fileSame
	}
	w.failing = false
	if sha256.Sum256(data) == loaded {
		return fileSame
	}
	// An mtime ahead of this host's clock (a file copied from a host
	// whose clock is ahead) says nothing of a writer: it is loaded.
	if age := time.Since(fi.ModTime()); age >= 0 && age < watchSettle {
		return fileWriting
	}
	return fileChanged
}
