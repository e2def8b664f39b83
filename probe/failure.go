package probe

// Failure is how the path ends a connection it has forgotten.
type Failure string

// The failures reported (the contract's "failure" values).
const (
	// FailureNone: no connection died (no idle timeout found).
	FailureNone Failure = "none"
	// FailureDrop: the path silently black-holes the forgotten connection's
	// packets; the keepalive probes went unanswered (ETIMEDOUT).
	FailureDrop Failure = "drop"
	// FailureReset: the path answers the forgotten connection's next packet
	// with a TCP reset (ECONNRESET).
	FailureReset Failure = "reset"
)
