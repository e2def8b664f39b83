package proxy

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// memTrim gives back the memory a burst of new sessions leaves behind once
// they have gone dormant. When an app's pool opens hundreds of sessions at
// once, the process briefly holds their opening goroutines' stacks, the
// garbage of their openings and Go's heap headroom (GOGC=100 lets the heap
// grow to twice what is live before it collects); once they sit idle, the
// runtime keeps most of that from the OS. After a quiet spell that follows
// at least trimBurst sessions going dormant, memTrim runs one forced
// collection that also returns the free pages (debug.FreeOSMemory), at most
// once per trimGap. A proxy that keeps opening sessions is never quiet and
// never trims; the cost is one GC of the live heap (milliseconds for
// thousands of sessions). C servers do the same with glibc's malloc_trim
// (OpenResty's lua_malloc_trim). Measured in the README's data-path section.
type memTrim struct {
	quiet time.Duration // since the last session went dormant
	burst int           // sessions gone dormant since the last trim
	gap   time.Duration // between trims
	free  func()        // debug.FreeOSMemory; tests count calls
	log   hclog.Logger

	mu       sync.Mutex
	timer    *time.Timer // pending check, nil when none
	slept    int         // sessions gone dormant since the last trim
	lastNote time.Time
	lastTrim time.Time
	stopped  bool
}

const (
	trimQuiet = 250 * time.Millisecond
	trimBurst = 256
	trimGap   = 10 * time.Second
)

func newMemTrim(log hclog.Logger) *memTrim {
	return &memTrim{quiet: trimQuiet, burst: trimBurst, gap: trimGap, free: debug.FreeOSMemory, log: log}
}

// noteDormant notes that a session went dormant.
func (m *memTrim) noteDormant() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slept++
	m.lastNote = time.Now()
	if m.timer == nil && !m.stopped && m.slept >= m.burst {
		m.timer = time.AfterFunc(m.quiet, m.check)
	}
}

// check trims if the proxy has been quiet long enough, else looks again
// when it may have been.
func (m *memTrim) check() {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	now := time.Now()
	wait := m.quiet - now.Sub(m.lastNote)
	if !m.lastTrim.IsZero() {
		wait = max(wait, m.gap-now.Sub(m.lastTrim))
	}
	if wait > 0 {
		m.timer.Reset(wait)
		m.mu.Unlock()
		return
	}
	m.timer = nil
	slept := m.slept
	m.slept = 0
	m.lastTrim = now
	m.mu.Unlock()
	m.free() // the next one is trimGap away
	m.log.Debug("gave memory back to the OS after a burst of sessions went idle", "sessions", slept, "took", time.Since(now).String())
}

// stop cancels a pending trim (the proxy is shutting down).
func (m *memTrim) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = true
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
}
