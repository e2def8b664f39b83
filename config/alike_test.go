package config

import (
	"strings"
	"testing"
)

func parseErrs(t *testing.T, text string) (errs, warns []string) {
	t.Helper()
	_, w, err := Parse([]byte(text), "f.toml")
	if err != nil {
		errs = strings.Split(err.Error(), "\n")
	}
	return errs, w
}

// Lines of meaning errors in tables of one name, told apart by their place
// in the file (a review found the first of two alike named for the second's
// bad value), and servers of the second of two backends alike.
func TestMeaningErrorLinesOfTablesAlike(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // exact lines expected in the error output
	}{
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
`, []string{`f.toml: backend "b": connect_budget (`}},
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
		errs, _ := parseErrs(t, tc.text)
		for _, w := range tc.want {
			found := false
			for _, e := range errs {
				if strings.HasPrefix(e, w) {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: no %q in:\n%s", tc.name, w, strings.Join(errs, "\n"))
			}
		}
	}
}

// URL-escaped zones, and the self-dial loops a localhost server makes.
func TestZonesAndLocalhostLoops(t *testing.T) {
	for _, tc := range []struct {
		z    string
		want bool
	}{{"25", false}, {"25a", true}, {"2501", false}, {"eth25", false}, {"25eth0", true}, {"", false}, {"251", false}} {
		if got := urlEscapedZone(tc.z); got != tc.want {
			t.Errorf("urlEscapedZone(%q) = %v", tc.z, got)
		}
	}
	for _, tc := range []struct {
		l, s string
		want bool
	}{
		{"[::1]:1522", "localhost:1522", true},
		{":1522", "localhost:1522", true},
		{"[::]:1522", "localhost:1522", true},
		{"0.0.0.0:1522", "LocalHost:1522", true},
		{"[::ffff:127.0.0.1]:1522", "localhost:1522", true},
		{"[0:0::1]:1522", "localhost:1522", true},
		{"localhost:1522", "localhost:1522", true},
		{"127.0.0.2:1522", "localhost:1522", false},
		{"127.0.0.1:1522", "localhost:1523", false},
		{"127.0.0.1:1522", "localhost.:1522", true},
		{"[::1]:1522", "ip6-localhost:1522", true},
		{"127.0.0.1:1522", "ip6-localhost:1522", false},
	} {
		if got := loopsBack(tc.l, tc.s); got != tc.want {
			t.Errorf("loopsBack(%q,%q) = %v", tc.l, tc.s, got)
		}
	}
}
