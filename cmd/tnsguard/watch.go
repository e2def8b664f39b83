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

// changed reads the file and says whether its text is other than loaded
// (the text last loaded or tried, so that a file that does not load is
// reported once, not at every read). A file that cannot be read (being
// replaced, or removed) is no change: the running config stays, and the
// error is logged once.
func (w *fileWatch) changed(log hclog.Logger, loaded [sha256.Size]byte) bool {
	data, err := os.ReadFile(w.path)
	if err != nil {
		if !w.failing {
			log.Warn("reload.watch: cannot read the configuration file; the running configuration stays", "error", err)
		}
		w.failing = true
		return false
	}
	w.failing = false
	return sha256.Sum256(data) != loaded
}
