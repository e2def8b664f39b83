package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/tnsguard/tnsguard/failover"
)

// Sentinel errors for ends that tnsguard itself causes.
var (
	// ErrReplayOverflow: the app sent more than replay_bytes before the
	// backend answered, so a failed backend cannot be replaced transparently.
	ErrReplayOverflow = errors.New("opening bytes exceeded replay_bytes: cannot re-dial")
	// errReplayBudget is ErrReplayOverflow for an opening sent on without
	// a copy because the openings kept for a re-dial had reached their
	// memory budget (replay.go), not because it passed replay_bytes:
	// raising replay_bytes would change nothing.
	errReplayBudget error = replayBudgetError{}
	// ErrNoBackend: no server took the session within connect_budget.
	ErrNoBackend = errors.New("no backend server took the session within connect_budget")
	// ErrDrained: the session outlived the drain at shutdown (errDrainTimeout,
	// errDrainCut say which end of it).
	ErrDrained = errors.New("closed at shutdown")
	// ErrIdleTimeout: no byte moved either way for the listener's idle_timeout.
	ErrIdleTimeout = errors.New("idle longer than idle_timeout")
	// ErrBadOpening: the backend ended or never answered an opening that no
	// listener can answer (a TNS CONNECT cut short or malformed): the app's
	// doing, so the server is not blamed and nothing is re-dialed.
	ErrBadOpening = errors.New("the app's opening is not a whole, well-formed TNS CONNECT")
)

// How a drain ended the sessions it closed: its timeout, or a second
// signal (Hurry) before it.
var (
	errDrainTimeout = fmt.Errorf("%w after the drain timeout", ErrDrained)
	errDrainCut     = fmt.Errorf("%w: a second signal cut the drain short", ErrDrained)
)

// Side is the leg of a session that failed.
type Side string

// The two legs.
const (
	SideClient  Side = "client"
	SideBackend Side = "backend"
)

// Phase is when in a session's life it ended.
type Phase string

// Phases of a session.
const (
	PhaseConnect Phase = "connect" // no backend connection yet
	PhaseOpening Phase = "opening" // connected, before the backend's first byte
	PhaseIdle    Phase = "idle"    // nothing moved for at least the failing leg's keepalive idle
	PhaseActive  Phase = "active"
)

// Cause names why a leg ended, for metrics and logs.
func Cause(err error) string {
	switch {
	case errors.Is(err, ErrReplayOverflow):
		// tnsguard's decision (too much to replay), whatever ended the
		// backend leg: raising replay_bytes is the operator's fix.
		return "proxy"
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, errAppGaveUp): // errAppGaveUp: an Oracle client's close (abandonedError)
		return "eof"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "rst"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, ErrIdleTimeout):
		return "idle_timeout"
	case errors.Is(err, ErrRefused):
		return "refused"
	case errors.Is(err, ErrDrained), errors.Is(err, net.ErrClosed):
		return "proxy"
	case failover.OutOfResources(err):
		return "proxy" // tnsguard out of fds or memory (a revive that waited 2 s for them), not the peer
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case failover.Unreachable(err): // EACCES too: an ICMPv6 reject (admin-prohibited)
		return "unreachable"
	case errors.Is(err, ErrNoBackend):
		// Last: a session that got no backend is counted with its last
		// attempt's cause (a dial that timed out says "timeout");
		// no_backend is for no attempt, or one with no cause of its own.
		return "no_backend"
	}
	return "error"
}

// replayBudgetError is errReplayBudget: it is ErrReplayOverflow (Cause
// proxy, no re-dial) with a message that names the limit that stopped
// the copy.
type replayBudgetError struct{}

func (replayBudgetError) Error() string {
	return "opening sent on without a copy (the openings kept for a re-dial had reached their memory budget): cannot re-dial"
}

func (replayBudgetError) Is(target error) bool { return target == ErrReplayOverflow }
