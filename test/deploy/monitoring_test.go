package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// knownMetrics are tnsguard's metric families (contract.md and the pool and process
// metrics added with it) and their types. The rules and the dashboard may only use
// these; TestMetricsExistLive checks a running tnsguard serves every one they use.
var knownMetrics = map[string]string{
	"tnsguard_sessions_active":                              "gauge",
	"tnsguard_sessions_total":                               "counter",
	"tnsguard_sessions_rejected_total":                      "counter",
	"tnsguard_session_wait_seconds":                         "histogram",
	"tnsguard_session_duration_seconds":                     "histogram",
	"tnsguard_sessions_idle":                                "gauge",
	"tnsguard_resets_total":                                 "counter",
	"tnsguard_redials_total":                                "counter",
	"tnsguard_backend_connect_duration_seconds":             "histogram",
	"tnsguard_backend_rtt_seconds":                          "gauge",
	"tnsguard_backend_retransmits_total":                    "counter",
	"tnsguard_backend_up":                                   "gauge",
	"tnsguard_health_check_duration_seconds":                "histogram",
	"tnsguard_bytes_total":                                  "counter",
	"tnsguard_breaker_state":                                "gauge",
	"tnsguard_listener_max_sessions":                        "gauge",
	"tnsguard_config_last_reload_successful":                "gauge",
	"tnsguard_config_last_reload_success_timestamp_seconds": "gauge",
	"tnsguard_build_info":                                   "gauge",
	"tnsguard_tns_redirects_total":                          "counter",
	"tnsguard_tns_redirects_followed_total":                 "counter",
	"tnsguard_log_lines_dropped_total":                      "counter",
}

const (
	rulesPath     = "configs/prometheus/tnsguard.rules.yml"
	rulesTestPath = "configs/prometheus/tnsguard.rules.test.yml"
	dashboardPath = "configs/grafana/tnsguard.json"
)

var metricName = regexp.MustCompile(`\btnsguard_[a-z0-9_]+`)

// usedMetrics returns the tnsguard_ metric names a file mentions (queries, and the
// annotations and descriptions that point operators at a metric), sorted.
func usedMetrics(t *testing.T, rel string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, m := range metricName.FindAllString(readRepoFile(t, rel), -1) {
		seen[m] = true
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// family maps a sample name to its metric family: a histogram's _bucket, _sum and
// _count belong to it.
func family(name string, types map[string]string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && types[base] == "histogram" {
			return base
		}
	}
	return name
}

func TestMonitoringUsesKnownMetrics(t *testing.T) {
	all := map[string]bool{}
	for _, f := range []string{rulesPath, dashboardPath} {
		used := usedMetrics(t, f)
		if len(used) == 0 {
			t.Fatalf("%s uses no tnsguard metric", f)
		}
		for _, m := range used {
			fam := family(m, knownMetrics)
			all[fam] = true
			if _, ok := knownMetrics[fam]; !ok {
				t.Errorf("%s uses %s, which tnsguard does not export", f, m)
			}
		}
	}
	// Every metric has a panel or a rule.
	for m := range knownMetrics {
		if !all[m] {
			t.Errorf("%s appears in neither the rules nor the dashboard", m)
		}
	}
}

func TestAlertRules(t *testing.T) {
	text := readRepoFile(t, rulesPath)
	var alerts []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)`).FindAllStringSubmatch(text, -1) {
		alerts = append(alerts, m[1])
	}
	for _, want := range []string{"TnsguardDown", "TnsguardBackendDown", "TnsguardAppsRejected", "TnsguardAppsLimited", "TnsguardResetRateHigh", "TnsguardIdleResets",
		"TnsguardSessionsNearMax", "TnsguardFileDescriptorsLow", "TnsguardConnectLatencyHigh", "TnsguardRedialsHigh", "TnsguardConfigReloadFailed", "TnsguardAppsGaveUp"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %s (have %v)", want, rulesPath, alerts)
		}
	}
	// Every alert has a unit test.
	tests := readRepoFile(t, rulesTestPath)
	for _, a := range alerts {
		if !strings.Contains(tests, "alertname: "+a+"\n") {
			t.Errorf("alert %s has no test in %s", a, rulesTestPath)
		}
	}

	promtool := requireTool(t, "promtool", "check and unit-test the alert rules")
	root := repoRoot(t)
	if out, err := runCmd(t, root, nil, promtool, "check", "rules", rulesPath); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	// rule_files in the test file are relative to it.
	out, err := runCmd(t, filepath.Join(root, "configs/prometheus"), nil, promtool, "test", "rules", filepath.Base(rulesTestPath))
	if err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// grafanaDashboard is the part of the dashboard JSON these tests read.
type grafanaDashboard struct {
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	SchemaVersion int            `json:"schemaVersion"`
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	ID            any            `json:"id"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Datasource json.RawMessage `json:"datasource"`
			Definition string          `json:"definition"`
			Query      struct {
				Query string `json:"query"`
			} `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type grafanaPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource json.RawMessage          `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
}

const dsInput = `{"type":"prometheus","uid":"${DS_PROMETHEUS}"}`

// sameJSON reports whether two JSON texts hold the same value.
func sameJSON(a json.RawMessage, b string) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal([]byte(readRepoFile(t, dashboardPath)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// grafanaVar matches a dashboard variable in a query: $name or ${name}.
var grafanaVar = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func TestGrafanaDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want about 39 (Grafana 10/11)", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard has no uid or title")
	}
	if d.ID != nil {
		t.Errorf("dashboard id %v: an importable dashboard has id null", d.ID)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs %+v, want one prometheus datasource input DS_PROMETHEUS", d.Inputs)
	}

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Query.Query
		if !sameJSON(v.Datasource, dsInput) {
			t.Errorf("variable %s datasource %s, want %s", v.Name, v.Datasource, dsInput)
		}
		if v.Query.Query != v.Definition || !strings.HasPrefix(v.Query.Query, "label_values(") {
			t.Errorf("variable %s query %q (definition %q): want label_values(...)", v.Name, v.Query.Query, v.Definition)
		}
	}
	for _, want := range []string{"listener", "backend", "server"} {
		q, ok := vars[want]
		if !ok {
			t.Errorf("no %s variable", want)
		} else if !strings.HasSuffix(q, ", "+want+")") {
			t.Errorf("variable %s = %q: does not take values of label %s", want, q, want)
		}
	}
	builtin := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true, "DS_PROMETHEUS": true}

	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range d.Panels {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
		if p.Type == "row" {
			continue
		}
		if !sameJSON(p.Datasource, dsInput) {
			t.Errorf("panel %q datasource %s, want %s", p.Title, p.Datasource, dsInput)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
			}
			if !sameJSON(tg.Datasource, dsInput) {
				t.Errorf("panel %q target %s datasource %s", p.Title, tg.RefID, tg.Datasource)
			}
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				if knownMetrics[m] == "histogram" {
					t.Errorf("panel %q queries the histogram %s without _bucket, _sum or _count", p.Title, m)
				}
			}
			for _, m := range grafanaVar.FindAllStringSubmatch(tg.Expr, -1) {
				if _, ok := vars[m[1]]; !ok && !builtin[m[1]] {
					t.Errorf("panel %q uses $%s, which is not a dashboard variable", p.Title, m[1])
				}
			}
		}
	}

	// One panel (or more) per thing operators asked to see.
	text := readRepoFile(t, dashboardPath)
	for _, want := range []string{
		"tnsguard_sessions_active", "tnsguard_sessions_total", "tnsguard_resets_total", "tnsguard_redials_total",
		"tnsguard_backend_connect_duration_seconds_bucket", "tnsguard_backend_rtt_seconds",
		"tnsguard_backend_retransmits_total", "tnsguard_backend_up", "tnsguard_health_check_duration_seconds_bucket",
		"tnsguard_bytes_total", "tnsguard_session_wait_seconds_bucket", "tnsguard_sessions_idle", "tnsguard_breaker_state",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
	for _, q := range []string{"histogram_quantile(0.5, sum by (backend, server, le) (rate(tnsguard_backend_connect_duration_seconds_bucket",
		"histogram_quantile(0.99, sum by (backend, server, le) (rate(tnsguard_backend_connect_duration_seconds_bucket",
		"histogram_quantile(0.99, sum by (listener, le) (rate(tnsguard_session_wait_seconds_bucket"} {
		if !strings.Contains(text, q) {
			t.Errorf("no panel queries %s...", q)
		}
	}
}

// TestGrafanaQueriesParse hands every dashboard query (variables replaced as Grafana
// would) to promtool as a recording rule, so PromQL syntax errors fail here and not
// in front of an operator.
func TestGrafanaQueriesParse(t *testing.T) {
	promtool := requireTool(t, "promtool", "parse the dashboard's PromQL")
	d := loadDashboard(t)
	expand := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1h", "$__range", "1d",
		"$instance", ".*", "$listener", ".*", "$backend", ".*", "$server", ".*")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr != "" {
				rules = append(rules, rule{fmt.Sprintf("dashboard:panel%d:%s", p.ID, tg.RefID), expand.Replace(tg.Expr)})
			}
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.*), *[a-z_]+\)$`)
	for _, v := range d.Templating.List {
		m := labelValues.FindStringSubmatch(v.Query.Query)
		if m == nil {
			t.Errorf("variable %s: cannot read %q", v.Name, v.Query.Query)
			continue
		}
		rules = append(rules, rule{"dashboard:var:" + v.Name, expand.Replace(m[1])})
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	b, err := json.Marshal(file) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(t, "", nil, promtool, "check", "rules", path)
	if err != nil {
		t.Fatalf("a dashboard query does not parse: %v\n%s", err, out)
	}
	t.Logf("%d dashboard queries parse", len(rules))
}

// TestGrafanaIdleResetsPanelCountsWhatTheAlertDoes evaluates each panel that shows
// idle-phase resets (phase="idle") with promtool, on a link where a firewall reset an
// idle session (cause rst) and tnsguard itself closed idle ones: at the listener's
// idle_timeout (cause idle_timeout) and at a drain (cause proxy). The panel says each
// of its resets is a middlebox forgetting the connection, as TnsguardIdleResets
// (causes rst and timeout) does; tnsguard's own closes are no such thing. Until
// 2026-11-30 the panel counted every cause: a review with a real Prometheus saw it
// show 6 "idle-phase resets" on a listener with idle_timeout = "2s" and no firewall,
// while the alert rightly stayed quiet.
func TestGrafanaIdleResetsPanelCountsWhatTheAlertDoes(t *testing.T) {
	promtool := requireTool(t, "promtool", "evaluate the dashboard's PromQL")
	d := loadDashboard(t)
	expand := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "5m", "$__range", "1d",
		"$instance", ".*", "$listener", ".*", "$backend", ".*", "$server", ".*")
	series := func(side, cause, values string) map[string]string {
		return map[string]string{
			"series": fmt.Sprintf(`tnsguard_resets_total{job="tnsguard",instance="tg1:9521",listener="orders",backend="orders",server="db1:1521",side=%q,phase="idle",cause=%q}`, side, cause),
			"values": values,
		}
	}
	input := []map[string]string{
		series("backend", "rst", "0 0 1 1 1 1 1"),
		series("client", "idle_timeout", "0 0 40 80 120 160 200"),
		series("client", "proxy", "0 0 30 30 30 30 30"),
	}
	var tests []any
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `phase="idle"`) {
				continue
			}
			tests = append(tests, map[string]any{
				"interval":     "1m",
				"input_series": input,
				"promql_expr_test": []any{map[string]any{
					// Which sides show resets at all: the backend's (the firewall's), not
					// the client's (tnsguard's own closes).
					"expr":      fmt.Sprintf("count by (side) ((%s) > 0)", expand.Replace(tg.Expr)),
					"eval_time": "4m",
					"exp_samples": []any{map[string]any{
						"labels": `{side="backend"}`,
						"value":  1,
					}},
				}},
			})
		}
	}
	if len(tests) == 0 {
		t.Fatal(`no dashboard panel queries phase="idle" resets`)
	}
	b, err := json.Marshal(map[string]any{"evaluation_interval": "1m", "tests": tests}) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "idle-panel.test.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(t, "", nil, promtool, "test", "rules", path); err != nil {
		t.Errorf("the idle-phase resets panel counts tnsguard's own closes: %v\n%s", err, out)
	}
}

// The shipped Alertmanager config, run by a real Alertmanager: an fd
// shortage does not also page as every server down and every listener
// rejecting (the checks fail for want of an fd: a review with a real
// Prometheus saw them all fire), but a backend with no server up still
// pages (critical: a real outage must not hide behind the fd alert); a
// backend with no server up pages once, not also per server; the same
// alerts of another instance, or of another backend, are not held back.
func TestAlertmanagerInhibitions(t *testing.T) {
	am := requireTool(t, "prometheus-alertmanager", "run the shipped Alertmanager config")
	amtool := requireTool(t, "amtool", "check the shipped Alertmanager config")
	path := filepath.Join(repoRoot(t), "configs/prometheus/alertmanager.yml")
	if out, err := runCmd(t, "", nil, amtool, "check-config", path); err != nil {
		t.Fatalf("amtool check-config: %v\n%s", err, out)
	}
	// Every alert it names is one of the rules'.
	rules := readRepoFile(t, rulesPath)
	text := readRepoFile(t, "configs/prometheus/alertmanager.yml")
	for _, m := range regexp.MustCompile(`Tnsguard[A-Za-z]+`).FindAllString(text, -1) {
		if !strings.Contains(rules, "- alert: "+m+"\n") {
			t.Errorf("alertmanager.yml names %s, which %s does not have", m, rulesPath)
		}
	}

	// Outside the ephemeral range: Alertmanager binds it later, and a port of
	// that range, freed, can be any connect's own meanwhile.
	addr := freeAddr(t)
	cmd := exec.Command(am, "--config.file="+path, "--storage.path="+t.TempDir(),
		"--web.listen-address="+addr, "--cluster.listen-address=")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := "http://" + addr
	ready := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(ready) {
			t.Fatalf("alertmanager not ready at %s: %v\n%s", addr, err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	type alert struct {
		Labels map[string]string `json:"labels"`
	}
	labels := func(kv ...string) map[string]string {
		m := map[string]string{"job": "tnsguard"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	// name -> whether it must be held back
	want := map[string]bool{}
	var sent []alert
	add := func(inhibited bool, kv ...string) {
		l := labels(kv...)
		sent = append(sent, alert{l})
		want[fmt.Sprint(l)] = inhibited
	}
	add(false, "alertname", "TnsguardFileDescriptorsLow", "instance", "tg1:9521")
	add(true, "alertname", "TnsguardBackendDown", "instance", "tg1:9521", "backend", "orders", "server", "db1:1521")
	add(false, "alertname", "TnsguardBackendNoServerUp", "instance", "tg1:9521", "backend", "orders")
	add(true, "alertname", "TnsguardAppsRejected", "instance", "tg1:9521", "listener", "orders")
	add(false, "alertname", "TnsguardBackendNoServerUp", "instance", "tg2:9521", "backend", "orders")
	add(true, "alertname", "TnsguardBackendDown", "instance", "tg2:9521", "backend", "orders", "server", "db1:1521")
	add(true, "alertname", "TnsguardBackendDown", "instance", "tg2:9521", "backend", "orders", "server", "db2:1521")
	add(false, "alertname", "TnsguardBackendDown", "instance", "tg2:9521", "backend", "billing", "server", "db3:1521")
	add(false, "alertname", "TnsguardAppsRejected", "instance", "tg2:9521", "listener", "orders")
	body, _ := json.Marshal(sent)
	resp, err := http.Post(base+"/api/v2/alerts", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/v2/alerts: %s", resp.Status)
	}

	var wrong []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/api/v2/alerts")
		if err != nil {
			t.Fatal(err)
		}
		var got []struct {
			Labels map[string]string `json:"labels"`
			Status struct {
				InhibitedBy []string `json:"inhibitedBy"`
			} `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		wrong = wrong[:0]
		seen := 0
		for _, a := range got {
			w, ok := want[fmt.Sprint(a.Labels)]
			if !ok {
				continue
			}
			seen++
			if inhibited := len(a.Status.InhibitedBy) > 0; inhibited != w {
				wrong = append(wrong, fmt.Sprintf("%v: inhibited %v, want %v", a.Labels, inhibited, w))
			}
		}
		if seen == len(want) && len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d alerts listed; wrong:\n%s", seen, len(want), strings.Join(wrong, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestGrafanaVariablesFilterEveryPanel: the README says the variables instance,
// listener, backend and server filter every panel. So every selector of a tnsguard
// metric in a panel's query matches each of those labels that the metric has (and
// instance, which Prometheus adds) against its variable: a panel that leaves one out
// shows every server's figures while the dashboard is set to one.
func TestGrafanaVariablesFilterEveryPanel(t *testing.T) {
	fams := registeredMetrics(t)
	selector := regexp.MustCompile(`\b(tnsguard_[a-z0-9_]+)(\{[^}]*\})?`)
	for _, p := range loadDashboard(t).Panels {
		for _, tg := range p.Targets {
			for _, m := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				name := m[1]
				fam, ok := fams[name]
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base := strings.TrimSuffix(name, suffix); !ok && base != name {
						fam, ok = fams[base]
					}
				}
				if !ok {
					continue // TestMonitoringUsesKnownMetrics reports it
				}
				has := map[string]bool{"instance": true}
				for _, l := range fam.labels {
					has[l] = true
				}
				for _, v := range []string{"instance", "listener", "backend", "server"} {
					if has[v] && !strings.Contains(m[2], v+`=~"$`+v+`"`) {
						t.Errorf("panel %q: %s%s does not filter %s by $%s", p.Title, name, m[2], v, v)
					}
				}
			}
		}
	}
}
