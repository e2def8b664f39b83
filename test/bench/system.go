package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// The systems compared. Peers are the ones tnsguard is measured against.
const (
	sysDirect   = "direct"
	sysHAProxy  = "haproxy"
	sysNginx    = "nginx"
	sysGoCopy   = "gocopy"
	sysGoLoop   = "goloop"  // opt-in reference design (goloop.go)
	sysGoLoop2  = "goloop2" // the same on two threads, one loop each
	sysTnsguard = "tnsguard"
	// sysTnsguardB is a second tnsguard binary (-tnsguard-b), opt-in: an
	// A/B comparison of two builds in one interleaved run, where this
	// machine's drift between runs is larger than most changes.
	sysTnsguardB = "tnsguard-b"
)

func isPeer(system string) bool { return system == sysHAProxy || system == sysNginx }

// process is one helper process the harness started and owns.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error // valid once exited is closed
	// countChildren: sum usage over the children too (nginx master + workers).
	countChildren bool
}

// startProcess starts argv in its own process group with stdout and stderr in
// logPath. The child dies with the harness (Pdeathsig).
func startProcess(name, logPath string, env []string, argv ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) pids() []int {
	pids := []int{p.pid()}
	if p.countChildren {
		pids = append(pids, children(p.pid())...)
	}
	return pids
}

func (p *process) usage() (usage, error) {
	select {
	case <-p.exited:
		return usage{}, p.failure("exited")
	default:
	}
	return readUsage(p.pids())
}

// failure describes an unexpected exit with the end of the process's log.
func (p *process) failure(what string) error {
	b, _ := os.ReadFile(p.logPath)
	tail := strings.TrimSpace(string(b))
	if len(tail) > 800 {
		tail = "..." + tail[len(tail)-800:]
	}
	if p.waitErr != nil {
		what += " (" + p.waitErr.Error() + ")"
	}
	return fmt.Errorf("%s %s; log %s: %s", p.name, what, p.logPath, tail)
}

// stop sends SIGTERM and waits; after 5 s it kills the process group. It
// reports an early exit or a process that did not stop in time.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return p.failure("had exited before it was stopped")
	default:
	}
	pgid := p.pid() // Setpgid: the group id is the leader's pid
	_ = syscall.Kill(p.pid(), syscall.SIGTERM)
	var err error
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		err = fmt.Errorf("%s did not exit within 5s of SIGTERM; killed", p.name)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.exited
	}
	// nginx workers leave with their master; anything left of the group goes now.
	for i := 0; i < 100 && syscall.Kill(-pgid, 0) == nil; i++ {
		if i == 50 {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// waitReady waits until cond holds, failing early if the process exits.
func (p *process) waitReady(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		select {
		case <-p.exited:
			return p.failure("exited during start")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return p.failure("not ready after 10s: " + what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// waitReadyLine waits for the "ready ADDR..." line a helper role prints.
func (p *process) waitReadyLine(ctx context.Context) ([]string, error) {
	var addrs []string
	err := p.waitReady(ctx, "ready line", func() bool {
		b, _ := os.ReadFile(p.logPath)
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "ready "); ok && strings.HasSuffix(string(b), "\n") {
				addrs = strings.Fields(rest)
				return true
			}
		}
		return false
	})
	return addrs, err
}

func waitListening(ctx context.Context, p *process, ports ...int) error {
	return p.waitReady(ctx, fmt.Sprintf("listening on ports %v", ports), func() bool {
		for _, port := range ports {
			if !listening(port) {
				return false
			}
		}
		return true
	})
}

// findBinary looks in PATH and in the sbin directories a non-root PATH lacks.
func findBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or /usr/sbin (Debian package %s)", name, name)
}

// backends are the servers every system forwards to.
type backends struct {
	Echo  string // request/response
	Iperf string // bulk; empty when iperf3 is missing
}

// instance is one running system: where clients connect, and which
// processes to measure (none for a direct connection).
type instance struct {
	Small string // forwards to the echo server
	Bulk  string // forwards to iperf3 -s
	proc  *process
}

func (in *instance) usage() (usage, error) {
	if in.proc == nil {
		return usage{}, errors.New("no proxy process")
	}
	return in.proc.usage()
}

func (in *instance) stop() error {
	if in.proc == nil {
		return nil
	}
	return in.proc.stop()
}

// system knows how to start one kind of proxy, fresh for every measurement so
// that no measurement inherits another's heap, pools or TIME_WAIT sockets.
type system struct {
	Name  string
	start func(ctx context.Context, dir string, be backends) (*instance, error)
}

// systemSetup holds what the systems need from the environment.
type systemSetup struct {
	self        string // this binary, for the gocopy and goloop roles
	haproxy     string
	nginx       string
	nginxModule string
	tnsguard    string
	tnsguardB   string // -tnsguard-b
	fileLimit   uint64 // RLIMIT_NOFILE the proxies inherit
	// peerKeepalive: HAProxy and nginx set keepalive as tnsguard's defaults
	// do (app leg 60s/15s/4, backend leg 30s/10s/3; HAProxy has no user
	// timeout for servers, nginx no keepalive timing for upstreams).
	peerKeepalive bool
}

// haproxyKeepalive is the proxy-section lines for peerKeepalive.
func (s systemSetup) haproxyKeepalive() string {
	if !s.peerKeepalive {
		return ""
	}
	return `    option clitcpka
    clitcpka-idle 60s
    clitcpka-intvl 15s
    clitcpka-cnt 4
    option srvtcpka
    srvtcpka-idle 30s
    srvtcpka-intvl 10s
    srvtcpka-cnt 3
`
}

// nginxKeepalive is the listen parameter and server directive for
// peerKeepalive.
func (s systemSetup) nginxKeepalive() (listen, server string) {
	if !s.peerKeepalive {
		return "", ""
	}
	return " so_keepalive=60s:15s:4", " proxy_socket_keepalive on;"
}

// haproxyMaxconn fits HAProxy's fd needs (2 per connection plus 2 per pipe,
// maxpipes = maxconn/4) into the file limit.
func (s systemSetup) haproxyMaxconn() uint64 {
	return (s.fileLimit - 200) * 2 / 5
}

func (s systemSetup) direct() system {
	return system{Name: sysDirect, start: func(ctx context.Context, dir string, be backends) (*instance, error) {
		return &instance{Small: be.Echo, Bulk: be.Iperf}, nil
	}}
}

// goProxy is one of the harness's own Go proxies (roles.go, goloop.go), run
// as a process of its own: gocopy or goloop.
func (s systemSetup) goProxy(name, role string) system {
	return system{Name: name, start: func(ctx context.Context, dir string, be backends) (*instance, error) {
		targets := be.Echo
		if be.Iperf != "" {
			targets += "," + be.Iperf
		}
		p, err := startProcess(name, filepath.Join(dir, name+".log"),
			[]string{envRole + "=" + role, envRoutes + "=" + targets}, s.self)
		if err != nil {
			return nil, err
		}
		addrs, err := p.waitReadyLine(ctx)
		if err != nil {
			p.stop()
			return nil, err
		}
		in := &instance{Small: addrs[0], proc: p}
		if len(addrs) > 1 {
			in.Bulk = addrs[1]
		}
		return in, nil
	}}
}

func (s systemSetup) haproxySystem() system {
	return system{Name: sysHAProxy, start: func(ctx context.Context, dir string, be backends) (*instance, error) {
		ports, err := loopback.Ports(2)
		if err != nil {
			return nil, err
		}
		// One process, two frontends: small messages without splice (forced
		// splice halves its rps), bulk with it (its best setting there), with
		// 1 MiB pipes as Go's splice takes for tnsguard (the 64 KiB default
		// cost it half its CPU per GB more); pipes exist only while bytes
		// move, so the small-message figures do not change.
		cfg := fmt.Sprintf(`global
    nbthread 2
    maxconn %[1]d
    tune.pipesize 1048576

defaults
    mode tcp
    maxconn %[1]d
    timeout connect 5s
    timeout client 1h
    timeout server 1h

listen small
    bind 127.0.0.1:%[2]d
%[4]s    server echo %[3]s
`, s.haproxyMaxconn(), ports[0], be.Echo, s.haproxyKeepalive())
		if be.Iperf != "" {
			cfg += fmt.Sprintf(`
listen bulk
    bind 127.0.0.1:%d
    option splice-request
    option splice-response
%s    server iperf %s
`, ports[1], s.haproxyKeepalive(), be.Iperf)
		}
		path := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		p, err := startProcess(sysHAProxy, filepath.Join(dir, "haproxy.log"), nil, s.haproxy, "-db", "-f", path)
		if err != nil {
			return nil, err
		}
		return listenInstance(ctx, p, ports, be)
	}}
}

func (s systemSetup) nginxSystem() system {
	return system{Name: sysNginx, start: func(ctx context.Context, dir string, be backends) (*instance, error) {
		ports, err := loopback.Ports(2)
		if err != nil {
			return nil, err
		}
		ka, upstreamKA := s.nginxKeepalive()
		servers := fmt.Sprintf("    server { listen 127.0.0.1:%d%s; proxy_pass %s;%s }\n", ports[0], ka, be.Echo, upstreamKA)
		if be.Iperf != "" {
			// Bulk with 1 MiB buffers, as tnsguard's and HAProxy's pipes (the
			// 16k default moved a third less); on the bulk listener only, so
			// the idle-memory figure (small listener) is nginx's default.
			servers += fmt.Sprintf("    server { listen 127.0.0.1:%d%s; proxy_pass %s; proxy_buffer_size 1m;%s }\n", ports[1], ka, be.Iperf, upstreamKA)
		}
		cfg := fmt.Sprintf(`load_module %s;
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile %[2]d;
pid %[3]s;
error_log %[4]s warn;
events { worker_connections %[2]d; }
stream {
%[5]s}
`, s.nginxModule, s.fileLimit, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "nginx-error.log"), servers)
		path := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		p, err := startProcess(sysNginx, filepath.Join(dir, "nginx.log"), nil,
			s.nginx, "-p", dir, "-c", path, "-e", filepath.Join(dir, "nginx-error.log"))
		if err != nil {
			return nil, err
		}
		p.countChildren = true
		in, err := listenInstance(ctx, p, ports, be)
		if err != nil {
			return nil, err
		}
		// Memory and CPU are summed over master and workers: wait for both workers.
		if err := p.waitReady(ctx, "2 workers", func() bool { return len(children(p.pid())) >= 2 }); err != nil {
			p.stop()
			return nil, err
		}
		return in, nil
	}}
}

func (s systemSetup) tnsguardSystem(name, binary string) system {
	return system{Name: name, start: func(ctx context.Context, dir string, be backends) (*instance, error) {
		ports, err := loopback.Ports(3)
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf(`[log]
level = "warn"

[admin]
listen = "127.0.0.1:%d"

[[listener]]
name = "bench"
listen = "127.0.0.1:%d"
backend = "echo"

[[backend]]
name = "echo"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, ports[2], ports[0], be.Echo)
		if be.Iperf != "" {
			cfg += fmt.Sprintf(`
[[listener]]
name = "bulk"
listen = "127.0.0.1:%d"
backend = "iperf"

[[backend]]
name = "iperf"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, ports[1], be.Iperf)
		}
		path := filepath.Join(dir, "tnsguard.toml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		p, err := startProcess(name, filepath.Join(dir, "tnsguard.log"), nil, binary, "run", "-config", path)
		if err != nil {
			return nil, err
		}
		return listenInstance(ctx, p, ports[:2], be)
	}}
}

// listenInstance waits for a proxy configured on ports[0] (small) and
// ports[1] (bulk, when iperf3 is there).
func listenInstance(ctx context.Context, p *process, ports []int, be backends) (*instance, error) {
	want := ports[:1]
	if be.Iperf != "" {
		want = ports[:2]
	}
	if err := waitListening(ctx, p, want...); err != nil {
		p.stop()
		return nil, err
	}
	in := &instance{Small: fmt.Sprintf("127.0.0.1:%d", ports[0]), proc: p}
	if be.Iperf != "" {
		in.Bulk = fmt.Sprintf("127.0.0.1:%d", ports[1])
	}
	return in, nil
}
