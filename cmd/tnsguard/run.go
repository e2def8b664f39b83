package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tnsguard/tnsguard/admin"
	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/metrics"
	"github.com/tnsguard/tnsguard/proxy"
)

func runCommand(args []string, stdout, stderr io.Writer) (code int) {
	fs := newFlags("run", stderr)
	path := fs.String("config", "", "configuration file (default: the embedded configs/tnsguard.toml)")
	if code, ok := parseFlags(fs, args, stdout); !ok {
		return code
	}
	if code := noArgs(fs, stderr); code != 0 {
		return code // `run FILE` without -config would run the embedded default
	}
	if set(fs, "config") && *path == "" {
		fmt.Fprintln(stderr, "tnsguard run: -config is empty (leave it out for the embedded default)")
		return 2
	}
	// Signals first: a SIGHUP or SIGTERM during start-up must not kill the
	// process with the default action; it is handled once running. Stops
	// and reloads have channels of their own, so that reloads queued
	// behind a slow one cannot crowd a stop out (signal.Notify drops what
	// a full channel cannot take); reloads that pile up make one.
	stops := make(chan os.Signal, 1)
	hups := make(chan os.Signal, 1)
	usr2s := make(chan os.Signal, 1)
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(hups, syscall.SIGHUP)
	signal.Notify(usr2s, syscall.SIGUSR2)
	defer signal.Stop(stops)
	defer signal.Stop(hups)
	defer signal.Stop(usr2s)
	// The binary an upgrade starts: the path as at start (upgrade.go).
	self, selfErr := binaryPath()
	// Sockets handed over by the process this one replaces (upgrade.go).
	inherited, upgradeReady, oldPID, older, sessionsPipe, err := inheritance()
	if err != nil {
		fmt.Fprintln(stderr, "tnsguard run:", err)
		return 1
	}
	// Closed once the old process says no more of its sessions (its
	// pipe has ended, or there is none): until then an upgrade of this one
	// in turn passes each change of them on (upgrade.tellSessions).
	eldersSaid, following := make(chan struct{}), false
	// A log reader that goes away (a pipe, a shipper restarting) must not
	// end the process and every session with it: log writes fail instead.
	signal.Ignore(syscall.SIGPIPE)
	var loaded [sha256.Size]byte // the file's text last loaded or tried: reload.watch reloads when it changes
	load := func() (*config.Config, []string, error) {
		if *path == "" {
			return config.Parse([]byte(config.DefaultText()), "embedded default")
		}
		data, err := os.ReadFile(*path)
		if err != nil {
			return nil, nil, err
		}
		loaded = sha256.Sum256(data)
		return config.Parse(data, *path)
	}
	defer func() {
		if sessionsPipe != nil { // not read: this process did not serve
			sessionsPipe.Close()
		}
	}()
	cfg, warnings, err := load()
	if err != nil {
		fmt.Fprintln(stderr, err)
		inherited.Close()
		return 1
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, version)
	// Through a queue: a log reader that stops reading must not block
	// what logs (logout.go).
	out := newLogOutput(stderr, logQueueBytes, m.LogDropped)
	out.json = cfg.Log.Format == "json"
	// Started by an upgrade: the old process writes to the same output
	// until it has drained; lines carry the pid meanwhile.
	if upgradeReady != nil { // untagged once the old process has ended, below
		out.tag()
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name: "tnsguard", Level: hclog.LevelFromString(cfg.Log.Level), Output: out,
		JSONFormat: cfg.Log.Format == "json",
	})
	// The count of the lines dropped is written by the queue's writer
	// itself, after the lines queued before them.
	direct := hclog.New(&hclog.LoggerOptions{Name: "tnsguard", Output: out.direct(), JSONFormat: cfg.Log.Format == "json"})
	out.report = func(dropped int, since time.Time) {
		if log.IsWarn() {
			direct.Warn("log lines dropped: the log output took no writes", "dropped", dropped,
				"since", since.Format(time.RFC3339), "queue_bytes", logQueueBytes)
		}
	}
	out.start()
	defer out.stop(logFlushLimit)
	for _, w := range warnings {
		log.Warn(w)
	}
	raiseFileLimit(log)
	warnFileLimit(log, cfg)
	fitMemoryLimit(log)

	p := proxy.New(log, m)
	reg.MustRegister(metrics.NewTCPInfoCollector(p))
	// The admin port is bound before the listeners accept: a process that
	// cannot bind it ends before it has taken any app's connection (an
	// upgrade's new process would reset those it took from the sockets it
	// shares with the old one, which serves on).
	var admLn net.Listener
	if ln := inherited.Take(cfg.Admin.Listen); ln != nil {
		admLn = ln
	} else if admLn, err = admin.Listen(cfg.Admin.Listen); err != nil {
		log.Error("cannot start the admin listener", "address", cfg.Admin.Listen, "error", cfg.Place("admin: "+proxy.BindHint(err).Error()))
		inherited.Close()
		return 1
	}
	p.AlsoListens("the admin listener", admLn.Addr()) // a reload onto its address says so
	p.Adopt(inherited)
	if err := p.Apply(cfg); err != nil {
		log.Error("cannot start", "error", cfg.Place(err.Error()))
		p.Close()
		admLn.Close()
		inherited.Close()
		return 1
	}
	m.ReloadOK.Set(1)
	m.ReloadTime.Set(float64(time.Now().Unix()))
	if upgradeReady != nil {
		// The old process answers on the admin port until this one's
		// servers have had their first health check: a load balancer's
		// /readyz check answered here before them would say "no server up".
		if sig := awaitFirstChecks(log, p, stops, usr2s, oldPID); sig != nil {
			// Stopped before it served: the upgrade is off, the old
			// process serves on (it sees this one end without a word).
			// The sessions it took from the shared sockets meanwhile
			// drain as at any stop.
			log.Info("upgrade: signal received before this process served: it stops, the old process serves on", "signal", sig.String(), "old_pid", oldPID)
			drain(log, stops, false, func() { p.Shutdown(0, cfg.Shutdown.DrainTimeout.Duration) }, p.Hurry)
			admLn.Close()
			inherited.Close()
			upgradeReady.Close()
			return 0
		}
	}
	adm := admin.StartOn(admLn, cfg.Admin, reg, p, log.Named("admin"))
	for _, addr := range inherited.Close() {
		log.Info("upgrade: closed a handed-over socket that this configuration does not listen on", "address", addr)
	}
	log.Info("tnsguard started", "version", version, "config", cfg.Source)
	var oldGone chan struct{} // after an upgrade: closed once the old process, and any older one, has ended
	if upgradeReady != nil {
		// A SIGUSR2 that came during the start (before the wait above, or
		// without one) is the upgrade's too: refused, not kept for later.
		refuseEarlyUpgrade(log, usr2s, oldPID)
		// The old process stops accepting when it reads this.
		_, err := upgradeReady.Write([]byte("serving\n"))
		// At its end, this process says on the same pipe whether it
		// stopped (a signal, or an upgrade in turn): the old process, if
		// it still drains, cuts its drain short when this one fails.
		defer func() {
			if code == 0 {
				upgradeReady.Write([]byte("stopped\n"))
			}
			upgradeReady.Close()
		}()
		if err != nil {
			log.Warn("upgrade: cannot tell the old process that this one serves; it goes on serving too until it is stopped", "error", err)
		} else {
			log.Info("upgrade: serving on the sockets handed over; the old process drains", "old_pid", oldPID)
			if sessionsPipe != nil {
				// Until it stopped accepting, the old process took sessions
				// too: those count against max_sessions as well.
				pipe := sessionsPipe
				sessionsPipe = nil // closed here, not by the defer above
				following = true
				go func() {
					defer close(eldersSaid) // after the last Adjust
					defer pipe.Close()
					first := true
					// The first line at once, then again as the connections it
					// accepted last are let in or turned away (tellSessions).
					lines := followSessions(pipe, func(counts []int64) bool {
						if err := inherited.Adjust(counts); err != nil {
							log.Warn("upgrade: the old process's sessions once it stopped accepting do not match the sockets handed over; those at the handover count", "old_pid", oldPID, "error", err)
							return false
						}
						if first {
							first = false
							log.Info("upgrade: the old process has stopped accepting: its sessions then count against max_sessions until it ends", "old_pid", oldPID, "sessions", inherited.Describe(counts))
						} else {
							log.Debug("upgrade: the old process's sessions, its connections awaiting a PROXY header let in or turned away", "old_pid", oldPID, "sessions", inherited.Describe(counts))
						}
						return true
					})
					if lines == 0 {
						log.Debug("upgrade: the old process did not say its sessions once it stopped accepting; those at the handover count", "old_pid", oldPID)
					}
				}()
			}
		}
		// The old process's sessions count against max_sessions until it
		// has ended, and any older process it still waited for (whose
		// sessions its counts include): each may end first.
		oldGone = make(chan struct{})
		go func() {
			<-older.ended()
			inherited.Release()
			out.untag()
			close(oldGone)
		}()
	} else if err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot tell systemd that tnsguard is ready", "error", err)
	}
	if !following {
		close(eldersSaid)
	}
	running := cfg.Admin        // what the admin listener was started with; a reload does not move it
	logFormat := cfg.Log.Format // the logger's, likewise

	// The error of the last reload whose file loaded but could not be put
	// to use (a listen address taken, or not yet this host's): the fault
	// is the host's, not the file's, so reload.watch tries it again.
	var applyFailed string
	reload := func(retry bool) {
		next, warnings, err := load()
		if !retry {
			for _, w := range warnings {
				log.Warn(w)
			}
		}
		notApplied := false // the file loaded; Apply failed
		if err == nil {
			if err = p.Apply(next); err != nil {
				err = errors.New(next.Place(err.Error()))
				notApplied = true
			}
		}
		if retry && err != nil && err.Error() == applyFailed {
			return // reported already
		}
		applyFailed = ""
		if notApplied {
			applyFailed = err.Error()
		}
		if err != nil {
			m.ReloadOK.Set(0)
			// One line per problem, so each is found by grep and alerting.
			var errs config.Errors
			if !errors.As(err, &errs) {
				errs = config.Errors{err.Error()}
			}
			for _, e := range errs {
				log.Error("reload failed: the running configuration stays", "error", e)
			}
			return
		}
		if next.Admin.Listen != running.Listen {
			log.Warn("admin.listen changed: it takes effect at the next restart or upgrade (SIGUSR2)", "running", running.Listen)
		}
		if next.Log.Format != logFormat {
			log.Warn("log.format changed: it takes effect at the next restart or upgrade (SIGUSR2)", "running", logFormat)
		}
		if *path != "" && cfg.Reload.Watch.Duration > 0 && next.Reload.Watch.Duration == 0 {
			// In Kubernetes nothing else reloads: the next ConfigMap edit
			// would be ignored without a word.
			log.Warn("reload.watch is off now: later changes of the file are not read until a SIGHUP or a restart", "config", *path)
		}
		// Also after a retry: it comes only when the first attempt at
		// this file failed, before this warning.
		warnFileLimit(log, next)
		adm.SetAllow(next.Admin.AllowNets) // admin.allow applies at once
		log.SetLevel(hclog.LevelFromString(next.Log.Level))
		cfg = next
		m.ReloadOK.Set(1)
		m.ReloadTime.Set(float64(time.Now().Unix()))
		log.Info("configuration reloaded", "config", cfg.Source)
	}
	watch := newWatch(*path)
	defer watch.stop()
	var stop os.Signal
	var up *upgrade // a new process started by SIGUSR2, until it serves or fails
	// A reload asked for while an upgrade is under way waits for its end:
	// the new process has read the file and holds the sockets handed over
	// already, so a reload applied here alone would be lost at the
	// handover (a listener it added closed, one it removed back). It goes
	// to the new process once that serves, or is applied here if the
	// upgrade fails.
	reloadAfterUpgrade := false
	for stop == nil {
		var upDone <-chan error
		if up != nil {
			upDone = up.done
		}
		watch.every(cfg.Reload.Watch.Duration) // as the running config says
		select {
		case stop = <-stops:
		case <-hups:
			select {
			case stop = <-stops: // a stop that came meanwhile goes first
			default:
				if up != nil {
					reloadAfterUpgrade = true
					log.Info("upgrade under way: the reload waits for its end", "new_pid", up.pid)
					continue
				}
				reload(false)
			}
		case <-watch.ticks():
			if up != nil {
				continue // the new process reads the file itself; if it fails, the next tick here
			}
			switch watch.changed(log, loaded) {
			case fileChanged:
				log.Info("configuration file changed: reloading", "config", *path)
				reload(false)
			case fileSame:
				if applyFailed != "" {
					reload(true) // the same file, where the host may now allow it
				}
			case fileWriting: // read again at the next tick
			}
		case <-usr2s:
			if up != nil {
				log.Warn("upgrade already under way: signal ignored", "new_pid", up.pid)
				continue
			}
			if selfErr != nil {
				log.Error("upgrade failed: this process serves on", "error", fmt.Errorf("cannot find the binary: %w", selfErr))
				continue
			}
			if up, err = startUpgrade(p, adm, self, older.running(), eldersSaid); err != nil {
				log.Error("upgrade failed: this process serves on", "error", err)
				continue
			}
			out.tag() // two processes write to the output now
			log.Info("upgrade: started the new binary; serving until it serves", "new_pid", up.pid, "binary", self)
		case err := <-upDone:
			if err == nil {
				select {
				case <-up.ended:
					err = fmt.Errorf("the new process (pid %d) ended just after it said it serves; its log says why", up.pid)
				default:
				}
			}
			if err != nil {
				log.Error("upgrade failed: this process serves on", "error", err)
				up.dropCounts() // no retire: the sessions pipe is closed here
				up = nil
				out.untag()
				if reloadAfterUpgrade {
					reloadAfterUpgrade = false
					reload(false)
				}
				continue
			}
			if reloadAfterUpgrade {
				// It handles SIGHUP from its start on: it reads the file anew.
				if err := syscall.Kill(up.pid, syscall.SIGHUP); err != nil {
					log.Error("upgrade: cannot pass the reload asked for meanwhile to the new process: reload it", "new_pid", up.pid, "error", err)
				} else {
					log.Info("upgrade: the reload asked for meanwhile goes to the new process", "new_pid", up.pid)
				}
			}
			var toOld io.Writer // nil: a nil *os.File in an interface is not nil
			if upgradeReady != nil {
				toOld = upgradeReady
			}
			return retire(log, p, adm, up, stops, hups, usr2s, cfg.Shutdown.DrainTimeout.Duration, oldGone, older, toOld)
		}
	}
	if up != nil { // a stop before the new process served: it goes too
		syscall.Kill(-up.pid, syscall.SIGTERM) // its process group: a wrapper script's children too
	}
	if err := sdNotify("STOPPING=1"); err != nil {
		log.Warn("cannot tell systemd that tnsguard is stopping", "error", err)
	}
	log.Info("signal received: draining", "signal", stop.String())
	drain(log, stops, false, func() { p.Shutdown(cfg.Shutdown.Grace.Duration, cfg.Shutdown.DrainTimeout.Duration) }, p.Hurry)
	adm.Close()
	// The process this one replaced may still drain: exit after it. As
	// the main process, this one's exit ends systemd's wait on stop: it
	// then sends SIGTERM again to what is left (the old process, which
	// takes a second one as "close the sessions now").
	waitForOld(log, oldGone, older, stops, nil)
	return 0
}

// drain runs shutdown; a stop signal meanwhile (Ctrl-C twice, docker stop
// again) calls hurry, which ends the drain now. With handedOver (the drain
// after an upgrade, which no signal started) the first stop signal is only
// logged: systemctl stop or restart sends one to every process of the
// unit, and this process's sessions may finish within drain_timeout as the
// new process's may; a second one hurries.
func drain(log hclog.Logger, stops <-chan os.Signal, handedOver bool, shutdown, hurry func()) {
	drained := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-stops:
				if handedOver {
					handedOver = false
					log.Info("signal received: this process already drains after the upgrade; a second signal closes its sessions now", "signal", sig.String())
					continue
				}
				log.Warn("second signal: closing the sessions left now", "signal", sig.String())
				hurry()
			case <-drained:
			}
			return
		}
	}()
	shutdown()
	close(drained)
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit: every
// session holds two sockets.
func raiseFileLimit(log hclog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open-files limit", "error", err)
		return
	}
	if lim.Cur < lim.Max {
		old := lim.Cur
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("cannot raise the open-files limit", "limit", old, "error", err)
			return
		}
		if old == lim.Max-1 {
			// Go's runtime lifts a lower soft limit to hard-1 before main
			// runs (go.dev/issue/46279): the limit the process started
			// with is not known here, and hard-1 is not it.
			log.Info("raised the open-files limit", "to", lim.Cur)
			return
		}
		log.Info("raised the open-files limit", "from", old, "to", lim.Cur)
		return
	}
	log.Debug("open-files limit", "limit", lim.Cur)
}

// warnFileLimit warns when the listeners' max_sessions need more open
// files than the process may have (fileLimitWarning).
func warnFileLimit(log hclog.Logger, cfg *config.Config) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return // raiseFileLimit said so
	}
	if w := fileLimitWarning(cfg, lim.Cur); w != "" {
		log.Warn(w)
	}
}

// fileLimitWarning is a warning when the sessions the listeners'
// max_sessions admit (two fds each, and about 20 besides, as the README
// sizes it) do not fit in limit open files: max_sessions is then never
// reached, and the fds running out stops sessions instead. "" when they
// fit, or when no listener sets max_sessions.
func fileLimitWarning(cfg *config.Config, limit uint64) string {
	need, sessions, _ := cfg.FileNeed()
	if sessions == 0 || need <= limit {
		return ""
	}
	return fmt.Sprintf("max_sessions of the listeners (%d sessions in all, 2 open files each) needs about %d open files, and the open-files limit is %d: "+
		"the fds run out first, and then new connections wait in the backlog and health checks fail instead of sessions being turned away at max_sessions; "+
		"raise the limit (LimitNOFILE, ulimit -n) or lower max_sessions", sessions, need, limit)
}

// awaitFirstChecks waits until every server has had its first health
// check, at most a second more than the longest check timeout, and never
// more than firstChecksWait (a check that takes longer, such as a name of
// several silent addresses, is not waited for: the start's "down" stands
// until it ends, as at any start).
//
// A stop signal (from start-up on) ends the wait: it is returned, and this
// process is not to say it serves.
//
// A SIGUSR2 meanwhile is refused (refuseEarlyUpgrade).
func awaitFirstChecks(log hclog.Logger, p *proxy.Proxy, stops, usr2s <-chan os.Signal, oldPID int) os.Signal {
	done, longest := p.FirstChecksDone()
	wait := min(longest+time.Second, firstChecksWait)
	if !done {
		log.Info("upgrade: waiting for the first health checks before serving; the old process serves meanwhile", "at_most", wait.String())
	}
	for end := time.Now().Add(wait); !done && time.Now().Before(end); done, _ = p.FirstChecksDone() {
		select {
		case sig := <-stops:
			return sig
		case <-usr2s:
			refusedUpgrade(log, oldPID)
		case <-time.After(5 * time.Millisecond):
		}
	}
	select {
	case sig := <-stops:
		return sig
	default:
		return nil
	}
}

// refuseEarlyUpgrade logs and drops a SIGUSR2 that came before this
// process, started by an upgrade, says it serves: the upgrade that started
// it is under way (the old process serves, and may still fail it). Kept
// for later, it started another upgrade as soon as this process served: a
// retried `kill -USR2 "$(pgrep -n -x tnsguard)"` made three processes.
func refuseEarlyUpgrade(log hclog.Logger, usr2s <-chan os.Signal, oldPID int) {
	for {
		select {
		case <-usr2s:
			refusedUpgrade(log, oldPID)
		default:
			return
		}
	}
}

func refusedUpgrade(log hclog.Logger, oldPID int) {
	log.Warn("upgrade: this process has not taken over yet: SIGUSR2 ignored", "old_pid", oldPID,
		"hint", "the upgrade that started this process is under way; send SIGUSR2 again once the old process drains")
}

// firstChecksWait bounds awaitFirstChecks far below readyTimeout, the old
// process's limit for this one to say it serves: health.timeout may be as
// long as health.interval (30 s and more), and a black-holed server's
// first check takes all of it. Waiting that long, this process would be
// killed at readyTimeout with the sessions it took meanwhile
// (TestUpgradeWithASilentServerAndALongHealthTimeoutServes).
const firstChecksWait = readyTimeout / 3
