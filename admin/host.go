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
// then answers with 127.0.0.1 (or one of this host's other addresses)
// makes the browser of anyone on this host (an operator's workstation, a
// jump host) fetch the admin endpoints as the hostile site's own: the
// browser takes them for the same origin and lets the page read every
// answer (/api/resets: client addresses, service names; /api/links,
// /metrics: database servers). Such a request names the hostile site in
// its Host header. From this host itself (over loopback, or from this
// host's own address to itself) only a name that cannot be a hostile
// site's is taken: an IP address, localhost (and *.localhost, which
// browsers resolve to loopback themselves), this host's own name, or a
// name this host's /etc/hosts lists, which no DNS answer can change. A
// connection from another host (Prometheus asking tg1:9521, a Service's
// name) is not checked: this host cannot tell the names it is known by
// there from a hostile one.

// hostOnly answers 421 to a request from this host whose Host is a name
// that may be a hostile site's (rebindingHost), and that this host's
// /etc/hosts does not list (Debian's "127.0.1.1 db1.example.com db1", an
// operator's alias).
func (s *Server) hostOnly(next http.Handler) http.Handler {
	hostname, _ := os.Hostname()
	hosts := &hostsFile{path: "/etc/hosts"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if rebindingHost(r.Host, local, r.RemoteAddr, hostname) && !hosts.lists(hostName(r.Host)) {
			w.Header().Set("Connection", "close")
			http.Error(w, "421 misdirected request: Host "+quoteHost(r.Host)+" is not a name of this admin listener: "+
				"from this host it answers Host 127.0.0.1 (an address), localhost, this host's name or a name /etc/hosts lists only "+
				"(a web page whose name resolves to this host must not read it)", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// rebindingHost tells whether a request that came in on local (the
// connection's address on this side) from remote with Host host is to be
// refused: the connection is from this host (a loopback one, or from
// local's own address) and host is a DNS name other than localhost,
// *.localhost and hostname.
func rebindingHost(host string, local net.Addr, remote, hostname string) bool {
	if host == "" {
		return false // HTTP/1.0 without Host: no browser sends that
	}
	ta, ok := local.(*net.TCPAddr)
	if !ok {
		return false
	}
	la, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	la = la.Unmap()
	ra, err := netip.ParseAddrPort(remote)
	from := ra.Addr().WithZone("").Unmap()
	if !la.IsLoopback() && (err != nil || !from.IsLoopback() && from != la) {
		return false // from another host
	}
	name := hostName(host)
	if name == "" {
		// A port only: Go's client asking http://:9521 (tnsguard
		// healthcheck -admin :9521); a browser's URL always has a host.
		return false
	}
	if _, err := netip.ParseAddr(name); err == nil || endsInNumber(name) {
		// An address: a page can only be at that address itself. A browser
		// reads a host whose last label is a number as an IPv4 address
		// (127.1, 2130706433, 0x7f000001), or refuses it, and sends it as
		// 127.0.0.1: only other clients (curl) send such a form.
		return false
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return false
	}
	if hostname != "" && name == strings.ToLower(strings.TrimSuffix(hostname, ".")) {
		return false
	}
	return true
}

// endsInNumber tells whether name's last label is a number (decimal, or
// hex as 0x...), which the URL standard reads as an IPv4 address, not a
// DNS name.
func endsInNumber(name string) bool {
	last := name[strings.LastIndexByte(name, '.')+1:]
	if h, ok := strings.CutPrefix(last, "0x"); ok {
		return strings.Trim(h, "0123456789abcdef") == ""
	}
	return last != "" && strings.Trim(last, "0123456789") == ""
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

// hostsFile is the names a hosts file lists, read again when the file
// changes.
type hostsFile struct {
	path string

	mu    sync.Mutex
	mtime time.Time
	size  int64
	names map[string]bool
}

// lists tells whether the file gives name (hostName's form) an address.
func (h *hostsFile) lists(name string) bool {
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
		h.names, h.mtime, h.size = hostsNames(b), fi.ModTime(), fi.Size()
	}
	return h.names[name]
}

// hostsNames reads a hosts file (address, then names; # comments) for the
// names it lists.
func hostsNames(b []byte) map[string]bool {
	names := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if _, err := netip.ParseAddr(f[0]); err != nil {
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
