package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// tnsguard in a container or a pod with a memory limit: Go's garbage
// collector knew nothing of it and let the heap grow to twice the live
// heap, so a storm that made the live heap half the limit got the
// process, and every session, OOM-killed. The test makes a real memory
// cgroup of 200 MiB, starts itself in it, and reads the limit Go's
// runtime then has: 90% of the cgroup's. With GOMEMLIMIT set, that one
// stays.
func TestMemoryLimitFollowsTheCgroup(t *testing.T) {
	if os.Getenv("TNSGUARD_MEMLIMIT_CHILD") == "1" {
		fitMemoryLimit(hclog.New(&hclog.LoggerOptions{Output: os.Stdout, Level: hclog.Debug}))
		fmt.Printf("gomemlimit=%d\n", debug.SetMemoryLimit(-1))
		return
	}
	const limit = 200 << 20
	dir := memoryCgroup(t, limit)
	for _, tc := range []struct {
		env  string
		want int64
	}{
		{"", limit * 9 / 10},
		{"GOMEMLIMIT=150MiB", 150 << 20},
	} {
		// The child moves itself into the cgroup before Go's runtime
		// starts: a shell writes its pid there, then execs the test binary.
		cmd := exec.Command("sh", "-c", `echo $$ > "$1" && exec "$2" -test.run='^TestMemoryLimitFollowsTheCgroup$'`,
			"sh", filepath.Join(dir, "cgroup.procs"), os.Args[0])
		cmd.Env = append(os.Environ(), "TNSGUARD_MEMLIMIT_CHILD=1", "GOMEMLIMIT=")
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if want := fmt.Sprintf("gomemlimit=%d\n", tc.want); !strings.Contains(string(out), want) {
			t.Errorf("%q in a cgroup of %d bytes: want %s got:\n%s", tc.env, limit, want, out)
		}
		if tc.env == "" && !strings.Contains(string(out), "memory limit of the cgroup") {
			t.Errorf("no line says where the limit came from:\n%s", out)
		}
	}
}

// memoryCgroup makes a memory cgroup with limit bytes below the test's
// own, removed when the test ends: v1's memory controller, or v2 where
// the test's cgroup hands memory down.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	paths, err := readCgroupPaths("/proc/self/cgroup")
	if err != nil {
		t.Skipf("no /proc/self/cgroup: %v", err)
	}
	mounts, err := readCgroupMounts("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var parent, file string
	if m, ok := mounts["memory"]; ok {
		parent, _ = m.dir(paths["memory"])
		file = "memory.limit_in_bytes"
	} else if m, ok := mounts["cgroup2"]; ok {
		parent, _ = m.dir(paths[""])
		file = "memory.max"
		if b, _ := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control")); !strings.Contains(string(b), "memory") {
			t.Skipf("cgroup v2 at %s does not hand the memory controller down", parent)
		}
	}
	if parent == "" {
		t.Skip("no memory cgroup here")
	}
	dir := filepath.Join(parent, fmt.Sprintf("tnsguard-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup (run as root): %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) }) // empty once the child has exited
	if err := os.WriteFile(filepath.Join(dir, file), []byte(fmt.Sprint(limit)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Where the limit is read from, on the layouts tnsguard meets: a
// container's own cgroup (namespaced: its path is /), a host path under a
// v1 mount, a hybrid host (unified hierarchy without memory), a parent
// lower than the cgroup itself (a systemd slice), and no limit at all.
func TestCgroupMemoryLimitLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo string
		files     map[string]string
		want      int64
	}{{
		name:      "v2 container",
		cgroup:    "0::/\n",
		mountinfo: "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
		files:     map[string]string{"sys/fs/cgroup/memory.max": "268435456\n"},
		want:      268435456,
	}, {
		name:      "v2 no limit",
		cgroup:    "0::/\n",
		mountinfo: "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
		files:     map[string]string{"sys/fs/cgroup/memory.max": "max\n"},
		want:      0,
	}, {
		name:      "v2 host, slice lower than the service",
		cgroup:    "0::/system.slice/tnsguard.service\n",
		mountinfo: "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
		files: map[string]string{
			"sys/fs/cgroup/system.slice/tnsguard.service/memory.max": "1073741824\n",
			"sys/fs/cgroup/system.slice/memory.max":                  "536870912\n",
		},
		want: 536870912,
	}, {
		name:      "v2 host, the service without the memory controller, its slice with a limit",
		cgroup:    "0::/system.slice/tnsguard.service\n",
		mountinfo: "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
		files: map[string]string{
			"sys/fs/cgroup/system.slice/tnsguard.service/cgroup.procs": "1\n",
			"sys/fs/cgroup/system.slice/memory.max":                    "536870912\n",
		},
		want: 536870912,
	}, {
		name:   "v1 host path, hybrid",
		cgroup: "4:memory:/docker/abc\n0::/docker/abc\n",
		mountinfo: "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n" +
			"40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
		files: map[string]string{
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "209715200\n",
			"sys/fs/cgroup/memory/docker/memory.limit_in_bytes":     "9223372036854771712\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n",
		},
		want: 209715200,
	}, {
		name:      "v1 unlimited",
		cgroup:    "4:memory:/\n",
		mountinfo: "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n",
		files:     map[string]string{"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"},
		want:      0,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, text := range tc.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// The mount points, as this test's files have them.
			mountinfo := strings.ReplaceAll(tc.mountinfo, " /sys/fs/cgroup", " "+root+"/sys/fs/cgroup")
			cg, mi := filepath.Join(root, "cgroup"), filepath.Join(root, "mountinfo")
			os.WriteFile(cg, []byte(tc.cgroup), 0o644)
			os.WriteFile(mi, []byte(mountinfo), 0o644)
			got, _, err := cgroupMemoryLimit(cg, mi)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("limit %d, want %d", got, tc.want)
			}
		})
	}
}
