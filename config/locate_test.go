package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// Lines of meaning errors that reviews found pointing at the wrong table:
// an error of the second of two tables named alike was placed at the first
// (also when the first set the key to a good value), and a BOM hid the
// first table's header. Tables alike are told apart by their place in the
// file. Odd layouts (CRLF, spaced or tabbed headers, comments, literal
// strings, dotted keys, inline tables) and keys left at their defaults
// keep their lines.
func TestMeaningErrorLines(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"the second of two alike", `[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
[[listener]]
name = "a"
listen = "127.0.0.1:1523"
backend = "b"
  [listener.keepalive]
  count = 1000
[[backend]]
name = "b"
  [[backend.server]]
  address = "127.0.0.1:1521"
`, []string{`f.toml: listener "a": keepalive.count 1000: the kernel allows at most 127 (line 10)`}},
		{"a BOM", "\ufeff[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"b\"\nmax_sessions = -1\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1523\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
			[]string{`f.toml: listener "a": max_sessions must not be negative (line 5)`}},
		{"CRLF and odd spellings", "[[ listener ]]   # main\r\nname = 'a'\r\nlisten = \"127.0.0.1:1522\"\r\nbackend = \"b\"\r\nkeepalive.count = 1000\r\n[[listener]]\r\nname = \"c\"\r\nlisten = \"127.0.0.1:1523\"\r\nbackend = \"b\"\r\nkeepalive = { count = 1000 }\r\n[[backend]]\r\nname = \"b\"\r\n[[backend.server]]\r\naddress = \"127.0.0.1:1521\"\r\n",
			[]string{`f.toml: listener "a": keepalive.count 1000: the kernel allows at most 127 (line 5)`, `f.toml: listener "c": keepalive.count 1000: the kernel allows at most 127 (line 10)`}},
		{"second listener alike, first sets key validly",
			`[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
keepalive.count = 5
[[listener]]
name = "a"
listen = "127.0.0.1:1523"
backend = "b"
keepalive.count = 1000
[[backend]]
name = "b"
[[backend.server]]
address = "127.0.0.1:1521"
`, []string{`f.toml: listener "a": keepalive.count 1000: the kernel allows at most 127 (line 10)`}},
		{"server of second backend alike",
			`[[listener]]
name = "l"
listen = "127.0.0.1:1522"
backend = "b"
[[backend]]
name = "b"
[[backend.server]]
address = "10.0.0.1:1521"
[[backend]]
name = "b"
[[backend.server]]
address = "10.0.0.1:1521"
weight = -1
`, []string{`f.toml: backend "b": server "10.0.0.1:1521": weight must not be negative (line 12)`}},
		{"three alike",
			`[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
[[listener]]
name = "a"
listen = "127.0.0.1:1523"
backend = "b"
[[listener]]
name = "a"   # third
listen = "127.0.0.1:1524"
backend = "b"
[[backend]]
name = "b"
[[backend.server]]
address = "10.0.0.1:1521"
`, []string{`f.toml: listener "a": name is defined twice (line 6)`, `f.toml: listener "a": name is defined twice (line 10)`}},
		{"single table, key default",
			`[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
[[backend]]
name = "b"
connect_timeout = "60s"
[[backend.server]]
address = "10.0.0.1:1521"
`, []string{`f.toml: backend "b": connect_budget (20s, the default) must be at least connect_timeout (1m0s) (line 5)`}},
		{"header with comment and inner spaces",
			`[[ listener ]]   # main [x]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
max_sessions = -1
[[backend]]
name = "b"
[[backend.server]]
address = "10.0.0.1:1521"
`, []string{`f.toml: listener "a": max_sessions must not be negative (line 5)`}},
		{"header with tab",
			"[[\tlistener ]]\nname = \"a\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"b\"\nmax_sessions = -1\n[[backend]]\nname = \"b\"\n[[backend.server]]\naddress = \"10.0.0.1:1521\"\n",
			[]string{`f.toml: listener "a": max_sessions must not be negative (line 5)`}},
		{"health.fall set to 0: the line of fall, not the backend's header",
			`[[listener]]
name = "l"
listen = "127.0.0.1:1522"
backend = "b"
[[backend]]
name = "b"
  [backend.health]
  rise = 2
  fall = 0
  [[backend.server]]
  address = "10.0.0.1:1521"
`, []string{`f.toml: backend "b": health.fall must be at least 1 (line 9)`}},
		{"key left at its default in a subtable: the subtable's header, not the backend's",
			`[[listener]]
name = "l"
listen = "127.0.0.1:1522"
backend = "b"
[[backend]]
name = "b"
  [backend.health]
  interval = "1s"
  [[backend.server]]
  address = "10.0.0.1:1521"
`, []string{`f.toml: backend "b": health.timeout (2s, the default) must be > 0 and at most health.interval (1s) (line 7)`}},
		{"connect_budget of second backend alike, first sets it",
			`[[listener]]
name = "l"
listen = "127.0.0.1:1522"
backend = "b"
[[backend]]
name = "b"
connect_budget = "20s"
[[backend.server]]
address = "10.0.0.1:1521"
[[backend]]
name = "b"
connect_timeout = "60s"
connect_budget = "30s"
[[backend.server]]
address = "10.0.0.2:1521"
`, []string{`f.toml: backend "b": connect_budget (30s) must be at least connect_timeout (1m0s) (line 13)`}},
	} {
		_, _, err := Parse([]byte(tc.text), "f.toml")
		if err == nil {
			t.Fatalf("%s: no error", tc.name)
		}
		got := strings.Split(err.Error(), "\n")
		for _, w := range tc.want {
			if !slices.Contains(got, w) {
				t.Errorf("%s: no %q in:\n%v", tc.name, w, err)
			}
		}
	}
}

// Valid addresses that the IPv6 checks of the same evening refused: IPv4
// link-local needs no zone (it cannot have one), localhost never reaches
// 127.0.0.2, and a zone of digits (251) is an interface index, not %25.
func TestValidAddressesStayValid(t *testing.T) {
	base := func(listen, server, allow string) string {
		return fmt.Sprintf("[[listener]]\nname = \"l\"\nlisten = %q\nbackend = \"b\"\nallow = [%q]\n[[backend]]\nname = \"b\"\n[[backend.server]]\naddress = %q\n", listen, allow, server)
	}
	for _, tc := range []struct{ name, text string }{
		{"IPv4 link-local server", base("127.0.0.1:1522", "169.254.20.10:1521", "10.0.0.0/8")},
		{"IPv4 link-local listener", base("169.254.20.10:1522", "10.0.0.1:1521", "10.0.0.0/8")},
		{"listener on 127.0.0.2, DB at localhost on its port", base("127.0.0.2:1521", "localhost:1521", "10.0.0.0/8")},
		{"numeric zone 251", base("127.0.0.1:1522", "[fe80::1%251]:1521", "10.0.0.0/8")},
		{"zoned link-local listener", base("[fe80::1%eth0]:1522", "10.0.0.1:1521", "10.0.0.0/8")},
		{"mapped single address listener", base("[::ffff:127.0.0.1]:1522", "10.0.0.1:1521", "10.0.0.0/8")},
		{"mapped allow address", base("127.0.0.1:1522", "10.0.0.1:1521", "::ffff:127.0.0.1")},
		{"mapped allow /96", base("127.0.0.1:1522", "10.0.0.1:1521", "::ffff:0:0/96")},
		{"mapped allow /128", base("127.0.0.1:1522", "10.0.0.1:1521", "::ffff:127.0.0.1/128")},
		{"allow ::/0", base("127.0.0.1:1522", "10.0.0.1:1521", "::/0")},
	} {
		if _, _, err := Parse([]byte(tc.text), "v.toml"); err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
		}
	}
}

// lineOf takes any text and message without panicking (a review fuzzed it
// for about a million runs).
func FuzzLineOf(f *testing.F) {
	f.Add("[[listener]]\nname = \"a\"\n[listener.keepalive]\ncount=1", `listener "a": keepalive.count 1000`, 0)
	f.Add("[log]\nlevel=1", `log: level`, 1)
	f.Add("[[backend]]\nname=\"b\"\n[[backend.server]]\naddress=\"x\"", `backend "b": server "x": weight`, 0)
	f.Fuzz(func(t *testing.T, text, msg string, index int) {
		for _, kind := range []string{"", "listener", "backend", "log"} {
			lineOf(text, msg, tablePos{kind, index})
		}
	})
}

// A server block copied with its address left as it was: the error named
// the line of the block it was copied from. And the errors of a table
// without a name named no line.
func TestDuplicateServerAndUnnamedTableLines(t *testing.T) {
	text := `[[listener]]
name    = "orders"
listen  = "127.0.0.1:1522"
backend = "orders"
[[listener]]
listen  = "127.0.0.1:1523"
backend = "nope"
[[backend]]
name = "orders"
  [[backend.server]]
  address  = "10.0.0.5:1521"
  [[backend.server]]
  address  = "10.0.0.5:1521"
  priority = 1
`
	_, _, err := Parse([]byte(text), "f.toml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`f.toml: backend "orders": server "10.0.0.5:1521": defined twice (line 13)`,
		`f.toml: listener #2: name is empty (line 5)`,
		`f.toml: listener #2: backend "nope" is not defined (line 7)`,
	} {
		if !slices.Contains(strings.Split(err.Error(), "\n"), want) {
			t.Errorf("no line %q in:\n%v", want, err)
		}
	}
}
