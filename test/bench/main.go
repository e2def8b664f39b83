// Command bench measures tnsguard side by side with HAProxy, nginx's stream
// proxy, a naive Go io.Copy proxy and a direct connection, all on loopback to
// the same backends (an echo server for request/response, iperf3 -s for bulk),
// with the systems interleaved in one run so that only same-run ratios count.
//
// Typical use, from the module root:
//
//	go run ./test/bench                        # full run (~6 min), prints the table (-full says so explicitly)
//	go run ./test/bench -out /tmp/bench.md     # and writes it as markdown
//	go run ./test/bench -quick                 # smoke run, < 60 s
//
// `go test ./test/bench` runs the smoke run as a test that only checks that
// every system produced numbers (no timing thresholds: the machine is noisy).
//
// It needs haproxy, nginx with libnginx-mod-stream, and iperf3 (Debian
// packages); a system whose binary is missing is skipped with a message.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options is everything one run depends on.
type options struct {
	Quick        bool
	Duration     time.Duration // timed part of each bulk, request/response and conn/s measurement
	Rounds       int           // each measurement is repeated this often per system; the table shows medians
	IdleSessions int
	MessageSize  int
	ConnWorkers  int
	Systems      []string
	Tests        []string // subset of allTests(); empty: all
	Tnsguard     string   // path of a tnsguard binary; empty: build ./cmd/tnsguard
	TnsguardB    string   // a second binary, system tnsguard-b (A/B runs)
	NginxModule  string
	Out          string
	Command      string // how this run was invoked, for the markdown header
	Log          io.Writer
	Verbose      bool
	// PeerKeepalive gives HAProxy and nginx the keepalive that tnsguard's
	// defaults set on each leg, so that they do the same socket work.
	PeerKeepalive bool
}

// allTests are the measurements, in the order they run.
func allTests() []string { return []string{"bulk", "bulk-up", "rr-1", "rr-32", "conns", "idle"} }

// knownTests adds the opt-in ones: rr-4, a few busy connections (tnsguard
// runs them on goroutines, not on the lot as at 32).
func knownTests() []string { return append(allTests(), "rr-4") }

// allSystems is the order of the table's columns: the reference run's.
func allSystems() []string {
	return []string{sysDirect, sysHAProxy, sysNginx, sysGoCopy, sysTnsguard}
}

// knownSystems adds the opt-in ones.
func knownSystems() []string { return append(allSystems(), sysGoLoop, sysGoLoop2, sysTnsguardB) }

func fullOptions() options {
	return options{
		Duration:     4 * time.Second,
		Rounds:       3,
		IdleSessions: 5000,
		MessageSize:  64,
		ConnWorkers:  8,
		Systems:      allSystems(),
		NginxModule:  "/usr/lib/nginx/modules/ngx_stream_module.so",
		Log:          os.Stderr,
	}
}

func quickOptions() options {
	o := fullOptions()
	o.Quick = true
	o.Duration = 300 * time.Millisecond
	o.Rounds = 1
	o.IdleSessions = 200
	return o
}

func main() {
	if role := os.Getenv(envRole); role != "" {
		if err := runRole(role, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench role", role+":", err)
			os.Exit(1)
		}
		return
	}
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Print(res.text())
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "smoke run: tiny durations, 200 idle sessions, one round (< 60 s)")
	full := fs.Bool("full", false, "full run (the default; accepted so that scripts can say so)")
	def := fullOptions()
	duration := fs.Duration("duration", 0, "timed part of each measurement (default 4s, quick 300ms); bulk rounds it up to whole seconds")
	rounds := fs.Int("rounds", 0, "rounds per measurement, interleaved across systems; the table shows medians (default 3, quick 1)")
	idle := fs.Int("idle", 0, "idle sessions for the memory figure (default 5000, quick 200)")
	msg := fs.Int("msg", def.MessageSize, "request/response message size in bytes")
	workers := fs.Int("conn-workers", def.ConnWorkers, "concurrent clients in the new-connections figure")
	systems := fs.String("systems", strings.Join(allSystems(), ","), "systems to run, comma-separated; goloop (a bare Go epoll loop, reference design) runs only when named")
	tests := fs.String("tests", strings.Join(allTests(), ","), "measurements to run, comma-separated; rr-4 (4 busy connections) runs only when named")
	tg := fs.String("tnsguard", "", "tnsguard binary to use (default: go build ./cmd/tnsguard into a temp dir)")
	tgB := fs.String("tnsguard-b", "", "a second tnsguard binary, run as system tnsguard-b when -systems names it: two builds compared in one interleaved run (default: tnsguard's own, an A/A run that shows the noise)")
	module := fs.String("nginx-module", def.NginxModule, "nginx stream module to load_module")
	out := fs.String("out", "", "also write the table as markdown to this file")
	verbose := fs.Bool("v", false, "log every measurement and helper process start")
	peerKA := fs.Bool("peer-keepalive", false, "configure HAProxy and nginx with the keepalive tnsguard's defaults set on each leg (the reference runs leave them without)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if *quick && *full {
		err := errors.New("-quick and -full exclude each other")
		fmt.Fprintln(os.Stderr, "bench:", err)
		return options{}, err
	}
	o := def
	if *quick {
		o = quickOptions()
	}
	if *duration > 0 {
		o.Duration = *duration
	}
	if *rounds > 0 {
		o.Rounds = *rounds
	}
	if *idle > 0 {
		o.IdleSessions = *idle
	}
	o.MessageSize = *msg
	o.ConnWorkers = *workers
	var err error
	if o.Systems, err = pickList("system", *systems, knownSystems()); err != nil {
		return options{}, err
	}
	if o.Tests, err = pickList("test", *tests, knownTests()); err != nil {
		return options{}, err
	}
	o.Tnsguard, o.TnsguardB = *tg, *tgB
	o.NginxModule = *module
	o.Out = *out
	o.Verbose = *verbose
	o.PeerKeepalive = *peerKA
	o.Command = "go run ./test/bench"
	if len(args) > 0 {
		o.Command += " " + strings.Join(args, " ")
	}
	return o, nil
}

// pickList splits a comma-separated flag and checks every item is known.
func pickList(what, flagValue string, known []string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(flagValue, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(known, s) {
			err := fmt.Errorf("unknown %s %q (known: %s)", what, s, strings.Join(known, ","))
			fmt.Fprintln(os.Stderr, "bench:", err)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
