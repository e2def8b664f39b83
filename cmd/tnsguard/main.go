// Command tnsguard is a TCP proxy that keeps Oracle (and other) database
// sessions alive through firewalls, NAT and load balancers, and passes on
// what breaks. See README.md.
//
//	tnsguard run [-config FILE]
//	tnsguard check -config FILE
//	tnsguard healthcheck [-admin ADDR]
//	tnsguard probe -target HOST:PORT [-max D] [-json]
//	tnsguard version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: tnsguard <command> [flags]

commands:
  run [-config FILE]                     run the proxy (no -config: the embedded default)
  check -config FILE                     validate a configuration file
  healthcheck [-admin ADDR]              exit 0 when a running instance is ready
  probe -target HOST:PORT [-max D] [-json]
                                         measure the path's idle timeout, recommend keepalive
  version                                print the version
`

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runCommand(args[1:], stdout, stderr)
	case "check":
		return checkCommand(args[1:], stdout, stderr)
	case "healthcheck":
		return healthcheckCommand(args[1:], stdout, stderr)
	case "probe":
		return probeCommand(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		// Flags like the other commands', though it has none: -h is
		// help (it was "unexpected argument"), and -x a usage error.
		fs := newFlags("version", stderr)
		if code, ok := parseFlags(fs, args[1:], stdout); !ok {
			return code
		}
		if code := noArgs(fs, stderr); code != 0 {
			return code
		}
		fmt.Fprintln(stdout, "tnsguard", version)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "tnsguard: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tnsguard "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args into fs. It returns ok to go on; else the exit
// code: help asked for (-h, -help) prints the command's flags on stdout and
// exits 0, as `tnsguard -h` does (it exited 2, as for a mistake, which a
// script or a `&&` took for one); any other flag error is a usage error,
// with the flags on stderr: 2.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (code int, ok bool) {
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {} // printed below, where it belongs
	err := fs.Parse(args)
	fs.Usage = usage
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		defer fs.SetOutput(out)
		fs.Usage()
		return 0, false
	}
	fs.Usage() // after the flag package's own line saying what is wrong
	return 2, false
}

// noArgs refuses what is left after the flags (a file named without
// -config, which the flag package would leave unread along with any flag
// after it): 2 with a message, or 0.
func noArgs(fs *flag.FlagSet, stderr io.Writer) int {
	if fs.NArg() == 0 {
		return 0
	}
	hint := ""
	if fs.Lookup("config") != nil {
		hint = " (a file is given as -config FILE, flags first)"
	}
	fmt.Fprintf(stderr, "%s: unexpected argument %q%s\n", fs.Name(), fs.Arg(0), hint)
	return 2
}

// set tells whether the flag called name was given.
func set(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}
