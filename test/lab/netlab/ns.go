package netlab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered network namespace ns. Sockets created by
// fn belong to ns for their whole life and can be used from any goroutine afterwards.
// fn must not start goroutines that create sockets: only the calling thread is in ns.
func Do(ns string, fn func() error) error {
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return fmt.Errorf("netlab: namespace %s: %w", ns, err)
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("netlab: own namespace: %w", err)
	}
	defer self.Close()

	runtime.LockOSThread()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: setns %s: %w", ns, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime then ends it with this goroutine
		// instead of reusing a thread stuck in the wrong namespace.
		return fmt.Errorf("netlab: setns back from %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Dial connects to addr over TCP from a socket made in namespace ns. Keepalive is off,
// like an application that never set it: the lab decides what keeps a flow alive.
func Dial(ctx context.Context, ns, addr string) (*net.TCPConn, error) {
	var c net.Conn
	d := net.Dialer{KeepAlive: -1}
	// The connect is started inside ns; its completion may be awaited on any thread.
	err := Do(ns, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Listen opens a TCP listener on addr inside namespace ns. Accepted conns have
// keepalive off.
func Listen(ns, addr string) (*net.TCPListener, error) {
	var ln net.Listener
	lc := net.ListenConfig{KeepAlive: -1}
	err := Do(ns, func() error {
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// HTTPClient returns an HTTP client whose connections are made inside namespace ns (for
// an admin listener on 127.0.0.1 there).
func HTTPClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return Dial(ctx, ns, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

// Dial connects from namespace ns to addr; see the package function [Dial].
func (l *Lab) Dial(ctx context.Context, ns, addr string) (*net.TCPConn, error) {
	return Dial(ctx, ns, addr)
}

// Listen listens on addr inside namespace ns; see the package function [Listen].
func (l *Lab) Listen(ns, addr string) (*net.TCPListener, error) { return Listen(ns, addr) }

// HTTPClient returns an HTTP client that connects from namespace ns.
func (l *Lab) HTTPClient(ns string) *http.Client { return HTTPClient(ns) }
