package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/tnsguard/tnsguard/probe"
)

// probeCommand runs `tnsguard probe ...` (args are the words after "probe").
// Ctrl-C or SIGTERM ends the run early; every test connection is closed.
func probeCommand(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return probe.Command(ctx, args, stdout, stderr)
}
