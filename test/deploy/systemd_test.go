package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// systemdUnit maps "Section.Key" to the values of a unit file, in order.
type systemdUnit map[string][]string

func parseSystemdUnit(t *testing.T, text string) systemdUnit {
	t.Helper()
	u := systemdUnit{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("tnsguard.service:%d: not a key=value line in a section: %q", i+1, line)
			}
			key := section + "." + strings.TrimSpace(k)
			u[key] = append(u[key], strings.TrimSpace(v))
		}
	}
	return u
}

// last is the value that counts for a key set more than once (systemd: the last one).
func (u systemdUnit) last(key string) (string, bool) {
	v := u[key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// systemdSeconds parses a systemd time span as used here ("90s", "2min", "30").
func systemdSeconds(t *testing.T, v string) time.Duration {
	t.Helper()
	v = strings.ReplaceAll(v, "min", "m")
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("time span %q: %v", v, err)
	}
	return d
}

const unitPath = "configs/systemd/tnsguard.service"

func TestSystemdUnit(t *testing.T) {
	u := parseSystemdUnit(t, readRepoFile(t, unitPath))
	want := map[string]string{
		"Service.ExecStart":       "/usr/local/bin/tnsguard run -config /etc/tnsguard/tnsguard.toml",
		"Service.ExecReload":      "/bin/kill -HUP $MAINPID",
		"Service.Restart":         "on-failure",
		"Service.LimitNOFILE":     "1048576",
		"Service.NoNewPrivileges": "yes",
		"Service.ProtectSystem":   "strict",
		"Service.ProtectHome":     "yes",
		"Service.PrivateTmp":      "yes",
		"Install.WantedBy":        "multi-user.target",
	}
	for k, w := range want {
		if got, _ := u.last(k); got != w {
			t.Errorf("%s=%q, want %q", k, got, w)
		}
	}
	// notify: an upgrade (SIGUSR2) tells systemd the new main process;
	// with simple or exec, systemd would stop the service, the new process
	// with it, when the old one exits after its drain.
	if v, _ := u.last("Service.Type"); v != "notify" {
		t.Errorf("Type=%q: want notify", v)
	}
	if v, ok := u.last("Service.NotifyAccess"); ok && v != "main" {
		t.Errorf("NotifyAccess=%q: only the main process speaks for the service", v)
	}
	if v, ok := u.last("Service.RestartSec"); !ok || systemdSeconds(t, v) <= 0 {
		t.Errorf("RestartSec=%q: want a pause before a restart", v)
	}
	if dyn, _ := u.last("Service.DynamicUser"); dyn != "yes" {
		if usr, _ := u.last("Service.User"); usr == "" || usr == "root" {
			t.Errorf("neither DynamicUser=yes nor a non-root User= (User=%q)", usr)
		}
	}
	// No capabilities unless a listener needs a port below 1024.
	if caps, ok := u.last("Service.CapabilityBoundingSet"); !ok || (caps != "" && caps != "CAP_NET_BIND_SERVICE") {
		t.Errorf("CapabilityBoundingSet=%q (set: %v), want empty", caps, ok)
	}
	fams, _ := u.last("Service.RestrictAddressFamilies")
	for _, f := range []string{"AF_INET", "AF_INET6"} {
		if !strings.Contains(" "+fams+" ", " "+f+" ") {
			t.Errorf("RestrictAddressFamilies=%q lacks %s: no TCP", fams, f)
		}
	}
	// systemd's stop timeout must outlast tnsguard's own drain, or SIGKILL cuts sessions.
	stopAfter, ok := u.last("Service.TimeoutStopSec")
	if !ok {
		t.Fatal("no TimeoutStopSec: systemd's default (90s) is not tied to the drain")
	}
	cfg := parseTnsguardConfig(t, "configs/tnsguard.toml", readRepoFile(t, "configs/tnsguard.toml"))
	if got, budget := systemdSeconds(t, stopAfter), cfg.stopBudget(t); got <= budget {
		t.Errorf("TimeoutStopSec=%v is not above shutdown grace + drain_timeout = %v", got, budget)
	}
}

var exposureLine = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// TestSystemdAnalyze runs systemd's own checks on the unit: verify (syntax, keys,
// executables) and the offline security score of its hardening.
func TestSystemdAnalyze(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", "verify the systemd unit")
	// verify insists that ExecStart's program exists and is executable: point the
	// copy at this test binary instead of /usr/local/bin/tnsguard.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(readRepoFile(t, unitPath), "/usr/local/bin/tnsguard", self)
	path := filepath.Join(t.TempDir(), "tnsguard.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sa, "verify", path)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		// verify exits 0 on unknown keys but says so: any output is a finding.
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(sa, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposureLine.FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no exposure level:\n%s", out)
	}
	level, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f (0 = fully hardened, 10 = none; below 2 is \"OK\")", level)
	if level >= 2 {
		t.Errorf("exposure level %.1f, want below 2.0:\n%s", level, out)
	}
}

// lowPortAdvice is the unit's settings as the advice for a port below 1024 (in the
// unit's comment and in the README) changes them: the Key=Value pairs of the
// paragraph that gives it.
func lowPortAdvice(t *testing.T, rel string, u systemdUnit) map[string]string {
	t.Helper()
	eff := map[string]string{}
	for _, k := range []string{"PrivateUsers", "AmbientCapabilities", "CapabilityBoundingSet"} {
		eff[k], _ = u.last("Service." + k)
	}
	lines := strings.Split(readRepoFile(t, rel), "\n")
	start := -1
	for i, l := range lines {
		if strings.Contains(l, "below 1024") || strings.Contains(l, "below port 1024") {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatalf("%s gives no advice for a port below 1024", rel)
	}
	var para []string
	for i := start; i < len(lines); i++ {
		l := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(lines[i]), "#"))
		if l == "" || (i > start && strings.HasPrefix(l, "- ")) || strings.HasPrefix(l, "[") {
			break
		}
		para = append(para, l)
	}
	// The first value given for a key is the advice; a later one may be a warning.
	seen := map[string]bool{}
	for _, m := range regexp.MustCompile(`\b([A-Z][A-Za-z]+)=([A-Za-z_]+)`).FindAllStringSubmatch(strings.Join(para, " "), -1) {
		if !seen[m[1]] {
			eff[m[1]], seen[m[1]] = m[2], true
		}
	}
	return eff
}

// TestSystemdLowPortAdvice: the unit and the README tell how to listen below port
// 1024. With PrivateUsers=yes the service runs in a user namespace of its own, and a
// capability there counts for nothing in the host's network namespace (systemd.exec:
// "zero process capabilities on the host's user namespace"): bind fails with EACCES
// whatever AmbientCapabilities says. The advice must turn PrivateUsers off.
func TestSystemdLowPortAdvice(t *testing.T) {
	u := parseSystemdUnit(t, readRepoFile(t, unitPath))
	for _, rel := range []string{unitPath, "README.md"} {
		eff := lowPortAdvice(t, rel, u)
		if !strings.Contains(eff["AmbientCapabilities"], "CAP_NET_BIND_SERVICE") {
			t.Errorf("%s: the advice for a port below 1024 leaves AmbientCapabilities=%q", rel, eff["AmbientCapabilities"])
		}
		if pu := eff["PrivateUsers"]; pu == "yes" || pu == "true" || pu == "1" || pu == "on" {
			t.Errorf("%s: the advice for a port below 1024 keeps PrivateUsers=%s: in its own user namespace the service's CAP_NET_BIND_SERVICE does not reach the host's network, and bind is denied", rel, pu)
		}
	}
}

// checkSystemdLowPort runs tnsguard as the unit runs it once the advice for a port
// below 1024 is applied, in a network namespace of its own (the port is below 1024,
// and no other test's): in a user namespace of its own when PrivateUsers stays on
// (as its root, with every capability there: more than the unit's user gets), else as
// an unprivileged user with CAP_NET_BIND_SERVICE in the host's namespace.
func checkSystemdLowPort(t *testing.T, bin string) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to make a network namespace")
	}
	unshare := requireTool(t, "unshare", "make namespaces")
	setpriv := requireTool(t, "setpriv", "give a capability")
	u := parseSystemdUnit(t, readRepoFile(t, unitPath))
	eff := lowPortAdvice(t, unitPath, u)
	// An unprivileged user must reach the files: t.TempDir's parent is 0700.
	dir, err := os.MkdirTemp("", "tnsguard-lowport-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "tnsguard")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "low.toml")
	if err := os.WriteFile(cfg, []byte(`[admin]
listen = "127.0.0.1:29521"
[[listener]]
name    = "low"
listen  = "0.0.0.0:999"
backend = "db"
[[backend]]
name = "db"
  [[backend.server]]
  address = "127.0.0.1:21521"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-n", "--"}
	if pu := eff["PrivateUsers"]; pu == "yes" || pu == "true" {
		args = append(args, unshare, "-U", "-r", "--")
	} else {
		args = append(args, setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups",
			"--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service", "--")
	}
	args = append(args, bin, "run", "-config", cfg)
	// It runs until it says it started, or 15 s: a fixed 3 s run was all a
	// start had, on a loaded machine too (a binary just written, two
	// namespaces' set-up).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	logPath := filepath.Join(dir, "out.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, unshare, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var out []byte
	for !strings.Contains(string(out), "tnsguard started") {
		select {
		case <-exited:
		case <-time.After(20 * time.Millisecond):
			out, _ = os.ReadFile(logPath)
			continue
		}
		break // it ended (or 15 s passed): its output is whole
	}
	cancel()
	<-exited
	out, _ = os.ReadFile(logPath)
	if !strings.Contains(string(out), "tnsguard started") {
		t.Errorf("the unit with the advice for a port below 1024 (PrivateUsers=%q AmbientCapabilities=%q) does not start:\n%s",
			eff["PrivateUsers"], eff["AmbientCapabilities"], out)
	}
}
