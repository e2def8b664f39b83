package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// repoRoot is the repository's top directory (two levels above this package).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s has no go.mod: %v", root, err)
	}
	return root
}

// readRepoFile returns the contents of a file given relative to the repository root.
func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// requireTool returns the path of an external command, or skips the test when it is
// missing. In CI (CI set in the environment) a missing tool is a failure: CI installs them.
func requireTool(t *testing.T, name, why string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed (needed to %s); CI must install it", name, why)
	}
	t.Skipf("SKIPPED: %s is not installed, cannot %s (set CI=1 to make this a failure)", name, why)
	return ""
}

// loadYAML parses every document of each YAML file (paths relative to the repository)
// into JSON, one array of documents per file, with python3's PyYAML: no YAML module is
// among the project's Go dependencies. One python3 run for all files: it starts slowly.
func loadYAML(t *testing.T, rels ...string) map[string]json.RawMessage {
	t.Helper()
	py := requireTool(t, "python3", "parse YAML")
	const script = `import sys, json
try:
    import yaml
except ImportError:
    sys.exit(3)
out = {}
for p in sys.argv[1:]:
    with open(p) as f:
        try:
            out[p] = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            print(p, e, file=sys.stderr)
            sys.exit(1)
json.dump(out, sys.stdout, default=str)`
	root := repoRoot(t)
	args := []string{"-I", "-c", script}
	for _, r := range rels {
		args = append(args, filepath.Join(root, r))
	}
	cmd := exec.Command(py, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 has no yaml module (Debian package python3-yaml); CI must install it")
		}
		t.Skip("SKIPPED: python3 has no yaml module (apt-get install python3-yaml); cannot parse YAML (set CI=1 to make this a failure)")
	}
	if err != nil {
		t.Fatalf("YAML: %v\n%s", err, stderr.String())
	}
	var byPath map[string]json.RawMessage
	if err := json.Unmarshal(out, &byPath); err != nil {
		t.Fatal(err)
	}
	docs := map[string]json.RawMessage{}
	for _, r := range rels {
		docs[r] = byPath[filepath.Join(root, r)]
	}
	return docs
}

// decodeYAML decodes one file's documents (from loadYAML) into v.
func decodeYAML(t *testing.T, docs map[string]json.RawMessage, rel string, v any) {
	t.Helper()
	if err := json.Unmarshal(docs[rel], v); err != nil {
		t.Fatalf("%s: unexpected shape: %v", rel, err)
	}
}

// tnsguardConfig is the part of tnsguard's TOML that the deployment files must agree with.
type tnsguardConfig struct {
	Admin struct {
		Listen string   `toml:"listen"`
		Allow  []string `toml:"allow"`
	} `toml:"admin"`
	Shutdown struct {
		Grace        string `toml:"grace"`
		DrainTimeout string `toml:"drain_timeout"`
	} `toml:"shutdown"`
	Listeners []struct {
		Name           string   `toml:"name"`
		Listen         string   `toml:"listen"`
		ProxyProtocol  string   `toml:"proxy_protocol"`
		TrustedProxies []string `toml:"trusted_proxies"`
		MaxSessions    int      `toml:"max_sessions"`
	} `toml:"listener"`
}

func parseTnsguardConfig(t *testing.T, name, text string) tnsguardConfig {
	t.Helper()
	var c tnsguardConfig
	// Only the keys above are decoded; `tnsguard check` judges the whole file.
	if _, err := toml.Decode(text, &c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:9521"
	}
	return c
}

// stopBudget is how long tnsguard may take to stop after SIGTERM with this config:
// shutdown.grace plus shutdown.drain_timeout (defaults 1s and 30s).
func (c tnsguardConfig) stopBudget(t *testing.T) time.Duration {
	t.Helper()
	parse := func(s string, def time.Duration) time.Duration {
		if s == "" {
			return def
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("bad duration %q: %v", s, err)
		}
		return d
	}
	return parse(c.Shutdown.Grace, time.Second) + parse(c.Shutdown.DrainTimeout, 30*time.Second)
}

// port returns the port number of a host:port address.
func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return n
}

// host returns the host part of a host:port address.
func host(t *testing.T, addr string) string {
	t.Helper()
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return h
}

// runCmd runs a command with a deadline and returns its combined output.
func runCmd(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
