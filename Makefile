# tnsguard: `make run` runs it on the embedded default config; `make test`
# installs what the tests need (as root: apt packages; Go modules) and runs
# the whole suite: vet, race-enabled tests (network lab, Chromium status
# page, promtool rules, benchmark smoke included) and a short fuzz of every
# parser of untrusted bytes.

GO       ?= go
FUZZTIME ?= 10000x
APT_PACKAGES = iptables iproute2 haproxy nginx libnginx-mod-stream iperf3 prometheus prometheus-alertmanager \
               chromium chromium-driver file strace systemd procps ca-certificates python3-yaml \
               nodejs postgresql
NODE_CLIENT = test/e2e/testdata/node-oracledb

.PHONY: run build test deps vet unit fuzz bench-full soak

run:
	$(GO) run ./cmd/tnsguard run

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o tnsguard ./cmd/tnsguard

# deps installs the Debian packages the lab, benchmark and browser tests use
# (only those missing; needs root), downloads the Go modules and installs
# node-oracledb (npm ci, from its lock file) for the real-client tests.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: missing packages:$$missing (run as root to install them)"; \
	  else echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	fi
	$(GO) mod download
	@if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; fi
	@if command -v npm >/dev/null; then npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund --loglevel=error; \
	else echo "make deps: npm not found: the node-oracledb tests will be skipped"; fi

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 25m ./...

# fuzz runs every Fuzz target for FUZZTIME each (go test -fuzz takes one
# target at a time). A count (10000x), not a duration: with a duration the
# engine sometimes reports its own "context deadline exceeded" as a
# failure; such a run is tried once more, a real finding fails at once.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/fuzz-$$f.log 2>&1 || \
	    { grep -q '^--- FAIL' /tmp/fuzz-$$f.log && ! grep -q 'context deadline exceeded' /tmp/fuzz-$$f.log && { cat /tmp/fuzz-$$f.log; exit 1; }; \
	      echo "  (the fuzz engine stopped on its own deadline, not a finding: once more)"; \
	      $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/fuzz-$$f.log 2>&1 || { cat /tmp/fuzz-$$f.log; exit 1; }; }; \
	  done; \
	done

test: deps vet unit fuzz

# Full-size benchmark against HAProxy, nginx and a direct connection.
bench-full:
	$(GO) run ./test/bench -full

# Longer soaks than the suite runs: full-size churn (4,500 sessions for a
# minute; 4 fds each, under a hard limit of 20,000) and a 15,000-connection
# half-open flood against the binary.
soak:
	ulimit -n 65536 2>/dev/null || true; \
	TNSGUARD_CHURN=60s TNSGUARD_CHURN_SESSIONS=4500 $(GO) test -race -run TestChurn -v -timeout 15m ./proxy/
	TNSGUARD_HOSTILE_HALFOPEN=15000 TNSGUARD_HOSTILE_MAX_SESSIONS=1000 $(GO) test -run TestHostileClientsEndToEnd -v -timeout 10m ./test/e2e/
