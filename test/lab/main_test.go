// Package lab holds the network-lab tests: tnsguard between an application and a
// database with a real stateful firewall (Linux conntrack in network namespaces) in
// between. See netlab for the topology. Run as root: go test ./test/lab/ -v
package lab

import (
	"flag"
	"os"
	"testing"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// tnsguardBin is built once per test binary run, by the first test that needs it;
// TNSGUARD_LAB_BIN=/path/to/tnsguard tests that binary instead.
var tnsguardBin = &netlab.Binary{ModDir: "../..", Pkg: "./cmd/tnsguard", Env: "TNSGUARD_LAB_BIN"}

func TestMain(m *testing.M) {
	netlab.RunHelper() // helper processes (echo server, toxiproxy) end here
	// The lab's tests mostly wait for firewall timeouts in separate namespaces: run
	// more of them at once than there are CPUs, unless -parallel was given.
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", "8")
	}
	code := m.Run()
	tnsguardBin.Remove()
	os.Exit(code)
}
