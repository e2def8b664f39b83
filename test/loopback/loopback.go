// Package loopback picks loopback addresses for tests that must name a port
// before the process that listens on it starts (a config file, HAProxy's
// config, a reload that names the same listener).
//
// The usual trick, listening on port 0 and closing, yields a port from the
// kernel's ephemeral range. Every outgoing connection of every process on
// the machine draws its local port from that same range, so while other
// test binaries run, one of their connects can take the port before the
// child binds it ("bind: address already in use"). The ports here lie
// outside that range, so only another picker could take them.
package loopback

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
)

// Port returns a loopback TCP port outside the ephemeral range that bound a
// moment ago.
func Port() (int, error) {
	lo, hi := ephemeralRange()
	// Below the range if there is room there, above it otherwise.
	first, last := 10000, lo-1
	if last-first < 1000 {
		first, last = hi+1, 65535
	}
	if last < first {
		return 0, fmt.Errorf("no ports outside the ephemeral range %d-%d", lo, hi)
	}
	for range 200 {
		port := first + rand.IntN(last-first+1)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d after 200 tries", first, last)
}

// Addr is Port as "127.0.0.1:port".
func Addr() (string, error) {
	port, err := Port()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}

// Ports returns n distinct ports, as Port.
func Ports(n int) ([]int, error) {
	ports := make([]int, 0, n)
	seen := make(map[int]bool, n)
	for len(ports) < n {
		p, err := Port()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// ephemeralRange is net.ipv4.ip_local_port_range, or Linux's default when it
// cannot be read.
func ephemeralRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if _, err = fmt.Sscan(string(b), &lo, &hi); err == nil && lo > 0 && hi >= lo {
			return lo, hi
		}
	}
	return 32768, 60999
}
