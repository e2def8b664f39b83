package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat; it is 100
// on every Linux architecture Go supports.
const clockTicks = 100

// usage is what the kernel says a set of processes holds or has used.
type usage struct {
	RSSKB      int64   // sum of VmRSS
	FDs        int64   // sum of open fds
	CPUSeconds float64 // sum of utime+stime
}

// readUsage sums /proc figures over pids.
func readUsage(pids []int) (usage, error) {
	var u usage
	for _, pid := range pids {
		rss, err := vmRSS(pid)
		if err != nil {
			return u, err
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			return u, err
		}
		cpu, err := cpuSeconds(pid)
		if err != nil {
			return u, err
		}
		u.RSSKB += rss
		u.FDs += int64(len(fds))
		u.CPUSeconds += cpu
	}
	return u, nil
}

func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "1234 kB"
			if len(f) == 2 && f[1] == "kB" {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in status", pid)
}

// statFields returns the fields of /proc/PID/stat after the command name, so
// that index 0 is field 3 (state) of proc(5).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("pid %d: malformed stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func cpuSeconds(pid int) (float64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime", pid)
	}
	return float64(utime+stime) / clockTicks, nil
}

// children lists the live child processes of pid (nginx's workers).
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(child)
		if err != nil || len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid && f[0] != "Z" {
			kids = append(kids, child)
		}
	}
	return kids
}

// listening reports whether some socket is in LISTEN state on port (IPv4 or
// IPv6), without connecting to it: a probe connection would start a session
// on the proxy and, for iperf3, a test.
func listening(port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(filepath.Clean(file))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...; st 0A is LISTEN
			if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" {
				f.Close()
				return true
			}
		}
		f.Close()
	}
	return false
}
