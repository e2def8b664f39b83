package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/proxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// stack is a proxy and its admin listener, in process, on loopback.
type stack struct {
	p   *proxy.Proxy
	url string // admin base URL
}

func startStack(t *testing.T, toml string) *stack {
	t.Helper()
	cfg, _, err := config.Parse([]byte(toml), "test.toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	log := hclog.NewNullLogger()
	if os.Getenv("TNSGUARD_TEST_LOG") != "" {
		log = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: os.Stderr})
	}
	p := proxy.New(log, m)
	reg.MustRegister(metrics.NewTCPInfoCollector(p))
	if err := p.Apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0"}, reg, p, log)
	if err != nil {
		p.Shutdown(0, 0)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		adm.Close()
		p.Shutdown(0, time.Second)
		http.DefaultClient.CloseIdleConnections()
	})
	return &stack{p: p, url: "http://" + adm.Addr().String()}
}

// database is a TCP server that answers "pong" to "ping"; the connections
// that said ping (sessions, not health checks) are handed to the test.
type database struct {
	ln       net.Listener
	sessions chan *net.TCPConn
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func newDatabase(t *testing.T) *database {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &database{ln: ln, sessions: make(chan *net.TCPConn, 64)}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.mu.Lock()
			d.conns = append(d.conns, c)
			d.mu.Unlock()
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
					c.Close()
					return
				}
				c.Write([]byte("pong"))
				d.sessions <- c.(*net.TCPConn)
				io.Copy(c, c) // echo from here on
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		d.mu.Lock()
		for _, c := range d.conns {
			c.Close()
		}
		d.mu.Unlock()
		d.wg.Wait()
	})
	return d
}

func (d *database) addr() string { return d.ln.Addr().String() }

// session opens an app connection through listener addr and returns it
// with the database's end of it.
func (d *database) session(t *testing.T, addr string) (app, db *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("session through %s: %v", addr, err)
	}
	c.SetReadDeadline(time.Time{})
	select {
	case db = <-d.sessions:
	case <-time.After(5 * time.Second):
		t.Fatal("database never saw the session")
	}
	return c.(*net.TCPConn), db
}

// resetBy closes db's end with SO_LINGER 0 (an RST) and checks that the
// app got the reset.
func resetBy(t *testing.T, app, db *net.TCPConn) {
	t.Helper()
	db.SetLinger(0)
	db.Close()
	app.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, app)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v after the database's RST, want ECONNRESET", err)
	}
}

func ordersConfig(servers ...string) string {
	s := `
[[listener]]
name = "orders"
listen = "127.0.0.1:0"
backend = "orders"
[[backend]]
name = "orders"
  [backend.health]
  check = "tcp"
  interval = "200ms"
  timeout = "200ms"
`
	for _, a := range servers {
		s += fmt.Sprintf("  [[backend.server]]\n  address = %q\n", a)
	}
	return s
}

func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", url, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	return resp.StatusCode
}

// /api/resets and /api/links after one backend reset; the page is served
// at / and /status with a policy that forbids any outside resource.
func TestResetsAPI(t *testing.T) {
	db := newDatabase(t)
	st := startStack(t, ordersConfig(db.addr()))
	app, dbEnd := db.session(t, st.p.Addr("orders").String())
	resetBy(t, app, dbEnd)

	var resets struct {
		Now    time.Time          `json:"now"`
		Resets []proxy.ResetEvent `json:"resets"`
	}
	deadline := time.Now().Add(5 * time.Second) // the app's RST may come before the event is recorded
	for len(resets.Resets) == 0 && time.Now().Before(deadline) {
		getJSON(t, st.url+"/api/resets", &resets)
		time.Sleep(10 * time.Millisecond)
	}
	if len(resets.Resets) != 1 {
		t.Fatalf("/api/resets: %+v", resets)
	}
	ev := resets.Resets[0]
	if ev.Listener != "orders" || ev.Server != db.addr() || ev.Side != "backend" || ev.Phase != "active" ||
		ev.Cause != "rst" || ev.BytesToBackend != 4 || ev.BytesToClient != 4 || resets.Now.IsZero() {
		t.Errorf("event %+v, now %v", ev, resets.Now)
	}
	var raw struct {
		Resets []map[string]any `json:"resets"`
	}
	getJSON(t, st.url+"/api/resets?limit=1", &raw)
	if len(raw.Resets) != 1 {
		t.Fatalf("limit=1 gave %d events", len(raw.Resets))
	}
	for _, k := range []string{"time", "listener", "backend", "server", "service", "client", "side", "phase", "cause",
		"outcome", "idle_seconds", "age_seconds", "bytes_to_backend", "bytes_to_client"} {
		if _, ok := raw.Resets[0][k]; !ok {
			t.Errorf("/api/resets event lacks %q: %v", k, raw.Resets[0])
		}
	}
	for _, bad := range []string{"0", "-1", "abc", "1001"} {
		var e map[string]string
		if code := getJSON(t, st.url+"/api/resets?limit="+bad, &e); code != http.StatusBadRequest || e["error"] == "" {
			t.Errorf("limit=%s: %d %v, want 400 with an error", bad, code, e)
		}
	}

	var links struct {
		Links []map[string]any `json:"links"`
	}
	getJSON(t, st.url+"/api/links", &links)
	if len(links.Links) != 1 {
		t.Fatalf("links: %v", links)
	}
	l := links.Links[0]
	for k, want := range map[string]float64{"resets_5m": 1, "resets_1h": 1, "resets_24h": 1, "sessions_idle": 0, "connect_dials_1h": 1} {
		if l[k] != want {
			t.Errorf("/api/links %s = %v, want %v", k, l[k], want)
		}
	}
	if c, _ := l["resets_by_cause_1h"].(map[string]any); c["rst"] != 1.0 || len(c) != 1 {
		t.Errorf("resets_by_cause_1h = %v", l["resets_by_cause_1h"])
	}
	if h, _ := l["resets_by_hour"].([]any); len(h) != 24 || h[resets.Now.Hour()] != 1.0 {
		t.Errorf("resets_by_hour = %v (hour now %d)", l["resets_by_hour"], resets.Now.Hour())
	}
	if _, ok := l["connect_p99_seconds"].(float64); !ok {
		t.Errorf("connect_p99_seconds = %v", l["connect_p99_seconds"])
	}

	for _, path := range []string{"/", "/status"} {
		resp, err := http.Get(st.url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") || !strings.Contains(string(body), "<title>tnsguard status</title>") {
			t.Errorf("%s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
	if resp, err := http.Get(st.url + "/nothing-here"); err != nil || resp.StatusCode != 404 {
		t.Errorf("/nothing-here: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
}

// The page loads nothing from elsewhere: no src or href attributes and no
// URL but the SVG namespace.
func TestStatusPageIsSelfContained(t *testing.T) {
	page := string(statusPage)
	if m := regexp.MustCompile(`(?i)\s(src|href)\s*=`).FindString(page); m != "" {
		t.Errorf("status.html refers to an outside resource: %q", m)
	}
	for _, u := range regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"']*`).FindAllString(page, -1) {
		if u != "http://www.w3.org/2000/svg" {
			t.Errorf("status.html holds the URL %q", u)
		}
	}
}

// rowState is what a person sees in one link's row of the status page.
type rowState struct {
	Loaded string `json:"loaded"`
	Up     string `json:"up"`
	State  string `json:"state"`
	Resets string `json:"resets"`
	Causes string `json:"causes"`
	Rst    string `json:"rst"`
	Last   string `json:"last"`
	Chart  string `json:"chart"`
	First  string `json:"first"`
	Error  string `json:"error"`
}

func rowScript(link string) string {
	return `const tr = document.querySelector('tr[data-link="` + link + `"]');
if (!tr) return null;
const rst = tr.querySelector('[data-cause="rst"]');
const first = document.querySelector('#resets tbody tr');
const err = document.getElementById('error');
return {loaded: document.body.dataset.loaded || "0", up: tr.dataset.up,
  state: tr.querySelector('td.state').textContent, resets: tr.querySelector('td.resets').textContent,
  causes: tr.querySelector('td.causes').textContent, rst: rst ? rst.dataset.count : "",
  last: tr.querySelector('td.last').textContent, chart: tr.querySelector('svg.tod').dataset.total,
  first: first ? first.textContent : "", error: err.style.display === "block" ? err.textContent : ""};`
}

// The status page, open in headless Chromium, shows a backend reset on its
// own refresh: the link's row stays up and shows one reset, cause rst, in
// the counts, the causes, the last-reset time and the hour-of-day chart,
// and the recent resets table lists it. A fresh load shows the same.
func TestStatusPageInChromium(t *testing.T) {
	db := newDatabase(t)
	st := startStack(t, strings.Replace(ordersConfig(db.addr()), "name = \"orders\"\n  [backend.health]",
		"name = \"orders\"\nconnect_timeout = \"200ms\"\nconnect_budget = \"500ms\"\n  [backend.health]", 1))
	link := "orders|orders|" + db.addr()
	started := time.Now()
	b := startBrowser(t, 1280, 720)
	t.Logf("headless Chromium started in %v", time.Since(started).Round(time.Millisecond))
	b.open(st.url + "/status")

	var row *rowState
	waitRow := func(what string, cond func(r *rowState) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			row = nil
			b.eval(rowScript(link), &row)
			if row != nil && cond(row) {
				return time.Since(start)
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("page never showed %s; row: %+v", what, row)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitRow("the link", func(r *rowState) bool { return r.Loaded != "0" })
	if row.Up != "true" || row.State != "up" || row.Resets != "0 / 0 / 0" || row.Causes != "none" || row.Last != "never" || row.Chart != "0" {
		t.Fatalf("before any reset the row shows %+v", row)
	}

	app, dbEnd := db.session(t, st.p.Addr("orders").String())
	resetBy(t, app, dbEnd)
	took := waitRow("the reset", func(r *rowState) bool { return r.Rst != "" })
	t.Logf("the open page showed the reset %v after it happened", took.Round(time.Millisecond))
	if row.Rst != "1" || row.Causes != "rst 1" || row.Resets != "1 / 1 / 1" || row.Chart != "1" || !strings.HasSuffix(row.Last, " ago") {
		t.Errorf("after one backend reset the row shows %+v", row)
	}
	if row.Up != "true" || row.State != "up" || row.Error != "" {
		t.Errorf("the link should still be up: %+v", row)
	}
	for _, want := range []string{db.addr(), "backend", "active", "rst", "4 B / 4 B"} {
		if !strings.Contains(row.First, want) {
			t.Errorf("recent resets, first row %q lacks %q", row.First, want)
		}
	}

	// A fresh load shows the same at once.
	b.open(st.url + "/")
	waitRow("the reset after a reload", func(r *rowState) bool { return r.Loaded != "0" })
	if row.Rst != "1" || row.Up != "true" {
		t.Errorf("after a reload the row shows %+v", row)
	}

	// The database's port closes: a new session gets no server, and is
	// counted on the link to server "none", whose row has no state (it was
	// shown "down" for good, as if a server of that name were).
	db.ln.Close()
	c, err := net.Dial("tcp", st.p.Addr("orders").String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	io.Copy(io.Discard, c) // reset at the end of the budget
	c.Close()
	link = "orders|orders|none"
	waitRow("the no-server row", func(r *rowState) bool { return r.Resets != "0 / 0 / 0" })
	if row.State != "–" {
		t.Errorf("the no-server row shows state %q, want –: %+v", row.State, row)
	}
}

// TestStatusScreenshot makes the README's picture of the status page from
// a real run: three listeners, a standby server, a server that is down,
// live sessions and resets of several kinds. Run it with
// TNSGUARD_STATUS_SCREENSHOT=$PWD/docs/status.png go test ./admin -run Screenshot
func TestStatusScreenshot(t *testing.T) {
	path := os.Getenv("TNSGUARD_STATUS_SCREENSHOT")
	if path == "" {
		t.Skip("set TNSGUARD_STATUS_SCREENSHOT=FILE.png to make the README screenshot")
	}
	db1, db2, db3, db5 := newDatabase(t), newDatabase(t), newDatabase(t), newDatabase(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := dead.Addr().String()
	dead.Close() // connections to it are refused
	toml := fmt.Sprintf(`
[[listener]]
name = "orders"
listen = "127.0.0.1:0"
backend = "orders"
[[listener]]
name = "billing"
listen = "127.0.0.2:0"
backend = "billing"
[[listener]]
name = "reports"
listen = "127.0.0.3:0"
backend = "reports"
idle_timeout = "1s"
[[backend]]
name = "orders"
  [backend.keepalive]
  idle = "1s"
  interval = "1s"
  count = 3
  [backend.health]
  check = "tcp"
  interval = "500ms"
  timeout = "400ms"
  [[backend.server]]
  address = %q
  [[backend.server]]
  address = %q
  priority = 1
[[backend]]
name = "billing"
  [backend.health]
  check = "tcp"
  interval = "500ms"
  timeout = "400ms"
  [[backend.server]]
  address = %q
[[backend]]
name = "reports"
  [backend.health]
  check = "tcp"
  interval = "500ms"
  timeout = "400ms"
  [[backend.server]]
  address = %q
  [[backend.server]]
  address = %q
  priority = 1
`, db1.addr(), db2.addr(), db3.addr(), down, db5.addr())
	st := startStack(t, toml)
	orders, billing, reports := st.p.Addr("orders").String(), st.p.Addr("billing").String(), st.p.Addr("reports").String()

	for range 5 { // pooled sessions that stay
		db1.session(t, orders)
	}
	for range 3 {
		app, _ := db3.session(t, billing)
		app.Write(make([]byte, 200<<10))
	}
	for range 2 { // the database resets busy sessions
		app, db := db1.session(t, orders)
		resetBy(t, app, db)
	}
	app, db := db1.session(t, orders) // a reset after the session sat idle
	time.Sleep(1200 * time.Millisecond)
	resetBy(t, app, db)
	app, _ = db1.session(t, orders) // an app that resets its own connection
	app.SetLinger(0)
	app.Close()
	app, db = db3.session(t, billing)
	io.CopyN(app, strings.NewReader(strings.Repeat("x", 1<<20)), 1<<20)
	resetBy(t, app, db)
	for range 2 { // sessions tnsguard ends after idle_timeout
		db5.session(t, reports)
	}
	time.Sleep(2500 * time.Millisecond)

	b := startBrowser(t, 1280, 720)
	b.open(st.url + "/status")
	var loaded string
	deadline := time.Now().Add(10 * time.Second)
	for loaded == "" || loaded == "0" {
		b.eval(`return document.body.dataset.loaded || "0";`, &loaded)
		if time.Now().After(deadline) {
			t.Fatal("page never loaded")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.screenshot(path)
	t.Logf("wrote %s", path)
}

// pastResets is the running proxy with its reset events moved ago into the
// past, as a quiet link's ring holds them days later: the clock cannot be
// set back for a real reset.
type pastResets struct {
	*proxy.Proxy
	ago time.Duration
}

func (s pastResets) Resets(limit int) []proxy.ResetEvent {
	evs := s.Proxy.Resets(limit)
	for i := range evs {
		evs[i].Time = evs[i].Time.Add(-s.ago)
	}
	return evs
}

// The page gives every time in the proxy's time zone (it says so top
// right), whatever the browser's: the time it was updated too. And a reset
// of an earlier day says its date: a quiet link's ring keeps resets for
// days, and one of two days ago at 03:12 showed as "03:12:44.118", as if
// it were of this night. Until 2026-11-30 "updated" was the browser's
// clock (a browser in New York read "updated 10:51:49 · proxy time UTC"
// over resets at 15:50), and the time column had no date.
func TestStatusPageTimesAreTheProxys(t *testing.T) {
	_, offset := time.Now().Zone() // the proxy's zone (the process's), read before TZ is set for the browser
	zone := "Pacific/Kiritimati"   // UTC+14
	if offset == 14*3600 {
		zone = "Etc/GMT+12"
	}
	t.Setenv("TZ", zone) // chromedriver, and so Chromium, run in another zone than the proxy

	db := newDatabase(t)
	cfg, _, err := config.Parse([]byte(ordersConfig(db.addr())), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p := proxy.New(hclog.NewNullLogger(), metrics.New(reg, "test"))
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	const ago = 50 * time.Hour
	adm, err := Start(config.Admin{Listen: "127.0.0.1:0"}, reg, pastResets{p, ago}, hclog.NewNullLogger())
	if err != nil {
		p.Shutdown(0, 0)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		adm.Close()
		p.Shutdown(0, time.Second)
		http.DefaultClient.CloseIdleConnections()
	})
	app, dbEnd := db.session(t, p.Addr("orders").String())
	resetBy(t, app, dbEnd)
	var ev []proxy.ResetEvent
	until := time.Now().Add(5 * time.Second)
	for ev = p.Resets(1); len(ev) == 0 && time.Now().Before(until); ev = p.Resets(1) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(ev) == 0 {
		t.Fatal("no reset event")
	}
	shownAt := ev[0].Time.Add(-ago) // in the proxy's zone

	b := startBrowser(t, 1280, 720)
	b.open("http://" + adm.Addr().String() + "/status")
	var got struct {
		Loaded  string `json:"loaded"`
		Updated string `json:"updated"`
		Time    string `json:"time"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for got.Loaded == "" || got.Loaded == "0" || got.Time == "" {
		b.eval(`const td = document.querySelector('#resets tbody tr td');
return {loaded: document.body.dataset.loaded || "0", updated: document.getElementById('updated').textContent,
  time: td && td.parentElement.dataset.cause ? td.textContent : ""};`, &got)
		if time.Now().After(deadline) {
			t.Fatalf("page never showed the reset: %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	now := time.Now()
	if u, err := time.Parse("15:04:05", got.Updated); err != nil {
		t.Errorf("updated %q: %v", got.Updated, err)
	} else {
		d := (now.Hour()*3600 + now.Minute()*60 + now.Second() - (u.Hour()*3600 + u.Minute()*60 + u.Second()) + 86400) % 86400
		if d > 15 {
			t.Errorf("updated %q at proxy time %s (browser in %s): not the proxy's clock", got.Updated, now.Format("15:04:05"), zone)
		}
	}
	if !strings.Contains(got.Time, shownAt.Format("2006-01-02")) || !strings.Contains(got.Time, shownAt.Format("15:04:05")) {
		t.Errorf("a reset of %s (proxy time %s) shows as %q: no date", shownAt.Format(time.RFC3339), now.Format(time.RFC3339), got.Time)
	}
}

// hungDatabase is a listener that accepts, reads what it is sent and never
// answers: a database hung in a switchover.
func hungDatabase(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// An app whose connect_budget ends while the only server holds its opening
// unanswered is counted on that server: /api/resets names it, its
// /api/links row (the status page's) shows the reset, and so does
// tnsguard_resets_total, phase opening. Until 2026-12-01 all three said
// server "none", phase connect, and the hung server's row showed 0 resets.
func TestHungServerIsNamedOnItsRow(t *testing.T) {
	hung := hungDatabase(t)
	st := startStack(t, fmt.Sprintf(`
[[listener]]
name = "orders"
listen = "127.0.0.1:0"
backend = "orders"
[[backend]]
name = "orders"
connect_timeout = "500ms"
connect_budget = "1500ms"
  [backend.health]
  check = "off"
  [[backend.server]]
  address = %q
`, hung))
	c, err := net.Dial("tcp", st.p.Addr("orders").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(8 * time.Second))
	if _, err := io.Copy(io.Discard, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app saw %v at the budget's end, want ECONNRESET", err)
	}

	var resets struct {
		Resets []proxy.ResetEvent `json:"resets"`
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(resets.Resets) == 0 && time.Now().Before(deadline) {
		getJSON(t, st.url+"/api/resets", &resets)
		time.Sleep(10 * time.Millisecond)
	}
	if len(resets.Resets) != 1 {
		t.Fatalf("/api/resets: %+v", resets)
	}
	if ev := resets.Resets[0]; ev.Server != hung || ev.Phase != "opening" || ev.Cause != "timeout" || ev.Outcome != "no_backend" {
		t.Errorf("/api/resets event: server %s, phase %s, cause %s, outcome %s; want %s, opening, timeout, no_backend",
			ev.Server, ev.Phase, ev.Cause, ev.Outcome, hung)
	}

	var links struct {
		Links []map[string]any `json:"links"`
	}
	getJSON(t, st.url+"/api/links", &links)
	rows := map[string]float64{}
	for _, l := range links.Links {
		v, _ := l["resets_5m"].(float64)
		rows[fmt.Sprint(l["server"])] += v
	}
	if rows[hung] != 1 || rows["none"] != 0 {
		t.Errorf("/api/links resets_5m by server: %v; want 1 on the hung server %s, 0 on none", rows, hung)
	}

	resp, err := http.Get(st.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf(`tnsguard_resets_total{backend="orders",cause="timeout",listener="orders",phase="opening",server=%q,side="backend"} 1`, hung)
	if !strings.Contains(string(body), want+"\n") {
		t.Errorf("/metrics lacks %s", want)
	}
}
