package admin

import (
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// DNS rebinding: a web page from a hostile site whose name its DNS server
// then answers with 127.0.0.1 makes the browser of anyone on this host (an
// operator's workstation, a jump host) fetch the admin endpoints as the
// hostile site's own: the browser takes them for the same origin and lets
// the page read every answer (/api/resets: client addresses, service
// names; /api/links, /metrics: database servers). Such a request names the
// hostile site in its Host header. Over loopback only a name that cannot be
// a hostile site's is taken: an IP address, localhost (and *.localhost,
// which browsers resolve to loopback themselves), or this host's own name.
// A connection that reaches the admin listener on another address
// (Prometheus asking tg1:9521, a Service's name) is not checked: this host
// cannot tell the names it is known by there from a hostile one.

// hostOnly answers 421 to a request over loopback whose Host is a name
// that may be a hostile site's (rebindingHost), and that this host's
// /etc/hosts does not give a loopback address (its own: Debian's
// "127.0.1.1 db1.example.com db1", an operator's alias), which no DNS
// answer can change.
func (s *Server) hostOnly(next http.Handler) http.Handler {
	hostname, _ := os.Hostname()
	hosts := &hostsFile{path: "/etc/hosts"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if rebindingHost(r.Host, local, hostname) && !hosts.loopbackName(hostName(r.Host)) {
			w.Header().Set("Connection", "close")
			http.Error(w, "421 misdirected request: Host "+quoteHost(r.Host)+" is not a name of this admin listener: "+
				"over loopback it answers Host 127.0.0.1, [::1], localhost or this host's name only "+
				"(a web page whose name resolves to 127.0.0.1 must not read it)", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// rebindingHost tells whether a request that came in on local (the
// connection's address on this side) with Host host is to be refused: the
// connection is a loopback one and host is a DNS name other than
// localhost, *.localhost and hostname.
func rebindingHost(host string, local net.Addr, hostname string) bool {
	if host == "" {
		return false // HTTP/1.0 without Host: no browser sends that
	}
	ta, ok := local.(*net.TCPAddr)
	if !ok {
		return false
	}
	la, ok := netip.AddrFromSlice(ta.IP)
	if !ok || !la.Unmap().IsLoopback() {
		return false
	}
	name := hostName(host)
	if _, err := netip.ParseAddr(name); err == nil {
		return false // an address: a page can only be at that address itself
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return false
	}
	if hostname != "" && name == strings.ToLower(strings.TrimSuffix(hostname, ".")) {
		return false
	}
	return true
}

// hostName is the name or address of a Host header: without its port,
// brackets, zone or final dot, in lower case.
func hostName(host string) string {
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimPrefix(strings.TrimSuffix(name, "]"), "[")
	if i := strings.IndexByte(name, '%'); i >= 0 {
		name = name[:i] // a zone: fe80::1%eth0
	}
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// hostsFile is the names a hosts file gives loopback addresses, read
// again when the file changes.
type hostsFile struct {
	path string

	mu    sync.Mutex
	mtime time.Time
	size  int64
	names map[string]bool
}

// loopbackName tells whether the file gives name (hostName's form) a
// loopback address.
func (h *hostsFile) loopbackName(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	fi, err := os.Stat(h.path)
	if err != nil {
		return false
	}
	if h.names == nil || !fi.ModTime().Equal(h.mtime) || fi.Size() != h.size {
		b, err := os.ReadFile(h.path)
		if err != nil {
			return false
		}
		h.names, h.mtime, h.size = loopbackNames(b), fi.ModTime(), fi.Size()
	}
	return h.names[name]
}

// loopbackNames reads a hosts file (address, then names; # comments) for
// the names given a loopback address.
func loopbackNames(b []byte) map[string]bool {
	names := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || !a.Unmap().IsLoopback() {
			continue
		}
		for _, n := range f[1:] {
			names[strings.ToLower(strings.TrimSuffix(n, "."))] = true
		}
	}
	return names
}

// quoteHost quotes a Host header for an answer: printable ASCII only, and
// not too long.
func quoteHost(h string) string {
	if len(h) > 100 {
		h = h[:100]
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(h) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b.WriteByte('?')
			continue
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}
