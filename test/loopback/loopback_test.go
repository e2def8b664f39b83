package loopback

import (
	"net"
	"strconv"
	"testing"
)

// The point of the package: a port no connect can be given meanwhile.
func TestPortsLieOutsideTheEphemeralRange(t *testing.T) {
	lo, hi := ephemeralRange()
	ports, err := Ports(50)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p >= lo && p <= hi {
			t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d does not bind: %v", p, err)
			continue
		}
		ln.Close()
	}
}
