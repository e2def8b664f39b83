package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tnsguard/tnsguard/admin"
	"github.com/tnsguard/tnsguard/proxy"
)

// An upgrade of the binary (SIGUSR2) that refuses no connection. The
// running process starts the binary at its own path with its own
// arguments and hands it its listening sockets (the listeners' and the
// admin listener's): the same sockets, with their queues of connections
// not yet accepted, not new ones bound beside them. Once the new process
// serves on them it says so through a pipe; the old one then stops
// accepting (its copies of the sockets close, the sockets stay open in the
// new process) and drains its sessions as on SIGTERM, without the grace.
// If the new process fails (a config it cannot load, a port it cannot
// bind) or does not say it serves within readyTimeout, the old one serves
// on as before.
//
// The new process finds, in its environment, how many sockets it was
// handed (envListenFDs: fds 3, 4, ...) and the pipe's fd (envReadyFD).

const (
	envListenFDs = "TNSGUARD_LISTEN_FDS"
	envReadyFD   = "TNSGUARD_READY_FD"
	readyTimeout = 30 * time.Second
)

// upgrade is a new process started by SIGUSR2, until it serves or fails.
type upgrade struct {
	pid  int
	proc *os.Process
	done chan error // one value: nil when the new process serves, else why it does not
}

// startUpgrade starts the new process (startUpgrade's caller waits on done).
func startUpgrade(p *proxy.Proxy, adm *admin.Server) (*upgrade, error) {
	if os.Getpid() == 1 {
		// In a container the first process's exit ends the container,
		// and the new process with it, once the drain is over.
		return nil, errors.New("tnsguard is the container's first process (PID 1): the container would end with it, taking the new process along; roll out a new container instead")
	}
	exe, err := os.Executable() // the path, also when the file was replaced (Linux: " (deleted)" trimmed)
	if err != nil {
		return nil, fmt.Errorf("cannot find the binary: %w", err)
	}
	fds, err := p.ListeningSockets()
	if err != nil {
		return nil, fmt.Errorf("cannot hand over the listening sockets: %w", err)
	}
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	afd, err := adm.DupSocket()
	if err != nil {
		return nil, fmt.Errorf("cannot hand over the admin listener: %w", err)
	}
	fds = append(fds, afd)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close() // the new process holds its own copy
	files := []uintptr{0, 1, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	files = append(files, w.Fd())
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, envListenFDs+"=") || strings.HasPrefix(kv, envReadyFD+"=")
	})
	env = append(env, fmt.Sprintf("%s=%d", envListenFDs, len(fds)), fmt.Sprintf("%s=%d", envReadyFD, 3+len(fds)))
	// syscall.ForkExec, not os/exec: it takes bare fds. os/exec calls
	// os.File.Fd, which would put the sockets in blocking mode under this
	// process's accept loops.
	pid, err := syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("cannot start %s: %w", exe, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil { // not on Linux
		r.Close()
		return nil, err
	}
	u := &upgrade{pid: pid, proc: proc, done: make(chan error, 1)}
	exited := make(chan string, 1)
	go func() { // reaps the new process whenever it ends, now or in a year
		st, err := proc.Wait()
		if err != nil {
			exited <- err.Error()
			return
		}
		exited <- st.String()
	}()
	go func() {
		defer r.Close()
		r.SetReadDeadline(time.Now().Add(readyTimeout))
		buf := make([]byte, 16)
		n, err := r.Read(buf)
		switch {
		case n > 0:
			u.done <- nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			proc.Kill()
			u.done <- fmt.Errorf("the new process (pid %d) did not serve within %s: killed it", pid, readyTimeout)
		default: // it closed the pipe: it ended before it served
			select {
			case st := <-exited:
				u.done <- fmt.Errorf("the new process (pid %d) ended before it served (%s); its log says why", pid, st)
			case <-time.After(5 * time.Second):
				proc.Kill()
				u.done <- fmt.Errorf("the new process (pid %d) closed its pipe without serving: killed it", pid)
			}
		}
	}()
	return u, nil
}

// inheritance is what an upgrade handed this process: its sockets and the
// pipe to tell the old process that this one serves. Both nil when this
// process was not started by an upgrade. The variables are cleared, so
// that nothing this process starts takes them for its own.
func inheritance() (*proxy.Inherited, *os.File, error) {
	n, r := os.Getenv(envListenFDs), os.Getenv(envReadyFD)
	os.Unsetenv(envListenFDs)
	os.Unsetenv(envReadyFD)
	if n == "" && r == "" {
		return nil, nil, nil
	}
	count, err1 := strconv.Atoi(n)
	rfd, err2 := strconv.Atoi(r)
	if err1 != nil || err2 != nil || count < 0 || rfd != 3+count {
		return nil, nil, fmt.Errorf("%s=%q and %s=%q: not what an upgrade sets", envListenFDs, n, envReadyFD, r)
	}
	files := make([]*os.File, count)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), fmt.Sprintf("fd %d", 3+i))
	}
	h, err := proxy.NewInherited(files)
	for _, f := range files {
		f.Close() // NewInherited holds duplicates
	}
	ready := os.NewFile(uintptr(rfd), "upgrade pipe")
	if err != nil {
		ready.Close()
		return nil, nil, err
	}
	return h, ready, nil
}

// sdNotify tells systemd (Type=notify) the service's state, such as
// "READY=1"; without NOTIFY_SOCKET (not started by systemd, or another
// Type) it does nothing.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] == '@' { // abstract namespace
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
