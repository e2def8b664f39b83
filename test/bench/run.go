package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// figure is one row of the table.
type figure int

const (
	figBulk figure = iota // backend to client, as result sets flow
	figCPUPerGB
	figBulkUp // client to backend
	figCPUPerGBUp
	figRPS1
	figP50At1
	figP99At1
	figRPS4 // opt-in (-tests rr-4): a few busy connections, which run on goroutines in tnsguard
	figP50At4
	figP99At4
	figRPS32
	figP50At32
	figP99At32
	figConnsPerSec
	figIdleKB
	figIdleFDs
	figIdleCPU
	numFigures
)

type figureInfo struct {
	Name         string
	HigherBetter bool
	Format       string
	ProxyOnly    bool // measured on the proxy process: not applicable to direct
}

func (f figure) info() figureInfo {
	switch f {
	case figBulk:
		return figureInfo{"bulk backend->client (Gbit/s)", true, "%.2f", false}
	case figCPUPerGB:
		return figureInfo{"CPU seconds per GB, backend->client", false, "%.3f", true}
	case figBulkUp:
		return figureInfo{"bulk client->backend (Gbit/s)", true, "%.2f", false}
	case figCPUPerGBUp:
		return figureInfo{"CPU seconds per GB, client->backend", false, "%.3f", true}
	case figRPS1:
		return figureInfo{"1 conn: requests/s", true, "%.0f", false}
	case figP50At1:
		return figureInfo{"1 conn: p50 latency (us)", false, "%.1f", false}
	case figP99At1:
		return figureInfo{"1 conn: p99 latency (us)", false, "%.1f", false}
	case figRPS4:
		return figureInfo{"4 conns: requests/s", true, "%.0f", false}
	case figP50At4:
		return figureInfo{"4 conns: p50 latency (us)", false, "%.1f", false}
	case figP99At4:
		return figureInfo{"4 conns: p99 latency (us)", false, "%.1f", false}
	case figRPS32:
		return figureInfo{"32 conns: requests/s", true, "%.0f", false}
	case figP50At32:
		return figureInfo{"32 conns: p50 latency (us)", false, "%.0f", false}
	case figP99At32:
		return figureInfo{"32 conns: p99 latency (us)", false, "%.0f", false}
	case figConnsPerSec:
		return figureInfo{"new connections/s", true, "%.0f", false}
	case figIdleKB:
		return figureInfo{"memory per idle session (KB RSS)", false, "%.2f", true}
	case figIdleFDs:
		return figureInfo{"fds per idle session", false, "%.2f", true}
	case figIdleCPU:
		return figureInfo{"idle CPU per 1,000 sessions (ms/s)", false, "%.2f", true}
	}
	return figureInfo{Name: fmt.Sprintf("figure %d", int(f))}
}

// results holds every round's value of every figure for every system.
type results struct {
	Opts     options
	Started  time.Time
	Elapsed  time.Duration
	Systems  []string          // systems that ran, in column order
	Skipped  map[string]string // system -> why
	Values   map[string]map[figure][]float64
	Failures []string // measurements that failed, with why
	failed   map[string]map[figure]bool
	Notes    []string
	Versions []string
	Load     [2]string // /proc/loadavg at start and end: how busy the machine was
}

func (r *results) add(system string, f figure, v float64) {
	if r.Values[system] == nil {
		r.Values[system] = map[figure][]float64{}
	}
	r.Values[system][f] = append(r.Values[system][f], v)
}

// value is the median over rounds; NaN when nothing was measured.
func (r *results) value(system string, f figure) float64 {
	vs := r.Values[system][f]
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// test is one kind of measurement, producing one or more figures.
type test struct {
	Name    string
	Figures []figure
	Run     func(ctx context.Context, system string, in *instance) ([]float64, error)
}

func run(ctx context.Context, o options) (*results, error) {
	if o.Log == nil {
		o.Log = os.Stderr
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, format+"\n", args...) }
	r := &results{
		Opts:    o,
		Started: time.Now(),
		Skipped: map[string]string{},
		Values:  map[string]map[figure][]float64{},
		failed:  map[string]map[figure]bool{},
	}
	fileLimit := raiseFileLimit(r)
	r.Load[0] = loadAverage()

	dir, err := os.MkdirTemp("", "tnsbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	setup, systems := prepareSystems(ctx, o, dir, fileLimit, r, logf)
	r.Versions = versions(setup)
	for _, s := range systems {
		r.Systems = append(r.Systems, s.Name)
	}

	// Backends shared by all systems for the whole run.
	var be backends
	echoProc, err := startProcess("echo", filepath.Join(dir, "echo.log"), []string{envRole + "=" + roleEcho}, setup.self)
	if err != nil {
		return nil, err
	}
	defer echoProc.stop()
	addrs, err := echoProc.waitReadyLine(ctx)
	if err != nil {
		return nil, err
	}
	be.Echo = addrs[0]
	iperf3, iperfErr := findBinary("iperf3")
	if iperfErr == nil {
		port, err := loopback.Port()
		if err != nil {
			return nil, err
		}
		ip, err := startProcess("iperf3 -s", filepath.Join(dir, "iperf3.log"), nil,
			iperf3, "-s", "-B", "127.0.0.1", "-p", fmt.Sprint(port))
		if err != nil {
			return nil, err
		}
		defer ip.stop()
		if err := waitListening(ctx, ip, port); err != nil {
			return nil, err
		}
		be.Iperf = fmt.Sprintf("127.0.0.1:%d", port)
	} else {
		r.Notes = append(r.Notes, "bulk figures skipped: "+iperfErr.Error())
		logf("bench: skipping bulk figures: %v", iperfErr)
	}

	d := o.Duration
	tests := []test{}
	if be.Iperf != "" {
		bulkTest := func(reverse bool) func(context.Context, string, *instance) ([]float64, error) {
			return func(ctx context.Context, _ string, in *instance) ([]float64, error) {
				g, c, err := bulk(ctx, iperf3, in, d, reverse)
				return []float64{g, c}, err
			}
		}
		// iperf3 -R: the server sends, as a database sends result sets; and
		// the backend speaks first, as a database answers a connect.
		tests = append(tests,
			test{"bulk", []figure{figBulk, figCPUPerGB}, bulkTest(true)},
			test{"bulk-up", []figure{figBulkUp, figCPUPerGBUp}, bulkTest(false)})
	}
	rr := func(conns int) func(context.Context, string, *instance) ([]float64, error) {
		return func(ctx context.Context, _ string, in *instance) ([]float64, error) {
			res, err := requestResponse(ctx, in.Small, conns, o.MessageSize, d)
			return []float64{res.RPS, micros(res.P50), micros(res.P99)}, err
		}
	}
	settle := time.Second
	if o.Quick {
		settle = 200 * time.Millisecond
	}
	tests = append(tests,
		test{"rr-1", []figure{figRPS1, figP50At1, figP99At1}, rr(1)},
		test{"rr-4", []figure{figRPS4, figP50At4, figP99At4}, rr(4)},
		test{"rr-32", []figure{figRPS32, figP50At32, figP99At32}, rr(32)},
		test{"conns", []figure{figConnsPerSec}, func(ctx context.Context, _ string, in *instance) ([]float64, error) {
			v, err := connectRate(ctx, in.Small, o.ConnWorkers, o.MessageSize, d)
			return []float64{v}, err
		}},
		test{"idle", []figure{figIdleKB, figIdleFDs, figIdleCPU}, func(ctx context.Context, system string, in *instance) ([]float64, error) {
			if in.proc == nil {
				return nil, nil // nothing between client and server to measure
			}
			res, err := idleSessions(ctx, in, o.IdleSessions, o.MessageSize, settle)
			if err != nil {
				// The usual cause is the proxy running out of fds: say how many it holds.
				if u, uerr := in.usage(); uerr == nil {
					err = fmt.Errorf("%w (the proxy held %d fds, RLIMIT_NOFILE %d)", err, u.FDs, fileLimit)
				}
			}
			return []float64{res.KB, res.FDs, res.CPU}, err
		}},
	)

	chosen := o.Tests
	if len(chosen) == 0 {
		chosen = allTests() // the opt-in ones only when named
	}
	tests = slices.DeleteFunc(tests, func(t test) bool { return !contains(chosen, t.Name) })

	// Interleave: for each test and round, every system once, in an order
	// rotated per round, each on a freshly started instance.
	for _, t := range tests {
		for round := range o.Rounds {
			for i := range systems {
				s := systems[(i+round)%len(systems)]
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				vals, err := measureOnce(ctx, s, dir, be, t)
				if err != nil {
					msg := fmt.Sprintf("%s round %d %s: %v", t.Name, round+1, s.Name, err)
					r.Failures = append(r.Failures, msg)
					logf("bench: FAILED %s", msg)
					if r.failed[s.Name] == nil {
						r.failed[s.Name] = map[figure]bool{}
					}
					for _, f := range t.Figures {
						r.failed[s.Name][f] = true
					}
					continue
				}
				if vals == nil {
					continue
				}
				var parts []string
				for j, f := range t.Figures {
					if math.IsNaN(vals[j]) {
						continue
					}
					r.add(s.Name, f, vals[j])
					parts = append(parts, f.info().Name+" "+fmt.Sprintf(f.info().Format, vals[j]))
				}
				if o.Verbose {
					logf("bench: %-6s round %d/%d %-8s %s", t.Name, round+1, o.Rounds, s.Name, strings.Join(parts, ", "))
				}
			}
		}
		logf("bench: %s done (%s elapsed)", t.Name, time.Since(r.Started).Round(time.Second))
	}
	r.Elapsed = time.Since(r.Started)
	r.Load[1] = loadAverage()

	if o.Out != "" {
		if err := os.WriteFile(o.Out, []byte(r.markdown()), 0o644); err != nil {
			return r, err
		}
		logf("bench: wrote %s", o.Out)
	}
	return r, nil
}

// measureOnce starts a fresh instance of s, runs t against it and stops it;
// a proxy that exits or hangs on stop fails the measurement.
func measureOnce(ctx context.Context, s system, dir string, be backends, t test) ([]float64, error) {
	sdir, err := os.MkdirTemp(dir, s.Name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sdir)
	in, err := s.start(ctx, sdir, be)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	vals, err := t.Run(ctx, s.Name, in)
	if stopErr := in.stop(); err == nil && stopErr != nil {
		err = stopErr
	}
	return vals, err
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// prepareSystems finds the binaries and returns the systems that can run,
// recording why the others are skipped.
func prepareSystems(ctx context.Context, o options, dir string, fileLimit uint64, r *results, logf func(string, ...any)) (systemSetup, []system) {
	setup := systemSetup{fileLimit: fileLimit}
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	setup.self = self
	setup.nginxModule = o.NginxModule
	setup.peerKeepalive = o.PeerKeepalive
	skip := func(name, why string) {
		r.Skipped[name] = why
		logf("bench: skipping %s: %s", name, why)
	}
	var systems []system
	for _, name := range o.Systems {
		switch name {
		case sysDirect:
			systems = append(systems, setup.direct())
		case sysGoCopy:
			systems = append(systems, setup.goProxy(sysGoCopy, roleCopy))
		case sysGoLoop:
			systems = append(systems, setup.goProxy(sysGoLoop, roleLoop))
		case sysGoLoop2:
			systems = append(systems, setup.goProxy(sysGoLoop2, roleLoop2))
		case sysHAProxy:
			p, err := findBinary("haproxy")
			if err != nil {
				skip(name, err.Error())
				continue
			}
			setup.haproxy = p
			systems = append(systems, setup.haproxySystem())
		case sysNginx:
			p, err := findBinary("nginx")
			if err != nil {
				skip(name, err.Error())
				continue
			}
			if _, err := os.Stat(o.NginxModule); err != nil {
				skip(name, fmt.Sprintf("stream module %s missing (Debian package libnginx-mod-stream; or -nginx-module PATH)", o.NginxModule))
				continue
			}
			setup.nginx = p
			systems = append(systems, setup.nginxSystem())
		case sysTnsguard:
			p, err := tnsguardBinary(ctx, o.Tnsguard, dir)
			if err != nil {
				skip(name, err.Error())
				continue
			}
			setup.tnsguard = p
			systems = append(systems, setup.tnsguardSystem(sysTnsguard, p))
		case sysTnsguardB:
			// Without -tnsguard-b it runs tnsguard's binary: an A/A run,
			// which shows the noise between two columns of one build.
			p, given := setup.tnsguard, o.TnsguardB
			if given != "" || p == "" {
				if p, err = tnsguardBinary(ctx, cmp.Or(given, o.Tnsguard), dir); err != nil {
					skip(name, err.Error())
					continue
				}
			}
			setup.tnsguardB = p
			systems = append(systems, setup.tnsguardSystem(sysTnsguardB, p))
		}
	}
	return setup, systems
}

// tnsguardBinary returns the binary given with -tnsguard, or builds
// ./cmd/tnsguard of the module this harness lives in.
func tnsguardBinary(ctx context.Context, given, dir string) (string, error) {
	if given != "" {
		if _, err := os.Stat(given); err != nil {
			return "", err
		}
		return given, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command to build ./cmd/tnsguard (or pass -tnsguard PATH): %w", err)
	}
	gomod, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return "", errors.New("not inside the tnsguard module: run from the repository or pass -tnsguard PATH")
	}
	out := filepath.Join(dir, "tnsguard")
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/tnsguard")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		m := strings.TrimSpace(string(msg))
		if len(m) > 600 {
			m = m[:600] + "..."
		}
		return "", fmt.Errorf("go build ./cmd/tnsguard failed (the gocopy column stands in): %s", m)
	}
	return out, nil
}

// raiseFileLimit lifts RLIMIT_NOFILE for the harness and, by inheritance, the
// proxies: 5,000 idle sessions are 10,000+ fds in a proxy (more with pipes).
// It returns the limit in force.
func raiseFileLimit(r *results) uint64 {
	want := uint64(200000)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: max(want, lim.Max)})
	if err == nil {
		return want
	}
	// Without CAP_SYS_RESOURCE the hard limit is as far as it goes.
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim.Max, Max: lim.Max})
	r.Notes = append(r.Notes, fmt.Sprintf("RLIMIT_NOFILE could not be raised to %d (%v); every process has %d", want, err, lim.Max))
	return lim.Max
}

// versions describes the machine and the software compared.
func versions(s systemSetup) []string {
	first := func(argv ...string) string {
		if argv[0] == "" {
			return ""
		}
		out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	var uts syscall.Utsname
	kernel := ""
	if syscall.Uname(&uts) == nil {
		kernel = utsString(uts.Release[:])
	}
	cpus := first("nproc")
	v := []string{fmt.Sprintf("Linux %s, %s CPUs", kernel, cpus)}
	if goV := first("go", "version"); goV != "" {
		v = append(v, goV)
	}
	if s.haproxy != "" {
		v = append(v, first(s.haproxy, "-v"))
	}
	if s.nginx != "" {
		v = append(v, first(s.nginx, "-v"))
	}
	if p, err := findBinary("iperf3"); err == nil {
		v = append(v, first(p, "--version"))
	}
	if s.tnsguard != "" {
		v = append(v, "tnsguard: "+first(s.tnsguard, "version"))
	}
	if rev := first("git", "rev-parse", "--short", "HEAD"); rev != "" && !strings.Contains(rev, "fatal") {
		if dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(dirty) > 0 {
			rev += " with uncommitted changes"
		}
		v = append(v, "tnsguard tree: "+rev)
	}
	return v
}

func utsString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
