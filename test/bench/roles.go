package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// The harness re-executes its own binary for the helper processes, so that the
// echo backend and the naive Go proxy have their own CPU, memory and fds to
// measure, apart from the load generator.
const (
	envRole   = "TNSBENCH_ROLE"   // "echo", "gocopy" or "goloop"
	envRoutes = "TNSBENCH_ROUTES" // gocopy, goloop: "target1,target2": one listener on 127.0.0.1:0 per target
	roleEcho  = "echo"
	roleCopy  = "gocopy"
)

// runRole runs a helper process until it is killed. It prints "ready ADDR..."
// on out once it listens; the harness waits for that line.
func runRole(role string, out io.Writer) error {
	switch role {
	case roleEcho:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "ready %s\n", ln.Addr())
		return serve(ln, echo)
	case roleCopy:
		targets := strings.Split(os.Getenv(envRoutes), ",")
		listeners := make([]net.Listener, len(targets))
		addrs := make([]string, len(targets))
		for i := range targets {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			listeners[i], addrs[i] = ln, ln.Addr().String()
		}
		fmt.Fprintf(out, "ready %s\n", strings.Join(addrs, " "))
		errc := make(chan error, len(targets))
		for i, target := range targets {
			go func() {
				errc <- serve(listeners[i], func(c *net.TCPConn) { naiveProxy(c, target) })
			}()
		}
		return <-errc // the process ends here; the other acceptors go with it
	case roleLoop:
		return runLoop(strings.Split(os.Getenv(envRoutes), ","), 1, out)
	case roleLoop2:
		return runLoop(strings.Split(os.Getenv(envRoutes), ","), 2, out)
	}
	return fmt.Errorf("unknown role %q", role)
}

// serve accepts until the listener fails for good, backing off on temporary
// errors such as EMFILE rather than spinning.
func serve(ln net.Listener, handle func(*net.TCPConn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go handle(c.(*net.TCPConn))
	}
}

// echo writes back what it reads until EOF.
func echo(c *net.TCPConn) {
	defer c.Close()
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// naiveProxy is the textbook Go TCP proxy: dial, one io.Copy per direction
// between bare *net.TCPConn (so Linux splices), CloseWrite on EOF. It stands
// for "what Go gives for free", the baseline tnsguard has to beat.
func naiveProxy(client *net.TCPConn, target string) {
	defer client.Close()
	backend, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	server := backend.(*net.TCPConn)
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(server, client)
		server.CloseWrite()
	}()
	io.Copy(client, server)
	client.CloseWrite()
	<-done
}
