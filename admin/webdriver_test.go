package admin

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tnsguard/tnsguard/test/loopback"
)

// Headless Chromium driven by chromedriver over the W3C WebDriver HTTP
// protocol (plain JSON, no client library): the page is loaded once and
// watched while the test provokes resets, so its own refresh is tested.

// chromiumFlags are the flags CI uses; --user-data-dir is added per run.
func chromiumFlags() []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"}
}

// findBrowser returns the chromium and chromedriver paths, or skips the
// test loudly (on stderr too, so it shows without -v). In CI (CI set in the
// environment, as .ci/run's is) or with TNSGUARD_REQUIRE_CHROMIUM=1 a
// missing browser fails instead: make deps installs it, so a skip there
// would let CI go green without the status page ever loading.
func findBrowser(t *testing.T) (chromium, driver string) {
	t.Helper()
	chromium, err1 := exec.LookPath("chromium")
	driver, err2 := exec.LookPath("chromedriver")
	if err := errors.Join(err1, err2); err != nil {
		msg := fmt.Sprintf("status page NOT tested in a browser: %v (apt-get install chromium chromium-driver)", err)
		if os.Getenv("CI") != "" || os.Getenv("TNSGUARD_REQUIRE_CHROMIUM") != "" {
			t.Fatal(msg + " (CI is set, so this is a failure, not a skip)")
		}
		fmt.Fprintln(os.Stderr, "SKIP "+t.Name()+": "+msg)
		t.Skip(msg)
	}
	return chromium, driver
}

type browser struct {
	t       *testing.T
	base    string
	session string
	client  *http.Client
}

// startBrowser runs chromedriver and opens one headless Chromium window of
// the given size; both end with the test.
func startBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	chromium, driver := findBrowser(t)
	port, err := loopback.Port() // outside the ephemeral range: no concurrent connect takes it before chromedriver binds
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(driver, "--port="+strconv.Itoa(port), "--log-level=SEVERE")
	logPath := filepath.Join(t.TempDir(), "chromedriver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromedriver: %v", err)
	}
	b := &browser{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(func() {
		if b.session != "" {
			b.do("DELETE", "/session/"+b.session, nil)
		}
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		b.client.CloseIdleConnections()
		if t.Failed() {
			if out, _ := os.ReadFile(logPath); len(out) > 0 {
				t.Logf("chromedriver log:\n%s", out)
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.do("GET", "/status", nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("chromedriver not answering: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	args := append([]string{"--user-data-dir=" + t.TempDir(), fmt.Sprintf("--window-size=%d,%d", width, height)}, chromiumFlags()...)
	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName":        "chrome",
		"goog:chromeOptions": map[string]any{"binary": chromium, "args": args},
	}}}
	v, err := b.do("POST", "/session", caps)
	if err != nil {
		t.Fatalf("new browser session: %v", err)
	}
	var s struct {
		SessionID string `json:"sessionId"`
	}
	if err := json.Unmarshal(v, &s); err != nil || s.SessionID == "" {
		t.Fatalf("new browser session: %s", v)
	}
	b.session = s.SessionID
	b.viewport(width, height)
	return b
}

// viewport sizes the window so that the page itself gets width x height
// (headless Chromium still counts a window frame).
func (b *browser) viewport(width, height int) {
	b.t.Helper()
	b.open("about:blank")
	var inner struct{ W, H int }
	b.eval(`return {W: window.innerWidth, H: window.innerHeight};`, &inner)
	rect := map[string]any{"width": 2*width - inner.W, "height": 2*height - inner.H}
	if _, err := b.do("POST", "/session/"+b.session+"/window/rect", rect); err != nil {
		b.t.Fatalf("window size: %v", err)
	}
}

// do sends one WebDriver command and returns its "value".
func (b *browser) do(method, path string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, b.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Value json.RawMessage `json:"value"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("%s %s: %s", method, path, raw)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, out.Value)
	}
	return out.Value, nil
}

func (b *browser) open(url string) {
	b.t.Helper()
	if _, err := b.do("POST", "/session/"+b.session+"/url", map[string]any{"url": url}); err != nil {
		b.t.Fatalf("open %s: %v", url, err)
	}
}

// eval runs a JavaScript function body in the page and decodes its result
// into out.
func (b *browser) eval(script string, out any) {
	b.t.Helper()
	v, err := b.do("POST", "/session/"+b.session+"/execute/sync", map[string]any{"script": script, "args": []any{}})
	if err != nil {
		b.t.Fatalf("script: %v", err)
	}
	if err := json.Unmarshal(v, out); err != nil {
		b.t.Fatalf("script result %s: %v", v, err)
	}
}

// screenshot saves the window as PNG.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	v, err := b.do("GET", "/session/"+b.session+"/screenshot", nil)
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	var b64 string
	if err := json.Unmarshal(v, &b64); err != nil {
		b.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// TestMissingBrowserFailsUnderCI: the README says a test that needs a package
// skips outside CI and fails under CI=true. The status-page tests in Chromium
// are run again, as a child with CI=true and a PATH without chromium: they
// must fail, not pass as skipped (until 2026-11-30 only
// TNSGUARD_REQUIRE_CHROMIUM, which nothing sets, made them fail).
func TestMissingBrowserFailsUnderCI(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestStatusPageInChromium$", "-test.count=1")
	cmd.Env = []string{"CI=true", "PATH=" + t.TempDir(), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("without chromium and with CI=true the status-page test passed (err %v): a skip hides that CI never loaded the page\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("status page NOT tested in a browser")) {
		t.Fatalf("the child failed, but not for the missing browser:\n%s", out)
	}
}
