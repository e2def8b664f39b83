package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/tns"
	"github.com/tnsguard/tnsguard/tns/tnstest"
)

// resetWithService sends a CONNECT whose SERVICE_NAME is service (quoted,
// so that it may hold anything but '"' and '\'), waits for the fake
// listener's ACCEPT, then resets the app's leg: one "session reset" line.
func resetWithService(t *testing.T, h *harness, service string) {
	t.Helper()
	resetWithDescription(t, h, `(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME="`+service+`")))`)
}

// resetWithDescription is resetWithService with the whole connect data.
func resetWithDescription(t *testing.T, h *harness, desc string) {
	t.Helper()
	pkt, err := tns.BuildConnect(desc)
	if err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, tns.HeaderLen)); err != nil {
		t.Fatalf("no ACCEPT: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	resetConn(c)
	waitFor(t, 3*time.Second, "the reset event", func() bool { return len(h.p.Resets(0)) >= 1 })
}

// A client picks the SERVICE_NAME. With log.format = "text" (the default),
// hclog writes a value with a newline as an indented block of lines: a
// newline in it split the "session reset" line, which lost server, side,
// phase, cause and error to a line of its own, and the client's text
// appeared on lines of its own, one of them [ERROR].
func TestServiceWithLineBreakKeepsTheResetLineWhole(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	h, logs := startProxyLog(t, oneBackendConfig(l.Addr()))
	forged := "2026-01-01T00:00:00.000Z [ERROR] tnsguard: circuit opened: new sessions skip this server: server=10.9.9.9:1521"
	resetWithService(t, h, "ORDERS\n"+forged)
	waitFor(t, 2*time.Second, "the reset line", func() bool { return len(logs.lines("session reset")) == 1 })
	line := logs.lines("session reset")[0]
	t.Logf("log output:\n%s", logs.String())
	if !strings.Contains(line, "cause=") || !strings.Contains(line, "side=") {
		t.Errorf("the \"session reset\" line lost its fields (cause, side, ...): %q", line)
	}
	if n := forgedLines(logs.String(), "[ERROR]"); n != 0 {
		t.Errorf("a client's SERVICE_NAME put %d line(s) with [ERROR] in the log", n)
	}
}

// hclog's text format quotes a value with a space in it and writes its '"'
// as \" but its '\' as it is. A service ending in a backslash-quote
// (SERVICE_NAME="X\\\" client=... \\", which Oracle's escaping lets any
// client send) closed the quoted value early for a logfmt reader (go-logfmt,
// which Grafana vendors, reads \\ as an escaped backslash): the client's
// own client=, side=, cause= fields stood in the reset line as fields of
// their own, next to the real ones. And a service holding the text \x0a
// read the same as one holding a line break.
func TestServiceWithBackslashAddsNoFieldToTheResetLine(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
	h, logs := startProxyLog(t, oneBackendConfig(l.Addr()))
	// The service is: X\" client=10.66.66.66:4444 side=backend cause=idle_timeout y=\
	resetWithDescription(t, h, `(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME="X\\\" client=10.66.66.66:4444 side=backend cause=idle_timeout y=\\")))`)
	waitFor(t, 2*time.Second, "the reset line", func() bool { return len(logs.lines("session reset")) == 1 })
	line := logs.lines("session reset")[0]
	fields, err := logfmtFields(line)
	if err != nil {
		t.Fatalf("reset line does not read as logfmt: %v\n%s", err, line)
	}
	for _, k := range []string{"client", "side", "cause", "service"} {
		if len(fields[k]) != 1 {
			t.Errorf("the reset line has %d %s= fields %q, want 1: a client's SERVICE_NAME added fields\n%s", len(fields[k]), k, fields[k], line)
		}
	}
	if got := fields["client"]; len(got) > 0 && strings.Contains(strings.Join(got, " "), "10.66.66.66") {
		t.Errorf("reset line names client %q, an address the client wrote in its SERVICE_NAME", got)
	}
	if a, b := shownText(`A\x0a`, 128), shownText("A\n", 128); a == b {
		t.Errorf("the text \\x0a and a line break are both shown as %q", a)
	}
}

// logfmtFields reads the key=value fields of an hclog text line as logfmt
// readers do: a value that starts with '"' runs to the next '"' not escaped
// by a backslash, with \\ a backslash.
func logfmtFields(line string) (map[string][]string, error) {
	fields := map[string][]string{}
	for i := 0; i < len(line); {
		if line[i] == ' ' {
			i++
			continue
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '=' && line[j] != '"' {
			j++
		}
		if j == i || j >= len(line) || line[j] != '=' {
			for i < len(line) && line[i] != ' ' { // a word of the message
				i++
			}
			continue
		}
		key := line[i:j]
		j++
		if j < len(line) && line[j] == '"' {
			q, err := strconv.QuotedPrefix(line[j:])
			if err != nil {
				return nil, fmt.Errorf("%s=: %w", key, err)
			}
			v, _ := strconv.Unquote(q)
			fields[key] = append(fields[key], v)
			i = j + len(q)
			continue
		}
		k := j
		for k < len(line) && line[k] != ' ' {
			k++
		}
		fields[key] = append(fields[key], line[j:k])
		i = k
	}
	return fields, nil
}

// shownText escaped control bytes but let other bytes a client chose
// through. Bytes that are not UTF-8 (SERVICE_NAME=ORDERS\xff) went raw into
// the text log (hclog escapes unprintable characters, not invalid bytes):
// grep then calls the whole log file binary and prints "binary file
// matches" instead of the lines, and journald keeps the message as a blob.
// Unicode's bidi controls (U+202E, right-to-left override) went as they
// were to /api/resets, where the status page showed "\u202eSELAS" as SALES:
// an operator reads a reset against a service no app asked for.
func TestServiceShownIsPlainText(t *testing.T) {
	for _, c := range []struct{ name, service string }{
		{"invalid UTF-8", "ORDERS\xff\xfe"},
		{"bidi override", "\u202eSELAS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
			h, logs := startProxyLog(t, oneBackendConfig(l.Addr()))
			resetWithService(t, h, c.service)
			waitFor(t, 2*time.Second, "the reset line", func() bool { return len(logs.lines("session reset")) == 1 })
			line := logs.lines("session reset")[0]
			if !utf8.ValidString(line) {
				t.Errorf("the text log line holds bytes that are not UTF-8: %q", line)
			}
			shown := h.p.Resets(0)[0].Service
			for _, r := range shown {
				if !unicode.IsPrint(r) {
					t.Errorf("/api/resets shows service %q: %U is not printable text", shown, r)
				}
			}
			if !utf8.ValidString(shown) {
				t.Errorf("/api/resets shows service %q, not UTF-8", shown)
			}
		})
	}
}

// The reset ring keeps at most maxServiceLen bytes of a service name; the
// log line carried all of it: one CONNECT made a 240 KB text (360 KB JSON)
// line of escaped control bytes, which log pipelines cut or drop.
func TestLongServiceMakesNoLongLogLine(t *testing.T) {
	for _, jsonFormat := range []bool{false, true} {
		name := "text"
		if jsonFormat {
			name = "json"
		}
		t.Run(name, func(t *testing.T) {
			l := tnstest.New(t, tnstest.Config{Mode: tnstest.Accept})
			logs := &logBuffer{}
			h := startProxyWith(t, oneBackendConfig(l.Addr()), hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs, JSONFormat: jsonFormat}))
			svc := strings.Repeat("\x01", 60000) // control bytes: escaped 4x (text) or 6x (JSON)
			resetWithService(t, h, svc)
			waitFor(t, 2*time.Second, "the reset line", func() bool { return len(logs.lines("session reset")) == 1 })
			line := logs.lines("session reset")[0]
			if ev := h.p.Resets(0)[0]; len(ev.Service) > maxServiceLen {
				t.Fatalf("ring kept %d bytes", len(ev.Service))
			}
			if jsonFormat {
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("json line does not parse: %v", err)
				}
			}
			if len(line) > 4096 {
				t.Errorf("one client CONNECT made a %d-byte %s log line (the ring keeps %d bytes of the service)", len(line), name, maxServiceLen)
			}
		})
	}
}

// Behind a backend that answers REDIRECT (a SCAN listener, a shared-server
// dispatcher), every app connection logged one warn line, with no budget as
// reset and no-backend lines have: the log grew with the rate apps connect
// (1.5 MB in 316 ms from one client here). Every REDIRECT is still counted.
func TestRedirectLinesAreLimited(t *testing.T) {
	l := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: "10.1.1.1:1521"})
	h, logs := startProxyLog(t, oneBackendConfig(l.Addr()))
	svc := strings.Repeat("A", 30000)
	pkt, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=` + svc + `)))`)
	if err != nil {
		t.Fatal(err)
	}
	const conns = 50
	start := time.Now()
	for range conns {
		c := h.dial("l")
		c.Write(pkt)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		io.ReadAll(c)
		c.Close()
	}
	waitFor(t, 3*time.Second, "redirect lines", func() bool { return len(logs.lines("TNS REDIRECT")) >= logBurst })
	lines := logs.lines("TNS REDIRECT")
	total := 0
	for _, l := range lines {
		total += len(l)
	}
	t.Logf("%d connections in %v: %d REDIRECT warn lines, %d bytes of log", conns, time.Since(start).Round(time.Millisecond), len(lines), total)
	if got := counter(h.m.TNSRedirects, "l", "b", l.Addr()); got != conns {
		t.Errorf("tnsguard_tns_redirects_total = %v, want %d: every REDIRECT counts", got, conns)
	}
	if len(lines) > logBurst {
		t.Errorf("%d REDIRECT warn lines for %d connections within a minute (resets are limited to %d per link per minute); %d bytes of log", len(lines), conns, logBurst, total)
	}
}

// The same with a listener that refuses the unknown service (ORA-12514), as
// a real one does: no valid service is needed to forge a line.
func TestServiceWithLineBreakForgesNoLineWhenRefused(t *testing.T) {
	for _, mode := range []string{"rst-after-refuse", "rst-at-once"} {
		t.Run(mode, func(t *testing.T) {
			l := tnstest.New(t, tnstest.Config{Mode: tnstest.Refuse, Err: 12514})
			h, logs := startProxyLog(t, oneBackendConfig(l.Addr()))
			pkt, _ := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME="X` + "\n" + `2026-01-01T00:00:00.000Z [ERROR] forged")))`)
			c := h.dial("l")
			c.Write(pkt)
			if mode == "rst-after-refuse" {
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				io.ReadFull(c, make([]byte, tns.HeaderLen))
			} else {
				time.Sleep(time.Millisecond)
			}
			resetConn(c)
			time.Sleep(500 * time.Millisecond)
			t.Logf("log:\n%s", logs.String())
			if n := forgedLines(logs.String(), "[ERROR] forged"); n != 0 {
				t.Errorf("forged line in the log")
			}
		})
	}
}

// forgedLines counts the log lines that hold text other than inside a line's
// quoted service="..." (the reset line, the no-backend line quote it).
func forgedLines(log, text string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		i, q := strings.Index(line, text), strings.Index(line, `service="`)
		if i >= 0 && !(q >= 0 && q < i) {
			n++
		}
	}
	return n
}

func TestShownText(t *testing.T) {
	for _, c := range []struct {
		in    string
		limit int
		want  string
	}{
		{"ORDERS", 128, "ORDERS"},
		{"A\nB", 128, `A\x0aB`},
		{"A\r\x1b[31mB\x7f", 128, `A\x0d\x1b[31mB\x7f`},
		{"abcdef", 4, "abcd"},
		{"ab\ncd", 4, "ab"}, // an escape is not cut in two
		{"aé€", 4, "aé"},    // nor a character
		{"ünïcode ok", 128, "ünïcode ok"},
		{"A\xffB", 128, `A\xffB`},                   // not UTF-8: the byte, escaped
		{"\u202eSELAS", 128, `\u202eSELAS`},         // bidi override
		{"A\u2028B\u0085C", 128, `A\u2028B\u0085C`}, // line and paragraph breaks beyond ASCII
		{"a b", 128, "a b"},
		{`A\x0aB`, 128, `A\\x0aB`},    // a client's backslash is no escape of ours
		{`X\" y=\`, 128, `X\\" y=\\`}, // nor does it end a quoted log value
		{"ab\\cd", 3, "ab"},           // an escaped backslash is not cut in two
	} {
		if got := shownText(c.in, c.limit); got != c.want {
			t.Errorf("shownText(%q, %d) = %q, want %q", c.in, c.limit, got, c.want)
		}
	}
}

// Service names match as Oracle matches them, ASCII letters in either case:
// a name that only Unicode folding makes equal (the long s, the Kelvin
// sign) was routed and counted as the configured service.
func TestRoutesMatchServicesAsOracleDoes(t *testing.T) {
	l := &config.Listener{Backend: "orders-db", Services: []string{"SALES"}, Routes: map[string]string{"SALES": "sales-db", "KPI": "kpi-db"}}
	for _, c := range []struct{ name, route, label string }{
		{"SALES", "sales-db", "SALES"},
		{"sales", "sales-db", "SALES"},
		{"kpi", "kpi-db", "KPI"},
		{"ſALES", "orders-db", "other"},
		{"\u212aPI", "orders-db", "other"}, // Kelvin sign
		{"SALES2", "orders-db", "other"},
	} {
		if got := routeFor(l, c.name); got != c.route {
			t.Errorf("routeFor(%q) = %q, want %q", c.name, got, c.route)
		}
		if got := serviceLabel(l, c.name); got != c.label {
			t.Errorf("serviceLabel(%q) = %q, want %q", c.name, got, c.label)
		}
	}
}

// After a burst of REDIRECTs (a pool opening 20 connections through a SCAN
// address), the line that says how many warnings were dropped came only
// with a REDIRECT in a later window, maybe hours on, or never. The window
// now ends by itself and tells it, also when a reload has renamed the
// listener meanwhile (the count was lost with the old listener). Here the
// window is 2 s.
func TestDroppedRedirectLinesAreToldAfterTheBurst(t *testing.T) {
	for _, rename := range []bool{false, true} {
		l := tnstest.New(t, tnstest.Config{Mode: tnstest.Redirect, RedirectTo: "10.1.1.1:1521"})
		cfg := oneBackendConfig(l.Addr())
		h, logs := startProxyLog(t, cfg)
		h.p.forensics.mu.Lock()
		h.p.forensics.window = 2 * time.Second
		h.p.forensics.mu.Unlock()
		pkt, err := tns.BuildConnect(`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=ORDERS)))`)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 * logBurst {
			c := h.dial("l")
			c.Write(pkt)
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			io.ReadAll(c)
			c.Close()
		}
		if rename {
			renamed := strings.Replace(listenerAt(cfg, h.addr("l")), `name = "l"`, `name = "m"`, 1)
			if err := h.p.Apply(mustParse(t, renamed)); err != nil {
				t.Fatal(err)
			}
		}
		// Every REDIRECT is a warning or counted in a dropped line (a burst
		// slower than the window spreads over two windows).
		told := func() (warned, dropped int) {
			warned = len(logs.lines("TNS REDIRECT"))
			for _, line := range logs.lines("REDIRECT log lines dropped", "listener=l") {
				var n int
				if _, err := fmt.Sscanf(line[strings.Index(line, "dropped=")+len("dropped="):], "%d", &n); err == nil {
					dropped += n
				}
			}
			return warned, dropped
		}
		waitFor(t, 8*time.Second, "the line with the count of dropped REDIRECT warnings", func() bool {
			w, d := told()
			return d > 0 && w+d == 2*logBurst
		})
		if w, _ := told(); w < logBurst {
			t.Errorf("rename %v: %d REDIRECT warnings for %d connections, want at least %d", rename, w, 2*logBurst, logBurst)
		}
	}
}

// FuzzServiceName: the service name an app writes in its CONNECT picks its
// route and its labels, and is shown in logs. Whatever the name, a route
// is taken only for a name equal to its key but for ASCII case, the label
// is a configured spelling or "other", and the name as shown is at most
// maxServiceLen bytes of printable UTF-8.
func FuzzServiceName(f *testing.F) {
	f.Add("SALES", "sales")
	f.Add("ſALES", "SALES") // the long s: Unicode folding, not Oracle's
	f.Add("a\nb\\x0a\u202e", "*")
	f.Add(strings.Repeat("\xff", 200), "x")
	f.Fuzz(func(t *testing.T, name, key string) {
		l := &config.Listener{Backend: "default", Services: []string{key}, Routes: map[string]string{"*": "star"}}
		l.Routes[key] = "keyed"
		ascii := !strings.ContainsFunc(name+key, func(r rune) bool { return r >= utf8.RuneSelf })
		same := sameService(name, key)
		if same && (len(name) != len(key) || !strings.EqualFold(name, key)) || ascii && same != strings.EqualFold(name, key) {
			t.Fatalf("sameService(%q, %q) = %v", name, key, same)
		}
		want := "star"
		if key == "*" || name != "" && same {
			want = "keyed"
		}
		if got := routeFor(l, name); got != want {
			t.Fatalf("routeFor(%q) with a route for %q: %q, want %q", name, key, got, want)
		}
		if lbl := serviceLabel(l, name); lbl != "other" && lbl != key {
			t.Fatalf("serviceLabel(%q) = %q", name, lbl)
		}
		shown := shownText(name, maxServiceLen)
		if len(shown) > maxServiceLen || !utf8.ValidString(shown) {
			t.Fatalf("shownText(%q) = %q: %d bytes", name, shown, len(shown))
		}
		for _, r := range shown {
			if r < 0x20 || r == 0x7f || !unicode.IsPrint(r) {
				t.Fatalf("shownText(%q) = %q holds %U", name, shown, r)
			}
		}
	})
}
