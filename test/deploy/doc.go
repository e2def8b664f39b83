// Package deploy holds the tests of tnsguard's deployment and monitoring files:
// the Dockerfile and the static binary it builds, docker-compose.yml, the systemd
// unit, the Kubernetes manifests, the Prometheus alert rules and the Grafana
// dashboard, a check that every metric the rules and the dashboard query
// exists on a running tnsguard's /metrics, and checks that every name README.md
// cites (tests, metrics and labels, config keys and defaults, commands and flags,
// log messages, alerts, paths, sections) still exists (readme_test.go).
//
//	go test ./test/deploy/
//
// External tools: file and ldd (static binary), promtool (rules), python3 with
// PyYAML (YAML manifests), systemd-analyze (unit). A missing tool skips its test
// with a message, except when CI is set in the environment: then it fails.
package deploy
