package config

import (
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/keepalive"
)

const minimal = `
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`

// The embedded default is the same text as configs/tnsguard.toml, and valid.
func TestDefaultIsTheExampleFile(t *testing.T) {
	example, err := os.ReadFile("../configs/tnsguard.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(example) != DefaultText() {
		t.Fatal("config/default.toml differs from configs/tnsguard.toml: copy the example over it")
	}
	cfg, warnings, err := Parse(example, "configs/tnsguard.toml")
	if err != nil || len(warnings) > 0 {
		t.Fatalf("example config: %v %v", err, warnings)
	}
	l := cfg.Listeners[0]
	if l.Listen != "127.0.0.1:1522" || cfg.Backends[0].Servers[0].Address != "127.0.0.1:1521" || cfg.Admin.Listen != "127.0.0.1:9521" {
		t.Fatalf("default addresses changed: %+v", cfg)
	}
}

// The example file sets every key to its default: a minimal file must
// decode to the same values.
func TestDefaultsMatchTheExample(t *testing.T) {
	full, _, err := Parse([]byte(DefaultText()), "default")
	if err != nil {
		t.Fatal(err)
	}
	min, _, err := Parse([]byte(minimal), "minimal")
	if err != nil {
		t.Fatal(err)
	}
	full.Source, min.Source = "", ""
	// The example lists services = [] and the breaker etc. explicitly.
	full.Listeners[0].Services = nil
	full.Listeners[0].Allow, full.Listeners[0].TrustedProxies, full.Admin.Allow = nil, nil, nil
	if a, b := full.Listeners[0].Keepalive.Settings(), min.Listeners[0].Keepalive.Settings(); a != b {
		t.Errorf("listener keepalive: example %+v, default %+v", a, b)
	}
	if a, b := full.Backends[0].Keepalive.Settings(), min.Backends[0].Keepalive.Settings(); a != b {
		t.Errorf("backend keepalive: example %+v, default %+v", a, b)
	}
	fb, mb := full.Backends[0], min.Backends[0]
	if fb.ConnectBudget != mb.ConnectBudget || fb.AnswerTimeout != mb.AnswerTimeout || fb.ConnectTimeout != mb.ConnectTimeout || *fb.ReplayBytes != *mb.ReplayBytes ||
		!reflect.DeepEqual(fb.Health, mb.Health) || *fb.Breaker.Failures != *mb.Breaker.Failures || fb.Breaker.OpenFor != mb.Breaker.OpenFor ||
		fb.Backoff != mb.Backoff || fb.BackoffMax != mb.BackoffMax || fb.Balance != mb.Balance ||
		strings.Join(fb.RetryOn, ",") != strings.Join(mb.RetryOn, ",") || len(fb.RefuseErrors) != len(mb.RefuseErrors) {
		t.Errorf("backend defaults differ from the example:\n%+v\n%+v", fb, mb)
	}
	if full.Shutdown != min.Shutdown || full.Log != min.Log {
		t.Errorf("shutdown/log defaults differ: %+v %+v", full.Shutdown, min.Shutdown)
	}
}

// Each bad file gives exactly these messages, all of them, not only the first.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string
	}{
		{"syntax", "[log]\nlevel = \"info\n", []string{`bad.toml:2:14: strings cannot contain newlines`}},
		// The library's line was the lexer's, past the newline: these were
		// put at 4:11 and 2:11.
		{"syntax at a line's end", "[log]\nlevel = \"info\"\n[[listener]\nname = \"x\"\n",
			[]string{`bad.toml:3:11: expected end of table array name delimiter ']', but got '\n' instead`}},
		{"syntax at a line's start", "a = [1, 2\nb = 3\n", []string{`bad.toml:2:1: expected a comma (',') or array terminator (']'), but got 'b'`}},
		{"unknown key", minimal + "  [backend.keepalive]\n  idel = \"5s\"\n", []string{`bad.toml:11:3: unknown key "backend.keepalive.idel" (did you mean "idle"?)`}},
		{"unknown dotted key", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive.idel = \"5s\"", 1),
			[]string{`bad.toml:6:1: unknown key "listener.keepalive.idel" (did you mean "idle"?)`}},
		{"unknown key in an inline table", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive = { idel = \"5s\" }", 1),
			[]string{`bad.toml:6:15: unknown key "listener.keepalive.idel" (did you mean "idle"?)`}},
		// The TOML library matches fields ignoring case: these passed
		// silently, and allow with Allow in one table picked either.
		// The negative weight also read as "every server has weight 0".
		{"negative weight", strings.Replace(minimal, `address = "127.0.0.1:1521"`, "address = \"127.0.0.1:1521\"\n  weight = -1", 1),
			[]string{`bad.toml: backend "orders": server "127.0.0.1:1521": weight must not be negative`}},
		// An explicit 0 was taken for "not set" and became 2 or 3.
		{"rise of 0", minimal + "  [backend.health]\n  rise = 0\n",
			[]string{`bad.toml: backend "orders": health.rise must be at least 1`}},
		{"key in another case", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nMax_Sessions = 3", 1),
			[]string{`bad.toml:6:1: unknown key "listener.Max_Sessions": keys are lower case ("max_sessions")`}},
		{"table in another case", "[Admin]\nlisten = \"127.0.0.1:9\"\n" + minimal,
			[]string{`bad.toml:1:1: unknown key "Admin": keys are lower case ("admin")`}},
		{"dotted key under a table in another case", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive.idle = \"5s\"\nKeepalive.idle = \"9s\"", 1),
			[]string{`bad.toml:7:1: unknown key "listener.Keepalive": keys are lower case ("keepalive")`}},
		{"array of tables in another case, twice", minimal + "[[backend]]\nname = \"b\"\n  [[backend.Server]]\n  address = \"127.0.0.1:1\"\n  [[backend.Server]]\n  address = \"127.0.0.1:2\"\n",
			[]string{`bad.toml:12:3: unknown key "backend.Server": keys are lower case ("server")`}},
		// The library left a routes that is not a table empty, silently:
		// every session went to the default backend.
		{"routes as an array", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nroutes = [\"SALES=orders\"]", 1),
			[]string{`bad.toml:6:11: routes must be a table of SERVICE = "backend", such as routes = { "SALES" = "sales" }, not an array`}},
		{"routes naming a backend with a number", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nroutes = { SALES = 5 }", 1),
			[]string{`bad.toml:6:11: routes: "SALES" must name a backend (a string), not an integer`}},
		// check said OK; each session dialed the listener again, until the
		// process ran out of fds with no app connected (a health check
		// started it).
		{"a server that is the listener", strings.Replace(minimal, `address = "127.0.0.1:1521"`, `address = "localhost:1522"`, 1),
			[]string{`bad.toml: listener "orders": listen "127.0.0.1:1522" is server "localhost:1522" of backend "orders": each session would dial the listener again, until the fds run out`}},
		// A mistyped address passed as a host name, and failed at run time.
		{"a mistyped address", strings.Replace(minimal, `address = "127.0.0.1:1521"`, `address = "10.0.0.256:1521"`, 1),
			[]string{`bad.toml: backend "orders": server "10.0.0.256:1521": address: "10.0.0.256:1521": "10.0.0.256" is not an IP address`}},
		// check said OK to both; every dial failed at run time, and the
		// refusal list could never match.
		{"a server on port 0", strings.Replace(minimal, `address = "127.0.0.1:1521"`, `address = "127.0.0.1:0"`, 1),
			[]string{`bad.toml: backend "orders": server "127.0.0.1:0": address: port 0 cannot be dialed`}},
		{"an ORA number out of range", strings.Replace(minimal, `name = "orders"
  [[backend.server]]`, "name = \"orders\"\nrefuse_errors = [12514, 99999999999]\n  [[backend.server]]", 1),
			[]string{`bad.toml: backend "orders": refuse_errors: 99999999999 is not an ORA error number (1 to 99999)`}},
		{"a user timeout under a millisecond", minimal + "  [backend.keepalive]\n  user_timeout = \"500us\"\n",
			[]string{`bad.toml: backend "orders": keepalive.user_timeout 500µs: the kernel counts whole milliseconds; use at least 1ms, or 0s for the kernel's default`}},
		{"a health interval of 1ns", minimal + "  [backend.health]\n  interval = \"1ns\"\n  timeout = \"1ns\"\n",
			[]string{`bad.toml: backend "orders": health.interval must be at least 10ms: each check is a connection to the server`,
				`bad.toml: backend "orders": health.timeout 1ns is under 1ms: checks that short time out before a database can answer, and its servers would count as down`}},
		{"one server written two ways", strings.Replace(minimal, `address = "127.0.0.1:1521"`, "address = \"[::1]:1521\"\n  [[backend.server]]\n  address = \"[0::1]:1521\"", 1),
			[]string{`bad.toml: backend "orders": server "[0::1]:1521": defined twice`}},
		{"two spellings of one key", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nallow = [\"10.0.0.0/8\"]\nAllow = [\"0.0.0.0/0\"]", 1),
			[]string{`bad.toml:7:1: unknown key "listener.Allow": keys are lower case ("allow")`}},
		{"unknown table", "[admn]\nlisten = \"x\"\n" + minimal, []string{`bad.toml:1:1: unknown key "admn" (did you mean "admin"?)`}},
		{"bad duration", strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
connect_timeout = "3 seconds"
  [[`, 1), []string{`bad.toml:8:20: key "backend.connect_timeout": bad duration "3 seconds": use a Go duration such as "30s" or "5m"`}},
		{"string for an integer", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nmax_sessions = \"ten\"", 1),
			[]string{`bad.toml:6:1: key "listener.max_sessions": a string given where an integer is needed`}},
		{"float for an integer", minimal + "  [backend.keepalive]\n  count = 1.5\n",
			[]string{`bad.toml:11:3: key "backend.keepalive.count": a float given where an integer is needed`}},
		{"listener on admin.listen", "[admin]\nlisten = \"127.0.0.1:9521\"\n" + strings.Replace(minimal, `listen = "127.0.0.1:1522"`, `listen = "0.0.0.0:9521"`, 1),
			[]string{`bad.toml: listener "orders": listen "0.0.0.0:9521" takes the address of admin.listen "127.0.0.1:9521": one of them could not start`}},
		{"two listeners on one port", minimal + "[[listener]]\nname = \"all\"\nlisten = \"0.0.0.0:1522\"\nbackend = \"orders\"\n",
			[]string{`bad.toml: listener "all": listen "0.0.0.0:1522" is also used by listener "orders"`}},
		{"routes with a replay_bytes too small to read the CONNECT", strings.Replace(strings.Replace(minimal, `backend = "orders"`, "routes = { \"*\" = \"orders\" }", 1), `name = "orders"
  [[`, `name = "orders"
replay_bytes = 0
  [[`, 1), []string{`bad.toml: listener "orders": routes need the app's CONNECT, and backend "orders" holds an opening only up to replay_bytes 0: use at least 8192`}},
		// With both backend and a "*" route, sessions wait for their
		// CONNECT on the "*" route's backend: check read backend's
		// replay_bytes, said OK, and every service went to the "*" route.
		{"routes whose \"*\" backend cannot hold the CONNECT, beside a backend that can", strings.Replace(strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nroutes = { \"SALES\" = \"orders\", \"*\" = \"legacy\" }", 1), `[[backend]]`, `[[backend]]
name = "legacy"
replay_bytes = 0
  [[backend.server]]
  address = "127.0.0.1:1523"
[[backend]]`, 1), []string{`bad.toml: listener "orders": routes need the app's CONNECT, and backend "legacy" holds an opening only up to replay_bytes 0: use at least 8192`}},
		{"an unknown key and a meaning error", strings.Replace(minimal, `backend = "orders"`, "backend = \"nope\"\ncolour = \"red\"", 1),
			[]string{`bad.toml:6:1: unknown key "listener.colour"`, `bad.toml: listener "orders": backend "nope" is not defined`}},
		{"undefined backend", strings.Replace(minimal, `backend = "orders"`, `backend = "x"`, 1), []string{`bad.toml: listener "orders": backend "x" is not defined`}},
		{"several meaning errors", `
[log]
level = "loud"
[[listener]]
name = "a"
listen = "127.0.0.1:99999"
backend = "b"
allow = ["10.0.0.0/33"]
proxy_protocol = "required"
  [listener.keepalive]
  idle = "10s"
  interval = "0s"
  count = 3
[[listener]]
name = "a"
listen = "nohost"
backend = "b"
[[backend]]
name = "b"
balance = "random"
retry_on = ["connect", "timeout"]
  [backend.health]
  check = "http"
  [[backend.server]]
  address = "db:1521"
  [[backend.server]]
  address = "db:1521"
`, []string{
			`bad.toml: log: level "loud" is not one of trace, debug, info, warn, error`,
			`bad.toml: backend "b": balance "random" is not one of priority, round_robin, least_sessions`,
			`bad.toml: backend "b": retry_on "timeout" is not one of connect, reset, refuse`,
			`bad.toml: backend "b": health.check "http" is not one of tcp, tnsping, off`,
			`bad.toml: backend "b": server "db:1521": defined twice`,
			`bad.toml: listener "a": listen: "127.0.0.1:99999": bad port "99999"`,
			`bad.toml: listener "a": proxy_protocol "required" needs trusted_proxies: PROXY headers are honoured only from them`,
			`bad.toml: listener "a": allow: "10.0.0.0/33": not a CIDR or address`,
			`bad.toml: listener "a": keepalive.interval 0s must be at least 1s when count > 0`,
			`bad.toml: listener "a": name is defined twice`,
			`bad.toml: listener "a": listen: "nohost" is not host:port`,
		}},
		{"no listener", "[log]\n", []string{`bad.toml: no [[listener]] is defined`}},
		{"proxy header timeout 0", strings.Replace(minimal, `backend = "orders"`, `backend = "orders"
proxy_protocol = "optional"
trusted_proxies = ["10.0.0.0/24"]
proxy_header_timeout = "0s"`, 1), []string{`bad.toml: listener "orders": proxy_header_timeout must be > 0 when proxy_protocol is "optional"`}},
		{"routes differing in case", strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nroutes = { \"SALES\" = \"orders\", \"sales\" = \"orders\" }", 1),
			[]string{`bad.toml: listener "orders": routes: "SALES" and "sales" are the same service (names match case-insensitively)`}},
		{"health service with spaces", strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
  [backend.health]
  check = "tnsping"
  service = "sales db"
  [[`, 1), []string{`bad.toml: backend "orders": health.service "sales db": a service name has no spaces, parentheses, '=', quotes or backslashes`}},
		{"every weight 0", strings.Replace(minimal, `address = "127.0.0.1:1521"`, "address = \"127.0.0.1:1521\"\n  weight = 0", 1),
			[]string{`bad.toml: backend "orders": every server has weight 0: no session can use this backend`}},
		{"keepalive over the kernel's range", strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
  [backend.keepalive]
  idle = "10h"
  interval = "10h"
  count = 128
  user_timeout = "600h"
  [[`, 1), []string{
			`bad.toml: backend "orders": keepalive.count 128: the kernel allows at most 127`,
			`bad.toml: backend "orders": keepalive.idle 10h0m0s: the kernel allows at most 9h6m7s`,
			`bad.toml: backend "orders": keepalive.interval 10h0m0s: the kernel allows at most 9h6m7s`,
			`bad.toml: backend "orders": keepalive.user_timeout 600h0m0s: the kernel allows at most 596h31m23.647s`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tc.text), "bad.toml")
			if err == nil {
				t.Fatal("no error")
			}
			got := noLines(strings.Split(err.Error(), "\n")) // TestMeaningErrorsNameTheLine checks them
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	text := strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
  [backend.keepalive]
  path_idle_timeout = "4m"
  idle = "5m"
  user_timeout = "10s"
  [[`, 1)
	text = "[admin]\nlisten = \"0.0.0.0:9521\"\n" + text
	_, warnings, err := Parse([]byte(text), "w.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`w.toml: admin: listen "0.0.0.0:9521" is reachable from other hosts and admin.allow is empty: anyone who reaches it sees your links`,
		`w.toml: backend "orders": keepalive.user_timeout 10s is shorter than idle + interval*count (6m18s): it cuts keepalive short`,
		`w.toml: backend "orders": keepalive.idle 5m0s is not below path_idle_timeout 4m0s: the path forgets idle sessions before the first probe`,
	}
	if warnings = noLines(warnings); strings.Join(warnings, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(want, "\n"))
	}
}

// A backend of Oracle listeners (check = "tnsping") with more than one
// server to fail over to, and retry_on without "refuse" (the default): a
// listener back from a restart passes tnsping before its service registers,
// so priority fail-back handed every app ORA-12514 for the registration's
// lag (measured: 122 of 1206 go-ora and node-oracledb apps in 4.5 s) while
// the standby served. check warns; with "refuse", or one server, it does not.
func TestTnspingFailoverWithoutRefuseWarns(t *testing.T) {
	base := `[[listener]]
name = "l"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
RETRY
  [backend.health]
  check = "tnsping"
  [[backend.server]]
  address = "10.0.0.1:1521"
SERVERS`
	standby := "  [[backend.server]]\n  address = \"10.0.0.2:1521\"\n  priority = 1\n"
	for _, tc := range []struct {
		name, retry, servers string
		warns                bool
	}{
		{"default retry_on, standby", "", standby, true},
		{"refuse, standby", `retry_on = ["connect", "reset", "refuse"]`, standby, false},
		{"default retry_on, one server", "", "", false},
		// The README's other remedy: a server counts as up only once its
		// service is registered.
		{"default retry_on, standby, health.service", "", standby, false},
	} {
		text := strings.NewReplacer("RETRY", tc.retry, "SERVERS", tc.servers).Replace(base)
		if strings.HasSuffix(tc.name, "health.service") {
			text = strings.Replace(text, `check = "tnsping"`, "check = \"tnsping\"\n  service = \"ORDERS\"", 1)
		}
		_, warnings, err := Parse([]byte(text), "w.toml")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := strings.Contains(strings.Join(warnings, "\n"), `retry_on lacks "refuse"`)
		if got != tc.warns {
			t.Errorf("%s: warnings %q; want the retry_on warning: %v", tc.name, warnings, tc.warns)
		}
	}
}

// retry_on "refuse" holds the REFUSE back only while the app's CONNECT is
// kept: with replay_bytes below it (0 to turn replays off) every app got the
// REFUSE during a switchover, and check said OK.
func TestRefuseRetryWithSmallReplayBytesWarns(t *testing.T) {
	for _, tc := range []struct {
		keys  string
		warns bool
	}{
		{`retry_on = ["connect", "reset", "refuse"]`, false},
		{"retry_on = [\"connect\", \"reset\", \"refuse\"]\nreplay_bytes = 8192", false},
		{"retry_on = [\"connect\", \"reset\", \"refuse\"]\nreplay_bytes = 0", true},
		{"retry_on = [\"connect\", \"reset\", \"refuse\"]\nreplay_bytes = 256", true},
		{"replay_bytes = 0", false},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[backend.server]]", "name = \"orders\"\n"+tc.keys+"\n  [[backend.server]]", 1)
		_, warnings, err := Parse([]byte(text), "r.toml")
		if err != nil {
			t.Fatalf("%s: %v", tc.keys, err)
		}
		got := strings.Contains(strings.Join(warnings, "\n"), `retry_on "refuse" needs the app's CONNECT kept`)
		if got != tc.warns {
			t.Errorf("%s: warnings %q; want the replay_bytes warning: %v", tc.keys, warnings, tc.warns)
		}
	}
}

// noLines drops the " (line N)" that ends a meaning error or warning.
func noLines(msgs []string) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = lineSuffix.ReplaceAllString(m, "")
	}
	return out
}

var lineSuffix = regexp.MustCompile(` \(line \d+\)$`)

// Meaning errors and warnings name the line they are about: the key's,
// else its table's header (a default the file never wrote), and for a name
// defined twice the second table's. They named only file and key.
func TestMeaningErrorsNameTheLine(t *testing.T) {
	text := `[log]
level = "verbose"
[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "b"
  [listener.keepalive]
  count = 1000
[[listener]]
name = "a"
listen = "127.0.0.1:1523"
backend = "b"
[[backend]]
name = 'b'
connect_timeout = "0s"
  [[backend.server]]
  address = "127.0.0.1:1521"
  weight = -1
`
	_, _, err := Parse([]byte(text), "f.toml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`f.toml: log: level "verbose" is not one of trace, debug, info, warn, error (line 2)`,
		`f.toml: listener "a": keepalive.count 1000: the kernel allows at most 127 (line 8)`,
		`f.toml: listener "a": name is defined twice (line 10)`,
		`f.toml: backend "b": connect_timeout must be > 0 (line 15)`,
		`f.toml: backend "b": server "127.0.0.1:1521": weight must not be negative (line 17)`,
	} {
		if !slices.Contains(strings.Split(err.Error(), "\n"), want) {
			t.Errorf("no line %q in:\n%v", want, err)
		}
	}
}

// path_idle_timeout derives what is not given explicitly.
func TestPathIdleTimeoutDerivesKeepalive(t *testing.T) {
	text := strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
  [backend.keepalive]
  path_idle_timeout = "350s"
  count = 5
  [[`, 1)
	cfg, warnings, err := Parse([]byte(text), "p.toml")
	if err != nil || len(warnings) > 0 {
		t.Fatal(err, warnings)
	}
	got := cfg.Backends[0].Keepalive.Settings()
	want := keepalive.Settings{Idle: 116 * time.Second, Interval: 38 * time.Second, Count: 5, UserTimeout: 306 * time.Second}
	if got != want {
		t.Fatalf("got %+v, want %+v (explicit count kept)", got, want)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(DefaultText()))
	f.Add([]byte(minimal))
	f.Add([]byte("[[listener]]\nname=1\n[[backend]]\n[backend.keepalive]\ncount=-1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, _, err := Parse(data, "fuzz.toml")
		if err == nil && (cfg == nil || len(cfg.Listeners) == 0) {
			t.Fatal("valid config without listeners")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "fuzz.toml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}

// An admin allow list without 127.0.0.1, on an admin listener the local
// healthcheck reaches, warns: the Docker HEALTHCHECK would get 403 and the
// container would stay unhealthy.
func TestAdminAllowWithoutLoopbackWarns(t *testing.T) {
	for _, tc := range []struct {
		admin string
		warns bool
	}{
		{"listen = \"0.0.0.0:9521\"\nallow = [\"10.0.0.0/8\"]", true},
		{"listen = \"127.0.0.1:9521\"\nallow = [\"10.0.0.0/8\"]", true},
		{"listen = \"0.0.0.0:9521\"\nallow = [\"10.0.0.0/8\", \"127.0.0.1/32\"]", false},
		{"listen = \"10.1.2.3:9521\"\nallow = [\"10.0.0.0/8\"]", false}, // not reached through 127.0.0.1 anyway
	} {
		_, warnings, err := Parse([]byte("[admin]\n"+tc.admin+"\n"+minimal), "w.toml")
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(strings.Join(warnings, "\n"), "admin: allow leaves out 127.0.0.1")
		if got != tc.warns {
			t.Errorf("%q: warned %v, want %v (%q)", tc.admin, got, tc.warns, warnings)
		}
	}
}

// An IPv6 address with a zone (a link-local client, fe80::1%eth0) is in
// the allow lists that hold it; netip's Contains says no to any zone.
func TestAllowListsMatchZonedAndMappedAddresses(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("fe80::/10")}
	mapped, err := parseNets([]string{"::ffff:10.0.0.0/104", "::ffff:192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	// IPv4-mapped entries hold the IPv4 clients they name (clients are
	// matched unmapped); they held none.
	for _, a := range []string{"10.1.2.3", "192.0.2.7"} {
		if !Allowed(mapped, netip.MustParseAddr(a)) {
			t.Errorf("%s not allowed by %v", a, mapped)
		}
	}
	if !Allowed(nets, netip.MustParseAddr("fe80::1%eth0")) {
		t.Errorf("fe80::1%%eth0 not allowed by fe80::/10")
	}
	if Allowed(nets, netip.MustParseAddr("fd00::1")) {
		t.Errorf("fd00::1 allowed by fe80::/10")
	}
}

// A path that forgets after days (conntrack's default is 5 days) derives
// values the kernel takes: idle and interval stop at 32767 s. They were
// derived as path/3 and path/9 and refused.
func TestLongPathIdleTimeoutDerivesKernelValues(t *testing.T) {
	text := strings.Replace(minimal, `name = "orders"
  [[`, `name = "orders"
  [backend.keepalive]
  path_idle_timeout = "120h"
  [[`, 1)
	c, _, err := Parse([]byte(text), "long.toml")
	if err != nil {
		t.Fatal(err)
	}
	got := c.Backends[0].Keepalive.Settings()
	if got.Idle != keepalive.MaxTimer || got.Interval != keepalive.MaxTimer || got.UserTimeout != 4*keepalive.MaxTimer {
		t.Errorf("derived %+v, want idle and interval %v", got, keepalive.MaxTimer)
	}
}

// Two listeners the kernel binds as one socket are refused however the
// address is written; two that bind apart are not. check said OK to the
// first three pairs, and run failed with "address already in use".
func TestListenersOnOneSocketInAnySpelling(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"[::ffff:127.0.0.1]:1522", "127.0.0.1:1522", true}, // Go binds a v4-mapped address as AF_INET
		{"[0:0::1]:1522", "[::1]:1522", true},
		{"[::ffff:0.0.0.0]:1522", "[::1]:1522", true}, // unspecified: dual-stack [::]
		{"0.0.0.0:1522", "[::]:1522", true},
		{":1522", "127.0.0.1:1522", true},
		{"127.0.0.1:1522", "[::1]:1522", false},
		{"localhost:1522", "127.0.0.1:1522", true}, // Go binds localhost's IPv4 address
		{"127.0.0.1:01522", "127.0.0.1:1522", true},
		{"127.0.0.1:1522", "127.0.0.2:1522", false},
		{"[::]:0", "0.0.0.0:0", false}, // port 0: each gets its own
	} {
		if got := SameSocket(tc.a, tc.b); got != tc.same {
			t.Errorf("SameSocket(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

// A server that is the listener itself is refused; one on another host at
// the same port, as with a listener on 0.0.0.0:1521 in front of db:1521, is
// not.
func TestServerThatIsTheListener(t *testing.T) {
	for _, tc := range []struct {
		listen, server string
		loops          bool
	}{
		{"127.0.0.1:1522", "127.0.0.1:1522", true},
		{"0.0.0.0:1522", "127.0.0.1:1522", true},
		{"[::]:1522", "localhost:1522", true},
		{"127.0.0.1:1522", "0.0.0.0:1522", true},
		{"0.0.0.0:1521", "db.example.com:1521", false},
		{"0.0.0.0:1521", "10.0.0.5:1521", false},
		{"127.0.0.1:1522", "127.0.0.1:1521", false},
		{"127.0.0.1:0", "127.0.0.1:0", false},
	} {
		if got := loopsBack(tc.listen, tc.server); got != tc.loops {
			t.Errorf("loopsBack(%s, %s) = %v, want %v", tc.listen, tc.server, got, tc.loops)
		}
	}
}

// Docker's and Kubernetes' resolvers answer for names with underscores
// (a Compose service oracle_db): check refused them.
func TestHostNameWithUnderscore(t *testing.T) {
	text := strings.Replace(minimal, `address = "127.0.0.1:1521"`, `address = "oracle_db:1521"`, 1)
	if _, _, err := Parse([]byte(text), "ok.toml"); err != nil {
		t.Errorf("oracle_db:1521 refused: %v", err)
	}
}

// A listener whose backend dials another listener of the same file is a
// chain, not a loop: only a listener's own backends are checked.
func TestListenerChainIsNoLoop(t *testing.T) {
	text := `
[[listener]]
name = "front"
listen = "0.0.0.0:1521"
backend = "db"
[[listener]]
name = "local"
listen = "127.0.0.1:1600"
backend = "via-front"
[[backend]]
name = "db"
  [[backend.server]]
  address = "10.0.0.5:1521"
[[backend]]
name = "via-front"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	if _, _, err := Parse([]byte(text), "chain.toml"); err != nil {
		t.Errorf("a chain through another listener refused: %v", err)
	}
}

// A path_idle_timeout of 2s or less alone gets a warning about itself, not one
// that blames an idle the user never wrote.
func TestShortPathIdleTimeoutWarnsAboutItself(t *testing.T) {
	for _, p := range []string{"1s", "2s", "2500ms", "3s"} {
		text := minimal + "  [backend.keepalive]\n  path_idle_timeout = \"" + p + "\"\n"
		_, warnings, err := Parse([]byte(text), "w.toml")
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		if p == "1s" || p == "2s" { // idle 1s + interval 1s fit in 2.5s
			want = []string{`w.toml: backend "orders": keepalive.path_idle_timeout ` + p + `: keepalive counts whole seconds, so the idle 1s and interval 1s derived from it cannot refresh a path this short in time; above 2s it can`}
		}
		if warnings = noLines(warnings); strings.Join(warnings, "\n") != strings.Join(want, "\n") {
			t.Errorf("path_idle_timeout %s: got:\n%s\nwant:\n%s", p, strings.Join(warnings, "\n"), strings.Join(want, "\n"))
		}
	}
}

// IPv6 slips that check let through, each found by a review: a listener on
// [::1] whose server is localhost dialed itself (the dial tries ::1 after
// 127.0.0.1 refused) in a loop that ran on by itself; ::ffff:10.0.0.0/8 is
// ::/8, which let ::1 in and kept 10/8 out; a link-local address without a
// zone, or with a URL-escaped one, can never be bound or dialed.
func TestIPv6Slips(t *testing.T) {
	base := func(listen, server, allow string) string {
		return fmt.Sprintf("[[listener]]\nname = \"l\"\nlisten = %q\nbackend = \"b\"\nallow = [%q]\n[[backend]]\nname = \"b\"\n[[backend.server]]\naddress = %q\n", listen, allow, server)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"a [::1] listener whose server is localhost", base("[::1]:1522", "localhost:1522", "10.0.0.0/8"), "each session would dial the listener again"},
		{"a wildcard listener whose server is LOCALHOST", base(":1522", "LOCALHOST:1522", "10.0.0.0/8"), "each session would dial the listener again"},
		{"a mapped prefix with an IPv4 length", base("127.0.0.1:1522", "10.0.0.1:1521", "::ffff:10.0.0.0/8"), `write 10.0.0.0/8, or ::ffff:10.0.0.0/104`},
		{"a link-local server without a zone", base("127.0.0.1:1522", "[fe80::1]:1521", "10.0.0.0/8"), "a link-local address needs a zone"},
		{"a URL-escaped zone", base("127.0.0.1:1522", "[fe80::1%25eth0]:1521", "10.0.0.0/8"), "looks URL-escaped"},
		// netip reads fe80::%eth0/64 as fe80:: in a zone "eth0/64": check
		// passed it and the list held fe80::/128, refusing every
		// link-local client (or, in trusted_proxies, every balancer).
		{"a zone in an allow prefix", base("127.0.0.1:1522", "10.0.0.1:1521", "fe80::%eth0/64"), `allow: "fe80::%eth0/64": a prefix takes no zone (clients are matched without theirs): write fe80::/64`},
		// An IPv6 address and port without brackets said only "is not
		// host:port"; healthcheck's -admin said where the brackets go.
		{"an IPv6 listen address without brackets", base("::1:1522", "10.0.0.1:1521", "10.0.0.0/8"), `listen: "::1:1522" is not host:port: an IPv6 address goes in brackets, as [::1]:1522`},
		{"an IPv6 server address without brackets", base("127.0.0.1:1522", "2001:db8::7:1521", "10.0.0.0/8"), `address: "2001:db8::7:1521" is not host:port: an IPv6 address goes in brackets, as [2001:db8::7]:1521`},
	} {
		_, _, err := Parse([]byte(tc.text), "v6.toml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	// What stays valid.
	for _, text := range []string{
		base("[::1]:1522", "localhost:1521", "::ffff:10.0.0.0/104"),
		base("10.0.0.5:1522", "localhost:1522", "10.0.0.0/8"),
		base("127.0.0.1:1522", "[fe80::1%eth0]:1521", "fe80::/10"),
	} {
		if _, _, err := Parse([]byte(text), "v6.toml"); err != nil {
			t.Errorf("%v\nfor\n%s", err, text)
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

// A value of the wrong type in the first of two tables alike was put at
// the line of the second's key (the library keeps one position per key
// name): `idle_timeout = "30"` at line 5 was reported at line 11, whose
// "30m" is right.
func TestTypeErrorOfTheFirstOfTwoTablesNamesItsLine(t *testing.T) {
	text := `[[listener]]
name         = "orders"
listen       = "127.0.0.1:1522"
backend      = "orders"
idle_timeout = "30"
[[listener]]
name         = "sales"
listen       = "127.0.0.1:1523"
backend      = "orders"
max_sessions = 100
idle_timeout = "30m"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	_, _, err := Parse([]byte(text), "f.toml")
	want := `f.toml:5:17: key "listener.idle_timeout": bad duration "30": use a Go duration such as "30s" or "5m"`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	text = strings.Replace(strings.Replace(text, `"30"`, `"30s"`, 1), "backend      = \"orders\"\n", "backend      = \"orders\"\nmax_sessions = \"100\"\n", 1)
	_, _, err = Parse([]byte(text), "f.toml")
	want = `f.toml:5:1: key "listener.max_sessions": a string given where an integer is needed`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// Values of the wrong type were reported one at a time, the one picked
// at random (map order), and hid every unknown key: each run of check
// could name another, and fixing one showed the next.
func TestEveryTypeErrorIsReportedAtOnce(t *testing.T) {
	text := `[log]
level = "info"
levle = "debug"
[[listener]]
name    = "orders"
listen  = "127.0.0.1:1522"
backend = "orders"
max_sessions = "100"
  [listener.keepalive]
  count = "4"
[[backend]]
name            = "orders"
connect_timeout = "3"
  [backend.breaker]
  failures = "5"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	want := strings.Join([]string{
		`f.toml:8:1: key "listener.max_sessions": a string given where an integer is needed`,
		`f.toml:10:3: key "listener.keepalive.count": a string given where an integer is needed`,
		`f.toml:13:20: key "backend.connect_timeout": bad duration "3": use a Go duration such as "30s" or "5m"`,
		`f.toml:15:3: key "backend.breaker.failures": a string given where an integer is needed`,
		`f.toml:3:1: unknown key "log.levle" (did you mean "level"?)`,
	}, "\n")
	for range 20 {
		_, _, err := Parse([]byte(text), "f.toml")
		if err == nil || err.Error() != want {
			t.Fatalf("got:\n%v\nwant:\n%s", err, want)
		}
	}
}

// A UTF-8 BOM (Windows Notepad) moved syntax errors: the library counts
// positions after it, so an error at a line's start was put at the end
// of the line before. And a first line "\ufeff[log]" was no header: the
// unknown keys of that table were put at 1:1.
func TestBOMKeepsPositions(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"syntax at a line's start", "\ufeffa = [1, 2\nb = 3\n", `f.toml:2:1: expected a comma (',') or array terminator (']'), but got 'b'`},
		{"syntax at a line's end", "\ufeff[log]\nlevel = \"info\n", `f.toml:2:14: strings cannot contain newlines`},
		{"unknown key of the first table", "\ufeff[log]\nlevel = \"info\"\nformt = \"json\"\n" + minimal, `f.toml:3:1: unknown key "log.formt" (did you mean "format"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse([]byte(tc.text), "f.toml")
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got:\n%v\nwant:\n%s", err, tc.want)
			}
		})
	}
}

// An unknown key that is a slip of a key of its table says which.
func TestUnknownKeySuggestsTheKey(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nmax_session = 5\ncolour = \"red\"", 1) +
		"  [backend.health]\n  raise = 2\n  [backend.breaker]\n  open_four = \"1s\"\n"
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:6:1: unknown key "listener.max_session" (did you mean "max_sessions"?)`,
		`f.toml:7:1: unknown key "listener.colour"`,
		`f.toml:13:3: unknown key "backend.health.raise" (did you mean "rise"?)`,
		`f.toml:15:3: unknown key "backend.breaker.open_four" (did you mean "open_for"?)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A wrong value in the second [[backend.server]] of a backend was put at
// the line of the first server's key of that name, whose value is right:
// each server is looked for in its own block.
func TestTypeErrorOfALaterServerNamesItsLine(t *testing.T) {
	text := `[[listener]]
name    = "orders"
listen  = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address  = "10.0.0.1:1521"
  priority = 0
  weight   = 2
  [[backend.server]]
  address  = "10.0.0.2:1521"
  priority = "1"
  [[backend.server]]
  address  = "10.0.0.3:1521"
  weight   = "x"
`
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:13:3: key "backend.server.priority": a string given where an integer is needed`,
		`f.toml:16:3: key "backend.server.weight": a string given where an integer is needed`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A table key given a value that is no table (keepalive = "60s") was
// dropped from the report as soon as another key of its table was wrong
// too: the library decodes a string into the per-key map without a word.
func TestWrongTypeOfATableKeyIsReportedWithTheOthers(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive = \"60s\"\nmax_sessions = \"10\"", 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:6:1: key "listener.keepalive": a string given where a table is needed`,
		`f.toml:7:1: key "listener.max_sessions": a string given where an integer is needed`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A table given for a duration is a value of the wrong type, and only
// that: its keys are not unknown keys of their own (backoff.max at 1:1).
func TestTableForADurationIsNoUnknownKey(t *testing.T) {
	for _, tc := range []struct{ value, key, kind string }{
		{`{ max = "2s" }`, "backoff", "a table"},
		{`[{ max = "2s" }]`, "backoff", "an array"},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[backend.server]]", "name = \"orders\"\nbackoff = "+tc.value+"\n  [[backend.server]]", 1)
		_, _, err := Parse([]byte(text), "f.toml")
		want := fmt.Sprintf(`f.toml:8:1: key "backend.%s": %s given where a duration such as "30s" is needed`, tc.key, tc.kind)
		if err == nil || err.Error() != want {
			t.Errorf("backoff = %s: got:\n%v\nwant:\n%s", tc.value, err, want)
		}
	}
}

// Messages say what is wrong in TOML's words and name the key: an
// integer too large for any named none ("is out of range for int64"),
// and a value for a table named a Go type ("type mismatch for
// config.Keepalive: expected table but found int64").
func TestValueErrorsNameTheKeyInTOMLWords(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"max_sessions = 99999999999999999999", `f.toml:6:16: key "listener.max_sessions": 99999999999999999999 is out of the integer range (-9223372036854775808 to 9223372036854775807)`},
		{"max_sessions = -99999999999999999999", `f.toml:6:16: key "listener.max_sessions": -99999999999999999999 is out of the integer range (-9223372036854775808 to 9223372036854775807)`},
		{"keepalive = 5", `f.toml:6:1: key "listener.keepalive": an integer given where a table is needed`},
		{"keepalive = [1]", `f.toml:6:1: key "listener.keepalive": an array given where a table is needed`},
	} {
		text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\n"+tc.line, 1)
		_, _, err := Parse([]byte(text), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: got:\n%v\nwant:\n%s", tc.line, err, tc.want)
		}
	}
}

// A listener on a host name warns: Go listens on one of the name's
// addresses (localhost: 127.0.0.1 only, where Node.js tries ::1 first),
// looked up at start. Addresses, zoned ones and the wildcard do not.
func TestListenOnAHostNameWarns(t *testing.T) {
	for _, tc := range []struct {
		listen string
		warns  bool
	}{
		{"localhost:1522", true},
		{"db-proxy.example.com:1522", true},
		{"127.0.0.1:1522", false},
		{"[::1]:1522", false},
		{"[fe80::1%eth0]:1522", false},
		{":1522", false},
		{"0.0.0.0:1522", false},
	} {
		text := strings.Replace(minimal, `listen = "127.0.0.1:1522"`, fmt.Sprintf("listen = %q", tc.listen), 1)
		_, warnings, err := Parse([]byte(text), "w.toml")
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`w.toml: listener "orders": listen %q names a host: tnsguard listens on one of its addresses only, looked up at start; give the IP address to listen on (line 4)`, tc.listen)
		if got := slices.Contains(warnings, want); got != tc.warns {
			t.Errorf("listen %q: warned %v, want %v (%q)", tc.listen, got, tc.warns, warnings)
		}
	}
}

// reload.watch is off (0s) or at least 1s; the error names its line.
func TestReloadWatchBounds(t *testing.T) {
	for _, tc := range []struct {
		watch string
		err   string
	}{
		{"0s", ""},
		{"1s", ""},
		{"10s", ""},
		{"500ms", `w.toml: reload: watch "500ms" is under 1s: reading the file more often finds no change sooner than a person or kubelet makes it; use 0s (off) or 1s and up (line 3)`},
	} {
		c, _, err := Parse([]byte("[reload]\n\nwatch = \""+tc.watch+"\"\n"+minimal), "w.toml")
		if tc.err == "" {
			if err != nil {
				t.Errorf("watch = %q: %v", tc.watch, err)
			} else if c.Reload.Watch.String() != tc.watch {
				t.Errorf("watch = %q read as %v", tc.watch, c.Reload.Watch)
			}
			continue
		}
		if err == nil || err.Error() != tc.err {
			t.Errorf("watch = %q: got\n%v\nwant\n%s", tc.watch, err, tc.err)
		}
	}
}

// redirect is pass or follow; follow needs the CONNECT kept.
func TestRedirectValues(t *testing.T) {
	for _, tc := range []struct{ keys, err string }{
		{`redirect = "follow"`, ""},
		{`redirect = "pass"`, ""},
		{`redirect = "Follow"`, `redirect "Follow" is not one of pass, follow`},
		{"redirect = \"follow\"\nreplay_bytes = 0", `redirect = "follow" needs replay_bytes`},
		{"redirect = \"follow\"\nreplay_bytes = 256", `redirect = "follow" needs replay_bytes of at least 8192`},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[backend.server]]", "name = \"orders\"\n"+tc.keys+"\n  [[backend.server]]", 1)
		c, _, err := Parse([]byte(text), "r.toml")
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.keys, err)
		case tc.err == "" && c.Backends[0].Redirect != strings.Trim(strings.TrimPrefix(tc.keys, "redirect = "), `"`):
			t.Errorf("%s: read as %q", tc.keys, c.Backends[0].Redirect)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want %q", tc.keys, err, tc.err)
		}
	}
	c, _, err := Parse([]byte(minimal), "r.toml")
	if err != nil || c.Backends[0].Redirect != "pass" {
		t.Errorf("default redirect %q, %v; want pass", c.Backends[0].Redirect, err)
	}
}

// Place puts an error met at run time (a bind) on the line of the key it
// is about: a listener's listen, and admin.listen too (run's admin bind
// error had neither file nor line; Place gave [admin] none, asking lineOf
// for it by index -1).
func TestPlaceNamesTheLineOfListenAndAdminListen(t *testing.T) {
	text := "[admin]\nlisten = \"192.0.2.1:9521\"\n" + minimal
	c, _, err := Parse([]byte(text), "p.toml")
	if err != nil {
		t.Fatal(err)
	}
	for msg, want := range map[string]string{
		`listener "orders": listen tcp 127.0.0.1:1522: bind: address already in use`: `p.toml: listener "orders": listen tcp 127.0.0.1:1522: bind: address already in use (line 6)`,
		`admin: listen tcp 192.0.2.1:9521: bind: cannot assign requested address`:    `p.toml: admin: listen tcp 192.0.2.1:9521: bind: cannot assign requested address (line 2)`,
	} {
		if got := c.Place(msg); got != want {
			t.Errorf("Place(%q) = %q, want %q", msg, got, want)
		}
	}
}

// A CIDR with host bits set ("192.168.1.10/24", as `ip addr` prints an
// interface's address) was masked without a word: trusted_proxies then
// trusted every host of the /24 to name any client address in a PROXY
// header (and so to get past allow and max_sessions_per_source), and allow
// let the whole network in, where one address was probably meant. check
// warns, naming the network it is and how to write one address.
func TestCIDRWithHostBitsWarns(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, `backend = "orders"
proxy_protocol = "required"
trusted_proxies = ["192.168.1.10/24", "10.0.0.0/8"]
allow = ["203.0.113.7/16", "2001:db8::1/64", "198.51.100.9"]`, 1)
	text = "[admin]\nallow = [\"127.0.0.1/8\"]\n" + text
	cfg, warnings, err := Parse([]byte(text), "w.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`w.toml: admin: allow: "127.0.0.1/8" has host bits set: it is the network 127.0.0.0/8, every address in it; for one address write 127.0.0.1 (a /32)`,
		`w.toml: listener "orders": trusted_proxies: "192.168.1.10/24" has host bits set: it is the network 192.168.1.0/24, every address in it; for one address write 192.168.1.10 (a /32)`,
		`w.toml: listener "orders": allow: "203.0.113.7/16" has host bits set: it is the network 203.0.0.0/16, every address in it; for one address write 203.0.113.7 (a /32)`,
		`w.toml: listener "orders": allow: "2001:db8::1/64" has host bits set: it is the network 2001:db8::/64, every address in it; for one address write 2001:db8::1 (a /128)`,
	}
	if got := noLines(warnings); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// What is matched does not change: the masked network, as before.
	if got := cfg.Listeners[0].TrustedNets[0].String(); got != "192.168.1.0/24" {
		t.Errorf("trusted_proxies parsed as %s", got)
	}
}

// A key written in the table above its own (idle in [[listener]] rather
// than [listener.keepalive], rise in [[backend]] rather than
// [backend.health]) was reported as an unknown key with no hint, though
// the README documents it under that name: the message names the table
// that has it.
func TestKeyInTheWrongTableNamesItsTable(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nidle = \"60s\"", 1)
	text = strings.Replace(text, "name = \"orders\"\n  [[", "name = \"orders\"\nrise = 2\nfailures = 3\naddress = \"127.0.0.1:1521\"\n  [[", 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:6:1: unknown key "listener.idle" (it belongs in [listener.keepalive])`,
		`f.toml:9:1: unknown key "backend.rise" (it belongs in [backend.health])`,
		`f.toml:10:1: unknown key "backend.failures" (it belongs in [backend.breaker])`,
		`f.toml:11:1: unknown key "backend.address" (it belongs in [[backend.server]])`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A duration past Go's longest (about 292 years: "10000000h") was
// refused with `use a Go duration such as "30s"`, which it is: the
// message says what is wrong with it.
func TestDurationTooLongSaysSo(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nidle_timeout = \"10000000h\"", 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := `f.toml:6:17: key "listener.idle_timeout": bad duration "10000000h": longer than the longest duration, 2562047h47m16.854775807s (about 292 years)`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// trusted_proxies (or proxy_header_timeout) on a listener whose
// proxy_protocol is off (the default) does nothing: the balancer's PROXY
// header goes on to the database as the app's first bytes and every
// session through it fails. check warns that proxy_protocol is off.
func TestTrustedProxiesWithProxyProtocolOffWarns(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\ntrusted_proxies = [\"10.0.0.0/8\"]", 1)
	_, warnings, err := Parse([]byte(text), "w.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := `w.toml: listener "orders": trusted_proxies is set but proxy_protocol is "off": PROXY headers from them are passed to the backend as the app's bytes; set proxy_protocol = "required" (or "optional")`
	if got := noLines(warnings); strings.Join(got, "\n") != want {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
}

// retry_on "refuse" with refuse_errors = [] retries no REFUSE at all: the
// ORA-12514 of a switchover goes to every app, as without "refuse". check
// passed it silently; it warns.
func TestRefuseRetryWithNoRefuseErrorsWarns(t *testing.T) {
	text := strings.Replace(minimal, "name = \"orders\"\n  [[", "name = \"orders\"\nretry_on = [\"connect\", \"reset\", \"refuse\"]\nrefuse_errors = []\n  [[", 1)
	_, warnings, err := Parse([]byte(text), "w.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := `w.toml: backend "orders": retry_on "refuse" retries only the REFUSE codes in refuse_errors, and refuse_errors is empty: no REFUSE is retried; leave refuse_errors out for the default codes`
	if got := noLines(warnings); strings.Join(got, "\n") != want {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
}

// backoff = "1ns" (with backoff_max = "1ns") passed: while the servers
// refused, one waiting session dialed them some 50,000 times a second for
// all of connect_budget (248,500 dials in a budget of 5s, a whole core,
// measured with two refusing servers), their open circuits no obstacle
// (every round is a last resort then): a SYN flood at the database for
// each app that waits out an outage. Like health.interval, the pause has
// a floor: 1ms, at which one session makes about 1,700 dials a second.
func TestBackoffFloor(t *testing.T) {
	for _, tc := range []struct{ keys, want string }{
		{"backoff = \"1ns\"\nbackoff_max = \"1ns\"", `backend "orders": backoff 1ns is under 1ms: each pause ends in a round of dials, and with none every waiting session dials the servers without a break (tens of thousands a second while they refuse)`},
		{"backoff = \"1ms\"\nbackoff_max = \"500us\"", `backend "orders": backoff_max (500µs) must be at least backoff (1ms)`},
		{"backoff = \"1ms\"\nbackoff_max = \"1ms\"", ""},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[", "name = \"orders\"\n"+tc.keys+"\n  [[", 1)
		_, _, err := Parse([]byte(text), "f.toml")
		got := ""
		if err != nil {
			got = strings.Join(noLines(strings.Split(strings.ReplaceAll(err.Error(), "f.toml: ", ""), "\n")), "\n")
		}
		if got != tc.want {
			t.Errorf("%s:\ngot:  %s\nwant: %s", tc.keys, got, tc.want)
		}
	}
}

// answer_timeout bounds the wait for one server's first answer when
// another server can take the session: 0 or under 1ms would move every
// session off a server that works (a listener answers in a round trip and
// more), and is refused with the line; one written above connect_budget,
// with more than one server, never bounds anything and is warned about
// (equal to it is how to ask for that). Left out, it is 5s, whatever the
// budget: no warning.
func TestAnswerTimeout(t *testing.T) {
	second := "\n  [[backend.server]]\n  address = \"127.0.0.1:1523\""
	for _, tc := range []struct{ keys, servers, wantErr, wantWarn string }{
		{"answer_timeout = \"0s\"", "", `f.toml: backend "orders": answer_timeout must be > 0 (line 8)`, ""},
		{"answer_timeout = \"500us\"", "", `f.toml: backend "orders": answer_timeout 500µs is under 1ms: waits that short end before a listener can answer, and every session would move on from a server that works (line 8)`, ""},
		{"answer_timeout = \"1ms\"", second, "", ""},
		{"answer_timeout = \"30s\"", second, "", `f.toml: backend "orders": answer_timeout (30s) is over connect_budget (20s, the default): it never ends a wait, and a server that accepts and never answers holds every session it takes until the budget ends; set it to connect_budget if that is what you want (line 8)`},
		{"answer_timeout = \"20s\"", second, "", ""}, // the budget's: the old behaviour, asked for
		{"answer_timeout = \"30s\"", "", "", ""},     // one server: nowhere else to go anyway
		{"connect_budget = \"3s\"", second, "", ""},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[", "name = \"orders\"\n"+tc.keys+"\n  [[", 1) + tc.servers
		cfg, warnings, err := Parse([]byte(text), "f.toml")
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.wantErr {
			t.Errorf("%s%s:\ngot:  %s\nwant: %s", tc.keys, tc.servers, got, tc.wantErr)
		}
		if w := strings.Join(warnings, "\n"); w != tc.wantWarn {
			t.Errorf("%s%s: warnings:\ngot:  %s\nwant: %s", tc.keys, tc.servers, w, tc.wantWarn)
		}
		if err == nil && tc.keys == "connect_budget = \"3s\"" && cfg.Backends[0].AnswerTimeout.Duration != 5*time.Second {
			t.Errorf("answer_timeout left out: %v, want 5s", cfg.Backends[0].AnswerTimeout.Duration)
		}
	}
}

// A value written without quotes (idle = 60s, listen = 127.0.0.1:1522,
// level = info) is a syntax error, and the library's message named
// neither the key nor the fix: `expected a top-level item to end with a
// newline, comment, or EOF, but got 's' instead` (inside [shutdown]), or
// `Invalid float value: "127.0.0.1"`. A string key says to quote it; a
// key that takes a number keeps the library's message.
func TestUnquotedValueNamesTheKeyAndTheQuotes(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[shutdown]\ngrace = 30s\n" + minimal, `f.toml:2:9: key "shutdown.grace": 30s needs quotes: "30s" (TOML writes durations, addresses and names as strings)`},
		{"[shutdown]\ngrace = 1m30s   # one and a half\n" + minimal, `f.toml:2:9: key "shutdown.grace": 1m30s needs quotes: "1m30s" (TOML writes durations, addresses and names as strings)`},
		{"[log]\nlevel = info\n" + minimal, `f.toml:2:9: key "log.level": info needs quotes: "info" (TOML writes durations, addresses and names as strings)`},
		{"[log]\nformat = text\n" + minimal, `f.toml:2:10: key "log.format": text needs quotes: "text" (TOML writes durations, addresses and names as strings)`},
		{"[admin]\nlisten = :9521\n" + minimal, `f.toml:2:10: key "admin.listen": :9521 needs quotes: ":9521" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `listen = "127.0.0.1:1522"`, `listen = 127.0.0.1:1522`, 1), `f.toml:4:10: key "listener.listen": 127.0.0.1:1522 needs quotes: "127.0.0.1:1522" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nallow = [\"10.1.0.0/16\", 10.0.0.0/8]", 1), `f.toml:6:25: key "listener.allow": 10.0.0.0/8 needs quotes: "10.0.0.0/8" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive = { idle = 60s }", 1), `f.toml:6:22: key "listener.keepalive.idle": 60s needs quotes: "60s" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\n  [listener.keepalive]\n  idle = 60s", 1), `f.toml:7:10: key "listener.keepalive.idle": 60s needs quotes: "60s" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nallow = [\n  \"10.1.0.0/16\",\n  10.0.0.0/8,\n]", 1), `f.toml:8:3: key "listener.allow": 10.0.0.0/8 needs quotes: "10.0.0.0/8" (TOML writes durations, addresses and names as strings)`},
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nroutes = { \"SALES\" = sales }", 1), `f.toml:6:22: key "listener.routes.SALES": sales needs quotes: "sales" (TOML writes durations, addresses and names as strings)`},
		{strings.ReplaceAll(strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nallow = [\n  10.0.0.0/8,\n]", 1), "\n", "\r\n"), `f.toml:7:3: key "listener.allow": 10.0.0.0/8 needs quotes: "10.0.0.0/8" (TOML writes durations, addresses and names as strings)`},
		// A key after an array left open is no value: the library's message.
		{strings.Replace(minimal, `backend = "orders"`, "allow = [\"10.0.0.0/8\"\nbackend = \"orders\"", 1), `f.toml:6:1: expected a comma (',') or array terminator (']'), but got 'b'`},
		// A number key: quotes would not help, the library's message stays.
		{strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nmax_sessions = 10k", 1), `f.toml:6:18: expected a top-level item to end with a newline, comment, or EOF, but got 'k' instead`},
	} {
		_, _, err := Parse([]byte(tc.text), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\ngot:  %v\nwant: %s", strings.SplitN(tc.text, "\n", 3)[:2], err, tc.want)
		}
	}
}

// A health.timeout or connect_budget the file sets itself is not "the
// default": a file with interval = "1s" and timeout = "2s" was told its
// own timeout was the default, and one that set only connect_timeout =
// "30s" was not told that the 20s connect_budget it met was.
func TestOnlyADefaultValueIsCalledTheDefault(t *testing.T) {
	for _, tc := range []struct{ backend, want string }{
		{"  [backend.health]\n  interval = \"1s\"\n  timeout = \"2s\"", `f.toml: backend "orders": health.timeout (2s) must be > 0 and at most health.interval (1s) (line 10)`},
		{"  [backend.health]\n  interval = \"1s\"", `f.toml: backend "orders": health.timeout (2s, the default) must be > 0 and at most health.interval (1s) (line 8)`},
		{"connect_timeout = \"30s\"", `f.toml: backend "orders": connect_budget (20s, the default) must be at least connect_timeout (30s) (line 6)`},
		{"connect_timeout = \"30s\"\nconnect_budget = \"20s\"", `f.toml: backend "orders": connect_budget (20s) must be at least connect_timeout (30s) (line 9)`},
	} {
		text := strings.Replace(minimal, "name = \"orders\"\n  [[backend.server]]", "name = \"orders\"\n"+tc.backend+"\n  [[backend.server]]", 1)
		_, _, err := Parse([]byte(text), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\ngot:  %v\nwant: %s", tc.backend, err, tc.want)
		}
	}
}

// A file in Latin-1 (a comment with "café" saved by an older editor) has
// bytes that are not UTF-8: the library places the error at the start of
// the token they are in (a comment's '#', 1:2 for "# caf\xe9"), not at
// the byte, and says nothing of the fix.
func TestInvalidUTF8NamesItsByte(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"# caf\xe9\n" + minimal, `f.toml:1:6: invalid UTF-8 byte: 0xe9 (TOML files must be UTF-8: save the file as UTF-8)`},
		{strings.Replace(minimal, `name = "orders"`, "name = \"ord\xe9rs\"", 1), `f.toml:3:12: invalid UTF-8 byte: 0xe9 (TOML files must be UTF-8: save the file as UTF-8)`},
		{"\ufeff" + strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\" # \xff\xfe", 1), `f.toml:5:22: invalid UTF-8 byte: 0xff (TOML files must be UTF-8: save the file as UTF-8)`},
	} {
		_, _, err := Parse([]byte(tc.text), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\ngot:  %v\nwant: %s", tc.text[:12], err, tc.want)
		}
	}
}

// A key written in another table than its own, not only the one above it,
// names its table: a listener's key in a [[backend]] (max_sessions,
// allow), a backend's in a [[listener]] (connect_timeout), a [log] key in
// [admin], a keepalive key in [backend.health]: homeTable looked only in
// the tables below the key's own.
func TestKeyInAnotherTableNamesItsTable(t *testing.T) {
	text := "[admin]\nlevel = \"debug\"\n" + strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nconnect_timeout = \"3s\"\n  [listener.health]\n  check = \"off\"\n  interval = \"1s\"", 1)
	text = strings.Replace(text, "name = \"orders\"\n  [[", "name = \"orders\"\nmax_sessions = 4\nallow = [\"10.0.0.0/8\"]\n  [backend.health]\n  idle = \"30s\"\n  [[", 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:2:1: unknown key "admin.level" (it belongs in [log])`,
		`f.toml:8:1: unknown key "listener.connect_timeout" (it belongs in [[backend]])`,
		`f.toml:9:3: unknown key "listener.health" (it belongs in [[backend]])`,
		`f.toml:14:1: unknown key "backend.max_sessions" (it belongs in [[listener]])`,
		`f.toml:15:1: unknown key "backend.allow" (it belongs in [admin] or [[listener]])`,
		`f.toml:17:3: unknown key "backend.health.idle" (it belongs in [backend.keepalive])`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// An unknown table is one error, at its header: each key in it was
// reported after it too (a misspelled [backend.keepalvie] of three keys
// gave four errors, the last three no help), for a table inside it as well.
func TestUnknownTableIsOneError(t *testing.T) {
	text := minimal + "  [backend.keepalvie]\n  idle = \"30s\"\n  count = 3\n" +
		"[[backnd]]\nname = \"b\"\n  [backnd.health]\n  check = \"off\"\n  [[backnd.server]]\n  address = \"127.0.0.1:1\"\n" +
		"[bogus.sub]\nx = 1\n"
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:10:3: unknown key "backend.keepalvie" (did you mean "keepalive"?)`,
		`f.toml:13:1: unknown key "backnd" (did you mean "backend"?)`,
		`f.toml:19:1: unknown key "bogus"`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A [[backend.server]] without an address was reported as `server "":
// address: "" is not host:port` at its backend's header: with several
// servers, the user had to find which. It is named by its place and
// reported at its own header (or its address key when written empty).
func TestServerWithoutAddressNamesItsLine(t *testing.T) {
	text := minimal + "  [[backend.server]]\n  priority = 1\n  weight = -1\n  [[backend.server]]\n  address = \"\"\n"
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml: backend "orders": server #2: address is empty: give the database's HOST:PORT (line 10)`,
		`f.toml: backend "orders": server #2: weight must not be negative (line 12)`,
		`f.toml: backend "orders": server #3: address is empty: give the database's HOST:PORT (line 14)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// The same for servers written inline (`server = [{...}, {...}]`): they
// have no header, so the message is placed at the backend's `server` key,
// as locate.go's comment says, not at the [[backend]] header two lines
// above it.
func TestInlineServerWithoutAddressNamesTheServerKey(t *testing.T) {
	text := "[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n" +
		"[[backend]]\nname = \"orders\"\nconnect_timeout = \"1s\"\nserver = [ { address = \"127.0.0.1:1521\" }, { weight = 2 } ]\n"
	_, _, err := Parse([]byte(text), "f.toml")
	want := `f.toml: backend "orders": server #2: address is empty: give the database's HOST:PORT (line 8)`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// admin.listen = "" (as if to turn the admin listener off, which cannot
// be done) passed check and listened on 127.0.0.1:9521. Left out, it is
// that default.
func TestEmptyAdminListenIsAnError(t *testing.T) {
	_, _, err := Parse([]byte("[admin]\nlisten = \"\"\n"+minimal), "f.toml")
	want := `f.toml: admin: listen is empty: the admin listener cannot be turned off; give HOST:PORT, or leave the key out for 127.0.0.1:9521 (line 2)`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	c, _, err := Parse([]byte("[admin]\nallow = []\n"+minimal), "f.toml")
	if err != nil || c.Admin.Listen != DefaultAdminListen {
		t.Fatalf("left out: %v, %+v", err, c)
	}
}

// A value of the wrong type hid every error of meaning, in every table:
// check showed the type errors, and the undefined backend, the bad address
// and the level "loud" only on the next run, one round trip (a CI job, a
// ConfigMap rollout) per kind of error. The tables and keys that decoded
// are checked in the same run; a key that did not decode is not, nor is a
// check that needs it (connect_budget against a connect_timeout of "3",
// health.timeout against an interval of 5).
func TestTypeErrorsDoNotHideMeaningErrors(t *testing.T) {
	text := `[log]
level = "loud"
[admin]
listen = "127.0.0.1"
[[listener]]
name         = "orders"
listen       = "127.0.0.1:1522"
backend      = "nosuch"
max_sessions = "ten"
[[listener]]
name    = "sales"
listen  = "127.0.0.1:1523"
backend = "orders"
[[backend]]
name            = "orders"
balance         = "random"
connect_timeout = "3"
connect_budget  = "1s"
  [backend.health]
  interval = 5
  timeout  = "10s"
  [[backend.server]]
  address = "10.0.0.256:1521"
  weight  = 0
  [[backend.server]]
  address = "10.0.0.2:1521"
  weight  = "x"
`
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:9:1: key "listener.max_sessions": a string given where an integer is needed`,
		`f.toml:17:20: key "backend.connect_timeout": bad duration "3": use a Go duration such as "30s" or "5m"`,
		`f.toml:20:14: key "backend.health.interval": bad duration "5": use a Go duration such as "30s" or "5m"`,
		`f.toml:27:3: key "backend.server.weight": a string given where an integer is needed`,
		`f.toml: log: level "loud" is not one of trace, debug, info, warn, error (line 2)`,
		`f.toml: admin: listen: "127.0.0.1" is not host:port (line 4)`,
		`f.toml: backend "orders": balance "random" is not one of priority, round_robin, least_sessions (line 16)`,
		`f.toml: backend "orders": server "10.0.0.256:1521": address: "10.0.0.256:1521": "10.0.0.256" is not an IP address (line 23)`,
		`f.toml: listener "orders": backend "nosuch" is not defined (line 8)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A key or table that did not decode is left out of the checks of meaning,
// and so is every check that reads it: a name, listen or level given a
// number, a keepalive or server given a string, a retry_on that is no
// array, drew no second, made-up error ("name is empty", `listen: "" is
// not host:port`, `backend "orders" is not defined`, "no
// [[backend.server]] is defined") nor a warning. What the other keys of
// the same tables say is still checked (idle = "500ms").
func TestKeysThatDidNotDecodeAreNotCheckedAgain(t *testing.T) {
	text := `[log]
level = 3
[[listener]]
name    = "orders"
listen  = 1522
backend = "orders"
  [listener.keepalive]
  idle  = "500ms"
  count = "4"
[[backend]]
name   = 5
server = "127.0.0.1:1521"
[[backend]]
name      = "b"
keepalive = "60s"
retry_on  = "refuse"
  [backend.health]
  check = "tnsping"
  [[backend.server]]
  address = "127.0.0.1:1524"
  [[backend.server]]
  address = "127.0.0.1:1525"
`
	_, warnings, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:2:1: key "log.level": an integer given where a string is needed`,
		`f.toml:5:1: key "listener.listen": an integer given where a string is needed`,
		`f.toml:9:3: key "listener.keepalive.count": a string given where an integer is needed`,
		`f.toml:11:1: key "backend.name": an integer given where a string is needed`,
		`f.toml:12:1: key "backend.server": a string given where an array is needed`,
		`f.toml:15:1: key "backend.keepalive": a string given where a table is needed`,
		`f.toml:16:1: key "backend.retry_on": a string given where an array is needed`,
		`f.toml: listener "orders": keepalive.idle 500ms: the kernel counts keepalive in whole seconds; use at least 1s, or 0s to turn keepalive off (line 8)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings about keys that did not decode:\n%s", strings.Join(warnings, "\n"))
	}
	// The keepalive keys a path_idle_timeout of the wrong type would have
	// derived are not checked; those the file wrote are.
	text = strings.Replace(minimal, `name = "orders"
  [[backend.server]]`, `name = "orders"
  [backend.keepalive]
  path_idle_timeout = 300
  user_timeout = "1us"
  [[backend.server]]`, 1)
	_, _, err = Parse([]byte(text), "f.toml")
	want = strings.Join([]string{
		`f.toml:9:23: key "backend.keepalive.path_idle_timeout": bad duration "300": use a Go duration such as "30s" or "5m"`,
		`f.toml: backend "orders": keepalive.user_timeout 1µs: the kernel counts whole milliseconds; use at least 1ms, or 0s for the kernel's default (line 10)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// An empty string written for a key of a few values (a templating
// variable that expanded to nothing) silently meant the key's default:
// proxy_protocol = "" turned PROXY off, health.check = "" checked over
// TCP. It is an error naming the key, its line and its values, in each
// table that writes it (the second [[backend]] only, here), written
// inline or dotted too; a key left out keeps its default.
func TestEmptyStringIsAnError(t *testing.T) {
	text := `[log]
level  = ""
format = ""
[[listener]]
name           = "orders"
listen         = "127.0.0.1:1522"
backend        = "orders"
proxy_protocol = ""
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
[[backend]]
name                = "b"
balance             = ""
redirect            = ""
send_proxy_protocol = ""
health.check        = ""
  [[backend.server]]
  address = "127.0.0.1:1524"
[[backend]]
name   = "c"
health = { check = "" }
  [[backend.server]]
  address = "127.0.0.1:1525"
`
	_, warnings, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml: log: level is empty: give one of trace, debug, info, warn, error, or leave the key out for "info" (line 2)`,
		`f.toml: log: format is empty: give one of text, json, or leave the key out for "text" (line 3)`,
		`f.toml: backend "b": balance is empty: give one of priority, round_robin, least_sessions, or leave the key out for "priority" (line 15)`,
		`f.toml: backend "b": send_proxy_protocol is empty: give one of off, v1, v2, or leave the key out for "off" (line 17)`,
		`f.toml: backend "b": redirect is empty: give one of pass, follow, or leave the key out for "pass" (line 16)`,
		`f.toml: backend "b": health.check is empty: give one of tcp, tnsping, off, or leave the key out for "tcp" (line 18)`,
		`f.toml: backend "c": health.check is empty: give one of tcp, tnsping, off, or leave the key out for "tcp" (line 23)`,
		`f.toml: listener "orders": proxy_protocol is empty: give one of off, optional, required, or leave the key out for "off" (line 8)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings:\n%s", strings.Join(warnings, "\n"))
	}
	c, _, err := Parse([]byte(minimal), "f.toml")
	if err != nil {
		t.Fatal(err)
	}
	l, b := c.Listeners[0], c.Backends[0]
	if got := []string{c.Log.Level, c.Log.Format, l.ProxyProtocol, b.Balance, b.Redirect, b.SendProxyProtocol, b.Health.Check}; !slices.Equal(got, []string{"info", "text", "off", "priority", "pass", "off", "tcp"}) {
		t.Errorf("left out: %q", got)
	}
}

// A listener's backend and routes are checked each on its own: routes of
// the wrong type hid that backend = "nosuch" is not defined, a backend of
// the wrong type hid that a route's backend dials the listener's own
// address, and services of the wrong type hid that routes need a larger
// replay_bytes; and a listener whose name did not decode was named "" in
// another's error (`is also used by listener ""`), where every other
// message names it by its place.
func TestListenerBackendAndRoutesAreCheckedApart(t *testing.T) {
	text := `[[listener]]
name    = "orders"
listen  = "127.0.0.1:1522"
backend = "nosuch"
routes  = 5
[[listener]]
name    = "sales"
listen  = "127.0.0.1:1523"
backend = 7
routes  = { SALES = "loop" }
[[listener]]
name    = 3
listen  = "127.0.0.1:1524"
backend = "loop"
[[listener]]
name    = "hr"
listen  = "127.0.0.1:1524"
backend = "loop"
[[listener]]
name     = "routed"
listen   = "127.0.0.1:1525"
routes   = { "*" = "small" }
services = "SALES"
[[backend]]
name = "loop"
  [[backend.server]]
  address = "127.0.0.1:1523"
[[backend]]
name         = "small"
replay_bytes = 0
  [[backend.server]]
  address = "127.0.0.1:1"
`
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:5:11: routes must be a table of SERVICE = "backend", such as routes = { "SALES" = "sales" }, not an integer`,
		`f.toml:9:1: key "listener.backend": an integer given where a string is needed`,
		`f.toml:12:1: key "listener.name": an integer given where a string is needed`,
		`f.toml:23:1: key "listener.services": a string given where an array is needed`,
		`f.toml: listener "orders": backend "nosuch" is not defined (line 4)`,
		`f.toml: listener "sales": listen "127.0.0.1:1523" is server "127.0.0.1:1523" of backend "loop": each session would dial the listener again, until the fds run out (line 8)`,
		`f.toml: listener "hr": listen "127.0.0.1:1524" is also used by listener #3 (line 17)`,
		`f.toml: listener "routed": routes need the app's CONNECT, and backend "small" holds an opening only up to replay_bytes 0: use at least 8192 (line 22)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// Timeouts too short for anything to finish in passed check:
// connect_timeout = "1ns" timed out every dial (each app reset after
// connect_budget), health.timeout = "1ns" every check (every server down),
// and proxy_header_timeout = "1ns" every balancer's header. Each is
// refused at its own line; the floor itself passes.
func TestTinyTimeoutsAreRefused(t *testing.T) {
	text := `[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
proxy_protocol = "required"
trusted_proxies = ["10.0.0.0/8"]
proxy_header_timeout = "1ns"
idle_timeout = "500ms"
[[backend]]
name = "orders"
connect_timeout = "1ns"
  [backend.health]
  timeout = "999us"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml: backend "orders": connect_timeout 1ns is under 1ms: dials that short time out before a database can answer, and sessions would find no server (line 11)`,
		`f.toml: backend "orders": health.timeout 999µs is under 1ms: checks that short time out before a database can answer, and its servers would count as down (line 13)`,
		`f.toml: listener "orders": proxy_header_timeout 1ns is under 1ms: waits that short end before a balancer's header arrives, and its connections would be closed (line 7)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	floors := strings.NewReplacer(`"1ns"`, `"1ms"`, `"999us"`, `"1ms"`).Replace(text)
	_, warnings, err := Parse([]byte(floors), "f.toml")
	if err != nil {
		t.Fatalf("the floors themselves: %v", err)
	}
	// An idle_timeout under the once-a-second look does what it says, up
	// to a second late: a warning, not an error.
	if got, want := strings.Join(warnings, "\n"), `f.toml: listener "orders": idle_timeout 500ms is under 1s: sessions are looked at once a second, so each session that has moved no byte for 500ms at a look is reset then (a pool's idle sessions within a second); use 1s or more, or 0s for never (line 8)`; got != want {
		t.Errorf("warnings:\n%s\nwant:\n%s", got, want)
	}
	for _, idle := range []string{`"1s"`, `"0s"`} { // 0s is never, as before
		_, warnings, err := Parse([]byte(strings.Replace(floors, `"500ms"`, idle, 1)), "f.toml")
		if err != nil || len(warnings) > 0 {
			t.Errorf("idle_timeout %s: %v %q", idle, err, warnings)
		}
	}
}

// breaker.open_for = "1ns" loaded without a word. With health checks off,
// open_for is how long a server whose dial failed goes after the others,
// and nothing else keeps sessions off it: with a filtered server first,
// failures = 0 and connect_timeout 1s, every session (293 of 293, one every
// 50 ms) waited 1s on it, against one in seven with "10s". It still serves
// every session, so it is a warning, at the line of open_for; with checks
// on (they mark the server down) or open_for of connect_timeout or more,
// nothing is said.
func TestBreakerOpenForUnderConnectTimeoutWithChecksOffWarns(t *testing.T) {
	text := `[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
connect_timeout = "1s"
  [backend.health]
  check = "CHECK"
  [backend.breaker]
  failures = 0
  open_for = "OPEN"
  [[backend.server]]
  address = "10.0.0.1:1521"
`
	for _, tc := range []struct {
		check, open string
		want        string
	}{
		{"off", "1ns", `w.toml: backend "orders": breaker.open_for 1ns is shorter than connect_timeout (1s): with health.check = "off" a server whose dial failed goes after the others only for open_for, so sessions dial a server that is down again before a dial to it can time out, and most of them wait connect_timeout on it (line 12)`},
		{"off", "999ms", `w.toml: backend "orders": breaker.open_for 999ms is shorter than connect_timeout (1s): with health.check = "off" a server whose dial failed goes after the others only for open_for, so sessions dial a server that is down again before a dial to it can time out, and most of them wait connect_timeout on it (line 12)`},
		{"off", "1s", ""},
		{"tcp", "1ns", ""},
	} {
		_, warnings, err := Parse([]byte(strings.NewReplacer("CHECK", tc.check, "OPEN", tc.open).Replace(text)), "w.toml")
		if err != nil {
			t.Fatalf("check %s, open_for %s: %v", tc.check, tc.open, err)
		}
		if got := strings.Join(warnings, "\n"); got != tc.want {
			t.Errorf("check %s, open_for %s: got:\n%s\nwant:\n%s", tc.check, tc.open, got, tc.want)
		}
	}
}

// A user_timeout under the kernel's shortest retransmission timeout
// (200ms) passed without a word, on a leg with keepalive off too: the
// kernel looks at it only when a retransmission times out, so "1ms" gave
// up 0.22 to 0.5 s into a cut, not at the value written, and lost segments
// ended healthy sessions: all 10 of "1ms" with 50 ms RTT, one in 10 of
// "1ms" to "100ms" on a LAN, none of "200ms" (TestLabUserTimeoutUnderTheRTO).
// A LAN user may still want it: a warning at its line, not an error; 200ms
// and up, and 0s (the kernel's default), say nothing of it.
func TestUserTimeoutUnderTheKernelsRTOWarns(t *testing.T) {
	text := `[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
  [listener.keepalive]
  idle = "0s"
  user_timeout = "UT"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	for _, tc := range []struct {
		user string
		want string
	}{
		{"1ms", `w.toml: listener "orders": keepalive.user_timeout 1ms is under the kernel's shortest retransmission timeout (200ms): the kernel looks at it only when a retransmission times out, so a cut ends sessions some 0.2 to 0.7 s in, not after 1ms, while a lost segment whose retransmission is not acknowledged within 1ms ends a healthy one (line 7)`},
		{"199ms", `w.toml: listener "orders": keepalive.user_timeout 199ms is under the kernel's shortest retransmission timeout (200ms): the kernel looks at it only when a retransmission times out, so a cut ends sessions some 0.2 to 0.7 s in, not after 199ms, while a lost segment whose retransmission is not acknowledged within 199ms ends a healthy one (line 7)`},
		{"200ms", ""},
		{"0s", ""},
	} {
		_, warnings, err := Parse([]byte(strings.Replace(text, "UT", tc.user, 1)), "w.toml")
		if err != nil {
			t.Fatalf("user_timeout %s: %v", tc.user, err)
		}
		if got := strings.Join(warnings, "\n"); got != tc.want {
			t.Errorf("user_timeout %s: got:\n%s\nwant:\n%s", tc.user, got, tc.want)
		}
	}
}

// The kernel takes keepalive idle and interval in whole seconds, rounded
// up ("1.5s" is 2s), and the warnings reckoned with the values as written:
// a user_timeout of 5s after idle 1.5s, interval 1.5s, count 2 passed
// (4.5s) while the last probe left at 6s, and an idle of 9.5s passed as
// below a path_idle_timeout of 10s. A user_timeout derived from
// path_idle_timeout covers the kernel's span too.
func TestKeepaliveWarningsUseTheKernelsWholeSeconds(t *testing.T) {
	text := `[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
  [listener.keepalive]
  idle = "1.5s"
  interval = "1.5s"
  count = 2
  user_timeout = "5s"
[[backend]]
name = "orders"
  [backend.keepalive]
  path_idle_timeout = "10s"
  idle = "9.5s"
  [[backend.server]]
  address = "127.0.0.1:1521"
`
	c, warnings, err := Parse([]byte(text), "w.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		`w.toml: backend "orders": keepalive.idle 9.5s (10s: the kernel counts whole seconds, rounded up) is not below path_idle_timeout 10s: the path forgets idle sessions before the first probe (line 14)`,
		`w.toml: listener "orders": keepalive.user_timeout 5s is shorter than idle + interval*count (6s, of idle 2s and interval 2s: the kernel counts whole seconds, rounded up): it cuts keepalive short (line 9)`,
	}, "\n")
	if got := strings.Join(warnings, "\n"); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// idle 9.5s (10s) + interval 1s (10s/9, in whole seconds) * count 3
	if got := c.Backends[0].Keepalive.UserTimeout.Duration; got != 13*time.Second {
		t.Errorf("derived user_timeout %v, want 13s: the last probe leaves at 10s + 1s*3", got)
	}
	// Whole seconds as written: no note about rounding.
	exact := strings.NewReplacer(`"1.5s"`, `"2s"`, `"9.5s"`, `"10s"`).Replace(text)
	_, warnings, _ = Parse([]byte(exact), "w.toml")
	if got := strings.Join(warnings, "\n"); strings.Contains(got, "rounded") || len(warnings) != 2 {
		t.Errorf("whole seconds: got:\n%s", got)
	}
}

// A key in the wrong case with a value of the wrong type (Max_Sessions =
// "ten") was two errors on one line, the type error and the case; it is
// one that says both. A table in the wrong case whose key did not decode
// said only `unknown key "listener.Keepalive"`, without the case.
func TestWrongCaseKeyWithAWrongValueIsOneError(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nMax_Sessions = \"ten\"\nIdle_Timeout = \"30\"\n  [listener.Keepalive]\n  idle = \"60s\"\n  count = \"4\"", 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:6:1: unknown key "listener.Max_Sessions": keys are lower case ("max_sessions"), and its value is wrong too: a string given where an integer is needed`,
		`f.toml:7:1: unknown key "listener.Idle_Timeout": keys are lower case ("idle_timeout"), and its value is wrong too: bad duration "30": use a Go duration such as "30s" or "5m"`,
		`f.toml:10:3: key "listener.Keepalive.count": a string given where an integer is needed`,
		`f.toml:8:3: unknown key "listener.Keepalive": keys are lower case ("keepalive")`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// An unknown table is one error at its first line however it is written:
// as a [table], inline, or as dotted keys, where each dotted key was an
// error of its own with no "did you mean".
func TestUnknownTableIsOneErrorHoweverWritten(t *testing.T) {
	for _, tc := range []struct{ table, want string }{
		{"  [backend.helth]\n  check = \"tcp\"\n  rise = 2\n", `f.toml:9:3: unknown key "backend.helth" (did you mean "health"?)`},
		{"helth = { check = \"tcp\", rise = 2 }\n", `f.toml:9:1: unknown key "backend.helth" (did you mean "health"?)`},
		{"helth.check = \"tcp\"\nhelth.rise = 2\n", `f.toml:9:1: unknown key "backend.helth" (did you mean "health"?)`},
		{"helth.check = \"tcp\"\n  [backend.helth.sub]\n  rise = 2\n", `f.toml:9:1: unknown key "backend.helth" (did you mean "health"?)`},
	} {
		// after the backend's name, before its [[backend.server]]
		text := strings.Replace(minimal, "name = \"orders\"\n  [[", "name = \"orders\"\nconnect_timeout = \"1s\"\n"+tc.table+"  [[", 1)
		_, _, err := Parse([]byte(text), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got:\n%v\nwant:\n%s", tc.table, err, tc.want)
		}
	}
}

// A top-level table in the right case beside its twin in the wrong case
// (log.format and LOG.level): the library decodes both into one field, the
// one it meets last in map order, and leaves the other's keys undecoded, so
// check said `unknown key "log.format"` for a right key in some runs (11 in
// 12 here) and not in others. The wrong case is the error, every time.
func TestRightTableBesideItsWrongCaseTwinIsOneError(t *testing.T) {
	for _, tc := range []struct{ top, want string }{
		{"log.format = \"json\"\nLOG.level = \"info\"\n", `f.toml:2:1: unknown key "LOG": keys are lower case ("log")`},
		{"LOG.level = \"info\"\n[log]\nformat = \"json\"\n", `f.toml:1:1: unknown key "LOG": keys are lower case ("log")`},
	} {
		for range 40 { // map order differs from run to run
			_, _, err := Parse([]byte(tc.top+minimal), "f.toml")
			if err == nil || err.Error() != tc.want {
				t.Fatalf("%q: got:\n%v\nwant:\n%s", tc.top, err, tc.want)
			}
		}
	}
}

// A dotted key one part too long (log.level.x = "info", LOG.level.x) makes
// a table where a value is needed, and the library's error for it has no
// line: it said 1:1 and Go's types ("TOML value has type map[string]any;
// destination has type string"), at the top as in a [[listener]]. It names
// the key's line and the types in TOML's words, as for level = 3.
func TestDottedKeyMakingATableWhereAValueIsNeededNamesItsLine(t *testing.T) {
	for _, tc := range []struct{ top, want string }{
		{"# tnsguard\n\nlog.level.x = \"info\"\n", `f.toml:3:1: key "log.level": a table given where a string is needed`},
		{"# tnsguard\n\nLOG.level.x = \"info\"\n", "f.toml:3:1: key \"LOG.level\": a table given where a string is needed\nf.toml:3:1: unknown key \"LOG\": keys are lower case (\"log\")"},
	} {
		_, _, err := Parse([]byte(tc.top+minimal), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got:\n%v\nwant:\n%s", tc.top, err, tc.want)
		}
	}
	text := strings.Replace(minimal, `backend = "orders"`, "backend = \"orders\"\nkeepalive.idle.x = \"5s\"", 1)
	want := `f.toml:6:11: key "listener.keepalive.idle": a table given where a duration such as "30s" is needed`
	if _, _, err := Parse([]byte(text), "f.toml"); err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

// A table written inline or dotted at the top (admin = {listen = ""}) has
// no header: its errors of meaning had no line.
func TestInlineTableErrorNamesItsLine(t *testing.T) {
	for _, tc := range []struct{ top, want string }{
		{"admin = {listen = \"\"}\n", `f.toml: admin: listen is empty: the admin listener cannot be turned off; give HOST:PORT, or leave the key out for 127.0.0.1:9521 (line 1)`},
		// over two lines: the key's own (locateKey follows an inline
		// table onto its later lines, TestKeysOfAnInlineTableOverSeveralLines)
		{"# tnsguard\nadmin = { allow = [\"10.0.0.0/8\"],\n  listen = \"\" }\n", `f.toml: admin: listen is empty: the admin listener cannot be turned off; give HOST:PORT, or leave the key out for 127.0.0.1:9521 (line 3)`},
		{"log.format = \"text\"\nlog.level = \"loud\"\n", `f.toml: log: level "loud" is not one of trace, debug, info, warn, error (line 2)`},
		{"reload = { watch = \"10ms\" }\n", `f.toml: reload: watch "10ms" is under 1s: reading the file more often finds no change sooner than a person or kubelet makes it; use 0s (off) or 1s and up (line 1)`},
	} {
		_, _, err := Parse([]byte(tc.top+minimal), "f.toml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got:\n%v\nwant:\n%s", tc.top, err, tc.want)
		}
	}
}

// An inline table may go on over several lines (TOML 1.1). The keys of its
// later lines were looked for as keys of the table it is in, found
// nowhere, and put at 1:1: a misspelled or wrong-case key there, and an
// unknown table in it, named the file's first line, and a wrong-case key
// of the wrong type stayed two errors (the type error had its line). Each
// names its own line; the keys after the inline table are found as before.
func TestKeysOfAnInlineTableOverSeveralLines(t *testing.T) {
	text := strings.Replace(minimal, `backend = "orders"`, `backend = "orders"
keepalive = { idle = "60s",
  idel = "1s",
  Count = "4", interval = {
    a = 1 },
  helth.check = "tcp"
}
Max_Sessions = 10`, 1)
	_, _, err := Parse([]byte(text), "f.toml")
	want := strings.Join([]string{
		`f.toml:8:3: unknown key "listener.keepalive.Count": keys are lower case ("count"), and its value is wrong too: a string given where an integer is needed`,
		`f.toml:8:16: key "listener.keepalive.interval": a table given where a duration such as "30s" is needed`,
		`f.toml:7:3: unknown key "listener.keepalive.idel" (did you mean "idle"?)`,
		`f.toml:10:3: unknown key "listener.keepalive.helth"`,
		`f.toml:12:1: unknown key "listener.Max_Sessions": keys are lower case ("max_sessions")`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	// A value of the wrong type on a later line was put at the line of
	// another listener's key of that name (the library's line, 12).
	text = strings.Replace(minimal, `backend = "orders"`, `backend = "orders"
keepalive = { idle = "60s",
  interval = 30 }
[[listener]]
name = "other"
listen = "127.0.0.1:1523"
backend = "orders"
keepalive = { interval = "10s" }`, 1)
	_, _, err = Parse([]byte(text), "f.toml")
	want = `f.toml:7:14: key "listener.keepalive.interval": bad duration "30": use a Go duration such as "30s" or "5m"`
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
	// An array of inline tables (server = [{...}]), one of them on a later
	// line.
	text = strings.Replace(minimal, "  [[backend.server]]\n  address = \"127.0.0.1:1521\"", `server = [{ address = "127.0.0.1:1521", Weight = "x" },
  { address = "127.0.0.1:1531", helth.check = "tcp" }]`, 1)
	_, _, err = Parse([]byte(text), "f.toml")
	want = strings.Join([]string{
		`f.toml:8:41: unknown key "backend.server.Weight": keys are lower case ("weight"), and its value is wrong too: a string given where an integer is needed`,
		`f.toml:9:33: unknown key "backend.server.helth"`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

// The database leg's user_timeout, when not written, follows the probes
// written: an operator who raises idle to 60s (as the app side's default)
// gets 90s, the span of the probes, not the default 60s that gave up
// before the last probe and warned, at check and at every reload, of a
// "keepalive.user_timeout 1m0s" the config did not have (until
// 2026-12-01). Written values, the defaults (60s) and the app side's 0 are
// unchanged; the kernel's ceiling caps the span (and check says it cuts
// such probes short).
func TestBackendUserTimeoutFollowsTheProbesWritten(t *testing.T) {
	for _, tc := range []struct {
		name, keepalive string
		want            time.Duration
	}{
		{"defaults", "", time.Minute},
		{"idle raised", `idle = "60s"`, 90 * time.Second},
		{"idle lowered", `idle = "10s"`, 40 * time.Second},
		{"interval and count", "interval = \"1.5s\"\n  count = 5", 40 * time.Second}, // the kernel's 2s
		{"written wins", "idle = \"60s\"\n  user_timeout = \"2m\"", 2 * time.Minute},
		{"keepalive off", `idle = "0s"`, time.Minute},
		{"the kernel's ceiling", "idle = \"9h\"\n  interval = \"9h\"\n  count = 127", keepalive.MaxUserTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := strings.Replace(minimal, `name = "orders"
  [[`, "name = \"orders\"\n  [backend.keepalive]\n  "+tc.keepalive+"\n  [[", 1)
			cfg, warnings, err := Parse([]byte(text+"[listener.keepalive]\nidle = \"10s\"\n"), "k.toml")
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 && tc.want != keepalive.MaxUserTimeout { // there the kernel does cut the probes short, as the warning says
				t.Errorf("warnings: %q", warnings)
			}
			if got := cfg.Backends[0].Keepalive.UserTimeout.Duration; got != tc.want {
				t.Errorf("backend user_timeout = %v, want %v", got, tc.want)
			}
			if got := cfg.Listeners[0].Keepalive.UserTimeout.Duration; got != 0 {
				t.Errorf("listener user_timeout = %v, want 0 (off, its default)", got)
			}
		})
	}
}
