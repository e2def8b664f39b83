package main

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// memoryLimitShare is the part of the cgroup's memory limit that Go's
// garbage collector is told to keep the process under: the rest is room
// for what the heap's limit does not cover (the process's own pages, the
// kernel memory of its sockets, charged to the same cgroup).
const memoryLimitShare = 0.9

// fitMemoryLimit gives Go's garbage collector the memory limit of the
// cgroup tnsguard runs in (a container's, a Kubernetes pod's, systemd's
// MemoryMax), unless GOMEMLIMIT sets one. Without it the collector lets
// the heap grow to twice what is live before it runs, blind to the
// limit. It does not make room for more sessions: under load most of
// what the cgroup holds is goroutine stacks and the kernel's memory for
// the sockets, which are not garbage (max_sessions is what keeps a pod
// below its limit; see the README).
func fitMemoryLimit(log hclog.Logger) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		log.Debug("GOMEMLIMIT is set: the cgroup's memory limit is not read", "gomemlimit", v)
		return
	}
	limit, dir, err := cgroupMemoryLimit("/proc/self/cgroup", "/proc/self/mountinfo")
	if err != nil {
		log.Debug("no cgroup memory limit read", "error", err)
		return
	}
	if limit == 0 {
		return // no limit
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	log.Info("memory limit of the cgroup: the garbage collector keeps tnsguard below 90% of it (set GOMEMLIMIT to choose)",
		"cgroup_limit_bytes", limit, "gomemlimit_bytes", soft, "cgroup", dir)
}

// cgroupMemoryLimit is the lowest memory limit on the cgroup the process
// is in and its ancestors (0: none), with the directory that sets it. It
// reads cgroup v2 (memory.max) where the memory controller is there, v1
// (memory.limit_in_bytes) otherwise: a hybrid host has the unified
// hierarchy mounted without memory.
func cgroupMemoryLimit(cgroupFile, mountinfoFile string) (int64, string, error) {
	paths, err := readCgroupPaths(cgroupFile)
	if err != nil {
		return 0, "", err
	}
	mounts, err := readCgroupMounts(mountinfoFile)
	if err != nil {
		return 0, "", err
	}
	if m, ok := mounts["cgroup2"]; ok {
		if p, ok := paths[""]; ok {
			if dir, ok := m.dir(p); ok {
				// The process's own cgroup may lack memory.max (its parent
				// does not hand the controller down: a service without
				// memory accounting) while a slice above it has a limit.
				if limit, at, err := lowestLimit(dir, m.mountpoint, "memory.max"); err == nil {
					return limit, at, nil
				}
			}
		}
	}
	m, ok := mounts["memory"]
	if !ok {
		return 0, "", errors.New("no cgroup memory controller mounted")
	}
	p, ok := paths["memory"]
	if !ok {
		return 0, "", fmt.Errorf("%s names no memory cgroup", cgroupFile)
	}
	dir, ok := m.dir(p)
	if !ok {
		return 0, "", fmt.Errorf("memory cgroup %s is outside its mount at %s", p, m.mountpoint)
	}
	return lowestLimit(dir, m.mountpoint, "memory.limit_in_bytes")
}

// lowestLimit reads file in dir and in each directory above it up to
// top, and returns the lowest limit (0: none) and where it is.
func lowestLimit(dir, top, file string) (int64, string, error) {
	var low int64
	var at string
	read := false
	for {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err == nil {
			read = true
			if n, ok := parseLimit(strings.TrimSpace(string(b))); ok && n > 0 && (low == 0 || n < low) {
				low, at = n, dir
			}
		}
		if dir == top || len(dir) <= len(top) {
			break
		}
		dir = filepath.Dir(dir)
	}
	if !read {
		return 0, "", fmt.Errorf("no %s under %s", file, top)
	}
	return low, at, nil
}

// parseLimit reads a cgroup memory limit: "max" (v2) or a value of 2^62
// or more (v1's "unlimited", a page-rounded MaxInt64) is none.
func parseLimit(s string) (int64, bool) {
	if s == "max" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	if n >= math.MaxInt64/2 {
		return 0, true
	}
	return n, true
}

// readCgroupPaths maps each controller of /proc/self/cgroup to the
// process's cgroup path; "" is the unified (v2) hierarchy.
func readCgroupPaths(name string) (map[string]string, error) {
	paths := map[string]string{}
	err := eachLine(name, func(line string) {
		// hierarchy-ID:controller-list:path
		fields := strings.SplitN(line, ":", 3)
		if len(fields) != 3 {
			return
		}
		for _, c := range strings.Split(fields[1], ",") {
			paths[c] = fields[2]
		}
	})
	return paths, err
}

// eachLine calls f with each line of the file name.
func eachLine(name string, f func(line string)) error {
	file, err := os.Open(name)
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		f(sc.Text())
	}
	return sc.Err()
}

// cgroupMount is where a cgroup hierarchy is mounted, and which of its
// paths the mount shows at mountpoint (a container's cgroup namespace
// shows its own cgroup as /).
type cgroupMount struct {
	root, mountpoint string
}

// dir is the directory of cgroup path p under the mount.
func (m cgroupMount) dir(p string) (string, bool) {
	rel, err := filepath.Rel(m.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return filepath.Join(m.mountpoint, rel), true
}

// readCgroupMounts finds the cgroup2 mount (key "cgroup2") and the v1
// mount of the memory controller (key "memory") in mountinfo.
func readCgroupMounts(name string) (map[string]cgroupMount, error) {
	mounts := map[string]cgroupMount{}
	err := eachLine(name, func(line string) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 1 {
			return
		}
		m := cgroupMount{root: unescapeMount(fields[3]), mountpoint: unescapeMount(fields[4])}
		key := tail[0]
		if key == "cgroup" {
			if len(tail) < 3 || !containsWord(tail[2], "memory") {
				return
			}
			key = "memory"
		}
		if _, seen := mounts[key]; !seen && (key == "cgroup2" || key == "memory") {
			mounts[key] = m
		}
	})
	return mounts, err
}

func containsWord(list, w string) bool {
	for _, s := range strings.Split(list, ",") {
		if s == w {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
