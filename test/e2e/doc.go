// Package e2e runs the tnsguard binary as operators do: built from
// ./cmd/tnsguard, started with a config file, driven with real signals
// (SIGHUP reload, SIGTERM/SIGINT drain) and real sockets, observed through
// its admin listener (/readyz, /metrics), its JSON log and its exit code.
//
//	go test ./test/e2e/                              # about 12 s on 2 cores, build included
//	TNSGUARD_E2E_BIN=./tnsguard go test ./test/e2e/  # test a binary built elsewhere
//	TNSGUARD_E2E_STRACE=1 go test -run KeepsSplice ./test/e2e/   # count splice(2) calls under strace
//
// External tools: haproxy (PROXY protocol interoperability) and strace (the
// splice count); a missing tool skips its test, or fails it when CI is set.
package e2e
