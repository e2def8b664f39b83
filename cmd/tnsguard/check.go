package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tnsguard/tnsguard/config"
)

// checkCommand validates a file: 0 when valid (warnings may be printed),
// 1 with every error, one per line.
func checkCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("check", stderr)
	path := fs.String("config", "", "configuration file to validate")
	if code, ok := parseFlags(fs, args, stdout); !ok {
		return code
	}
	if code := noArgs(fs, stderr); code != 0 {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "tnsguard check: -config FILE is required")
		return 2
	}
	_, warnings, err := config.Load(*path)
	for _, w := range warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK\n", *path)
	return 0
}

// healthcheckCommand asks a running instance's /readyz (Docker HEALTHCHECK).
func healthcheckCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("healthcheck", stderr)
	addr := fs.String("admin", "127.0.0.1:9521", "admin listener of the running instance")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this")
	if code, ok := parseFlags(fs, args, stdout); !ok {
		return code
	}
	if code := noArgs(fs, stderr); code != 0 {
		return code
	}
	// Usage errors exit 2, so that a HEALTHCHECK or script with a typo is
	// not taken for an instance that is not ready (1).
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "tnsguard healthcheck: -timeout %v: give a positive time, such as 3s\n", *timeout)
		return 2
	}
	_, port, err := net.SplitHostPort(*addr)
	if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 {
		fmt.Fprintf(stderr, "tnsguard healthcheck: -admin %q: give HOST:PORT of the admin listener (IPv6 in brackets: [::1]:9521)\n", *addr)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// Built as a URL, not a string: a zone (%eth0) is escaped as URLs want.
	u := url.URL{Scheme: "http", Host: *addr, Path: "/readyz"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintln(stderr, "tnsguard healthcheck:", err)
		return 1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "tnsguard healthcheck: not reachable:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "tnsguard healthcheck: not ready (%s): %s", resp.Status, body)
		return 1
	}
	fmt.Fprintf(stdout, "ready\n")
	return 0
}
