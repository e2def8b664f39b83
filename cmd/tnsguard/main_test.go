package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "[[listener]]\nname = \"orders\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"orders\"\n[[backend]]\nname = \"orders\"\n[[backend.server]]\naddress = \"127.0.0.1:1521\"\n")
	syntax := write("syntax.toml", "[[listener]\n")
	meaning := write("meaning.toml", "[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:1522\"\nbackend = \"y\"\n")
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"check", "-config", good}, 0, good + ": OK\n", ""},
		{[]string{"check", "-config", syntax}, 1, "", syntax + ":1:11: expected end of table array name delimiter ']', but got '\\n' instead\n"},
		{[]string{"check", "-config", meaning}, 1, "", meaning + ": listener \"x\": backend \"y\" is not defined (line 4)\n"},
		{[]string{"check", "-config", filepath.Join(dir, "missing.toml")}, 1, "", "open " + filepath.Join(dir, "missing.toml") + ": no such file or directory\n"},
		{[]string{"check"}, 2, "", "tnsguard check: -config FILE is required\n"},
		{[]string{"version"}, 0, "tnsguard dev\n", ""},
		{[]string{"version", "extra"}, 2, "", "tnsguard version: unexpected argument \"extra\"\n"},
		{[]string{"bogus"}, 2, "", "tnsguard: unknown command \"bogus\"\n\n" + usage},
		{[]string{"check", "-config", "../../configs/tnsguard.toml"}, 0, "../../configs/tnsguard.toml: OK\n", ""},
		{[]string{"check", "x.toml"}, 2, "", "tnsguard check: unexpected argument \"x.toml\" (a file is given as -config FILE, flags first)\n"},
		// Usage errors exit 2, not 1 (not ready): a HEALTHCHECK with a typo says so.
		{[]string{"healthcheck", "x"}, 2, "", "tnsguard healthcheck: unexpected argument \"x\"\n"},
		{[]string{"healthcheck", "-timeout", "0s"}, 2, "", "tnsguard healthcheck: -timeout 0s: give a positive time, such as 3s\n"},
		{[]string{"healthcheck", "-admin", "nope"}, 2, "", "tnsguard healthcheck: -admin \"nope\": give HOST:PORT of the admin listener (IPv6 in brackets: [::1]:9521)\n"},
		// a bad port is a usage error too, not "not ready" (it exited 1)
		{[]string{"healthcheck", "-admin", "127.0.0.1:x"}, 2, "", "tnsguard healthcheck: -admin \"127.0.0.1:x\": give HOST:PORT of the admin listener (IPv6 in brackets: [::1]:9521)\n"},
		{[]string{"healthcheck", "-admin", "127.0.0.1:99999"}, 2, "", "tnsguard healthcheck: -admin \"127.0.0.1:99999\": give HOST:PORT of the admin listener (IPv6 in brackets: [::1]:9521)\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := dispatch(tc.args, &stdout, &stderr)
			if code != tc.code || stdout.String() != tc.stdout || stderr.String() != tc.stderr {
				t.Fatalf("exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

func TestHealthcheckAbsentInstance(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := dispatch([]string{"healthcheck", "-admin", "127.0.0.1:1"}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d against nothing listening; stderr %q", code, stderr.String())
	}
}

// An admin address with a zone (a link-local IPv6 address) is asked, not
// refused as a malformed URL: "http://[fe80::1%lo]..." is not one until
// its % is escaped.
func TestHealthcheckTakesAZonedAddress(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := dispatch([]string{"healthcheck", "-admin", "[fe80::1%lo]:1", "-timeout", "1s"}, &stdout, &stderr)
	if code != 1 || strings.Contains(stderr.String(), "invalid URL escape") || !strings.Contains(stderr.String(), "not reachable") {
		t.Errorf("exit %d, stderr %q; want 1 with the dial's error", code, stderr.String())
	}
}

// Help asked for is no error: `tnsguard -h` exited 0 but `run -h`,
// `check -h`, `healthcheck -h` and `probe -h` exited 2 with the usage on
// stderr, and `version -h` said "unexpected argument". Each prints its
// usage on stdout and exits 0; a flag that does not exist stays a usage
// error, 2, with the usage on stderr.
func TestHelpIsNoError(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string // its first line
		stderr string // its first line
	}{
		{[]string{"-h"}, 0, "usage: tnsguard <command> [flags]", ""},
		{[]string{"run", "-h"}, 0, "Usage of tnsguard run:", ""},
		{[]string{"run", "-config", "x.toml", "-help"}, 0, "Usage of tnsguard run:", ""},
		{[]string{"check", "-h"}, 0, "Usage of tnsguard check:", ""},
		{[]string{"healthcheck", "--help"}, 0, "Usage of tnsguard healthcheck:", ""},
		{[]string{"probe", "-h"}, 0, "usage: tnsguard probe -target HOST:PORT [-max 2h] [-parallel N] [-json]", ""},
		{[]string{"version", "-h"}, 0, "Usage of tnsguard version:", ""},
		{[]string{"run", "-bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"check", "-bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"healthcheck", "-bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"probe", "-bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"version", "-bogus"}, 2, "", "flag provided but not defined: -bogus"},
		{[]string{"check", "-config"}, 2, "", "flag needs an argument: -config"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := dispatch(tc.args, &stdout, &stderr)
			first := func(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }
			if code != tc.code || first(stdout.String()) != tc.stdout || first(stderr.String()) != tc.stderr {
				t.Fatalf("exit %d, stdout %q, stderr %q\nwant exit %d, stdout starting %q, stderr starting %q", code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
			}
			if tc.code == 2 && !strings.Contains(stderr.String(), "Usage of tnsguard") && !strings.Contains(stderr.String(), "usage: tnsguard") {
				t.Errorf("a usage error without the usage: stderr %q", stderr.String())
			}
		})
	}
}
