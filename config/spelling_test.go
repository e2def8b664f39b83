package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Valid configs as users write them, each spelled several ways that TOML
// makes the same: tables, inline tables, dotted keys, tables in any order,
// arrays of inline tables, quoted keys, literal strings, comments and
// whitespace anywhere, underscores in integers, a BOM. Parse decodes a
// table at a time (toml.Primitive): every spelling must still parse, to
// the same Config, with the same warnings, and with CRLF line ends too.
// Found by a differential test of Parse before and after that change,
// which agreed on all of these.
var spellings = []struct {
	name  string
	texts []string
	want  func(c *Config) bool // what every spelling means
}{
	{"listener keepalive", []string{
		// tables spelled out
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
  [listener.keepalive]
  idle = "5s"
  interval = "2s"
  count = 3
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`,
		// inline table
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
keepalive = { idle = "5s", interval = "2s", count = 3 }
[[backend]]
name = "orders"
server = [{ address = "127.0.0.1:1521" }]
`,
		// dotted keys
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
keepalive.idle = "5s"
keepalive.interval = "2s"
keepalive.count = 3
[[backend]]
name = "orders"
[[backend.server]]
address = "127.0.0.1:1521"
`,
		// [[backend]] before [[listener]], quoted keys, literal strings
		`[[backend]]
"name" = 'orders'
  [[backend.server]]
  'address' = '127.0.0.1:1521'

[[listener]]
"name" = 'orders'
listen = '127.0.0.1:1522'
"backend" = "orders"
"keepalive" = { "idle" = '5s', interval = "2s", 'count' = 3 }
`,
		// the listener's subtable after the [[backend]]: it extends the last [[listener]]
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
[listener.keepalive]
idle = "5s"
interval = "2s"
count = 3
`,
		// top-level arrays of inline tables
		`listener = [
  { name = "orders", listen = "127.0.0.1:1522", backend = "orders", keepalive = { idle = "5s", interval = "2s", count = 3 } },
]
backend = [{ name = "orders", server = [{ address = "127.0.0.1:1521" }] }]
`,
		// comments everywhere, trailing whitespace, tabs
		`# tnsguard   
[[listener]]   # the app side	
name = "orders"   # name	 
	listen = "127.0.0.1:1522" # where apps connect
backend = "orders"#no space
  [listener.keepalive] # app leg
  # idle = "1s"
  idle = "5s"      
  interval = "2s"	
  count = 3 # probes
[[backend]] # db
name = "orders"
  [[backend.server]]   
  address = "127.0.0.1:1521"   # primary
# end
`,
		// a UTF-8 BOM
		"\ufeff[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[listener.keepalive]\nidle = \"5s\"\ninterval = \"2s\"\ncount = 3\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
		// whitespace around dots and equals
		`[[ listener ]]
name="orders"
listen   =   "127.0.0.1:1522"
backend="orders"
keepalive . idle = "5s"
keepalive. interval="2s"
keepalive .count=3
[[ backend ]]
name="orders"
[[ backend . server ]]
address="127.0.0.1:1521"
`,
	}, func(c *Config) bool {
		k := c.Listeners[0].Keepalive
		return len(c.Listeners) == 1 && c.Listeners[0].Name == "orders" && k.Idle.Duration == 5*time.Second && k.Interval.Duration == 2*time.Second && *k.Count == 3 &&
			len(c.Backends) == 1 && c.Backends[0].Servers[0].Address == "127.0.0.1:1521"
	}},
	{"backend in full", []string{
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"

[[backend]]
name = "orders"
balance = "round_robin"
connect_timeout = "2s"
connect_budget = "15s"
backoff = "200ms"
backoff_max = "3s"
retry_on = ["connect", "reset", "refuse"]
refuse_errors = [12514, 12505]
replay_bytes = 32768
send_proxy_protocol = "v2"
  [backend.keepalive]
  path_idle_timeout = "5m"
  [backend.health]
  check = "tnsping"
  interval = "3s"
  timeout = "1s"
  rise = 1
  fall = 2
  service = "ORDERS"
  service_interval = "1m"
  [backend.breaker]
  failures = 4
  open_for = "5s"
  max_open_for = "2m"
  [[backend.server]]
  address = "10.0.0.1:1521"
  priority = 0
  weight = 2
  [[backend.server]]
  address = "10.0.0.2:1521"
  priority = 1
`,
		// subtables after the servers, multi-line arrays, underscores
		`[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"

[[backend]]
name = "orders"
balance = "round_robin"
connect_timeout = "2s"
connect_budget = "15s"
backoff = "200ms"
backoff_max = "3s"
retry_on = [
  "connect",
  "reset",
  "refuse",   # trailing comma
]
refuse_errors = [
  12_514,
  12_505,
]
replay_bytes = 32_768
send_proxy_protocol = "v2"
  [[backend.server]]
  address = "10.0.0.1:1521"
  priority = 0
  weight = 2
  [[backend.server]]
  address = "10.0.0.2:1521"
  priority = 1
  [backend.breaker]
  failures = 4
  open_for = "5s"
  max_open_for = "2m"
  [backend.health]
  check = "tnsping"
  interval = "3s"
  timeout = "1s"
  rise = 1
  fall = 2
  service = "ORDERS"
  service_interval = "1m"
  [backend.keepalive]
  path_idle_timeout = "5m"
`,
		// dotted and inline, servers as an inline array of tables, backend first
		`[[backend]]
name = "orders"
balance = "round_robin"
connect_timeout = "2s"
connect_budget = "15s"
backoff = "200ms"
backoff_max = "3s"
retry_on = ["connect", "reset", "refuse"]
refuse_errors = [0x30E2, 0o30331]
replay_bytes = +32768
send_proxy_protocol = "v2"
keepalive.path_idle_timeout = "5m"
health.check = "tnsping"
health.interval = "3s"
health.timeout = "1s"
health.rise = 1
health.fall = 2
health.service = "ORDERS"
health.service_interval = "1m"
breaker = { failures = 4, open_for = "5s", max_open_for = "2m" }
server = [
  { address = "10.0.0.1:1521", priority = 0, weight = 2 },
  { address = "10.0.0.2:1521", priority = 1 },
]

[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
`,
	}, func(c *Config) bool {
		b := c.Backends[0]
		return b.Balance == "round_robin" && slices.Equal(b.RetryOn, []string{"connect", "reset", "refuse"}) && slices.Equal(b.RefuseErrors, []int{12514, 12505}) &&
			*b.ReplayBytes == 32768 && b.Keepalive.PathIdleTimeout.Duration == 5*time.Minute && b.Health.Check == "tnsping" && b.Health.Service == "ORDERS" &&
			*b.Health.Rise == 1 && *b.Breaker.Failures == 4 && len(b.Servers) == 2 && *b.Servers[0].Weight == 2 && b.Servers[1].Priority == 1 && *b.Servers[1].Weight == 1
	}},
	{"top tables", []string{
		`[log]
level = "debug"
format = "json"
[admin]
listen = "127.0.0.1:9600"
allow = ["127.0.0.1/32", "10.0.0.0/8"]
[shutdown]
grace = "2s"
drain_timeout = "1m"
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`,
		`log = { level = "debug", format = "json" }
admin = { listen = "127.0.0.1:9600", allow = ["127.0.0.1/32", "10.0.0.0/8"] }
shutdown = { grace = "2s", drain_timeout = "1m" }
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`,
		`log.level = "debug"
log.format = "json"
admin.listen = "127.0.0.1:9600"
admin.allow = [
  "127.0.0.1/32",
  "10.0.0.0/8",
]
shutdown.grace = "2s"
shutdown.drain_timeout = "1m"
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
`,
		// every table last, in another order
		`[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
[shutdown]
drain_timeout = "1m"
grace = "2s"
[admin]
allow = ["127.0.0.1/32", "10.0.0.0/8"]
listen = "127.0.0.1:9600"
[log]
format = "json"
level = "debug"
`,
	}, func(c *Config) bool {
		return c.Log == Log{Level: "debug", Format: "json"} && c.Admin.Listen == "127.0.0.1:9600" && len(c.Admin.AllowNets) == 2 &&
			c.Shutdown.Grace.Duration == 2*time.Second && c.Shutdown.DrainTimeout.Duration == time.Minute
	}},
	{"routes and services", []string{
		`[[listener]]
name = "db"
listen = "127.0.0.1:1522"
backend = "orders"
services = ["ORDERS", "SALES", "HR"]
  [listener.routes]
  SALES = "sales"
  "hr.example.com" = "hr"
[[backend]]
name = "orders"
replay_bytes = 65536
  [[backend.server]]
  address = "127.0.0.1:1521"
[[backend]]
name = "sales"
  [[backend.server]]
  address = "127.0.0.1:1531"
[[backend]]
name = "hr"
  [[backend.server]]
  address = "127.0.0.1:1541"
`,
		`[[listener]]
name = "db"
listen = "127.0.0.1:1522"
backend = "orders"
services = [
  "ORDERS",
  "SALES",
  "HR",
]
routes = { SALES = "sales", "hr.example.com" = "hr" }
[[backend]]
name = "orders"
server = [{ address = "127.0.0.1:1521" }]
[[backend]]
name = "sales"
server = [{ address = "127.0.0.1:1531" }]
[[backend]]
name = "hr"
server = [{ address = "127.0.0.1:1541" }]
`,
		`[[backend]]
name = "orders"
  [[backend.server]]
  address = "127.0.0.1:1521"
[[backend]]
name = "sales"
  [[backend.server]]
  address = "127.0.0.1:1531"
[[listener]]
name = "db"
listen = "127.0.0.1:1522"
backend = "orders"
services = ["ORDERS", "SALES", "HR"]
routes.SALES = "sales"
routes."hr.example.com" = "hr"
[[backend]]
name = "hr"
  [[backend.server]]
  address = "127.0.0.1:1541"
`,
	}, func(c *Config) bool {
		l := c.Listeners[0]
		return reflect.DeepEqual(l.Routes, Routes{"SALES": "sales", "hr.example.com": "hr"}) && slices.Equal(l.Services, []string{"ORDERS", "SALES", "HR"}) &&
			len(c.Backends) == 3 && c.Backends[0].Name == "orders" && c.Backends[2].Name == "hr"
	}},
	{"a star route", []string{
		`[[listener]]
name = "db"
listen = "127.0.0.1:1522"
routes = { "*" = "orders", SALES = "sales" }
[[backend]]
name = "orders"
server = [{ address = "127.0.0.1:1521" }]
[[backend]]
name = "sales"
server = [{ address = "127.0.0.1:1531" }]
`,
		`[[listener]]
name = "db"
listen = "127.0.0.1:1522"
[listener.routes]
"*" = "orders"
SALES = "sales"
[[backend]]
name = "orders"
server = [{ address = "127.0.0.1:1521" }]
[[backend]]
name = "sales"
server = [{ address = "127.0.0.1:1531" }]
`,
	}, func(c *Config) bool {
		return reflect.DeepEqual(c.Listeners[0].Routes, Routes{"*": "orders", "SALES": "sales"}) && slices.Equal(slices.Sorted(slices.Values(c.Listeners[0].Backends())), []string{"orders", "sales"})
	}},
	{"two listeners, proxy protocol, empty arrays", []string{
		`[admin]
allow = []
[[listener]]
name = "a"
listen = "127.0.0.1:1522"
backend = "orders"
allow = []
services = []
trusted_proxies = []
max_sessions = 100
max_sessions_per_source = 10
idle_timeout = "30m"
[[listener]]
name = "b"
listen = "127.0.0.1:1523"
backend = "orders"
proxy_protocol = "required"
trusted_proxies = ["10.0.0.0/8"]
proxy_header_timeout = "3s"
allow = ["192.168.0.0/16", "10.1.2.3"]
idle_timeout = "1h"
[listener.keepalive]
path_idle_timeout = "350s"
[[backend]]
name = "orders"
[[backend.server]]
address = "127.0.0.1:1521"
[[backend.server]]
address = "127.0.0.1:1531"
weight = 0
`,
		`admin.allow = []
listener = [
  { name = "a", listen = "127.0.0.1:1522", backend = "orders", allow = [], services = [], trusted_proxies = [], max_sessions = 1_00, max_sessions_per_source = 10, idle_timeout = "30m" },
  { name = "b", listen = "127.0.0.1:1523", backend = "orders", proxy_protocol = "required", trusted_proxies = ["10.0.0.0/8"], proxy_header_timeout = "3s", allow = ["192.168.0.0/16", "10.1.2.3"], idle_timeout = "1h", keepalive.path_idle_timeout = "350s" },
]
[[backend]]
name = "orders"
server = [{ address = "127.0.0.1:1521" }, { address = "127.0.0.1:1531", weight = 0 }]
`,
	}, func(c *Config) bool {
		a, b := c.Listeners[0], c.Listeners[1]
		return c.Admin.Allow != nil && len(c.Admin.Allow) == 0 && a.Allow != nil && len(a.Allow) == 0 && a.MaxSessions == 100 && a.IdleTimeout.Duration == 30*time.Minute &&
			b.ProxyProtocol == "required" && len(b.TrustedNets) == 1 && len(b.AllowNets) == 2 && b.Keepalive.PathIdleTimeout.Duration == 350*time.Second &&
			len(c.Backends[0].Servers) == 2 && *c.Backends[0].Servers[1].Weight == 0
	}},
	{"warnings", []string{
		`[admin]
listen = "0.0.0.0:9521"
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
services = ["ORDERS"]
[listener.keepalive]
path_idle_timeout = "30s"
idle = "60s"
[[backend]]
name = "orders"
replay_bytes = 100
[backend.keepalive]
path_idle_timeout = "60s"
idle = "5m"
[[backend.server]]
address = "127.0.0.1:1521"
`,
		`admin = { listen = "0.0.0.0:9521" }
[[listener]]
name = "orders"
listen = "127.0.0.1:1522"
backend = "orders"
services = ["ORDERS"]
keepalive = { path_idle_timeout = "30s", idle = "60s" }
[[backend]]
name = "orders"
replay_bytes = 100
keepalive.path_idle_timeout = "60s"
keepalive.idle = "5m"
server = [{address = "127.0.0.1:1521"}]
`,
	}, func(c *Config) bool {
		return c.Admin.Listen == "0.0.0.0:9521" && c.Backends[0].Keepalive.Idle.Duration == 5*time.Minute && *c.Backends[0].ReplayBytes == 100
	}},
}

var upperCase = []string{
	"[[listener]]\nName = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[Log]\nlevel = \"info\"\n[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\nMAX_SESSIONS = 3\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\nKeepalive.idle = \"5s\"\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[Backend]]\nname = \"orders\"\n[[Backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\nHealth = { check = \"tcp\" }\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\n[[backend.Server]]\nAddress = \"127.0.0.1:1521\"\n",
	"[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\nserver = [{ Address = \"127.0.0.1:1521\" }]\n",
	"LOG.level = \"info\"\n[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n",
}

func TestEverySpellingOfAValidConfigParsesAlike(t *testing.T) {
	for _, g := range spellings {
		t.Run(g.name, func(t *testing.T) {
			var first *Config
			var firstWarnings []string
			for i, text := range g.texts {
				for _, v := range []struct{ name, text string }{
					{"LF", text},
					{"CRLF", strings.ReplaceAll(text, "\n", "\r\n")},
					{"trailing blanks", strings.ReplaceAll(text, "\n", " \t\n")},
				} {
					c, warnings, err := Parse([]byte(v.text), "f.toml")
					if err != nil {
						t.Errorf("#%d %s: %v\n%s", i, v.name, err, v.text)
						continue
					}
					c.text = "" // the spelling, kept for Place
					if !g.want(c) {
						t.Errorf("#%d %s: not what it says: %+v\n%s", i, v.name, *c, v.text)
					}
					if first == nil {
						first, firstWarnings = c, warnings
						if (g.name == "warnings") != (len(warnings) > 0) {
							t.Errorf("#0: warnings %q", warnings)
						}
						continue
					}
					if !reflect.DeepEqual(c, first) {
						t.Errorf("#%d %s: another Config than #0:\n%+v\n%+v", i, v.name, *c, *first)
					}
					if !slices.EqualFunc(warnings, firstWarnings, func(a, b string) bool {
						// the line a warning names moves with the spelling
						return lineSuffix.ReplaceAllString(a, "") == lineSuffix.ReplaceAllString(b, "")
					}) {
						t.Errorf("#%d %s: warnings %q, #0 had %q", i, v.name, warnings, firstWarnings)
					}
				}
			}
		})
	}
}

// Keys are lower case: an upper-case key (a key, a table, a part of a
// dotted key, a key of an inline table) was rejected and still is, as
// such; keys inside routes are the user's own (SALES above).
func TestUpperCaseKeysAreRejectedHoweverSpelled(t *testing.T) {
	for _, text := range upperCase {
		_, _, err := Parse([]byte(text), "f.toml")
		if err == nil || !strings.Contains(err.Error(), "keys are lower case") {
			t.Errorf("got %v, want an error \"keys are lower case\" for\n%s", err, text)
		}
	}
}
