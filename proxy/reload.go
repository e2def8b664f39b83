package proxy

import (
	"net"
	"net/netip"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
)

// Reload details that Apply leans on.

// inherit returns a duplicate of the socket of a running listener that the
// new configuration drops (renamed, or moved to another address) and that
// is bound to the address lc asks for, with that listener; nil when there
// is none. Renaming a
// listener, or swapping the addresses of two, then keeps the socket and
// its queue of connections not yet accepted: no app is refused during the
// reload. Until the old listener is closed both accept loops take from the
// same queue, which is harmless. bind records the taker in taken.
func (p *Proxy) inherit(cfg *config.Config, lc *config.Listener, taken map[*listener]*listener) (net.Listener, *listener, error) {
	want, err := net.ResolveTCPAddr("tcp", lc.Listen)
	if err != nil || want.Port == 0 {
		return nil, nil, nil
	}
	for name, old := range p.listeners {
		if taken[old] != nil || keeps(cfg, name, old.cfg().Listen) {
			continue // kept, or already handed to another listener of cfg
		}
		if have, ok := old.ln.Addr().(*net.TCPAddr); !ok || !sameBind(have, want) {
			continue
		}
		f, err := dupListener(old.ln)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		ln, err := net.FileListener(f)
		return ln, old, err
	}
	return nil, nil, nil
}

// dupListener duplicates ln's socket as a file that net.FileListener can
// take without touching ln. TCPListener.File's file switches the socket to
// blocking mode when FileListener asks for its fd (os.File.Fd), and the mode
// belongs to the socket, not to one of its fds: until FileListener sets it
// back, an accept of the running loop on an empty queue waits in the kernel
// (and closing ln waits for it), and when FileListener's own dup fails (out
// of fds) the socket stays blocking for good. A file made by os.NewFile
// from a non-blocking fd keeps the socket as it is.
func dupListener(ln *net.TCPListener) (*os.File, error) {
	fd, err := DupSocket(ln) // dormant.go
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "listener"), nil
}

// slotsFor is the admission counts of the listener name of cfg: those of
// the listener it is to its users, whose sessions then count against its
// max_sessions and max_sessions_per_source and follow its keepalive
// (retuneSessions). That is, by its name, the running listener (moved to
// another address, or re-spelled), else the one an earlier reload removed
// while its sessions live (put back), else the listener whose socket it
// takes if cfg drops that one's name (a rename); else new counts. A socket
// goes where its address does, its sessions where their listener's name
// does: after a swap of two listeners' addresses each keeps its own, and
// a listener that moves onto the address of one that the reload removes
// keeps its own too (the removed one's go on uncounted, as a removed
// listener's do), also one put back there. Under p.mu.
func (p *Proxy) slotsFor(cfg *config.Config, name string, sock *listener) *admitted {
	if l := p.listeners[name]; l != nil {
		return l.admitted
	}
	if a := p.removed[name]; a != nil && a.active.Load() > 0 {
		return a // (kept one reload more with none: keepRemoved)
	}
	if sock != nil && !hasListener(cfg, sock.name) {
		return sock.admitted
	}
	return &admitted{perSource: map[netip.Addr]int{}}
}

// keepRemoved records the admission counts of the running listeners that
// listeners (the new ones) neither have by name nor took over (a rename),
// for a listener of that name that a later reload puts back (slotsFor);
// and forgets those that came back, or that an earlier reload removed and
// have no session left. One removed now is kept even with no session: a
// connection it accepted before its socket closed may still be on its way
// in (waiting for this reload's p.mu in current, or for its PROXY header)
// and be admitted against these counts after the reload; until the next
// reload it is in them. Under p.mu, with p.listeners still the running
// ones.
func (p *Proxy) keepRemoved(listeners map[string]*listener) {
	held := make(map[*admitted]bool, len(listeners))
	for _, l := range listeners {
		held[l.admitted] = true
	}
	for name, a := range p.removed {
		if held[a] || listeners[name] != nil || a.active.Load() == 0 {
			delete(p.removed, name)
		}
	}
	for name, old := range p.listeners {
		if listeners[name] == nil && !held[old.admitted] {
			p.removed[name] = old.admitted
		}
	}
}

// keeps reports whether cfg keeps the running listener name on the same
// listen address (then Apply keeps its socket as it is).
func keeps(cfg *config.Config, name, listen string) bool {
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == name {
			return cfg.Listeners[i].Listen == listen
		}
	}
	return false
}

// forgetRemoved deletes the gauges of listeners and backend servers that
// the new configuration no longer has: a server removed while down would
// otherwise report tnsguard_backend_up 0 (and fire alerts) until restart.
// So are the listener versions of backends whose check is no longer
// tnsping: nothing would update them again.
// Counters and histograms stay: they are history.
func (p *Proxy) forgetRemoved(cfg *config.Config, old map[string]*failover.Backend) {
	for name := range p.listeners {
		if !hasListener(cfg, name) {
			p.metrics.MaxSessions.DeleteLabelValues(name)
		}
	}
	for i := range cfg.Backends {
		if b := &cfg.Backends[i]; b.Health.Check != "tnsping" { // no check says a version any more
			p.metrics.ListenerVersion.DeletePartialMatch(prometheus.Labels{"backend": b.Name})
		}
	}
	for name, b := range old {
		for _, s := range b.Servers {
			if hasServer(cfg, name, s.Address) {
				continue
			}
			labels := prometheus.Labels{"backend": name, "server": s.Address}
			p.metrics.BackendUp.DeletePartialMatch(labels)
			p.metrics.BreakerState.DeletePartialMatch(labels)
			p.metrics.ListenerVersion.DeletePartialMatch(labels)
		}
	}
}

func hasListener(cfg *config.Config, name string) bool {
	for i := range cfg.Listeners {
		if cfg.Listeners[i].Name == name {
			return true
		}
	}
	return false
}

func hasServer(cfg *config.Config, backend, address string) bool {
	b := cfg.Backend(backend)
	if b == nil {
		return false
	}
	for _, s := range b.Servers {
		if s.Address == address {
			return true
		}
	}
	return false
}

// shareCounts gives each server of the fresh backend b that its
// predecessor did not have (Inherit shared those) the session counts of the
// same server that an earlier reload took out, if sessions still live on
// it: least_sessions then weighs them. Without this a server taken out and
// put back counted from 0 while its sessions lived, and took every new
// session until it had as many again. Under p.mu, before b starts.
func (p *Proxy) shareCounts(b *failover.Backend) {
	old := p.backends[b.Config.Name]
	for _, s := range b.Servers {
		if old != nil && old.ServerAt(s.Address) != nil {
			continue // Inherit shared its predecessor's
		}
		if c, ok := p.counts[serverKey{b.Config.Name, s.Address}]; ok {
			s.ShareCounts(c)
		}
	}
}

// keepCounts records the counts of the servers that the running backends
// have and backends (the new ones) do not, while sessions live on them,
// and forgets those that are back or have no session left. Under p.mu,
// with p.backends still the running ones.
func (p *Proxy) keepCounts(backends map[string]*failover.Backend) {
	for k, c := range p.counts {
		if b := backends[k.backend]; !c.Live() || b != nil && b.ServerAt(k.server) != nil {
			delete(p.counts, k)
		}
	}
	for name, old := range p.backends {
		for _, s := range old.Servers {
			if b := backends[name]; b != nil && b.ServerAt(s.Address) != nil {
				continue
			}
			if c := s.Counts(); c.Live() {
				p.counts[serverKey{name, s.Address}] = c
			}
		}
	}
}
