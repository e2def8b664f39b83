package deploy

import (
	"fmt"
	"go/scanner"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
)

// The README is where users find the names they then type or search for: test names
// given as evidence, metric names, config keys, flags, log messages, alert names and
// file paths. These tests check that each one it cites still exists, so that a rename
// in the code fails here, naming the README line, instead of leaving the README stale.
//
// A ```toml block that is meant to be wrong can be exempted by putting the line
// <!-- readme-test: not a config --> right above it.

const readmePath = "README.md"

// readmeLine is one line of the README with its number and, inside a fenced block,
// the block's language ("" outside a block, "-" for a block without one).
type readmeLine struct {
	n     int
	text  string
	fence string
}

func readmeLines(t *testing.T) []readmeLine {
	t.Helper()
	var out []readmeLine
	fence := ""
	for i, l := range strings.Split(readRepoFile(t, readmePath), "\n") {
		if strings.HasPrefix(l, "```") {
			if fence == "" {
				fence = strings.TrimSpace(strings.TrimPrefix(l, "```"))
				if fence == "" {
					fence = "-"
				}
			} else {
				fence = ""
			}
			continue
		}
		out = append(out, readmeLine{i + 1, l, fence})
	}
	return out
}

// goFiles walks the repository's .go files (not .git) and calls f with each path
// relative to the root and its text.
func goFiles(t *testing.T, f func(rel, text string)) {
	t.Helper()
	root := repoRoot(t)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		f(filepath.ToSlash(rel), string(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

var (
	testFuncDecl = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark|Example)\w*)\(`)
	testNameRef  = regexp.MustCompile(`\b(?:Test|Fuzz|Benchmark)[A-Z0-9_]\w*`)
	goTestPkg    = regexp.MustCompile(`(?:^|\s)\./([\w/.-]+?)/?(?:\s|$)`)
)

// TestReadmeCitesExistingTests: every TestX the README gives as evidence is a test
// function of the tree. In a `go test -run` line a name is a pattern (go test matches
// it anywhere in a test's name) in the package the line names; a name followed by *
// is a prefix; TestX/sub names a subtest, whose name must be in TestX's file.
func TestReadmeCitesExistingTests(t *testing.T) {
	dirs := map[string][]string{}  // test function -> directories defining it
	files := map[string][]string{} // test function -> texts of the files defining it
	goFiles(t, func(rel, text string) {
		if !strings.HasSuffix(rel, "_test.go") {
			return
		}
		for _, m := range testFuncDecl.FindAllStringSubmatch(text, -1) {
			dirs[m[1]] = append(dirs[m[1]], filepath.ToSlash(filepath.Dir(rel)))
			files[m[1]] = append(files[m[1]], text)
		}
	})
	if len(dirs) < 100 {
		t.Fatalf("found only %d test functions in the tree: the walk is broken", len(dirs))
	}
	cited := 0
	for _, l := range readmeLines(t) {
		for _, loc := range testNameRef.FindAllStringIndex(l.text, -1) {
			name, rest := l.text[loc[0]:loc[1]], l.text[loc[1]:]
			cited++
			switch {
			case strings.Contains(l.text, "-run ") || strings.Contains(l.text, "-run="):
				var pkgs []string
				for _, m := range goTestPkg.FindAllStringSubmatch(l.text, -1) {
					pkgs = append(pkgs, m[1])
				}
				found := false
				for fn, ds := range dirs {
					if !strings.Contains(fn, name) {
						continue
					}
					for _, d := range ds {
						if len(pkgs) != 1 || d == pkgs[0] {
							found = true
						}
					}
				}
				if !found {
					t.Errorf("README.md:%d: `go test -run` pattern %s matches no test function (in %v): renamed or removed?", l.n, name, pkgs)
				}
			case strings.HasPrefix(rest, "*"):
				found := false
				for fn := range dirs {
					found = found || strings.HasPrefix(fn, name)
				}
				if !found {
					t.Errorf("README.md:%d: no test function starts with %s (cited as %s*)", l.n, name, name)
				}
			case dirs[name] == nil:
				t.Errorf("README.md:%d: test %s is cited, but no test function has that name: renamed or removed?%s", l.n, name, similarTests(name, dirs))
			case strings.HasPrefix(rest, "/"):
				sub := strings.FieldsFunc(rest[1:], func(r rune) bool { return r == '`' || r == ' ' || r == '|' || r == ')' || r == ',' })
				if len(sub) == 0 {
					continue
				}
				want := strconv.Quote(strings.ReplaceAll(sub[0], "_", " "))
				if !slices.ContainsFunc(files[name], func(text string) bool {
					return strings.Contains(text, strconv.Quote(sub[0])) || strings.Contains(text, want)
				}) {
					t.Errorf("README.md:%d: subtest %s/%s is cited, but %q is not a string in %s's file", l.n, name, sub[0], sub[0], name)
				}
			}
		}
	}
	if cited < 50 {
		t.Fatalf("found only %d test names in the README: the pattern is broken", cited)
	}
}

// similarTests suggests test functions whose names share a long prefix with name.
func similarTests(name string, dirs map[string][]string) string {
	var near []string
	for fn := range dirs {
		n := 0
		for n < len(fn) && n < len(name) && fn[n] == name[n] {
			n++
		}
		if n >= len(name)*2/3 && n > 8 {
			near = append(near, fn)
		}
	}
	if len(near) == 0 {
		return ""
	}
	sort.Strings(near)
	if len(near) > 5 {
		near = near[:5]
	}
	return " (tests with a similar name: " + strings.Join(near, ", ") + ")"
}

// metricFamily is one metric tnsguard registers: its type and label names.
type metricFamily struct {
	typ    string
	labels []string
}

type oneLink struct{}

func (oneLink) ServerLinks() []metrics.ServerLink {
	return []metrics.ServerLink{{Backend: "b", Server: "s", HasRTT: true}}
}

var descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)

// registeredMetrics builds tnsguard's registry as cmd/tnsguard does (metrics.New and
// the TCP_INFO collector), gives every labelled metric one child so that it shows in
// Gather, and returns every family by name.
func registeredMetrics(t *testing.T) map[string]metricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "readme")
	reg.MustRegister(metrics.NewTCPInfoCollector(oneLink{}))
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		c, ok := f.Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		with := f.MethodByName("WithLabelValues")
		if !with.IsValid() {
			continue // no labels: gathered as it is
		}
		ch := make(chan *prometheus.Desc, 8)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			mm := descLabels.FindStringSubmatch(d.String())
			if mm == nil {
				t.Fatalf("metrics.%s: cannot read the labels of %s", v.Type().Field(i).Name, d)
			}
			var args []reflect.Value
			for range strings.Split(mm[1], ",") {
				args = append(args, reflect.ValueOf("x"))
			}
			with.Call(args)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]metricFamily{}
	for _, mf := range mfs {
		f := metricFamily{typ: strings.ToLower(mf.GetType().String())}
		if len(mf.GetMetric()) > 0 {
			for _, lp := range mf.GetMetric()[0].GetLabel() {
				f.labels = append(f.labels, lp.GetName())
			}
		}
		out[mf.GetName()] = f
	}
	return out
}

var readmeMetric = regexp.MustCompile(`\btnsguard_[a-z0-9_]+(\{[^}]*\})?`)

// TestReadmeMetricsExist: every tnsguard_ metric the README names is one tnsguard
// registers (a histogram's _bucket, _sum and _count included), and every label it
// puts in braces is one of that metric's labels.
func TestReadmeMetricsExist(t *testing.T) {
	reg := registeredMetrics(t)
	lits := map[string]bool{}
	for _, s := range goStrings(t) {
		lits[s] = true
	}
	// Labels whose values come from the config, the network or the build: any value.
	freeLabels := map[string]bool{"listener": true, "backend": true, "server": true, "service": true, "version": true}
	ours := 0
	for name := range reg {
		if strings.HasPrefix(name, "tnsguard_") {
			ours++
		}
	}
	if ours < 15 {
		t.Fatalf("the registry has only %d tnsguard_ metrics: building it is broken", ours)
	}
	for _, l := range readmeLines(t) {
		for _, m := range readmeMetric.FindAllStringSubmatch(l.text, -1) {
			name := strings.TrimSuffix(m[0], m[1])
			fam, ok := reg[name]
			if !ok {
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if base, cut := strings.CutSuffix(name, suf); cut && reg[base].typ == "histogram" {
						fam, ok = reg[base], true
					}
				}
			}
			if !ok {
				t.Errorf("README.md:%d: metric %s is not one tnsguard registers (metrics.New): renamed or removed?", l.n, name)
				continue
			}
			if m[1] == "" {
				continue
			}
			for _, sel := range strings.Split(strings.Trim(m[1], "{}"), ",") {
				label, value := strings.TrimSpace(sel), ""
				if i := strings.IndexAny(label, "=!~"); i >= 0 {
					label, value = strings.TrimSpace(label[:i]), strings.TrimLeft(label[i:], "=!~")
				}
				if v, err := strconv.Unquote(value); err == nil && !freeLabels[label] && !strings.HasPrefix(sel[len(label):], "=~") && !lits[v] {
					t.Errorf("README.md:%d: %s{%s}: %q is not a value the code sets (no such string literal): renamed?", l.n, name, sel, v)
				}
				if label == "" || label == "le" && strings.HasSuffix(name, "_bucket") {
					continue
				}
				if !slices.Contains(fam.labels, label) {
					t.Errorf("README.md:%d: %s has no label %q (its labels: %s)", l.n, name, label, strings.Join(fam.labels, ", "))
				}
			}
		}
	}
	// And the other way: every metric of tnsguard's own is documented.
	text := readRepoFile(t, readmePath)
	for name := range reg {
		if strings.HasPrefix(name, "tnsguard_") && !regexp.MustCompile(`\b`+name+`\b`).MatchString(text) {
			t.Errorf("metric %s is registered but the README never names it", name)
		}
	}
}

// TestReadmePathsExist: every repository path the README names (configs/..., test/...,
// ./proxy/, a markdown link's target) exists.
func TestReadmePathsExist(t *testing.T) {
	root := repoRoot(t)
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var tops []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != ".git" {
			tops = append(tops, regexp.QuoteMeta(e.Name()))
		}
	}
	// A path starts at a top-level directory, not inside a word, a URL or another path.
	pathRef := regexp.MustCompile(`(?:^|[^\w./-])(?:\./)?((?:` + strings.Join(tops, "|") + `)/[\w.*/-]*)`)
	link := regexp.MustCompile(`\]\(([^)#\s]+)\)`)
	checked := 0
	check := func(n int, p string) {
		p = strings.TrimRight(p, ".,:;")
		if p == "" || strings.Contains(p, "...") {
			return
		}
		checked++
		matches, err := filepath.Glob(filepath.Join(root, p))
		if err != nil || len(matches) == 0 {
			t.Errorf("README.md:%d: path %s does not exist in the repository", n, p)
		}
	}
	for _, l := range readmeLines(t) {
		for _, m := range pathRef.FindAllStringSubmatch(l.text, -1) {
			check(l.n, m[1])
		}
		for _, m := range link.FindAllStringSubmatch(l.text, -1) {
			if !strings.Contains(m[1], "://") {
				check(l.n, m[1])
			}
		}
	}
	if checked < 30 {
		t.Fatalf("checked only %d paths: the pattern is broken", checked)
	}
}

var (
	alertRef  = regexp.MustCompile(`\bTnsguard[A-Z]\w*`)
	alertDecl = regexp.MustCompile(`(?m)^\s*-\s+alert:\s*(\S+)`)
)

// TestReadmeAlertsExist: every alert the README names is in the rules file, and the
// README's alert table lists every alert of the rules file.
func TestReadmeAlertsExist(t *testing.T) {
	rules := map[string]bool{}
	for _, m := range alertDecl.FindAllStringSubmatch(readRepoFile(t, rulesPath), -1) {
		rules[m[1]] = true
	}
	if len(rules) == 0 {
		t.Fatalf("%s: no alert found", rulesPath)
	}
	inTable := map[string]bool{}
	for _, l := range readmeLines(t) {
		for _, a := range alertRef.FindAllString(l.text, -1) {
			if !rules[a] {
				t.Errorf("README.md:%d: alert %s is not in %s: renamed or removed?", l.n, a, rulesPath)
			}
		}
		if a, ok := strings.CutPrefix(l.text, "| "); ok && l.fence == "" {
			inTable[strings.TrimSpace(strings.Split(a, "|")[0])] = true
		}
	}
	for a := range rules {
		if !inTable[a] {
			t.Errorf("alert %s of %s is missing from the README's table of alerts", a, rulesPath)
		}
	}
}

// TestReadmeTOMLBlocksParse: every ```toml block of the README is accepted by
// tnsguard's own parser (config.Parse: no unknown key, no value of the wrong type, no
// invalid value). A snippet is completed with what it leaves out: a backend for each
// one its listeners name, and a listener when it has none. Messages name README lines.
func TestReadmeTOMLBlocksParse(t *testing.T) {
	lines := readmeLines(t)
	blocks := 0
	for i := 0; i < len(lines); {
		if lines[i].fence != "toml" {
			i++
			continue
		}
		start := lines[i].n // the first line of the block
		var body []string
		for ; i < len(lines) && lines[i].fence == "toml" && lines[i].n == start+len(body); i++ {
			body = append(body, lines[i].text)
		}
		blocks++
		if prev := start - 2; prev >= 1 && strings.Contains(lines[idx(lines, prev)].text, "readme-test: not a config") {
			continue
		}
		snippet := strings.Join(body, "\n") + "\n"
		// Blank lines in front keep config.Parse's line numbers those of the README.
		text := strings.Repeat("\n", start-1) + snippet + completeSnippet(snippet)
		_, _, err := config.Parse([]byte(text), readmePath)
		if err != nil {
			t.Errorf("README.md:%d: this ```toml block is not a valid tnsguard config (completed with a stub listener/backend where it has none):\n%v\n--- block:\n%s", start, err, snippet)
		}
	}
	if blocks < 5 {
		t.Fatalf("found only %d toml blocks in the README", blocks)
	}
}

// idx is the index in lines of README line n (fence lines are not in lines).
func idx(lines []readmeLine, n int) int {
	i := sort.Search(len(lines), func(i int) bool { return lines[i].n >= n })
	if i == len(lines) {
		i--
	}
	return i
}

// completeSnippet returns the tables a README snippet needs to stand as a config: a
// [[backend]] for each backend its listeners name and it does not define, and a
// [[listener]] if it has none. A snippet that does not decode gets nothing: its own
// error is the one to report.
func completeSnippet(snippet string) string {
	var raw struct {
		Listener []struct {
			Backend string            `toml:"backend"`
			Routes  map[string]string `toml:"routes"`
		} `toml:"listener"`
		Backend []struct {
			Name string `toml:"name"`
		} `toml:"backend"`
	}
	if _, err := toml.Decode(snippet, &raw); err != nil {
		return ""
	}
	defined := map[string]bool{}
	var first string
	for _, b := range raw.Backend {
		defined[b.Name] = true
		if first == "" {
			first = b.Name
		}
	}
	var need []string
	for _, l := range raw.Listener {
		names := []string{l.Backend}
		for _, b := range l.Routes {
			names = append(names, b)
		}
		for _, b := range names {
			if b != "" && !defined[b] {
				defined[b] = true
				need = append(need, b)
			}
		}
	}
	var b strings.Builder
	if len(raw.Listener) == 0 {
		if first == "" {
			first = "readme-stub"
			need = append(need, first)
		}
		fmt.Fprintf(&b, "\n[[listener]]\nname = \"readme-stub\"\nlisten = \"127.0.0.1:29521\"\nbackend = %q\n", first)
	}
	sort.Strings(need)
	for _, n := range need {
		fmt.Fprintf(&b, "\n[[backend]]\nname = %q\n  [[backend.server]]\n  address = \"192.0.2.1:1521\"\n", n)
	}
	return b.String()
}

// configTables maps each table of the config ("listener", "backend.health", ...;
// "" for the top level) to its keys, from config.Config's toml tags.
func configTables() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	var walk func(path string, t reflect.Type)
	walk = func(path string, t reflect.Type) {
		keys := map[string]bool{}
		out[path] = keys
		for f := range t.Fields() {
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			keys[tag] = true
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[config.Duration]() {
				walk(strings.TrimPrefix(path+"."+tag, "."), ft)
			}
		}
	}
	walk("", reflect.TypeFor[config.Config]())
	return out
}

var (
	tableName = regexp.MustCompile("`\\[\\[?([a-z_.]+)\\]\\]?`")
	cellKey   = regexp.MustCompile("^`([a-z_]+)`")
	cellValue = regexp.MustCompile("^(?:`([^`]*)`|([0-9]+))")
)

// TestReadmeKeyTables: in every README table whose first column is "key", each key is
// one of the config table the table is about (named in its header or its section's
// heading, else the one table that has the key), and its "default" is the value
// tnsguard uses when the key is left out.
func TestReadmeKeyTables(t *testing.T) {
	tables := configTables()
	lines := readmeLines(t)
	heading := ""
	rows := 0
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l.text, "#") && l.fence == "" {
			heading = l.text
			continue
		}
		if l.fence != "" || !strings.HasPrefix(l.text, "| key") {
			continue
		}
		header := splitRow(l.text)
		table := ""
		if m := tableName.FindStringSubmatch(header[0]); m != nil {
			table = m[1]
		} else if m := tableName.FindStringSubmatch(heading); m != nil {
			table = m[1]
		}
		if table != "" && tables[table] == nil {
			t.Errorf("README.md:%d: the table is about [%s], which is not a table of the config", l.n, table)
			continue
		}
		defCol := slices.Index(header, "default")
		for i += 2; i < len(lines) && strings.HasPrefix(lines[i].text, "|"); i++ {
			row := splitRow(lines[i].text)
			m := cellKey.FindStringSubmatch(row[0])
			if m == nil {
				t.Errorf("README.md:%d: first column %q of a key table is not a `key`", lines[i].n, row[0])
				continue
			}
			key, where := m[1], table
			rows++
			if where == "" {
				var in []string
				for name, keys := range tables {
					if keys[key] {
						in = append(in, name)
					}
				}
				if len(in) == 0 {
					t.Errorf("README.md:%d: %q is not a key of any config table", lines[i].n, key)
					continue
				}
				if len(in) > 1 {
					continue // which table is meant is not said: known is all that can be checked
				}
				where = in[0]
			}
			if !tables[where][key] {
				t.Errorf("README.md:%d: %q is not a key of [%s] (its keys: %s)", lines[i].n, key, where, strings.Join(sortedSet(tables[where]), ", "))
				continue
			}
			if defCol > 0 && defCol < len(row) {
				if v := cellValue.FindStringSubmatch(row[defCol]); v != nil {
					checkDefault(t, lines[i].n, where, key, v[1]+v[2])
				}
			}
		}
		i--
	}
	if rows < 10 {
		t.Fatalf("found only %d rows of key tables in the README", rows)
	}
}

func splitRow(s string) []string {
	cells := strings.Split(strings.Trim(strings.TrimSpace(s), "|"), "|")
	for i := range cells {
		cells[i] = strings.TrimSpace(cells[i])
	}
	return cells
}

func sortedSet(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkDefault parses a small config with key left out and again with it set to the
// README's default, and compares what config.Parse makes of the two.
func checkDefault(t *testing.T, line int, table, key, value string) {
	t.Helper()
	lit := value
	if _, err := strconv.Atoi(value); err != nil && !strings.HasPrefix(value, "[") && value != "true" && value != "false" {
		lit = strconv.Quote(value)
	}
	path := strings.Split(table, ".")
	build := func(set string) string {
		var listener, backend, server string
		dotted := strings.Join(append(path[1:], key), ".") + " = " + set
		switch {
		case set == "":
		case table == "backend.server":
			server = key + " = " + set + "\n"
		case path[0] == "listener":
			listener = dotted + "\n"
		case path[0] == "backend":
			backend = dotted + "\n"
		}
		top := ""
		if len(path) == 1 && path[0] != "listener" && path[0] != "backend" && set != "" {
			top = "[" + table + "]\n" + key + " = " + set + "\n"
		}
		return top + "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:29522\"\nbackend = \"b\"\n" + listener +
			"[[backend]]\nname = \"b\"\n" + backend + "[[backend.server]]\naddress = \"192.0.2.1:1521\"\n" + server
	}
	get := func(text string) (reflect.Value, bool) {
		c, _, err := config.Parse([]byte(text), "README default")
		if err != nil {
			t.Errorf("README.md:%d: %s = %s (the default the README gives) is not accepted: %v", line, key, lit, err)
			return reflect.Value{}, false
		}
		v := reflect.ValueOf(c).Elem()
		for _, part := range append(path, key) {
			if part == "" {
				continue
			}
			for v.Kind() == reflect.Slice {
				v = v.Index(0)
			}
			found := false
			for j := range v.NumField() {
				if tag, _, _ := strings.Cut(v.Type().Field(j).Tag.Get("toml"), ","); tag == part {
					v, found = v.Field(j), true
					break
				}
			}
			if !found {
				t.Fatalf("no field for %s in %s", part, v.Type())
			}
		}
		return v, true
	}
	def, ok1 := get(build(""))
	set, ok2 := get(build(lit))
	if !ok1 || !ok2 {
		return
	}
	same := reflect.DeepEqual(show(def), show(set)) ||
		def.Kind() == reflect.Slice && def.Len() == 0 && set.Len() == 0
	if !same {
		t.Errorf("README.md:%d: the README gives %s's default as %s, but left out it is %v", line, key, value, show(def))
	}
}

// show is a config value as it acts: an int behind its pointer, a Duration's time
// (whether it was written or defaulted).
func show(v reflect.Value) any {
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface()
	}
	if d, ok := v.Interface().(config.Duration); ok {
		return d.Duration
	}
	return v.Interface()
}

// headingSlug is GitHub's anchor for a heading.
func headingSlug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127 && r != '–' && r != '→':
			b.WriteRune(r)
		}
	}
	return b.String()
}

var (
	anchorRef  = regexp.MustCompile(`\]\(#([^)]+)\)`)
	sectionRef = regexp.MustCompile(`(?:see|under|in|\()\s+"([^"]+)"`)
	boldLead   = regexp.MustCompile(`\*\*([^*]+)\*\*`)
)

// TestReadmeSectionReferences: every #anchor link and every `see "Section"` names a
// heading (or a bold paragraph lead) of the README. A section may be cited by the part
// of its title before a comma, colon or parenthesis.
func TestReadmeSectionReferences(t *testing.T) {
	text := readRepoFile(t, readmePath)
	slugs := map[string]bool{}
	var titles []string
	for _, l := range readmeLines(t) {
		if l.fence != "" || !strings.HasPrefix(l.text, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l.text, "#"))
		titles = append(titles, h)
		s := headingSlug(h)
		for n := 1; slugs[s]; n++ {
			s = fmt.Sprintf("%s-%d", headingSlug(h), n)
		}
		slugs[s] = true
	}
	for _, m := range boldLead.FindAllStringSubmatch(text, -1) {
		titles = append(titles, strings.TrimRight(m[1], ".:"))
	}
	lineOf := func(off int) int { return strings.Count(text[:off], "\n") + 1 }
	for _, m := range anchorRef.FindAllStringSubmatchIndex(text, -1) {
		if a := text[m[2]:m[3]]; !slugs[a] {
			t.Errorf("README.md:%d: link to #%s, which no heading has", lineOf(m[0]), a)
		}
	}
	for _, m := range sectionRef.FindAllStringSubmatchIndex(text, -1) {
		ref := strings.Join(strings.Fields(text[m[2]:m[3]]), " ")
		if ref == "" || ref[0] < 'A' || ref[0] > 'Z' {
			continue // a quoted value or message, not a title
		}
		if !slices.ContainsFunc(titles, func(h string) bool {
			rest, ok := strings.CutPrefix(h, ref)
			return ok && (rest == "" || strings.ContainsRune(",:( ", rune(rest[0])) && strings.IndexAny(rest, ",:(") <= 1)
		}) {
			t.Errorf("README.md:%d: %q is cited as a section, but no heading (or bold paragraph lead) has that title", lineOf(m[0]), ref)
		}
	}
}

// proseText is the README with its fenced blocks blanked out, lines kept in place.
func proseText(t *testing.T) string {
	t.Helper()
	lines := strings.Split(readRepoFile(t, readmePath), "\n")
	in := false
	for i, l := range lines {
		fence := strings.HasPrefix(l, "```")
		if in || fence {
			lines[i] = ""
		}
		if fence {
			in = !in
		}
	}
	return strings.Join(lines, "\n")
}

// goStrings returns every string literal of the product code (non-test Go files).
func goStrings(t *testing.T) []string {
	t.Helper()
	var out []string
	goFiles(t, func(rel, text string) {
		if strings.HasSuffix(rel, "_test.go") {
			return
		}
		fset := token.NewFileSet()
		var s scanner.Scanner
		s.Init(fset.AddFile(rel, -1, len(text)), []byte(text), nil, 0)
		for {
			_, tok, lit := s.Scan()
			if tok == token.EOF {
				break
			}
			if tok == token.STRING {
				if v, err := strconv.Unquote(lit); err == nil {
					out = append(out, v)
				}
			}
		}
	})
	return out
}

var (
	logLine    = regexp.MustCompile(`^\[(?:TRACE|DEBUG|INFO|WARN|ERROR)\]\s+[\w.]+: (.*?): (\w+=.*)$`)
	logFields  = regexp.MustCompile(`(?:^|\s)(\w+)=`)
	quotedLog  = regexp.MustCompile("(?:logged|logs|log says|says|reports|prints|error|message|warning)\\s+[`\"]([^`\"]+)[`\"]")
	formatVerb = regexp.MustCompile(`%[-+# 0-9.]*[a-zA-Z]`)
)

// TestReadmeLogMessagesExist: every sample log line in the README's untagged blocks has
// a message and field names the code writes, and every message the prose quotes
// (logged `...`, the text says `...`) is a string of the code (its fields and formatted
// values aside).
func TestReadmeLogMessagesExist(t *testing.T) {
	lits := goStrings(t)
	known := map[string]bool{}
	var formats []*regexp.Regexp
	for _, s := range lits {
		known[s] = true
		// A format string ("closed by target after %s (idle %s): ...") matches a
		// message that starts with its text before the first verb and follows it
		// as far as the message goes. Formats that start with a verb match too much.
		if parts := formatVerb.Split(s, -1); len(parts) > 1 && len(parts[0]) >= 6 {
			verbs := formatVerb.FindAllString(s, -1)
			expr := ""
			for i := len(parts) - 1; i >= 1; i-- {
				v := ".+?"
				switch verbs[i-1][len(verbs[i-1])-1] {
				case 'd', 'x':
					v = "[-0-9a-fx]+"
				case 'f', 'g', 'e':
					v = "[-0-9.e+]+"
				}
				expr = "(?:" + v + "(?:" + regexp.QuoteMeta(parts[i]) + expr + ")?)?"
			}
			if re, err := regexp.Compile("^" + regexp.QuoteMeta(parts[0]) + expr + "$"); err == nil {
				formats = append(formats, re)
			}
		}
	}
	inCode := func(msg string) bool {
		for _, s := range lits {
			if strings.Contains(s, msg) {
				return true
			}
		}
		for _, re := range formats {
			if re.MatchString(msg) {
				return true
			}
		}
		return false
	}
	samples, quotes := 0, 0
	for _, l := range readmeLines(t) {
		if l.fence == "-" {
			m := logLine.FindStringSubmatch(l.text)
			if m == nil {
				continue
			}
			samples++
			if !inCode(m[1]) {
				t.Errorf("README.md:%d: log message %q is not written by the code: reworded?", l.n, m[1])
			}
			for _, f := range logFields.FindAllStringSubmatch(m[2], -1) {
				if !known[f[1]] {
					t.Errorf("README.md:%d: log field %q is not a string of the code: renamed?", l.n, f[1])
				}
			}
		}
	}
	// Quoted messages, in the prose only (a quote may follow its "logs" on the next line).
	prose := proseText(t)
	for _, m := range quotedLog.FindAllStringSubmatchIndex(prose, -1) {
		msg := prose[m[2]:m[3]]
		if i := logFields.FindStringIndex(msg); i != nil { // fields after the message
			msg = msg[:i[0]]
		}
		msg = strings.TrimSpace(strings.Split(msg, "...")[0])
		msg = strings.Join(strings.Fields(strings.TrimSuffix(msg, ":")), " ")
		if len(msg) < 6 || !strings.Contains(msg, " ") {
			continue
		}
		quotes++
		if !inCode(msg) {
			t.Errorf("README.md:%d: quoted message %q is not in the code: reworded?", strings.Count(prose[:m[2]], "\n")+1, msg)
		}
	}
	if samples < 2 || quotes < 5 {
		t.Fatalf("found only %d sample log lines and %d quoted messages: the patterns are broken", samples, quotes)
	}
}

var (
	flagSetName = regexp.MustCompile(`(?:newFlags\("|NewFlagSet\("tnsguard )(\w+)"`)
	flagDecl    = regexp.MustCompile(`\bfs\.\w+\((?:&?\w+, )?"([\w-]+)"`)
	commandCase = regexp.MustCompile(`(?m)^\s*case ((?:"[\w-]+",?\s*)+):`)
	backticked  = regexp.MustCompile("`([^`]+)`")
	commandUse  = regexp.MustCompile(`^(?:tnsguard\s+)?(run|check|healthcheck|probe|version|help)(\s.*)?$`)
	flagUse     = regexp.MustCompile(`(?:^|[\s\[])-([a-z][\w-]*)`)
	tnsguardCmd = regexp.MustCompile(`^tnsguard ([a-z]\w*)`)
)

// tnsguardFlags reads the commands of cmd/tnsguard (main's switch) and each one's
// flags (the flag set it makes: newFlags("check"), or probe's "tnsguard probe").
func tnsguardFlags(t *testing.T) (commands map[string]bool, flags map[string]map[string]bool) {
	t.Helper()
	commands, flags = map[string]bool{}, map[string]map[string]bool{}
	goFiles(t, func(rel, text string) {
		if strings.HasSuffix(rel, "_test.go") || !strings.HasPrefix(rel, "cmd/tnsguard/") && !strings.HasPrefix(rel, "probe/") {
			return
		}
		if rel == "cmd/tnsguard/main.go" {
			for _, m := range commandCase.FindAllStringSubmatch(text, -1) {
				for _, c := range strings.Split(m[1], ",") {
					commands[strings.Trim(strings.TrimSpace(c), `"`)] = true
				}
			}
		}
		for _, fn := range strings.Split(text, "\nfunc ") {
			m := flagSetName.FindStringSubmatch(fn)
			if m == nil {
				continue
			}
			if flags[m[1]] == nil {
				flags[m[1]] = map[string]bool{"h": true, "help": true}
			}
			for _, f := range flagDecl.FindAllStringSubmatch(fn, -1) {
				flags[m[1]][f[1]] = true
			}
		}
	})
	for _, c := range []string{"run", "check", "healthcheck", "probe"} {
		if !commands[c] || len(flags[c]) < 3 {
			t.Fatalf("could not read command %s and its flags from the source (commands %v, flags %v)", c, commands, flags[c])
		}
	}
	return commands, flags
}

// TestReadmeCommandsAndFlags: every `tnsguard CMD ...` the README shows (in backticks,
// or a line of a sh block) names a command of tnsguard, and every -flag after it is a
// flag of that command.
func TestReadmeCommandsAndFlags(t *testing.T) {
	commands, flags := tnsguardFlags(t)
	uses := 0
	check := func(n int, s string) {
		s = strings.TrimSpace(strings.Split(s, "#")[0])
		if m := tnsguardCmd.FindStringSubmatch(s); m != nil && !commands[m[1]] && !strings.Contains(s, "/") {
			t.Errorf("README.md:%d: `%s`: tnsguard has no command %q", n, s, m[1])
			return
		}
		m := commandUse.FindStringSubmatch(s)
		if m == nil || flags[m[1]] == nil {
			return
		}
		if !strings.HasPrefix(s, "tnsguard ") && !strings.Contains(m[2], "-") {
			return // a plain word ("check", "run"), not a command line
		}
		uses++
		for _, f := range flagUse.FindAllStringSubmatch(m[2], -1) {
			if !flags[m[1]][f[1]] {
				t.Errorf("README.md:%d: `%s`: tnsguard %s has no flag -%s (its flags: -%s)", n, s, m[1], f[1], strings.Join(sortedSet(flags[m[1]]), ", -"))
			}
		}
	}
	for _, l := range readmeLines(t) {
		switch l.fence {
		case "":
			for _, m := range backticked.FindAllStringSubmatch(l.text, -1) {
				check(l.n, m[1])
			}
			if strings.HasPrefix(l.text, "    tnsguard ") && commandUse.MatchString(strings.TrimSpace(l.text)) { // an indented code block
				check(l.n, l.text)
			}
		case "sh":
			check(l.n, l.text)
		}
	}
	text := readRepoFile(t, readmePath)
	for cmd, fl := range flags {
		for f := range fl {
			if f != "h" && f != "help" && !strings.Contains(text, "-"+f) {
				t.Errorf("tnsguard %s -%s is never named in the README", cmd, f)
			}
		}
	}
	if uses < 10 {
		t.Fatalf("found only %d tnsguard command lines in the README: the pattern is broken", uses)
	}
}

var (
	jsonTag  = regexp.MustCompile("json:\"([\\w]+)")
	jsonKey  = regexp.MustCompile(`"(\w+)"\s*:`)
	makeUse  = regexp.MustCompile("`make ([\\w-]+)")
	makeRule = regexp.MustCompile(`(?m)^([\w-]+):`)
	envUse   = regexp.MustCompile(`\bTNSGUARD_[A-Z0-9_]+\b`)
)

// TestReadmeJSONFieldsMakeTargetsAndEnv: the field names of the README's ```json
// blocks and `| field |` tables are JSON fields (or log keys) the code writes, every
// `make X` is a Makefile target, and every TNSGUARD_ variable is read somewhere.
func TestReadmeJSONFieldsMakeTargetsAndEnv(t *testing.T) {
	var code strings.Builder
	tags := map[string]bool{}
	goFiles(t, func(rel, text string) {
		code.WriteString(text)
		for _, m := range jsonTag.FindAllStringSubmatch(text, -1) {
			tags[m[1]] = true
		}
	})
	for _, s := range goStrings(t) {
		tags[s] = true // map keys and log attributes
	}
	makefile := readRepoFile(t, "Makefile")
	targets := map[string]bool{}
	for _, m := range makeRule.FindAllStringSubmatch(makefile, -1) {
		targets[m[1]] = true
	}
	all := code.String() + makefile + readRepoFile(t, "Dockerfile")
	lines := readmeLines(t)
	fieldTable := false
	for _, l := range lines {
		if l.fence == "json" || l.fence == "" && strings.HasPrefix(l.text, "    ") && strings.Contains(l.text, `{"`) { // or an indented block
			for _, m := range jsonKey.FindAllStringSubmatch(l.text, -1) {
				if !tags[m[1]] {
					t.Errorf("README.md:%d: JSON field %q is not one the code writes: renamed?", l.n, m[1])
				}
			}
		}
		if l.fence != "" {
			continue
		}
		switch {
		case strings.HasPrefix(l.text, "| field |"):
			fieldTable = true
		case !strings.HasPrefix(l.text, "|"):
			fieldTable = false
		case fieldTable && !strings.HasPrefix(l.text, "|---"):
			for _, m := range backticked.FindAllStringSubmatch(splitRow(l.text)[0], -1) {
				if !tags[m[1]] {
					t.Errorf("README.md:%d: field %q is not one the code writes: renamed?", l.n, m[1])
				}
			}
		}
		for _, m := range makeUse.FindAllStringSubmatch(l.text, -1) {
			if !targets[m[1]] {
				t.Errorf("README.md:%d: `make %s`: the Makefile has no such target", l.n, m[1])
			}
		}
		for _, v := range envUse.FindAllString(l.text, -1) {
			if !strings.Contains(all, v) {
				t.Errorf("README.md:%d: %s is read by nothing in the code, Makefile or Dockerfile", l.n, v)
			}
		}
	}
}

// TestReadmeNamesDeployTools: the README's list of what `go test ./test/deploy/` needs
// ("It needs `file`, ...", under "Checking these files") names every external command
// this package's tests call through requireTool, which fails them when CI is set: a
// user who installs the list and runs with CI set must not meet a tool it left out.
func TestReadmeNamesDeployTools(t *testing.T) {
	var needs string // the paragraph that starts "It needs `"
	line := 0
	for _, l := range readmeLines(t) {
		if line == 0 && l.fence == "" && strings.HasPrefix(l.text, "It needs `") {
			line = l.n
		}
		if line != 0 {
			if strings.TrimSpace(l.text) == "" {
				break
			}
			needs += " " + l.text
		}
	}
	if line == 0 {
		t.Fatal(`README: no "It needs ` + "`...`" + `" paragraph listing what ./test/deploy/ needs`)
	}
	uses := regexp.MustCompile(`requireTool\(t, "([^"]+)"`)
	dir := filepath.Join(repoRoot(t), "test", "deploy")
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range uses.FindAllStringSubmatch(string(b), -1) {
			tool := m[1]
			if seen[tool] {
				continue
			}
			seen[tool] = true
			// `python3-yaml` names python3 too: a package named after the tool counts.
			if !strings.Contains(needs, "`"+tool+"`") && !strings.Contains(needs, "`"+tool+"-") {
				t.Errorf("README:%d: the list of what ./test/deploy/ needs leaves out %q (%s calls it, and fails without it when CI is set)", line, tool, filepath.Base(f))
			}
		}
	}
	if len(seen) == 0 {
		t.Fatal("no requireTool call found in test/deploy: the check reads nothing")
	}
}
