package e2e

import (
	"context"
	"crypto/sha256"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgTools finds PostgreSQL's server programs (Debian keeps them out of
// PATH, in /usr/lib/postgresql/VERSION/bin); without them the test is
// skipped, or fails under CI.
func pgTools(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		ok := true
		for _, p := range []string{"initdb", "postgres", "pgbench", "psql"} {
			if _, err := os.Stat(filepath.Join(dirs[i], p)); err != nil {
				ok = false
			}
		}
		if ok {
			return dirs[i]
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("PostgreSQL's server programs are not installed; CI must install postgresql (make deps)")
	}
	t.Skip("SKIPPED: PostgreSQL is not installed (apt-get install postgresql; set CI=1 to make this a failure)")
	return ""
}

// startPostgres runs a throwaway PostgreSQL server on a free loopback port
// (trust authentication, user postgres) until the test ends. As root it
// runs as the postgres user, since PostgreSQL refuses to run as root.
func startPostgres(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tnsguard-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and no postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// The server's output goes to a file: its children inherit it, and a
	// pipe would keep exec's Wait waiting for them.
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	command := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	data := filepath.Join(dir, "data")
	if err := command("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync").Run(); err != nil {
		out, _ := os.ReadFile(logf.Name())
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	srv := command("postgres", "-D", data, "-h", "127.0.0.1", "-p", port, "-k", dir,
		"-c", "fsync=off", "-c", "max_connections=50")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			srv.Process.Kill()
			<-done
		}
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("postgres log:\n%s", out)
		}
	})
	waitFor(t, 20*time.Second, "PostgreSQL to accept connections", func() bool {
		select {
		case <-done:
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("postgres exited:\n%s", out)
		default:
		}
		return exec.Command(filepath.Join(bin, "psql"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-Atc", "select 1").Run() == nil
	})
	return addr
}

// PostgreSQL's own client and server through tnsguard, as a pool of apps
// uses a database: pgbench's load (8 clients, one transaction after the
// other, each client's session opened through the replay path), then a
// large result set (bulk, spliced) that must arrive byte for byte as it does
// on a direct connection. No session may end in a reset.
func TestPostgresThroughTnsguard(t *testing.T) {
	bin := pgTools(t)
	db := startPostgres(t, bin)
	admin, addr := freeAddr(t), freeAddr(t)
	g := start(t, admin, config(admin, "",
		[]listenerConf{{name: "pg", listen: addr, backend: "pg"}},
		[]backendConf{{name: "pg", servers: []string{db}}}), true)
	host, port, _ := net.SplitHostPort(addr)

	pgbench := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang fails here, not at the suite's timeout
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "pgbench"), append([]string{"-h", host, "-p", port, "-U", "postgres"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %s through tnsguard: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	pgbench("-i", "-s", "2", "-q", "postgres")
	out := pgbench("-c", "8", "-j", "2", "-T", "4", "-n", "postgres")
	processed := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindStringSubmatch(out)
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out)
	if processed == nil || failed == nil {
		t.Fatalf("pgbench printed no transaction counts:\n%s", out)
	}
	if n, _ := strconv.Atoi(processed[1]); n < 100 {
		t.Errorf("pgbench processed %d transactions in 4 s through tnsguard, want at least 100:\n%s", n, out)
	}
	if failed[1] != "0" {
		t.Errorf("pgbench: %s failed transactions through tnsguard:\n%s", failed[1], out)
	}

	// About 14 MB of rows, read through tnsguard and directly.
	query := "COPY (SELECT g, md5(g::text), repeat('x', g % 97) FROM generate_series(1, 200000) g) TO STDOUT"
	copyVia := func(h, p string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, filepath.Join(bin, "psql"), "-h", h, "-p", p, "-U", "postgres", "-X", "-q", "-c", query).Output()
		if err != nil {
			t.Fatalf("psql COPY via %s:%s: %v", h, p, err)
		}
		return out
	}
	dbHost, dbPort, _ := net.SplitHostPort(db)
	direct, proxied := copyVia(dbHost, dbPort), copyVia(host, port)
	if len(direct) < 10<<20 {
		t.Fatalf("the direct COPY gave %d bytes, want over 10 MiB", len(direct))
	}
	if sha256.Sum256(proxied) != sha256.Sum256(direct) {
		t.Fatalf("the COPY through tnsguard (%d bytes) differs from the direct one (%d bytes)", len(proxied), len(direct))
	}
	toClient := g.metric("tnsguard_bytes_total", "listener", "pg", "backend", "pg", "direction", "to_client")
	if toClient < float64(len(direct)) {
		t.Errorf("tnsguard_bytes_total{to_client} = %v after a %d-byte COPY", toClient, len(direct))
	}
	waitFor(t, 5*time.Second, "every session's end counted", func() bool {
		return g.metric("tnsguard_sessions_active", "listener", "pg", "backend", "pg") == 0
	})
	_, body := g.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "tnsguard_resets_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("a session ended in a reset, though pgbench and psql closed every one cleanly: %s", line)
		}
	}
	if n := g.metric("tnsguard_sessions_total", "listener", "pg", "backend", "pg", "outcome", "ok"); n < 10 {
		t.Errorf("tnsguard_sessions_total{outcome=\"ok\"} = %v, want every pgbench and psql session (at least 10)", n)
	}
}
