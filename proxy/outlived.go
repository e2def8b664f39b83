package proxy

import (
	"sync"
	"time"
)

// defaultEvidenceWindow is how long a path's outlived pause counts as evidence
// (phaseNow): a pause outlived in the last one to two windows. A path
// changes (a firewall with a shorter timeout is put in, a NAT gateway is
// replaced): pauses it outlived before then say nothing of it now, and
// its idle deaths would count as active, with no keepalive advice, for as
// long as tnsguard ran.
const defaultEvidenceWindow = time.Hour

// outlivedPauses keeps the longest pause after which a path was heard
// from, over two windows of fixed length: the current one and the one
// before it. What it tells covers at least the last window and at most
// the last two, so evidence fades in steps without a history per pause.
type outlivedPauses struct {
	mu        sync.Mutex
	epoch     int64 // the window cur covers: time since base / window
	cur, prev time.Duration
}

// roll moves the windows up to epoch e. Under o.mu.
func (o *outlivedPauses) roll(e int64) {
	switch {
	case e == o.epoch:
	case e == o.epoch+1:
		o.prev, o.cur = o.cur, 0
		o.epoch = e
	case e > o.epoch:
		o.prev, o.cur = 0, 0
		o.epoch = e
	}
}

// add records a pause outlived at elapsed (since the owner's base).
func (o *outlivedPauses) add(elapsed, window, pause time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.roll(int64(elapsed / window))
	o.cur = max(o.cur, pause)
}

// longest is the longest pause outlived in the last one to two windows, at
// elapsed.
func (o *outlivedPauses) longest(elapsed, window time.Duration) time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.roll(int64(elapsed / window))
	return max(o.cur, o.prev)
}
