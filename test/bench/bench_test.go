package main

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// TestMain doubles as the entry of the helper processes (echo backend, the
// Go proxies gocopy and goloop), which the harness starts by re-executing
// this binary.
func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		if err := runRole(role, os.Stdout); err != nil {
			os.Stderr.WriteString("bench role " + role + ": " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmoke runs the -quick benchmark and checks that every system produced
// every figure it has. It asserts no timing: the machine is shared and noisy.
// In CI (CI set) a missing haproxy, nginx, iperf3 or tnsguard build fails it;
// elsewhere such a system is skipped with the reason.
func TestSmoke(t *testing.T) {
	o := quickOptions()
	o.Systems = knownSystems() // the opt-in reference design too
	o.Tests = knownTests()     // and the opt-in measurements
	o.Log = testWriter{t}
	o.Verbose = true
	o.Command = "go test ./test/bench -run TestSmoke"
	res, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.text())
	if os.Getenv("CI") != "" {
		for s, why := range res.Skipped {
			t.Errorf("%s skipped in CI: %s", s, why)
		}
		for _, n := range res.Notes {
			if strings.Contains(n, "skipped") {
				t.Errorf("in CI: %s", n)
			}
		}
	}
	for _, f := range res.Failures {
		t.Errorf("measurement failed: %s", f)
	}
	for _, s := range []string{sysDirect, sysGoCopy, sysGoLoop} {
		if !contains(res.Systems, s) {
			t.Errorf("%s did not run; it needs nothing outside this package", s)
		}
	}
	bulkRan := !strings.Contains(strings.Join(res.Notes, "\n"), "bulk figures skipped")
	for _, s := range res.Systems {
		for f := range numFigures {
			if f.info().ProxyOnly && s == sysDirect {
				continue
			}
			if (f == figBulk || f == figCPUPerGB || f == figBulkUp || f == figCPUPerGBUp) && !bulkRan {
				continue
			}
			if v := res.value(s, f); math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("%s: no number for %q", s, f.info().Name)
			}
		}
	}
	md := res.markdown()
	for _, s := range res.Systems {
		if !strings.Contains(md, "| "+s+" |") && !strings.Contains(md, " | "+s) {
			t.Errorf("markdown table has no %s column", s)
		}
	}
}
