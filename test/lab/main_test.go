// Package lab holds the network-lab tests: tnsguard between an application and a
// database with a real stateful firewall (Linux conntrack in network namespaces) in
// between. See netlab for the topology. Run as root: go test ./test/lab/ -v
package lab

import (
	"os"
	"testing"

	"github.com/tnsguard/tnsguard/test/lab/netlab"
)

// tnsguardBin is built once per test binary run, by the first test that needs it;
// TNSGUARD_LAB_BIN=/path/to/tnsguard tests that binary instead.
var tnsguardBin = &netlab.Binary{ModDir: "../..", Pkg: "./cmd/tnsguard", Env: "TNSGUARD_LAB_BIN"}

func TestMain(m *testing.M) {
	netlab.RunHelper() // helper processes (echo server, toxiproxy) end here
	code := m.Run()
	tnsguardBin.Remove()
	os.Exit(code)
}
