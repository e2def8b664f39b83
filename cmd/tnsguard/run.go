package main

import (
	"errors"
	"fmt"
	"io"
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

func runCommand(args []string, stderr io.Writer) int {
	fs := newFlags("run", stderr)
	path := fs.String("config", "", "configuration file (default: the embedded configs/tnsguard.toml)")
	if err := fs.Parse(args); err != nil {
		return 2
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
	signal.Notify(stops, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(stops)
	defer signal.Stop(hups)
	// A log reader that goes away (a pipe, a shipper restarting) must not
	// end the process and every session with it: log writes fail instead.
	signal.Ignore(syscall.SIGPIPE)
	load := func() (*config.Config, []string, error) {
		if *path == "" {
			return config.Parse([]byte(config.DefaultText()), "embedded default")
		}
		return config.Load(*path)
	}
	cfg, warnings, err := load()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name: "tnsguard", Level: hclog.LevelFromString(cfg.Log.Level), Output: stderr,
		JSONFormat: cfg.Log.Format == "json",
	})
	for _, w := range warnings {
		log.Warn(w)
	}
	raiseFileLimit(log)
	fitMemoryLimit(log)

	reg := prometheus.NewRegistry()
	m := metrics.New(reg, version)
	p := proxy.New(log, m)
	reg.MustRegister(metrics.NewTCPInfoCollector(p))
	if err := p.Apply(cfg); err != nil {
		log.Error("cannot start", "error", err)
		p.Close()
		return 1
	}
	m.ReloadOK.Set(1)
	m.ReloadTime.Set(float64(time.Now().Unix()))
	adm, err := admin.Start(cfg.Admin, reg, p, log.Named("admin"))
	if err != nil {
		log.Error("cannot start the admin listener", "address", cfg.Admin.Listen, "error", err)
		p.Close()
		return 1
	}
	log.Info("tnsguard started", "version", version, "config", cfg.Source)
	running := cfg.Admin        // what the admin listener was started with; a reload does not move it
	logFormat := cfg.Log.Format // the logger's, likewise

	reload := func() {
		next, warnings, err := load()
		for _, w := range warnings {
			log.Warn(w)
		}
		if err == nil {
			err = p.Apply(next)
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
			log.Warn("admin.listen changed: it takes effect at the next restart", "running", running.Listen)
		}
		if next.Log.Format != logFormat {
			log.Warn("log.format changed: it takes effect at the next restart", "running", logFormat)
		}
		adm.SetAllow(next.Admin.AllowNets) // admin.allow applies at once
		log.SetLevel(hclog.LevelFromString(next.Log.Level))
		cfg = next
		m.ReloadOK.Set(1)
		m.ReloadTime.Set(float64(time.Now().Unix()))
		log.Info("configuration reloaded", "config", cfg.Source)
	}
	var stop os.Signal
	for stop == nil {
		select {
		case stop = <-stops:
		case <-hups:
			select {
			case stop = <-stops: // a stop that came meanwhile goes first
			default:
				reload()
			}
		}
	}
	log.Info("signal received: draining", "signal", stop.String())
	drained := make(chan struct{})
	go func() { // a second stop (Ctrl-C twice, docker stop again) ends the drain now
		select {
		case sig := <-stops:
			log.Warn("second signal: closing the sessions left now", "signal", sig.String())
			p.Hurry()
		case <-drained:
		}
	}()
	p.Shutdown(cfg.Shutdown.Grace.Duration, cfg.Shutdown.DrainTimeout.Duration)
	close(drained)
	adm.Close()
	return 0
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
