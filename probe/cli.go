package probe

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/tnsguard/tnsguard/config"
)

// Command runs `tnsguard probe` with args (the words after "probe"): the
// flags, the run with progress on stderr, the summary (or -json object) on
// stdout. It returns the exit code: 0 when the probe finished, found or not;
// 1 on an error (target unreachable, target closing idle connections itself,
// a bad value, interrupted); 2 for a usage error. -h prints the usage on
// stdout and exits 0, like tnsguard's other commands.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tnsguard probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "`HOST:PORT` to probe: a server that keeps a silent connection open, beyond the firewall, NAT or load balancer to measure")
	maxIdle := fs.Duration("max", defaultMax, "longest idle `time` to check; the run takes about this long when no timeout is found")
	parallel := fs.Int("parallel", defaultParallel, "test connections open at once (`N`); more finish sooner")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	cfgPath := fs.String("config", "", "take the target from this tnsguard configuration `FILE`: the first server of -backend")
	backend := fs.String("backend", "", "backend `NAME` in -config (may be left out when there is only one)")
	printUsage := func() {
		fmt.Fprintf(fs.Output(), "usage: tnsguard probe -target HOST:PORT [-max 2h] [-parallel N] [-json]\n"+
			"       tnsguard probe -config FILE [-backend NAME] [-max 2h] [-parallel N] [-json]\n\n"+
			"Measures after how long the network path to HOST:PORT forgets an idle connection,\n"+
			"and whether it then drops or resets it, and recommends keepalive settings.\n"+
			"Liveness is checked with TCP keepalive probes: the service receives no data.\n\n")
		fs.PrintDefaults()
	}
	fs.Usage = func() {} // printed below, on stdout for -h
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		// Help asked for is no error (it exited 2): on stdout, 0.
		fs.SetOutput(stdout)
		printUsage()
		return 0
	} else if err != nil {
		printUsage() // after the flag package's line saying what is wrong
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tnsguard probe: "+format+"\n", a...)
		return 1
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "tnsguard probe: %s\n", msg)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return usage(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	case *target != "" && *cfgPath != "":
		return usage("give -target or -config, not both")
	case *cfgPath == "" && *backend != "":
		return usage("-backend needs -config")
	case *target == "" && *cfgPath == "":
		return usage("give -target HOST:PORT (or -config FILE -backend NAME)")
	case *maxIdle <= 0: // Run would take it for the default, 2h
		return usage(fmt.Sprintf("-max %v: give a positive time, such as 30m", *maxIdle))
	case *maxIdle < ladderStart:
		return usage(fmt.Sprintf("-max %v is below the shortest idle time checked (%v)", *maxIdle, ladderStart))
	case *parallel < 2:
		return usage(fmt.Sprintf("-parallel %d: need at least 2 connections", *parallel))
	case *parallel > maxParallel: // a typo would open that many to the target
		return usage(fmt.Sprintf("-parallel %d: at most %d connections (each idle time needs one)", *parallel, maxParallel))
	case *target != "" && !hostPort(*target):
		return usage(fmt.Sprintf("-target %q: give HOST:PORT (IPv6 in brackets: [::1]:1521)", *target))
	case *cfgPath != "":
		addr, err := backendAddress(*cfgPath, *backend)
		if errors.Is(err, errChooseBackend) {
			return usage(err.Error()) // the command line lacks -backend
		}
		if err != nil {
			return fail("%v", err)
		}
		*target = addr
	}

	res, err := Run(ctx, Options{Target: *target, Max: *maxIdle, Parallel: *parallel, Progress: stderr})
	if err != nil {
		if errors.Is(err, ErrClosedByTarget) {
			return fail("%v.\nPoint -target at a port on the far side that keeps silent connections open "+
				"(a listener whose service does not time out connections that send nothing; see the README)", err)
		}
		if errors.Is(err, context.Canceled) && (res.Checks > 0) {
			lo, hi := res.LongestAlive, res.ShortestDead
			return fail("interrupted after %s: connections survived idle %s%s", res.Elapsed.Round(time.Second), fmtDur(lo), diedAfter(hi))
		}
		if errors.Is(err, context.Canceled) {
			// Ctrl-C before the first check (or during the first connect).
			return fail("interrupted before any connection was checked")
		}
		return fail("%v", err)
	}
	if *asJSON {
		b, err := json.Marshal(res.Report())
		if err != nil {
			return fail("%v", err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return 0
	}
	if err := res.WriteText(stdout); err != nil {
		return fail("%v", err)
	}
	return 0
}

func diedAfter(hi time.Duration) string {
	if hi == 0 {
		return ""
	}
	return ", one died after idle " + fmtDur(hi)
}

// errChooseBackend: the file has several backends and -backend names none.
var errChooseBackend = errors.New("choose one with -backend NAME")

// maxParallel bounds -parallel: the idle times checked are a few dozen at
// most, and each connection is one to the target's service.
const maxParallel = 64

// backendAddress returns the first server address of the named backend in a
// tnsguard configuration file (the only backend when name is empty).
func backendAddress(path, name string) (string, error) {
	cfg, _, err := config.Load(path)
	if err != nil {
		return "", err
	}
	var b *config.Backend
	switch {
	case name != "":
		if b = cfg.Backend(name); b == nil {
			return "", fmt.Errorf("%s: backend %q is not defined", path, name)
		}
	case len(cfg.Backends) == 1:
		b = &cfg.Backends[0]
	default:
		return "", fmt.Errorf("%s: %d backends: %w", path, len(cfg.Backends), errChooseBackend)
	}
	if len(b.Servers) == 0 {
		return "", fmt.Errorf("%s: backend %q has no server", path, b.Name)
	}
	return b.Servers[0].Address, nil
}

// hostPort tells whether s reads as HOST:PORT with a port number in range
// (the host may be a name).
func hostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n > 0
}
