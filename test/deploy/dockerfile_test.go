package deploy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dockerInstruction is one instruction of a Dockerfile, continuation lines joined.
type dockerInstruction struct {
	Line int    // first line
	Cmd  string // upper case: FROM, RUN, COPY...
	Args string
}

// dockerStage is one FROM and the instructions up to the next.
type dockerStage struct {
	Image string // with global ARGs substituted
	Name  string // AS name, or ""
	Insts []dockerInstruction
}

// find returns the stage's instructions of one kind.
func (s dockerStage) find(cmd string) []dockerInstruction {
	var out []dockerInstruction
	for _, in := range s.Insts {
		if in.Cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into its stages. Global ARGs (before the first
// FROM) are substituted into FROM lines as Docker does.
func parseDockerfile(text string) (stages []dockerStage, globalArgs map[string]string, err error) {
	globalArgs = map[string]string{}
	var insts []dockerInstruction
	sc := bufio.NewScanner(strings.NewReader(text))
	lineNo, start := 0, 0
	var cur strings.Builder
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(line, "#") {
			continue // comments inside a continued instruction
		}
		if cur.Len() == 0 {
			start = lineNo
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		full := cur.String()
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		insts = append(insts, dockerInstruction{Line: start, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)})
	}
	if cur.Len() > 0 {
		return nil, nil, fmt.Errorf("line %d: instruction continues past the end of the file", start)
	}
	subst := regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)
	for _, in := range insts {
		switch {
		case in.Cmd == "FROM":
			f := strings.Fields(in.Args)
			if len(f) == 0 {
				return nil, nil, fmt.Errorf("line %d: FROM without an image", in.Line)
			}
			st := dockerStage{Image: subst.ReplaceAllStringFunc(f[0], func(v string) string {
				return globalArgs[subst.FindStringSubmatch(v)[1]]
			})}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			}
			stages = append(stages, st)
		case len(stages) == 0:
			if in.Cmd != "ARG" {
				return nil, nil, fmt.Errorf("line %d: %s before the first FROM", in.Line, in.Cmd)
			}
			name, def, _ := strings.Cut(in.Args, "=")
			globalArgs[name] = def
		default:
			stages[len(stages)-1].Insts = append(stages[len(stages)-1].Insts, in)
		}
	}
	return stages, globalArgs, nil
}

// execForm decodes a JSON exec-form argument list (["a","b"]).
func execForm(t *testing.T, in dockerInstruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.Args), &v); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s is not in exec (JSON) form: %v", in.Line, in.Cmd, in.Args, err)
	}
	return v
}

func loadDockerfile(t *testing.T) []dockerStage {
	t.Helper()
	stages, _, err := parseDockerfile(readRepoFile(t, "Dockerfile"))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a build stage and a final stage", len(stages))
	}
	return stages
}

// buildCommand returns the build stage's `go build` RUN line.
func buildCommand(t *testing.T, build dockerStage) dockerInstruction {
	t.Helper()
	for _, in := range build.find("RUN") {
		if strings.Contains(in.Args, "go build") {
			return in
		}
	}
	t.Fatal("the build stage has no RUN ... go build")
	return dockerInstruction{}
}

var buildOutput = regexp.MustCompile(`-o\s+(\S+)`)

func TestDockerfileStages(t *testing.T) {
	stages := loadDockerfile(t)
	build, final := stages[0], stages[len(stages)-1]

	if !strings.HasPrefix(build.Image, "golang:1.26") {
		t.Errorf("build stage FROM %q, want golang:1.26", build.Image)
	}
	if build.Name == "" {
		t.Error("build stage has no name (FROM ... AS build)")
	}
	// Modules are downloaded from go.mod/go.sum alone, before the sources are copied,
	// so a source change reuses that layer.
	var order []string
	for _, in := range build.Insts {
		switch {
		case in.Cmd == "COPY" && strings.Fields(in.Args)[0] == "go.mod":
			order = append(order, "copy-mod")
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go mod download"):
			order = append(order, "download")
		case in.Cmd == "COPY" && strings.HasPrefix(in.Args, ". "):
			order = append(order, "copy-all")
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go build"):
			order = append(order, "build")
		}
	}
	if want := []string{"copy-mod", "download", "copy-all", "build"}; !slices.Equal(order, want) {
		t.Errorf("build stage steps %v, want %v", order, want)
	}
	cmd := buildCommand(t, build).Args
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`, "./cmd/tnsguard"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("go build line lacks %s: %s", want, cmd)
		}
	}

	switch final.Image {
	case "gcr.io/distroless/static-debian12:nonroot", "scratch":
	default:
		t.Errorf("final stage FROM %q, want gcr.io/distroless/static-debian12:nonroot or scratch", final.Image)
	}
	// Nothing runs in the final stage: no package installs, no shell needed, and the
	// stage builds without network once its base image is present.
	for _, in := range final.find("RUN") {
		t.Errorf("Dockerfile:%d: RUN in the final stage: %s", in.Line, in.Args)
	}
	users := final.find("USER")
	if len(users) == 0 {
		t.Fatal("final stage sets no USER")
	}
	user := users[len(users)-1].Args
	uid, _, _ := strings.Cut(user, ":")
	if uid == "root" || strings.Trim(uid, "0") == "" {
		t.Errorf("final stage USER %q is root", user)
	}
	if uid != "65532" {
		t.Errorf("final stage USER %q, want the numeric non-root 65532 (runAsNonRoot can only verify a number)", user)
	}

	// The binary the build stage writes is the one the final stage copies.
	out := buildOutput.FindStringSubmatch(buildCommand(t, build).Args)
	if out == nil {
		t.Fatal("go build line has no -o")
	}
	copies := map[string]string{} // destination -> source
	for _, in := range final.find("COPY") {
		f := strings.Fields(in.Args)
		from := ""
		if strings.HasPrefix(f[0], "--from=") {
			from, f = strings.TrimPrefix(f[0], "--from="), f[1:]
		}
		if len(f) != 2 {
			t.Fatalf("Dockerfile:%d: COPY %s: want one source and one destination", in.Line, in.Args)
		}
		if from != "" && from != build.Name {
			t.Errorf("Dockerfile:%d: COPY from stage %q, want %q", in.Line, from, build.Name)
		}
		copies[f[1]] = f[0]
	}
	if src := copies["/usr/local/bin/tnsguard"]; src != out[1] {
		t.Errorf("final stage copies %q to /usr/local/bin/tnsguard, the build writes %q", src, out[1])
	}
	cfg := copies["/etc/tnsguard/tnsguard.toml"]
	if cfg == "" {
		t.Fatal("final stage copies no config to /etc/tnsguard/tnsguard.toml")
	}
	if _, err := os.Stat(filepath.Join(repoRoot(t), cfg)); err != nil {
		t.Errorf("the image's config: %v", err)
	}
}

func TestDockerfileRuntime(t *testing.T) {
	stages := loadDockerfile(t)
	final := stages[len(stages)-1]
	one := func(cmd string) dockerInstruction {
		t.Helper()
		ins := final.find(cmd)
		if len(ins) != 1 {
			t.Fatalf("final stage has %d %s instructions, want 1", len(ins), cmd)
		}
		return ins[0]
	}
	if got := execForm(t, one("ENTRYPOINT")); !slices.Equal(got, []string{"tnsguard"}) {
		t.Errorf("ENTRYPOINT %q, want [tnsguard]", got)
	}
	if got := execForm(t, one("CMD")); !slices.Equal(got, []string{"run", "-config", "/etc/tnsguard/tnsguard.toml"}) {
		t.Errorf("CMD %q, want [run -config /etc/tnsguard/tnsguard.toml]", got)
	}

	hc := one("HEALTHCHECK")
	opts, cmd, ok := strings.Cut(hc.Args, "CMD ")
	if !ok {
		t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD", hc.Line)
	}
	if got := execForm(t, dockerInstruction{Line: hc.Line, Cmd: "HEALTHCHECK CMD", Args: cmd}); !slices.Equal(got, []string{"tnsguard", "healthcheck"}) {
		t.Errorf("HEALTHCHECK CMD %q, want [\"tnsguard\",\"healthcheck\"]", got)
	}
	hopt := map[string]string{}
	for _, f := range strings.Fields(opts) {
		k, v, _ := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		hopt[k] = v
	}
	dur := func(k string) time.Duration {
		t.Helper()
		d, err := time.ParseDuration(hopt[k])
		if err != nil {
			t.Fatalf("HEALTHCHECK --%s=%q: %v", k, hopt[k], err)
		}
		return d
	}
	interval, timeout, startPeriod := dur("interval"), dur("timeout"), dur("start-period")
	if timeout >= interval {
		t.Errorf("HEALTHCHECK timeout %v is not below interval %v", timeout, interval)
	}
	if hopt["retries"] == "" || hopt["retries"] == "1" {
		t.Errorf("HEALTHCHECK --retries=%q: one slow check should not mark it unhealthy", hopt["retries"])
	}

	// The image's config: apps and Prometheus reach the container's address, the
	// in-container healthcheck reaches the admin port on loopback (its default address).
	cfgText := readRepoFile(t, "configs/docker/tnsguard.toml")
	cfg := parseTnsguardConfig(t, "configs/docker/tnsguard.toml", cfgText)
	if h := host(t, cfg.Admin.Listen); h != "0.0.0.0" && h != "" {
		t.Errorf("image config admin.listen %q: not reachable from outside the container", cfg.Admin.Listen)
	}
	if p := port(t, cfg.Admin.Listen); p != 9521 {
		t.Errorf("image config admin port %d: `tnsguard healthcheck` asks 127.0.0.1:9521", p)
	}
	exposed := strings.Fields(one("EXPOSE").Args)
	wantPorts := []string{fmt.Sprint(port(t, cfg.Admin.Listen))}
	for _, l := range cfg.Listeners {
		if h := host(t, l.Listen); h != "0.0.0.0" && h != "" {
			t.Errorf("image config listener %q listens on %q: not reachable from outside the container", l.Name, l.Listen)
		}
		wantPorts = append(wantPorts, fmt.Sprint(port(t, l.Listen)))
	}
	for _, p := range wantPorts {
		if !slices.Contains(exposed, p) && !slices.Contains(exposed, p+"/tcp") {
			t.Errorf("EXPOSE %v lacks %s", exposed, p)
		}
	}
	// /readyz needs a server up: rise health checks in a row (defaults 2 x 5s).
	if startPeriod < 10*time.Second {
		t.Errorf("HEALTHCHECK --start-period=%v is shorter than the first health checks take (2 x 5s)", startPeriod)
	}
}

// dockerignore is a .dockerignore: patterns matched as Docker's build context does
// (path relative to the context; a pattern that matches a directory excludes all
// below it; ! re-includes; the last matching pattern wins).
type dockerignore struct {
	res     []*regexp.Regexp
	include []bool
}

func parseDockerignore(text string) dockerignore {
	var d dockerignore
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		inc := strings.HasPrefix(line, "!")
		line = strings.TrimPrefix(filepath.Clean(strings.TrimPrefix(line, "!")), "/")
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch c := line[i]; {
			case strings.HasPrefix(line[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(line[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		d.res = append(d.res, regexp.MustCompile(re.String()))
		d.include = append(d.include, inc)
	}
	return d
}

// excluded reports whether a slash-separated context path is left out of the context.
func (d dockerignore) excluded(rel string) bool {
	out := false
	for i, re := range d.res {
		for p := rel; ; {
			if re.MatchString(p) {
				out = !d.include[i]
				break
			}
			j := strings.LastIndex(p, "/")
			if j < 0 {
				break
			}
			p = p[:j]
		}
	}
	return out
}

func TestDockerignore(t *testing.T) {
	d := parseDockerignore(readRepoFile(t, ".dockerignore"))
	for _, keep := range []string{"go.mod", "go.sum", "cmd/tnsguard/main.go", "configs/docker/tnsguard.toml", "proxy/session.go"} {
		if d.excluded(keep) {
			t.Errorf(".dockerignore leaves %s out of the build context", keep)
		}
	}
	for _, drop := range []string{".git/HEAD", "tnsguard", "bin/tnsguard", "proxy/proxy.test", "test/bench/results/x.json"} {
		if !d.excluded(drop) {
			t.Errorf(".dockerignore sends %s into the build context", drop)
		}
	}
}

// buildContext copies the repository into dir as Docker would send it: without what
// .dockerignore excludes.
func buildContext(t *testing.T, dir string) {
	t.Helper()
	root := repoRoot(t)
	ign := parseDockerignore(readRepoFile(t, ".dockerignore"))
	err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if ign.excluded(rel) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(dir, rel)
		if e.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !e.Type().IsRegular() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.Create(dst)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, src); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copying the build context: %v", err)
	}
}

// buildLikeDockerfile builds tnsguard from a copy of the build context with the
// Dockerfile's own `go build` line (only its -o changed), and returns the binary.
func buildLikeDockerfile(t *testing.T, version string) string {
	t.Helper()
	build := loadDockerfile(t)[0]
	line := buildCommand(t, build).Args
	ctxDir := t.TempDir()
	buildContext(t, ctxDir)
	bin := filepath.Join(t.TempDir(), "tnsguard")
	cmd := buildOutput.ReplaceAllLiteralString(line, "-o "+bin)
	start := time.Now()
	// ARG VERSION is an environment variable of the RUN shell.
	out, err := runCmd(t, ctxDir, []string{"VERSION=" + version}, "sh", "-c", cmd)
	if err != nil {
		t.Fatalf("the Dockerfile's build command failed in a copy of the build context: %v\n%s\n%s", err, cmd, out)
	}
	t.Logf("built %s in %v: %s", bin, time.Since(start).Round(time.Millisecond), cmd)
	return bin
}

// checkStatic checks that the binary the Dockerfile's command built runs in an
// image without libc (distroless static, scratch): statically linked, stripped, no
// build paths, and -X main.version applied.
func checkStatic(t *testing.T, bin, version string) {
	fileCmd := requireTool(t, "file", "tell a static binary")
	lddCmd := requireTool(t, "ldd", "tell a static binary")

	out, err := runCmd(t, "", nil, fileCmd, bin)
	if err != nil {
		t.Fatalf("file: %v: %s", err, out)
	}
	t.Logf("file: %s", out)
	if !strings.Contains(out, "statically linked") {
		t.Errorf("file does not call it statically linked: %s", out)
	}
	if !strings.Contains(out, ", stripped") {
		t.Errorf("file does not call it stripped (-s -w): %s", out)
	}
	out, _ = runCmd(t, "", nil, lddCmd, bin) // ldd exits 1 on a static binary
	if !strings.Contains(out, "not a dynamic executable") {
		t.Errorf("ldd: %s; want \"not a dynamic executable\"", out)
	}
	// -trimpath: no path of the build machine in the binary.
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), repoRoot(t)) || strings.Contains(string(raw), os.TempDir()+string(os.PathSeparator)) {
		t.Error("the binary holds paths of the build machine: -trimpath did not apply")
	}
	// -X main.version reaches `tnsguard version`.
	out, err = runCmd(t, "", nil, bin, "version")
	if err != nil {
		t.Fatalf("tnsguard version: %v: %s", err, out)
	}
	if !strings.Contains(out, version) {
		t.Errorf("tnsguard version printed %q, want it to contain %q (from -ldflags -X main.version)", out, version)
	}
	st, _ := os.Stat(bin)
	t.Logf("binary size %.1f MiB", float64(st.Size())/(1<<20))
}
