package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

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
//
// Until the old process stops accepting, both accept on the sockets: the
// old one then tells the new one, on a second pipe (envCountsFD), its
// sessions on each socket ("sessions N,N,...", in the order of
// envSessions), which the new one counts against max_sessions instead of
// those at the start (proxy.Inherited.Adjust). The new process counts
// them for the listener of the same name (envNames), as a reload does,
// wherever its configuration puts it: an upgrade that also swaps two
// listeners' addresses charges each one's max_sessions with its own
// sessions, not with those of the listener whose socket it takes over.
// From a version before envNames, they go by socket.

const (
	envListenFDs = "TNSGUARD_LISTEN_FDS"
	envReadyFD   = "TNSGUARD_READY_FD"
	envSessions  = "TNSGUARD_LISTEN_SESSIONS" // the old process's sessions on each socket, comma-separated
	envNames     = "TNSGUARD_LISTEN_NAMES"    // "FROM:NAME,NAME,...": the old process's listener on each socket of envSessions, by name (query-escaped)
	envOldPID    = "TNSGUARD_UPGRADE_FROM"    // the old process's pid (it is not the new one's parent)
	envElders    = "TNSGUARD_UPGRADE_ELDERS"  // "FROM:PID,PID": the processes older than FROM that still drained when it handed over
	envCountsFD  = "TNSGUARD_COUNTS_FD"       // "FROM:FD": the pipe on which FROM says its sessions once it stopped accepting
	countsWait   = 5 * time.Second            // how long the new process waits for that line once it serves
	countsFollow = time.Minute                // how long the old process says them again as connections that awaited a PROXY header are let in or turned away
	readyTimeout = 30 * time.Second
)

// upgradeEnv names the variables an upgrade hands the new process: it
// clears them at once, and an upgrade in turn sets them anew.
func upgradeEnv() []string {
	return []string{envListenFDs, envReadyFD, envSessions, envNames, envOldPID, envElders, envCountsFD}
}

// elders are the processes older than this one that may still drain after
// upgrades: the one it replaced and, after upgrades in a row (A, B, C, the
// second before A ended its drain), those that one still waited for. Each
// may end first: a SIGTERM ends the wait of one in the middle. This process
// writes pid= on its lines, counts the handed-over sessions against
// max_sessions and, stopped, waits, until all of them have ended.
type elders struct {
	pids []int
	gone []chan struct{}
	all  chan struct{} // closed once every one has ended
}

// watchElders follows pids (nil when there are none).
func watchElders(pids []int) *elders {
	if len(pids) == 0 {
		return nil
	}
	e := &elders{pids: pids, all: make(chan struct{})}
	for _, pid := range pids {
		gone := make(chan struct{})
		e.gone = append(e.gone, gone)
		// Opened now, while it is known to run (the process this one
		// replaced waits for it to serve; the others it passed on as
		// running a moment ago), not later when its pid may be another's.
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			close(gone)
			continue
		}
		if err != nil {
			fd = -1
		}
		go func() {
			waitGone(fd, pid)
			close(gone)
		}()
	}
	go func() {
		for _, g := range e.gone {
			<-g
		}
		close(e.all)
	}()
	return e
}

// running are the elders that have not ended yet.
func (e *elders) running() []int {
	if e == nil {
		return nil
	}
	var pids []int
	for i, g := range e.gone {
		select {
		case <-g:
		default:
			pids = append(pids, e.pids[i])
		}
	}
	return pids
}

// ended is closed once every elder has ended (nil: there are none).
func (e *elders) ended() <-chan struct{} {
	if e == nil {
		return nil
	}
	return e.all
}

// upgrade is a new process started by SIGUSR2, until it serves or fails.
type upgrade struct {
	pid   int
	done  chan error    // one value: nil when the new process serves, else why it does not
	ended chan struct{} // closed once the new process has exited (and its pipe is read to the end)
	clean atomic.Bool   // it said "stopped" on its pipe before it exited (a stop, or an upgrade in turn)
	// It said "handed over" (a process it started serves in its place) and
	// not "nothing serves" since (that one failed): its own end, even a
	// crash, leaves a process serving.
	handedOn atomic.Bool
	// The sockets handed over, and the pipe on which this process tells
	// the new one its sessions on them once it stopped accepting
	// (tellSessions); closed when the upgrade fails.
	handed    proxy.HandedOver
	counts    *os.File
	countsOut sync.Once
	// Closed once the process this one replaced says no more of its
	// sessions, which this one's include (upgrades in a row): until then
	// tellSessions passes on each change of them.
	eldersSaid <-chan struct{}
}

// tellSessions tells the new process, once this one has stopped accepting,
// its sessions on each socket handed over, those it accepted while the new
// one started included: at once, the connections accepted and not yet let
// in or turned away (a PROXY header awaited) counted as sessions, so that
// the new process, which serves already, lets in none too many meanwhile;
// then again each time those are let in or turned away, until none is left
// (at most countsFollow), each line replacing the one before. So too, after
// upgrades in a row (A, B, C: this process is B), as long as A may still
// say its sessions, which B counts and C learns through B's: A's first line
// may reach B after B said its own (A stops accepting once B serves, and B
// may serve C before A's line is in), and A says its own again later, as
// its connections awaiting a PROXY header are let in or turned away. A new
// process of a version before this pipe does not read it: the lines stay
// in the pipe's buffer.
func (u *upgrade) tellSessions() {
	u.countsOut.Do(func() {
		last := u.handed.Sessions()
		if !u.sendSessions(last) {
			u.counts.Close()
			return
		}
		go func() { // not in the drain's way
			defer u.counts.Close()
			for end := time.Now().Add(countsFollow); ; time.Sleep(10 * time.Millisecond) {
				said := closed(u.eldersSaid) // before the counts: its last change is in them
				pending := u.handed.Pending()
				now := u.handed.Sessions()
				if !slices.Equal(now, last) {
					if !u.sendSessions(now) {
						return
					}
					last = now
				}
				if pending == 0 && said || time.Now().After(end) {
					return
				}
			}
		}()
	})
}

// closed tells whether c is closed (a nil c never is).
func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// sendSessions writes one line of tellSessions: false when it cannot (the
// new process has ended, or reads no more).
func (u *upgrade) sendSessions(counts []int64) bool {
	u.counts.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := u.counts.Write([]byte("sessions " + formatCounts(counts) + "\n"))
	return err == nil
}

// dropCounts closes the pipe unwritten: the upgrade failed.
func (u *upgrade) dropCounts() { u.countsOut.Do(func() { u.counts.Close() }) }

// followSessions hands each line of tellSessions to adjust, until the pipe's
// end, a line that is not such a line, or adjust returns false; the first
// must come within countsWait. It returns how many lines adjust took.
func followSessions(f *os.File, adjust func([]int64) bool) int {
	f.SetReadDeadline(time.Now().Add(countsWait))
	br := bufio.NewReader(io.LimitReader(f, 1<<20))
	for lines := 0; ; lines++ {
		line, err := br.ReadString('\n')
		if err != nil {
			return lines
		}
		counts := parseSessions(line)
		if counts == nil || !adjust(counts) {
			return lines
		}
		if lines == 0 {
			f.SetReadDeadline(time.Time{}) // the rest until the old process closes the pipe (countsFollow)
		}
	}
}

// parseSessions is a line of tellSessions' counts, or nil.
func parseSessions(line string) []int64 {
	list, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "sessions ")
	if !ok {
		return nil
	}
	counts, ok := parseCounts(list)
	if !ok {
		return nil
	}
	return counts
}

// formatCounts is sessions per socket as envSessions and the sessions line
// write them: "N,N,...".
func formatCounts(counts []int64) string {
	list := make([]string, len(counts))
	for i, n := range counts {
		list[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(list, ",")
}

// parseCounts reads formatCounts' text: not nil when ok (empty for "": no
// listener at all); not ok for a count that is not a number, or negative.
func parseCounts(list string) ([]int64, bool) {
	counts := []int64{}
	if list == "" {
		return counts, true
	}
	for c := range strings.SplitSeq(list, ",") {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 0 {
			return nil, false
		}
		counts = append(counts, n)
	}
	return counts, true
}

// formatNames is the listeners' names as envNames writes them, in the
// order of formatCounts: each query-escaped (a name may hold any
// character, a comma too).
func formatNames(names []string) string {
	list := make([]string, len(names))
	for i, name := range names {
		list[i] = url.QueryEscape(name)
	}
	return strings.Join(list, ",")
}

// parseNames reads formatNames' text: not ok for a name that is not
// escaped as it writes them.
func parseNames(list string) ([]string, bool) {
	names := []string{}
	if list == "" {
		return names, true
	}
	for c := range strings.SplitSeq(list, ",") {
		name, err := url.QueryUnescape(c)
		if err != nil {
			return nil, false
		}
		names = append(names, name)
	}
	return names, true
}

// ownVariable is an upgrade variable this process writes as "PID:value",
// its own pid first: a version before the variable leaves it in its
// environment and passes it on, stale, which ownValue then tells.
func ownVariable(name, value string) string {
	return fmt.Sprintf("%s=%d:%s", name, os.Getpid(), value)
}

// ownValue is the value of an ownVariable written by the process from (the
// old process's pid); not ok when another, older one wrote it (stale).
func ownValue(v, from string) (string, bool) {
	sender, value, ok := strings.Cut(v, ":")
	return value, ok && sender == from
}

// binaryPath is the path this process was started by, as an upgrade is to
// start the file now there: os.Args[0] looked up as the shell did (PATH, or
// the working directory at start), made absolute at start. Not
// /proc/self/exe (os.Executable), which follows the running file: to the
// old version's directory when the path is a symlink that the install
// flipped to the new one, and to the old file's new name when the install
// moved it aside (tnsguard.old); the upgrade would start the old binary
// again and call it the new one.
func binaryPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	// Args[0] is whatever the starter chose: it counts only when it names
	// the running file (through a symlink or not).
	if p, err := exec.LookPath(os.Args[0]); err == nil {
		if p, err = filepath.Abs(p); err == nil {
			a, err1 := os.Stat(p)
			b, err2 := os.Stat(exe)
			if err1 == nil && err2 == nil && os.SameFile(a, b) {
				return p, nil
			}
		}
	}
	return exe, nil
}

// containerInit names the container init that started this process
// (tini, docker-init, dumb-init, catatonit, a pod's pause, an entrypoint
// shell script), or "": its
// parent is the first process of its PID namespace and goes by one of
// their names.
func containerInit() string {
	if os.Getppid() != 1 {
		return ""
	}
	comm, err := os.ReadFile("/proc/1/comm")
	if err != nil {
		return ""
	}
	switch name := strings.TrimSpace(string(comm)); name {
	case "tini", "docker-init", "dumb-init", "catatonit", "pause",
		// An entrypoint script that runs tnsguard without exec: the
		// container ends when the script does, after the old process's
		// exit. A host's first process is no shell.
		"sh", "bash", "dash", "ash", "zsh", "busybox":
		return name
	}
	return ""
}

// startUpgrade starts the new process (startUpgrade's caller waits on done).
//
// elders are the processes older than this one still running: the new
// process waits for them too. eldersSaid is closed once the process this
// one replaced says no more of its sessions (upgrade.eldersSaid).
func startUpgrade(p *proxy.Proxy, adm *admin.Server, exe string, elders []int, eldersSaid <-chan struct{}) (*upgrade, error) {
	if os.Getpid() == 1 {
		// In a container the first process's exit ends the container,
		// and the new process with it, once the drain is over.
		return nil, errors.New("tnsguard is the container's first process (PID 1): the container would end with it, taking the new process along; roll out a new container instead")
	}
	if init := containerInit(); init != "" {
		// docker run --init, or a pod sharing its process namespace: the
		// first process waits for this one only, and ends the container
		// when it exits after the drain (the new process is its child
		// too, see startUpgrade, but not the one it waits for).
		return nil, fmt.Errorf("tnsguard runs under a container's init (%s, the container's first process): the container would end when this process exits, taking the new process along; roll out a new container instead", init)
	}
	if os.Getenv("INVOCATION_ID") != "" && os.Getenv("NOTIFY_SOCKET") == "" {
		// A systemd service (INVOCATION_ID) whose unit is not Type=notify:
		// this process cannot tell systemd the new main process, and
		// systemd (ExitType=main) takes its exit after the drain for the
		// service's end: it stops the unit, the new process with it.
		return nil, errors.New("a systemd service without NOTIFY_SOCKET (its unit is not Type=notify): systemd would stop the service, the new process with it, when this process exits after the drain; set Type=notify as in configs/systemd/tnsguard.service, then systemctl daemon-reload and a restart")
	}
	if exe == "" {
		return nil, errors.New("cannot find the binary: its path was not known at start")
	}
	fds, handed, err := p.ListeningSockets()
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
	cr, cw, err := os.Pipe()
	if err != nil {
		r.Close()
		return nil, err
	}
	defer cr.Close() // likewise
	files := []uintptr{0, 1, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	// Fd puts both in blocking mode; the new process makes its read end
	// non-blocking again (inheritance). cw stays as it is, for its
	// deadline.
	files = append(files, w.Fd(), cr.Fd())
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(upgradeEnv(), name)
	})
	env = append(env, fmt.Sprintf("%s=%d", envListenFDs, len(fds)), fmt.Sprintf("%s=%d", envReadyFD, 3+len(fds)),
		envSessions+"="+formatCounts(handed.Sessions()),    // the admin socket's, last, has none
		ownVariable(envNames, formatNames(handed.Names())), // a version before it passes it on, stale
		fmt.Sprintf("%s=%d", envOldPID, os.Getpid()),
		ownVariable(envCountsFD, strconv.Itoa(3+len(fds)+1)))
	if len(elders) > 0 {
		list := make([]string, len(elders))
		for i, pid := range elders {
			list[i] = strconv.Itoa(pid)
		}
		env = append(env, ownVariable(envElders, strings.Join(list, ",")))
	}
	// syscall.ForkExec, not os/exec: it takes bare fds. os/exec calls
	// os.File.Fd, which would put the sockets in blocking mode under this
	// process's accept loops.
	// A process group of its own: a new process that does not serve is
	// killed with whatever it started (a wrapper script's children), which
	// would otherwise hold the listening sockets after this process ends:
	// apps' connections queued on a port no one serves, and a restart
	// refused with "address already in use".
	// CLONE_PARENT: the new process is a child of this one's parent
	// (systemd), not of this process. systemd calls a main process
	// (MAINPID=) that is not its child "alien", for as long as it runs:
	// it does not see it end while this process drains (no
	// Restart=on-failure), and on stop it sends it SIGTERM and, at once,
	// SIGKILL (no drain).
	pidfd := -1
	pid, err := syscall.ForkExec(exe, os.Args, &syscall.ProcAttr{Env: env, Files: files,
		Sys: &syscall.SysProcAttr{Setpgid: true, Cloneflags: syscall.CLONE_PARENT, PidFD: &pidfd}})
	if err != nil {
		r.Close()
		cw.Close()
		return nil, fmt.Errorf("cannot start %s: %w", exe, err)
	}
	u := &upgrade{pid: pid, done: make(chan error, 1), ended: make(chan struct{}), handed: handed, counts: cw, eldersSaid: eldersSaid}
	gone := make(chan struct{}) // the new process has exited
	go func() {                 // now or in a year
		waitGone(pidfd, pid)
		close(gone)
	}()
	piped := make(chan struct{}) // its pipe is read to the end
	go func() {
		<-gone
		select {
		case <-piped:
		case <-time.After(time.Second): // something it started holds the pipe
		}
		close(u.ended)
	}()
	go func() {
		defer close(piped)
		defer r.Close()
		r.SetReadDeadline(time.Now().Add(readyTimeout))
		br := bufio.NewReader(r)
		line, err := br.ReadString('\n')
		switch {
		case line != "":
			u.done <- nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			syscall.Kill(-pid, syscall.SIGKILL)
			u.dropCounts()
			u.done <- fmt.Errorf("the new process (pid %d) did not serve within %s: killed it", pid, readyTimeout)
			return
		default: // it closed the pipe: it ended before it served
			u.dropCounts()
			select {
			case <-gone:
				syscall.Kill(-pid, syscall.SIGKILL) // what it left behind
				u.done <- fmt.Errorf("the new process (pid %d) ended before it served; its log says why", pid)
			case <-time.After(5 * time.Second):
				syscall.Kill(-pid, syscall.SIGKILL)
				u.done <- fmt.Errorf("the new process (pid %d) closed its pipe without serving: killed it", pid)
			}
			return
		}
		// It serves. At its end it says "stopped" (it stopped on a
		// signal, or handed over in turn), unless it failed.
		r.SetReadDeadline(time.Time{})
		for {
			line, err := br.ReadString('\n')
			switch line {
			case "stopped\n":
				u.clean.Store(true)
			case "handed over\n":
				u.handedOn.Store(true)
			case "nothing serves\n":
				u.handedOn.Store(false)
			}
			if err != nil {
				return
			}
		}
	}()
	return u, nil
}

// retire is the old process's part of an upgrade once the new process
// serves: systemd learns the new main process, this one drains (drain,
// handedOver) and returns its exit code: 1 when the new process failed
// meanwhile, so that its supervisor restarts the service.
//
// oldGone, when this process was itself started by an upgrade, is closed
// once the process it replaced, and any older one (elders), has ended:
// this one ends after them.
//
// toOld, when this process was itself started by an upgrade, is its pipe
// to the process it replaced, which drains still or has ended: it learns
// that a process serves in this one's place ("handed over"), so that this
// one's end (a crash, the OOM killer) does not end its drain, and that none
// does any more ("nothing serves").
func retire(log hclog.Logger, p *proxy.Proxy, adm *admin.Server, up *upgrade, stops, hups, usr2s <-chan os.Signal, drainTimeout time.Duration, oldGone <-chan struct{}, older *elders, toOld io.Writer) int {
	// The new process serves: it is the service's main process
	// now (systemd sends it the reloads and the stop).
	if err := sdNotify(fmt.Sprintf("MAINPID=%d", up.pid)); err != nil {
		log.Warn("cannot tell systemd the new main process", "new_pid", up.pid, "error", err)
	}
	if toOld != nil {
		toOld.Write([]byte("handed over\n")) // it may have ended
	}
	log.Info("upgrade: the new process serves; this one stops accepting and drains", "new_pid", up.pid)
	// The new process answers on the admin port; the requests this
	// one accepted last are served meanwhile.
	admClosed := make(chan struct{})
	go func() {
		defer close(admClosed)
		adm.CloseWithin(5 * time.Second)
	}()
	// If the new process fails meanwhile (a crash, the OOM killer),
	// nothing serves: this one ends its drain now and exits 1, so
	// that the service is restarted (systemd sees the new process
	// end: it is its child, see startUpgrade, but restarts once
	// the unit's processes are gone). One that said "stopped" was
	// stopped (systemctl stop: every process of the unit gets
	// SIGTERM) or upgraded in turn: the drain goes on.
	// Watched until this process exits, not only until its drain
	// ends: the wait for the admin server's requests (up to 5 s)
	// comes after it, and nothing serves then either.
	failed := false // read after watched is closed
	exiting, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-hups:
				// A reload asked of this process (systemctl reload before
				// systemd took in MAINPID=, or kill -HUP of the old PID)
				// is the new process's: it serves the configuration now.
				if err := syscall.Kill(up.pid, syscall.SIGHUP); err != nil {
					log.Error("reload asked of the draining process: cannot pass it on: reload the new process", "new_pid", up.pid, "error", err)
					continue
				}
				log.Info("reload asked of the draining process: passed to the new process", "new_pid", up.pid)
				continue
			case <-usr2s:
				// Not passed on: a retried kill -USR2 of this PID would
				// upgrade the new process a second time.
				log.Warn("upgrade asked of the draining process: signal ignored; the new process serves", "new_pid", up.pid)
				continue
			case <-up.ended:
				if up.clean.Load() {
					log.Info("upgrade: the new process has stopped; this one drains on", "new_pid", up.pid)
					return
				}
				if up.handedOn.Load() {
					// Upgraded in turn, it failed while the process it
					// started serves: the service is served, this
					// process's sessions may still finish.
					log.Warn("upgrade: the new process ended while the process it handed over to serves; this one drains on", "new_pid", up.pid)
					return
				}
				failed = true
				if toOld != nil {
					toOld.Write([]byte("nothing serves\n"))
				}
				log.Error("upgrade: the new process failed while this one drains: closing the sessions left now and exiting 1", "new_pid", up.pid)
				p.Hurry()
				adm.CloseWithin(0) // the requests left too: this process exits now
			case <-exiting:
			}
			return
		}
	}()
	drain(log, stops, true, func() { p.Retire(drainTimeout, up.tellSessions) }, p.Hurry)
	<-admClosed
	// Handed over in turn while the process this one replaced still
	// drains (a second upgrade within drain_timeout): that one's sessions
	// count against max_sessions in the new process through this one's
	// (ListeningSockets), until this one ends. It ends after that one,
	// then, as on a stop; or at once when the new process ends (a failure:
	// nothing serves), or on a stop signal.
	waitForOld(log, oldGone, older, stops, watched) // watched: the new process ended (exiting is not closed yet)
	close(exiting)
	<-watched
	if failed {
		return 1
	}
	return 0
}

// waitForOld returns once the process this one replaced, and any older
// one, has ended (oldGone is closed; nil: there is none), or ended is
// closed, or a stop signal comes.
func waitForOld(log hclog.Logger, oldGone <-chan struct{}, older *elders, stops <-chan os.Signal, ended <-chan struct{}) {
	if oldGone == nil {
		return
	}
	select {
	case <-oldGone:
		return
	default:
	}
	var args []any // the one it replaced, or older ones (upgrades in a row) left
	if pids := older.running(); len(pids) > 0 {
		args = append(args, "old_pid", pids[0])
		if len(pids) > 1 {
			args = append(args, "older_pids", fmt.Sprint(pids[1:]))
		}
	}
	log.Info("waiting for the old process to end its drain", args...)
	select {
	case <-oldGone:
	case <-ended:
	case sig := <-stops:
		log.Info("signal received: not waiting for the old process", "signal", sig.String())
	}
}

// waitGone returns once the process pid has exited (reaped or not): by its
// pidfd, or without one (a kernel before 5.3) by polling.
func waitGone(pidfd, pid int) {
	if pidfd < 0 {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			pidfd = fd
		}
	}
	if pidfd >= 0 {
		defer syscall.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				return
			}
		}
	}
	for syscall.Kill(pid, 0) != syscall.ESRCH {
		time.Sleep(100 * time.Millisecond)
	}
}

// inheritance is what an upgrade handed this process: its sockets and the
// pipe to tell the old process that this one serves. Both nil when this
// process was not started by an upgrade. The variables are cleared, so
// that nothing this process starts takes them for its own.
//
// The elders returned are the process this one replaced (oldPID) and those
// older that it still waited for. The last file is the pipe on which the
// old process tells its sessions once it stopped accepting (readSessions),
// nil from a version before it.
func inheritance() (*proxy.Inherited, *os.File, int, *elders, *os.File, error) {
	n, r, counts, from, older, later := os.Getenv(envListenFDs), os.Getenv(envReadyFD), os.Getenv(envSessions), os.Getenv(envOldPID), os.Getenv(envElders), os.Getenv(envCountsFD)
	named := os.Getenv(envNames)
	for _, name := range upgradeEnv() {
		os.Unsetenv(name)
	}
	if n == "" && r == "" {
		return nil, nil, 0, nil, nil, nil
	}
	count, err1 := strconv.Atoi(n)
	rfd, err2 := strconv.Atoi(r)
	oldPID, err3 := strconv.Atoi(from)
	var sessions []int64 // one per listener's socket (the admin socket, last, has none)
	if counts != "" {
		var ok bool
		if sessions, ok = parseCounts(counts); !ok {
			err3 = fmt.Errorf("bad counts %q", counts)
		}
	}
	if err1 != nil || err2 != nil || err3 != nil || count < 0 || rfd != 3+count {
		return nil, nil, 0, nil, nil, fmt.Errorf("%s=%q, %s=%q, %s=%q and %s=%q: not what an upgrade sets",
			envListenFDs, n, envReadyFD, r, envOldPID, from, envSessions, counts)
	}
	pids := []int{oldPID}
	if list, ok := ownValue(older, from); ok {
		for p := range strings.SplitSeq(list, ",") {
			if pid, err := strconv.Atoi(p); err == nil && pid > 0 && pid != oldPID && pid != os.Getpid() {
				pids = append(pids, pid)
			}
		}
	}
	var names []string // nil: the sessions go by socket (a version before envNames, or a list that does not fit)
	if list, ok := ownValue(named, from); ok {
		names, _ = parseNames(list)
	}
	files := make([]*os.File, count)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), fmt.Sprintf("fd %d", 3+i))
	}
	h, err := proxy.NewInherited(files, sessions, names)
	for _, f := range files {
		f.Close() // NewInherited holds duplicates
	}
	ready := os.NewFile(uintptr(rfd), "upgrade pipe")
	var sessionsPipe *os.File
	if fd, ok := ownValue(later, from); ok && fd == strconv.Itoa(rfd+1) {
		syscall.CloseOnExec(rfd + 1)
		syscall.SetNonblock(rfd+1, true) // for its deadline: the old process's Fd made it blocking
		sessionsPipe = os.NewFile(uintptr(rfd+1), "upgrade sessions pipe")
	}
	if err != nil {
		ready.Close()
		if sessionsPipe != nil {
			sessionsPipe.Close()
		}
		return nil, nil, 0, nil, nil, err
	}
	syscall.CloseOnExec(rfd) // held to the end (see runCommand): not by what this process starts
	return h, ready, oldPID, watchElders(pids), sessionsPipe, nil
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
