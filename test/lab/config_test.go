package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// adminAddr is where tnsguard's admin listener binds inside the app namespace; each
// lab has its own namespace, so parallel labs can all use it.
const adminAddr = "127.0.0.1:9521"

// keepalive is one [*.keepalive] table; empty fields are left out (defaults, or
// derived from PathIdleTimeout).
type keepalive struct {
	PathIdleTimeout, Idle, Interval, UserTimeout string
	Count                                        int
}

func (k keepalive) write(b *strings.Builder, table string) {
	fmt.Fprintf(b, "  [%s.keepalive]\n", table)
	for _, kv := range [][2]string{
		{"path_idle_timeout", k.PathIdleTimeout}, {"idle", k.Idle}, {"interval", k.Interval}, {"user_timeout", k.UserTimeout},
	} {
		if kv[1] != "" {
			fmt.Fprintf(b, "  %s = %q\n", kv[0], kv[1])
		}
	}
	if k.Count != 0 {
		fmt.Fprintf(b, "  count = %d\n", k.Count)
	}
}

// link is one listener with its own backend of the same name.
type link struct {
	Name    string
	Listen  string   // inside the app namespace, e.g. 127.0.0.1:1522
	Servers []string // backend server addresses, in priority order
	App, DB keepalive
	// Health check (default tcp every 1s, rise 1, fall 2).
	Health         string
	HealthInterval string
	Rise, Fall     int
	ConnectBudget  string // default 10s
	BackendKeys    string // more keys of the backend table, e.g. redirect = "follow"
}

// Small keepalive values keep the lab fast: the firewall forgets after 3-5 s.
var (
	appKeepalive = keepalive{Idle: "1s", Interval: "1s", Count: 3, UserTimeout: "5s"}
	dbKeepalive  = keepalive{Idle: "1s", Interval: "1s", Count: 3, UserTimeout: "4s"}
)

// guardConfig renders a tnsguard config with only keys of the user-facing contract
// (plus [shutdown] drain_timeout and keepalive path_idle_timeout).
func guardConfig(links ...link) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[log]\nlevel = \"debug\"\nformat = \"text\"\n\n[admin]\nlisten = %q\n\n[shutdown]\ndrain_timeout = \"1s\"\n\n", adminAddr)
	for _, l := range links {
		fmt.Fprintf(&b, "[[listener]]\nname = %q\nlisten = %q\nbackend = %q\n", l.Name, l.Listen, l.Name)
		l.App.write(&b, "listener")
		b.WriteString("\n")
	}
	for _, l := range links {
		budget := l.ConnectBudget
		if budget == "" {
			budget = "10s"
		}
		fmt.Fprintf(&b, "[[backend]]\nname = %q\nbalance = \"priority\"\nconnect_timeout = \"1s\"\nconnect_budget = %q\nretry_on = [\"connect\", \"reset\"]\n", l.Name, budget)
		if l.BackendKeys != "" {
			b.WriteString(l.BackendKeys + "\n")
		}
		l.DB.write(&b, "backend")
		check, interval, rise, fall := l.Health, l.HealthInterval, l.Rise, l.Fall
		if check == "" {
			check = "tcp"
		}
		if interval == "" {
			interval = "1s"
		}
		if rise == 0 {
			rise = 1
		}
		if fall == 0 {
			fall = 2
		}
		timeout := "1s"
		if d, err := time.ParseDuration(interval); err == nil && d < time.Second {
			timeout = interval // tnsguard wants timeout <= interval
		}
		fmt.Fprintf(&b, "  [backend.health]\n  check = %q\n  interval = %q\n  timeout = %q\n  rise = %d\n  fall = %d\n", check, interval, timeout, rise, fall)
		for i, s := range l.Servers {
			fmt.Fprintf(&b, "  [[backend.server]]\n  address = %q\n  priority = %d\n", s, i)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// startGuard runs tnsguard in the lab's app namespace with links and waits until ready.
func startGuard(t *testing.T, lab *netlab.Lab, links ...link) *netlab.Tnsguard {
	t.Helper()
	return lab.StartTnsguard(t, tnsguardBin.Path(t), lab.App, adminAddr, guardConfig(links...))
}
