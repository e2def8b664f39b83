package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/tnsguard/tnsguard/config"
	"github.com/tnsguard/tnsguard/failover"
	"github.com/tnsguard/tnsguard/keepalive"
	"github.com/tnsguard/tnsguard/tns"
)

// session is one app connection and its backend connection. Its life has
// two phases. Opening: from accept until the backend's first byte; the
// app's bytes are kept (up to replay_bytes) so that a backend that fails
// before answering can be replaced by another, transparently. Established:
// after the first backend byte reached the app; nothing is replayed any
// more and both directions are pumped (see copy.go). The switch happens in
// one place: establish.
type session struct {
	p       *Proxy
	l       *listener
	lcfg    *config.Listener // the listener's settings when the session began: a reload does not change them
	backend *failover.Backend
	backs   map[string]*failover.Backend // the backends lcfg came with: routes name these
	client  *net.TCPConn
	lot     *parkLot // where its pumps park (idle.go); nil without lots
	in      inbound  // the real client (PROXY header) and app bytes read past it (proxyproto.go)
	start   time.Time
	// The opening's context: dials, backoff and routing waits end with it.
	// It is dropped at establish (an idle session holds no context, and no
	// map of the dials it once had); from then on ctx and cancel are nil.
	// Other goroutines read them under mu only.
	ctx    context.Context
	cancel context.CancelFunc

	lastActive  atomic.Int64      // nanoseconds since start of the last chunk moved
	resumedAt   atomic.Int64      // when bytes last moved after a pause of over a second
	pauseBefore atomic.Int64      // that pause
	rttWoke     atomic.Int64      // when bytes last moved after a pause of rttFresh or more (links.go): 0 for none
	rttPauseAt  atomic.Int64      // when that pause began
	lostPause   atomic.Int64      // a pause that phaseNow found the path was lost in (idle at the end)
	kaHeld      atomic.Int64      // the silence after which the failing leg's peer last answered a keepalive probe (phaseNow)
	kaLost      atomic.Int64      // else the silence after which its first unanswered probe left (phaseNow)
	survived    [2]outlivedPauses // per leg (legIndex): the longest pause it answered after, lately
	pauseMu     sync.Mutex
	unweighed   [2]pendingPause      // per leg: the longest pause since its peer was last heard (under pauseMu)
	hasPending  [2]atomic.Bool       // per leg: unweighed holds a pause
	linkNow     atomic.Pointer[link] // link, for touch: the lot's wake runs it under mu
	answeredAt  atomic.Int64         // when the backend's first bytes came (since start)
	idleAtEnd   time.Duration
	toBackend   atomic.Int64
	toClient    atomic.Int64
	spokeAt     atomic.Int64 // when the app's first bytes came (since start, ns, at least 1); 0 while it has sent nothing (spoke)
	awaiting    *net.TCPConn // the backend connection firstAnswer waits on (under mu)
	service     string

	series *sessionSeries // of its listener and backend: byte counters, active, wait, duration

	mu            sync.Mutex
	cond          *sync.Cond
	conn          *net.TCPConn     // current backend connection, nil while dialing
	attaching     *net.TCPConn     // a backend connection being given the replay (replayTo), not conn yet
	server        *failover.Server // its server
	link          *link            // the link of listener, backend and server once established (links.go)
	replay        []byte           // the app's opening bytes, for a re-dial
	replayCharged int64            // cap(replay) as Proxy.replayHeld counts it (replay.go)
	overflow      bool             // more than replay_bytes were sent on: no re-dial
	overflowTNS   bool             // the opening that overflowed began with a TNS CONNECT (its first answer is still read for a REFUSE)
	overflowSpent bool             // the overflow was the replay budget's, not replay_bytes' (overflowErrLocked)
	replayHeld    bool             // openingBytes holds app bytes that do not fit in replay_bytes until a backend connection takes them
	clientEOF     bool             // the app half-closed during the opening
	ourFIN        [2]bool          // tnsguard half-closed the app's leg [0] or the backend's [1] (see endOfStream)
	writeErrno    [2]atomic.Int32  // per leg: the first error a write or splice to its socket took (see endOfStream)
	peerFIN       [2]atomic.Int64  // per leg: when tnsguard read its peer's end of stream (since start, ns; 0 none; see phaseNow)
	halfWatch     *time.Timer      // starts watchHalfClosed; stopped when the legs close
	clientErr     error            // the app's leg failed during the opening
	clientPhase   Phase            // when it failed: connect (no backend connection yet) or opening
	established   bool
	upUnarmed     bool // the app-side pump waits in the opening with no idle deadline: establish arms it
	selfDialEnd   bool // selfDialed ended the session (counted once)
	// loopCountedElsewhere: selfDialed found that another session counts
	// the loop (its app was tnsguard's own dial, or its own dial's session
	// counted it): this one is counted nowhere (record).
	loopCountedElsewhere bool
	// kaLate: the backend connection's keepalive is still to be set, by
	// housekeeping once the session has lasted keepaliveAfter
	// (failover.Backend.KeepaliveLate).
	kaLate bool
	// ka is each leg's keepalive, by legIndex: its listener's and its
	// backend's when the session began, or what a reload set since
	// (retune).
	ka [2]keepalive.Settings

	// Oracle Net (oracle.go): what the app's CONNECT said.
	connectSeen   bool             // the CONNECT was complete (or turned out not to be one)
	connectWait   tns.ConnectWait  // how far the CONNECT in replay is framed (noteConnectLocked parses it once, when whole)
	oracleApp     bool             // connectSeen, and it was a TNS CONNECT tnsguard could read: the app speaks Oracle Net
	refusedApp    int              // the ORA code of the REFUSE written to the app (deliverRefuse), else 0: its leg ends with a FIN, not a reset
	serviceName   string           // SERVICE_NAME or SID, as the app wrote it
	serviceShown  string           // serviceName as logs and /api/resets show it (shownText)
	routeWaitOver bool             // waitForConnect (routing, or a backend's remembered service refusal) stopped waiting for the CONNECT at connect_budget
	resendOwed    bool             // a listener's RESEND reached the app: it owes its CONNECT again (until noteConnectLocked reads it whole)
	openingSent   bool             // some backend connection took opening bytes (else they went nowhere); here, where a bool costs no padding (TestSessionFitsItsSizeClass)
	resendAt      time.Time        // when the last RESEND reached the app
	openingUp     int64            // bytes of the opening not yet counted in series.bytesUp (the backend may still change)
	overflowSrv   *failover.Server // the server a pump fed past replay_bytes before its first byte

	endOnce sync.Once
	end     *sessionEnd // set once, by abort or finish: allocated at the end, so a live session does not carry it

	legs        atomic.Int32 // directions not ended yet; the last one ends the session (idle.go)
	urgentWatch atomic.Int32 // reads of the app's direction still to look for urgent data first (urgent.go)
	pumps       [2]*pump     // app->backend, backend->app once running, under mu: abort wakes them if parked

	// Dormant (dormant.go), under mu: both directions parked, the conns
	// let go, the sockets held as bare fds (app's, backend's).
	dormant   bool
	rawClosed bool // the bare fds are closed
	closing   bool // abort or finish closes the sockets: the session no longer sleeps
	raw       [2]int
}

type sessionEnd struct {
	side    Side
	phase   Phase
	err     error
	outcome string
	server  *failover.Server // the server the end is counted on (nil: none)
}

// source is the app's address: the real client's when a PROXY header named
// it (limits and forensics count it).
func (s *session) source() netip.Addr { return s.in.client.Addr() }

// logger is the listener's logger with the session's fields. It is built
// when a session logs (rarely), not kept: an idle session holds no logger.
// The service name is read as noteConnectLocked's comment allows: by the
// session's own goroutine, or after the session ended.
func (s *session) logger() hclog.Logger {
	args := make([]any, 0, 8)
	args = append(args, "backend", s.backend.Config.Name, "client", s.in.client)
	if s.in.via.IsValid() {
		args = append(args, "via", s.in.via)
	}
	if s.serviceShown != "" {
		args = append(args, "service", s.serviceShown)
	}
	return s.l.log.With(args...)
}

func (s *session) idleFor() time.Duration {
	return time.Since(s.start) - time.Duration(s.lastActive.Load())
}

// touch marks bytes moving now. A pause of over a second before them is
// kept: a middlebox that forgot the session during the pause resets it on
// these very bytes, and that death belongs to the pause (idle phase).
//
// Bytes from a leg after a pause show that its path outlived the pause:
// survived keeps the longest such pause per leg, which phaseNow weighs.
// Each pause waits, per leg, for that leg's next bytes (unweighed): a
// database that takes over a second to answer the first query after a long
// pause makes a pause of its own, and the long one, which its path
// outlived too, was lost for its leg.
func (s *session) touch(from Side) {
	now := int64(time.Since(s.start))
	prev := s.lastActive.Swap(now)
	if now-prev >= int64(parkAfter) {
		s.p.bump() // busy again: housekeeping looks (Proxy.activity)
	}
	if now-prev > int64(idleAfter) {
		s.p.nudge() // counted idle: no more within a second (walkSessions)
	}
	if now-prev > int64(time.Second) {
		s.pauseBefore.Store(now - prev)
		s.resumedAt.Store(now)
		if now-prev >= int64(s.p.rttFresh) {
			// The backend socket's smoothed RTT is its last query's until
			// the new ones have moved it (link.judgeRTT).
			s.rttPauseAt.Store(prev)
			s.rttWoke.Store(now)
		}
		s.pauseMu.Lock()
		for i := range s.unweighed {
			if now-prev > s.unweighed[i].length {
				s.unweighed[i] = pendingPause{start: prev, length: now - prev}
			}
			s.hasPending[i].Store(true)
		}
		s.pauseMu.Unlock()
	}
	i := legIndex(from)
	if !s.hasPending[i].Load() {
		return
	}
	s.pauseMu.Lock()
	pp := s.unweighed[i]
	s.unweighed[i] = pendingPause{}
	s.hasPending[i].Store(false)
	s.pauseMu.Unlock()
	// For the backend, only a pause that began once it had answered.
	if pp.length > 0 && (from == SideClient || pp.start >= s.answeredAt.Load()) {
		s.survived[i].add(time.Duration(now), s.p.evidenceWindow, time.Duration(pp.length))
		if from == SideBackend { // the link's path outlived it now
			s.linkNow.Load().outlivedNow(time.Duration(pp.length))
		}
	}
}

// pendingPause is a pause of a session (since its start, in ns) that a leg
// has not yet been heard after.
type pendingPause struct{ start, length int64 }

// idleBeforeEnd is how long the session had been idle when a leg failed:
// the silence up to now, or the pause that ended less than a second ago.
func (s *session) idleBeforeEnd() time.Duration {
	idle := s.idleFor()
	if time.Since(s.start)-time.Duration(s.resumedAt.Load()) < time.Second {
		idle = max(idle, time.Duration(s.pauseBefore.Load()))
	}
	return idle
}

// run starts the session's two directions. It may return before the
// session ends: an idle direction's goroutine exits (idle.go), and the
// session ends in whichever goroutine ends its last direction (legEnded).
func (s *session) run() {
	s.legs.Store(2)
	go func() {
		if pe := s.clientToBackend(); pe != errParked {
			s.directionEnded(true, pe)
		}
	}()
	if err := s.open(); err != nil {
		s.legEnded()
	} else if pe := s.pumpBackendToClient(); pe != errParked {
		s.directionEnded(false, pe)
	}
}

// open dials until a backend sends its first byte, replaying the app's
// opening bytes on every new connection. On error the session is over
// (already classified) and the client has been reset.
func (s *session) open() error {
	began := time.Now() // connect_budget counts the wait for a routed CONNECT too
	// The reloads the session's backend is from (firstAnswer): read before
	// routing, which may wait for the CONNECT while a reload runs.
	gen := s.p.backendsGen.Load()
	if err := s.route(); err != nil {
		return err
	}
	if s.in.chain == nil {
		// The accept may have come before the dial that made it was noted
		// (selfdial.go): ask again, now that the dialer has gone on.
		if chain, loop := s.p.selfDials.ours(s.client, s.l.name); loop {
			return s.selfDialed(append(slices.Clip(chain), s.l.name), true)
		} else if chain != nil {
			s.in.chain = append(slices.Clip(chain), s.l.name)
		}
	}
	service, start, err := s.serviceFirst(began) // "" unless a server refused a service lately
	if err != nil {
		return err
	}
	cfg := s.backend.Config
	plan := s.backend.NewPlan(start)
	plan.ForService(service)
	defer func() { plan.Done() }() // the server it dials counts for least_sessions until it has answered (then as a session) or failed; plan may be replaced below
	var attempts []string
	var lastErr error
	var lastRefuse error             // the last REFUSE, for the app when no server takes it
	var refusedBy []*failover.Server // servers that refused this session (budgetCut)
	var silent []*failover.Server    // servers whose answer_timeout this session waited out (answerBound)
	var silentErrs []error           // why, for their breakers once another server took the session
	var scouted []*failover.Server   // servers whose dial failed right after a stuck wait left for them (answerBound)
	leftStuck := false               // the last attempt was a stuck wait that left for another server (errLeftStuck)
	var retry string                 // why the next dial is a re-dial ("" for the first)
	var failed *failover.Server      // the server that failed before it
	var held *failover.Server        // the last server that took the opening and stayed silent through a fair wait (noServerTook)
	var heldErr error                // its error
	// reloaded: a reload redefined the backend while this session waited
	// for a server (the operator's fix in an outage: the database moved).
	// The next round dials the servers the running config has, within the
	// budget counted from the accept, instead of the old ones until the
	// budget ends.
	reloaded := func() bool {
		g := s.p.backendsGen.Load() // before the backend: a reload in between is seen again
		b := s.reloadedBackend()
		gen = g
		if b == nil {
			return false
		}
		plan.Done()
		s.switchBackend(b)
		cfg, plan = b.Config, b.NewPlan(start)
		plan.ForService(service)
		for _, sv := range silent {
			plan.WaitedOut(sv.Address) // the new definition's server at that address goes last too
		}
		return true
	}
	for {
		if retry != "" {
			if gone := s.appGone(); gone != nil {
				return gone
			}
			reloaded()
		}
		srv, err := plan.Next(s.ctx)
		if err == nil && retry != "" {
			// Most of a re-dialing session's time is Next's pause: an app
			// that left during it is not dialed for either.
			if gone := s.appGone(); gone != nil {
				srv.Abandoned(plan.Trial())
				return gone
			}
			// Nor is the old server, when the reload came during the
			// pause: a dead host's dial would cost another
			// connect_timeout of the budget. The new plan's first round
			// has no pause.
			if trial := plan.Trial(); reloaded() {
				srv.Abandoned(trial)
				continue
			}
			s.redial(retry, failed) // counted only when a dial really follows
		}
		if err != nil {
			if cerr := s.clientFailure(nil); cerr != nil {
				return cerr
			}
			if !errors.Is(err, failover.ErrBudgetExhausted) {
				return s.endedElsewhere(err) // drain or shutdown, not a missing backend
			}
			return s.noServerTook(lastRefuse, lastErr, attempts, held, heldErr)
		}
		left := time.Until(plan.Deadline()) // the budget this attempt started with
		conn, err := plan.Dial(s.ctx, srv)  // within connect_timeout and the budget
		if leftStuck {
			leftStuck = false
			if err != nil && !slices.Contains(scouted, srv) {
				scouted = append(scouted, srv) // not left for again while stuck: the wait it gave up was begun anew
			}
		}
		if loop := s.resetByALoop(err, srv); loop != nil {
			srv.Abandoned(plan.Trial()) // no verdict on the server, as below
			return s.selfDialed(loop, false)
		}
		if err != nil {
			s.noteConnect() // no backend read it: its service labels the attempts' end
			if over, cerr := s.cutShort(srv, plan, err); over {
				return cerr
			}
			cut := budgetCut(err, plan, left, cfg, slices.Contains(refusedBy, srv))
			if lastErr == nil || !cut {
				// A dial the budget cut short says nothing of the server,
				// nor what the app is told: the last round is squeezed in
				// backoff/2 before the deadline, and a name's lookup or a
				// remote refusal that takes longer ended as a timeout, so
				// the app got ORA-12170 instead of the ORA-12545 (or
				// ORA-12541) every fair dial had found.
				lastErr = err
			}
			attempts = append(attempts, fmt.Sprintf("%s: %v", srv.Address, err))
			if failover.OutOfResources(err) || cut {
				// tnsguard is out of fds or memory, or the session out of
				// budget: no verdict on the server
				srv.Abandoned(plan.Trial())
			} else {
				plan.Failed(srv, err)
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				plan.TryAgain(srv) // a listener restarting: it may be back in a later round
			}
			if !cfg.Retries("connect") {
				if lastRefuse != nil { // the app gets the REFUSE, not a reset
					return s.noServerTook(lastRefuse, nil, attempts, nil, nil)
				}
				s.deliverRefuse(s.refuseFor(err)) // no server answered: as at the budget's end
				return s.noBackend(err, attempts, srv, PhaseConnect)
			}
			retry, failed = reasonOf(err, "connect"), srv
			continue
		}
		if loop, counted := s.p.selfDials.add(conn, s.in.chain, s.l.name); loop != nil { // before any byte: its accept, if it is ours, checks it
			// The server is this listener, or one the app came through:
			// every re-dial would loop again.
			conn.SetLinger(0)
			conn.Close()
			srv.Abandoned(plan.Trial()) // no verdict on the server
			if plan.Looped(srv) {
				// One address of a name of several: the others may be the
				// database (a name moved to the proxy on IPv6 first).
				continue
			}
			return s.selfDialedThrough(loop, counted, srv.Address, s.p.selfDials.natOf(conn))
		}
		dialed := time.Now()
		conn, buf, first, err := s.attach(conn, srv, plan.Deadline(), s.boundFor(srv, cfg, gen, refusedBy, silent, scouted))
		if errors.Is(err, io.EOF) {
			if pe := s.endOfStream(SideBackend); pe != nil {
				// A reset that the app's direction, writing past
				// replay_bytes, took first: not a backend's half-close.
				err = fmt.Errorf("backend reset before its first byte: %w", pe.err)
			}
		}
		if err == nil {
			srv.Heard() // alive: apps that gave up on it meanwhile found it slow (abandonedWait)
		}
		if err == nil && (len(first) < tns.HeaderLen || tns.PacketType(first[4]) != tns.TypeRefuse) {
			// Another server answered (no REFUSE passed on): the ones the
			// session left at answer_timeout were hung, not slow. Before
			// the answer reaches the app, so that its next session finds
			// the circuit as this one left it.
			for i, sv := range silent {
				if sv != srv {
					sv.Failed(silentErrs[i])
				}
			}
		}
		if err == nil || s.backendEndedFirst(err) {
			err = s.establish(first, srv, plan)
			if buf != nil {
				s.p.pool.put(buf)
			}
			if err == nil {
				return nil
			}
		}
		// The backend failed before its first byte.
		s.mu.Lock()
		cerr := s.clientErr
		s.mu.Unlock()
		back, counted := s.p.selfDials.cameBack(conn)
		if le := (*redirectLoopError)(nil); back == nil && errors.As(err, &le) {
			back, counted = le.loop, le.counted // a REDIRECT to this proxy's own listener: the SCAN sends every re-dial there too
		}
		dropBackend(conn, cerr)
		s.detach()
		if back != nil { // its reset came from a loop back to this proxy: so would a re-dial's
			srv.Abandoned(plan.Trial())
			return s.selfDialedThrough(back, counted, srv.Address, s.p.selfDials.natOf(conn))
		}
		if over, cerr := s.cutShort(srv, plan, err); over {
			return cerr
		}
		if errors.Is(err, errServerTakenOut) {
			// A reload took out the server the session waited on (a hung
			// host the operator replaced): no verdict on it, and the
			// servers of the new definition are dialed at once, with the
			// opening replayed, not after the budget. Not a re-dial: no
			// server failed.
			srv.Abandoned(plan.Trial())
			attempts = append(attempts, fmt.Sprintf("%s: %v", srv.Address, err))
			if gone := s.appGone(); gone != nil {
				return gone
			}
			reloaded()
			retry, failed = "", nil
			continue
		}
		if ae := (*abandonedError)(nil); errors.As(err, &ae) {
			if ae.hung {
				plan.Failed(srv, err)
			} else {
				srv.Abandoned(plan.Trial())
			}
			s.abort(SideClient, PhaseOpening, err, "abandoned", srv)
			return err
		}
		if s.appClosedFirst(err) || errors.Is(err, errAppGaveUp) || errors.Is(err, errAppLeft) { // errAppGaveUp: a REDIRECT not followed for an app that left; errAppLeft: a port check the server never answered
			srv.Abandoned(plan.Trial())
			return err // an ordinary end: finish() records it
		}
		if s.appLeftAfterResend() {
			// The listener closed because the app did, instead of sending
			// its CONNECT again: no verdict, and no one to re-dial for.
			srv.Abandoned(plan.Trial())
			return errAppGaveUp
		}
		if s.appNeverSpoke(time.Since(dialed)) {
			// The listener gave up on an app that sent nothing
			// (INBOUND_CONNECT_TIMEOUT): the app's doing, no verdict.
			srv.Abandoned(plan.Trial())
			err = fmt.Errorf("%w: the server closed a connection the app never spoke on: %w", ErrBadOpening, err)
			s.abort(SideClient, PhaseOpening, err, "reset", srv)
			return err
		}
		if s.badOpening(err) {
			srv.Abandoned(plan.Trial()) // another server would fail the same bytes the same way
			err = fmt.Errorf("%w: %w", ErrBadOpening, err)
			s.abort(SideClient, PhaseOpening, err, "reset", srv)
			return err
		}
		lastErr = err
		attempts = append(attempts, fmt.Sprintf("%s: %v", srv.Address, err))
		if Cause(err) == "timeout" && s.toBackend.Load() > 0 && !budgetCut(err, plan, left, cfg, slices.Contains(refusedBy, srv)) {
			// It took the app's opening and did not answer it (a hung
			// listener): if no server takes the session, its end is
			// this server's, not "none"'s. A wait the budget cut short
			// says nothing of the server, as for its breaker.
			held, heldErr = srv, err
		}
		if re := (*refusedError)(nil); errors.As(err, &re) {
			plan.RefusedBy(srv, err, serviceRefusal(re.code))
			if serviceRefusal(re.code) {
				if key := s.serviceRefused(srv, plan, re.code); key != "" {
					service = key // for a plan a reload makes anew too
				}
			}
		} else if errors.Is(err, errAnswerTimeout) {
			// No verdict yet: a server left at answer_timeout may be slow,
			// not hung (a logon storm). It is counted a failure once
			// another server takes the session (above). Counted at once,
			// the slow primary's circuit opened after failures sessions
			// that a standby without the service refused, and every new
			// session went to that standby until open_for ended.
			srv.Abandoned(plan.Trial())
			silent = append(silent, srv) // waited on to the budget's end if tried again
			leftStuck = errors.Is(err, errLeftStuck)
			silentErrs = append(silentErrs, err)
			plan.WaitedOut(srv.Address)
		} else if budgetCut(err, plan, left, cfg, slices.Contains(refusedBy, srv)) {
			srv.Abandoned(plan.Trial())
		} else {
			plan.Failed(srv, err)
		}
		switch {
		case s.overflowed():
			err = fmt.Errorf("%w: %w", s.overflowErr(), err)
		case errors.Is(err, ErrRefused): // only returned when retry_on has "refuse"
			retry, failed = "refuse", srv
			if telling(err, lastRefuse) {
				lastRefuse = err
			}
			plan.Refused(srv)
			if !slices.Contains(refusedBy, srv) {
				refusedBy = append(refusedBy, srv)
			}
			continue
		case cfg.Retries("reset"):
			retry, failed = reasonOf(err, "reset"), srv
			continue
		}
		if lastRefuse != nil && !errors.Is(err, ErrRefused) {
			return s.noServerTook(lastRefuse, nil, attempts, nil, nil) // the app gets the REFUSE, not a reset
		}
		refusal := err
		if !errors.Is(err, ErrRefused) {
			refusal = s.refuseFor(err) // a server silent until the budget's end: ORA-12170, as when the failure is retried
		}
		s.deliverRefuse(refusal)
		if !s.overflowed() && budgetEnded(err, plan) {
			// No server answered within connect_budget (retry_on without
			// "reset" ends the try here): the same session no server took
			// as when the re-dials run out (noServerTook), on this server
			// unless the budget cut its wait short. Until 2026-12-01 it
			// ended "reset", not counted in rejected{reason="no_backend"}:
			// with retry_on = ["connect"] a hung listener's apps got
			// ORA-12170 and TnsguardAppsRejected never fired
			// (TestBudgetEndOnAHungServerWithoutResetRetryIsNoBackend).
			err = fmt.Errorf("%w: %w", ErrNoBackend, err)
			if budgetCut(err, plan, left, cfg, slices.Contains(refusedBy, srv)) {
				return s.noBackend(err, attempts, nil, PhaseConnect)
			}
			return s.noBackend(err, attempts, srv, PhaseOpening)
		}
		s.abort(SideBackend, PhaseOpening, err, "reset", srv)
		return err
	}
}

// budgetEnded tells whether err is a wait that connect_budget's deadline
// ended (or, for an app that spoke late, the time its first bytes bought).
func budgetEnded(err error, plan *failover.Plan) bool {
	return (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)) && !time.Now().Before(plan.Deadline())
}

// reloadedBackend is the running config's definition of the session's
// backend when a reload replaced the one the session is dialing with, else
// nil. A backend the reload removed leaves the session with what it had.
// The backend is found by its name among the running ones, not through the
// session's listener: a listener that the same reload renamed, moved or
// removed keeps the backends of its last config, and its waiting sessions
// dialed the old address until their budget ended (as retuneSessions gives
// the database leg the keepalive of the backend of its name).
func (s *session) reloadedBackend() *failover.Backend {
	if b := s.p.backend(s.backendName()); b != nil && b != s.backend {
		return b
	}
	return nil
}

// noServerTook ends a session that no server took, as when its budget
// ends. If one refused it, the app gets that REFUSE as it was (its driver
// reports the real ORA error), even if a later server only failed to
// answer, failed in a way retry_on does not retry, or the budget ended
// while one was being asked; the end is counted with the REFUSE's cause.
// Otherwise the app gets the REFUSE that stands for last, the last
// attempt's error (nil for none), if it speaks Oracle Net (refuseFor), else
// a reset. The end is counted with last's cause on server "none"; or, when
// held (with heldErr) took the app's opening and stayed silent, on that
// server, in phase opening, with its cause: a hung listener is named on
// its own link (its status-page row, tnsguard_resets_total, /api/resets)
// and not only in the log line's attempts. Until 2026-12-01 such an end
// went to "none", with phase connect, and the hung server's row showed no
// reset (TestBudgetEndOnAHungServerNamesIt).
func (s *session) noServerTook(lastRefuse, last error, attempts []string, held *failover.Server, heldErr error) error {
	err, phase := ErrNoBackend, PhaseConnect
	switch {
	case lastRefuse != nil:
		err = fmt.Errorf("%w: %w", ErrNoBackend, lastRefuse)
		s.deliverRefuse(lastRefuse)
		held = nil // the app got a listener's REFUSE: counted as one, on "none"
	case last != nil:
		err = fmt.Errorf("%w: %w", ErrNoBackend, last)
		s.deliverRefuse(s.refuseFor(last))
	}
	if held != nil && !s.p.linkConfigured(linkKey{s.l.name, s.backendName(), held.Address}) {
		// A reload took the server out (the operator's fix for a hung
		// host) and the session went on to the new servers: their failure
		// is what the app got, and the removed server's row, which never
		// carried a session, is not shown. Named, the end showed on no
		// row, with the removed server's timeout while the app got the
		// new server's ORA-12541
		// (TestBudgetEndAfterAReloadTookTheHungServerOutStaysOnNone).
		held = nil
	}
	if held != nil {
		phase = PhaseOpening
		if heldErr != last {
			err = fmt.Errorf("%w: %w", ErrNoBackend, heldErr) // its cause, not a later attempt's
		}
	}
	return s.noBackend(err, attempts, held, phase)
}

// budgetCut tells whether an attempt that started with left of the budget
// was ended by the budget's deadline rather than by the server, so that the
// server gets no verdict (README: no server is blamed for a dial that had
// no time left). That is so when the attempt had less than a fair share:
// min(connect_timeout, connect_budget/2, fairAttempt), as in the last round the plan
// squeezes in before the deadline (a server across a WAN cannot answer in
// backoff/2); or when this server has already refused this session, whose
// retries then run out the budget on the app's request. A server that
// stayed silent through most of the budget is still blamed, even after
// another server refused (a hung listener behind a standby that refuses
// the service must not escape its breaker).
func budgetCut(err error, plan *failover.Plan, left time.Duration, cfg *config.Backend, refused bool) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if time.Now().Before(plan.Deadline()) {
		return false // its own connect_timeout: a fair verdict
	}
	return refused || left < min(cfg.ConnectTimeout.Duration, cfg.ConnectBudget.Duration/2, fairAttempt)
}

// fairAttempt is the time an attempt must have had for the budget's end to
// count against its server: a listener across a WAN connects and answers a
// CONNECT (three round trips, a RESEND four) well within it, and a server
// silent for longer (a load balancer in front of a black hole) is failing,
// however much of the budget was left.
const fairAttempt = time.Second

// cutShort tells whether the opening was ended while srv was being tried:
// the app's leg failed (the session is classified on the client side) or
// the session was ended elsewhere (drain, shutdown). Either way srv gets no
// verdict, and the error to return is given.
func (s *session) cutShort(srv *failover.Server, plan *failover.Plan, err error) (bool, error) {
	if cerr := s.clientFailure(srv); cerr != nil {
		srv.Abandoned(plan.Trial())
		return true, cerr
	}
	if s.ctx.Err() != nil {
		srv.Abandoned(plan.Trial())
		return true, s.endedElsewhere(err)
	}
	return false, nil
}

// noBackend ends a session that got no backend: the app's connection is
// reset, the rejection counted, and its attempts logged with their errors
// (the first and last maxAttemptsLogged/2 of them), within the listener's
// log budget.
func (s *session) noBackend(err error, attempts []string, srv *failover.Server, phase Phase) error {
	s.noteConnect() // the CONNECT that arrived after the last failed dial
	s.l.rejected("no_backend")
	if s.l.takeLogLine("no-backend") {
		if n := len(attempts); n > maxAttemptsLogged {
			attempts = append(append(attempts[:maxAttemptsLogged/2:maxAttemptsLogged/2],
				fmt.Sprintf("... %d more ...", n-maxAttemptsLogged)), attempts[n-maxAttemptsLogged/2:]...)
		}
		msg := "no backend for new session: resetting the app's connection"
		switch {
		case errors.Is(err, ErrRefused):
			msg = "no backend for new session: the app gets the last REFUSE" // its driver shows the ORA error
		case s.refusedApp != 0: // set by this goroutine
			msg = fmt.Sprintf("no backend for new session: no server answered: the app gets a REFUSE with ORA-%05d", s.refusedApp)
		}
		s.logger().Warn(msg, "budget", s.backend.Config.ConnectBudget.Duration.String(), "attempts", attempts)
	}
	s.abort(SideBackend, phase, err, "no_backend", srv)
	return err
}

// maxAttemptsLogged bounds the attempts one no-backend line lists: a long
// budget with short backoffs makes dozens.
const maxAttemptsLogged = 32

// endedElsewhere is the end of an opening cut short by the proxy (drain
// timeout, shutdown): whoever cancelled the session has classified it
// already; this only makes sure the app's connection is closed.
func (s *session) endedElsewhere(err error) error {
	s.abort(SideClient, PhaseConnect, err, "closed", nil)
	return err
}

// errSelfDial ends a session whose app is a dial of one of the proxy's own
// sessions that came through its listener already: a loop.
var errSelfDial = errors.New("the app is tnsguard's own dial to a server that is this listener")

// selfDialed ends a session that is part of a loop back to one of the
// proxy's listeners (loop: the listeners on the way round, the one reached
// again last), as the listener rejects such a connection it sees at accept.
// When its app is itself one of the proxy's dials, that dial's session ends
// too, rather than re-dial (cameBack).
//
// A session is one self-dial, counted once, however many of its paths find
// the loop: the app's direction, which sees the dialer's reset
// (selfDialReset), and the opening, which asks again before it dials and
// sees its own dial come back, may both.
//
// elsewhere tells that the loop is counted elsewhere: the session's app
// is one of the proxy's own dials (a dial accepted before it was noted),
// or the session of its own dial counted it (claim). Otherwise the session
// counts and warns unless its app turns out to be an own dial (claim), or
// the next listener's session of a chain; so one app connection is one
// self_dial, as the listener does not count the dials it resets (handle).
// Until 2026-11-30 every leg counted: 2 rejections for one app, 3 through
// two listeners, and one for a name's address that was the proxy while the
// name's next address served the app.
func (s *session) selfDialed(loop []string, elsewhere bool) error {
	return s.selfDialedThrough(loop, elsewhere, "", netip.AddrPort{})
}

// selfDialedThrough is selfDialed for a dial of server that this host's
// NAT sent to the listener at nat (when valid): the warning says so, as
// the server's address is another host's and looks right.
func (s *session) selfDialedThrough(loop []string, elsewhere bool, server string, nat netip.AddrPort) error {
	s.mu.Lock()
	first := !s.selfDialEnd
	s.selfDialEnd = true
	s.mu.Unlock()
	if !first {
		return s.endedElsewhere(errSelfDial)
	}
	if elsewhere || s.in.chain != nil { // s.in.chain: written by this goroutine (open) only; selfDialReset passes true
		s.p.selfDials.markBack(s.client, loop) // the dialer of an own dial ends at once (cameBack)
		elsewhere = true
	} else {
		elsewhere = s.p.selfDials.claim(s.client, loop)
	}
	s.mu.Lock()
	s.loopCountedElsewhere = elsewhere
	s.mu.Unlock()
	if !elsewhere {
		s.l.rejected("self_dial")
		switch {
		case !s.l.takeLogLine("self-dial"):
		case nat.IsValid():
			s.l.log.Warn("connection rejected: "+errSelfDial.Error()+"; check the server's address: this host's NAT sends it to this listener "+
				"(an iptables OUTPUT REDIRECT or DNAT with no exclusion for tnsguard's own connections, such as -m owner ! --uid-owner)",
				"loop", strings.Join(loop, " -> "), "server", server, "nat", server+" -> "+nat.String())
		default:
			s.l.log.Warn("connection rejected: "+errSelfDial.Error()+"; check the server's address, or what its name resolves to", "loop", strings.Join(loop, " -> "))
		}
	}
	return s.endedElsewhere(errSelfDial)
}

// errAppLeft ends an opening whose app closed without sending a byte.
var errAppLeft = errors.New("the app closed before sending anything")

// errAppGaveUp ends an opening whose Oracle client closed while its CONNECT
// (or a TCPS app while its ClientHello) waited for a server.
var errAppGaveUp = errors.New("the app closed while its opening waited for a server")

// appGone tells an app that left while its session was being re-dialed,
// so that no server is dialed for it (an ordinary end: finish() records
// it), or returns nil:
//   - a port check (connect, then FIN) while the first server failed:
//     nothing to replay and no one to answer; re-dialing would hold the
//     session, and a drain, for connect_budget;
//   - an Oracle client that closed while its CONNECT waited for a server
//     gave up (its own connect timeout): Oracle Net never half-closes, and
//     re-dialing would take its CONNECT and FIN to a recovering database,
//     a server process for no one. So did a TCPS app that closed after its
//     ClientHello (wholeClientHello), or part of it: no TLS client
//     half-closes before the server's first flight.
func (s *session) appGone() error {
	switch {
	case s.appLeftSilent():
		return errAppLeft
	case s.appGaveUp(), s.appLeftAfterResend():
		return errAppGaveUp
	}
	return nil
}

// appGaveUp tells an app that closed after a TNS CONNECT, or after a TLS
// handshake's first bytes, that no server has answered yet. A ClientHello
// cut short is one too: no server can answer it, and it has nothing more
// to come (until 2026-12-01 such a session was re-dialed for through an
// outage, to the end of connect_budget).
func (s *session) appGaveUp() bool {
	s.mu.Lock()
	gave := s.clientEOF && (s.looksLikeTNSLocked() || tlsHandshake(s.replay))
	s.mu.Unlock()
	return gave && !s.halfClosedToRead()
}

// halfCloseGrace is how soon after its first bytes an app's FIN says it
// sent a request and half-closed to read the answer (socat, nc -N, a
// script's shutdown(SHUT_WR) after a CONNECT), not that it gave up: no
// Oracle driver's connect timeout is that short. Such an app is carried
// as before, its FIN after its CONNECT, and gets the answer. A script's
// FIN follows its CONNECT in the same flight (tnsguard reads them
// microseconds apart, a few milliseconds on a busy host); the shortest
// connect timeout the tests give an app is 100 ms.
const halfCloseGrace = 50 * time.Millisecond

// halfClosedToRead tells an app whose FIN came within halfCloseGrace of
// its first bytes (halfCloseGrace). The FIN's time is noted right after
// the app's direction reads it (directionEnded): not yet noted, it is now.
// Until 2026-12-01 such an app's session ended without the server's
// answer, even from a listener that answered at once.
func (s *session) halfClosedToRead() bool {
	spoke, ok := s.spoke()
	if !ok {
		return false
	}
	fin := time.Now()
	if at := s.peerFIN[legIndex(SideClient)].Load(); at != 0 {
		fin = s.start.Add(time.Duration(at))
	}
	return fin.Sub(spoke) < halfCloseGrace
}

// appLeftAfterResend tells an Oracle client that closed after a listener's
// RESEND reached it, without sending its CONNECT again: it gave up (its own
// connect timeout), so a backend's close that follows is its doing.
func (s *session) appLeftAfterResend() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientEOF && s.resendOwed && len(s.replay) == 0
}

// appLeftSilent tells an app that half-closed without sending a byte.
func (s *session) appLeftSilent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientEOF && s.toBackend.Load() == 0
}

// appClosedFirst tells a backend that closed before its first byte because
// the app had closed without sending anything (a port check by a load
// balancer or monitoring: connect, then FIN) from a failing server: there is
// nothing to replay, so no re-dial and no breaker failure.
func (s *session) appClosedFirst(err error) bool {
	return errors.Is(err, io.EOF) && s.appLeftSilent()
}

// silentAppGrace is how long a backend must have held a connection the app
// never spoke on before its close is put down to the app: a server that
// closes at once, before the app's first bytes could arrive, is still
// re-dialed.
const silentAppGrace = 100 * time.Millisecond

// appNeverSpoke tells a backend that ended, without a byte, a connection it
// held for a while the app sent nothing: a listener's
// INBOUND_CONNECT_TIMEOUT, not a failing server.
func (s *session) appNeverSpoke(held time.Duration) bool {
	return s.toBackend.Load() == 0 && held >= silentAppGrace
}

// badOpening tells a backend that failed before its first byte (silent
// until connect_budget, closed, reset) because the app's opening cannot be
// answered (openingUnfinishedLocked) from a failing server: a client that
// sends a cut-short or lying CONNECT, or garbage, must cost its own
// connection only, never a breaker failure, a re-dial or another session's
// server.
func (s *session) badOpening(err error) bool {
	if errors.Is(err, ErrRefused) || errors.Is(err, ErrReplayOverflow) {
		return false // an answer, or bytes that were never kept
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openingUnfinishedLocked(errors.Is(err, os.ErrDeadlineExceeded))
}

// backendEndedFirst tells a backend that closed, without a byte, an
// exchange that cannot be replayed anyway (the app sent more than
// replay_bytes: an upload, say) from a failing server: the close is passed
// on to the app as a half-close, as it would be after the first byte.
func (s *session) backendEndedFirst(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Is(err, io.EOF) && s.conn != nil && s.overflow
}

func reasonOf(err error, fallback string) string {
	if failover.DialResult(err) == "timeout" {
		return "timeout"
	}
	return fallback
}

// redial counts a retry after srv failed.
func (s *session) redial(reason string, srv *failover.Server) {
	s.p.metrics.Redials.WithLabelValues(s.l.name, s.backend.Config.Name, reason).Inc()
	s.p.linkFor(s.l.name, s.backend.Config.Name, srv.Address).redial()
}

// clientFailure is the app leg's error if it failed during the opening; the
// session is then classified on the client side. srv is the server of the
// attempt the failure cut short (nil between attempts): an app that left
// while that server held its opening ended on that server's link, though
// the attempt has let go of it by now (detach).
func (s *session) clientFailure(srv *failover.Server) error {
	s.mu.Lock()
	err, phase := s.clientErr, s.clientPhase
	s.mu.Unlock()
	if err == nil {
		return nil
	}
	if phase == "" {
		phase = PhaseOpening
	}
	if s.selfDialReset(err) {
		return err
	}
	if phase != PhaseOpening {
		srv = nil // no backend connection was up: the link "none"
	}
	s.abort(SideClient, phase, err, "reset", srv)
	return err
}

// resetByALoop is the way round when err is the reset, before connect
// returned, of a dial of srv by one of the proxy's listeners that a re-dial
// would loop through again (selfDials.resetLoop); nil otherwise. Not for a
// name of several addresses: its error is its first address's, and the
// others failed too (a database that a name shares with the proxy may be
// restarting): such a session re-dials as before, and its next dial that
// connects to the proxy finds the loop (Plan.Looped).
func (s *session) resetByALoop(err error, srv *failover.Server) []string {
	if err == nil || !errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	// Declared past the common case: errors.As takes its address, which
	// puts it on the heap, an allocation for every dial that worked.
	var oe *net.OpError
	if !errors.As(err, &oe) || !srv.OneAddress() {
		return nil
	}
	return s.p.selfDials.resetLoop(oe.Addr, s.in.chain, s.l.name)
}

// selfDialReset ends as a self-dial a session whose "app" reset it before
// it was established, when that app is one of the proxy's own dials: the
// accept came before the dial was noted (selfdial.go), and the dialer
// reset it on finding the loop. No app's session and no app's reset, as
// the listener counts such a dial. Both the app's direction and the
// opening see the reset, and whichever comes first ends the session:
// true from either, counted once (selfDialed).
func (s *session) selfDialReset(err error) bool {
	if Cause(err) != "rst" {
		return false
	}
	chain, loop := s.p.selfDials.ours(s.client, s.l.name)
	if !loop {
		return false
	}
	s.selfDialed(append(slices.Clip(chain), s.l.name), true)
	return true
}

// attach makes conn the session's backend connection: the app's opening
// bytes are replayed on it, and the first backend bytes are read.
//
// It returns the bytes to give the app (first), held in buf or in a slice
// of their own; the caller gives buf back to the pool once they are sent.
// It also returns the backend connection the session is on now: conn, or
// the one a followed REDIRECT led to (conn is closed then).
func (s *session) attach(conn *net.TCPConn, srv *failover.Server, deadline time.Time, bound answerBound) (now *net.TCPConn, buf *[]byte, first []byte, err error) {
	if err := s.sendProxyHeader(conn); err != nil { // send_proxy_protocol, before any replay
		return conn, nil, nil, err
	}
	if err := s.replayTo(conn, srv, deadline); err != nil {
		return conn, nil, nil, err
	}

	buf, n, err := s.firstAnswer(conn, deadline, bound)
	// A backend answers what it was sent, so the app's opening is in the
	// replay buffer by now: only if it is a TNS CONNECT is the answer read
	// as TNS.
	s.mu.Lock()
	s.noteConnectLocked()
	isTNS := s.looksLikeTNSLocked()
	overflowTNS := s.overflow && s.overflowTNS
	s.mu.Unlock()
	if err == nil && isTNS {
		conn, buf, first, err = s.inspectFirst(conn, srv, buf, n, deadline)
	} else if err == nil {
		first = (*buf)[:n]
		if overflowTNS {
			s.refuseBeyondReplay(srv, first) // passed on as it came, but no server took the app
		}
	}
	if err != nil {
		if buf != nil {
			s.p.pool.put(buf)
		}
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("backend closed before its first byte: %w", err)
		}
		return conn, nil, nil, err
	}
	return conn, buf, first, nil
}

// firstAnswer waits for the backend's first bytes (and, after a RESEND,
// for its answer to the app's CONNECT sent again). A backend that accepted
// but stays silent after the app has spoken (a load balancer whose target
// is black-holed) fails with a timeout at the end of connect_budget, as a
// dial would; or, with a bound (answerBound: the first answer of a new
// connection, when another server could take the session), answer_timeout
// after the app's bytes reached it. While the app has sent nothing,
// nothing is owed and the wait has no bound. With a bound, a reload that
// takes the server out ends the wait too (errServerTakenOut).
//
// The pooled buffer is taken only once the backend's bytes (or its end)
// are there, as the pumps read: a session waiting for a slow listener's
// answer holds no buffer. In a reconnect storm against a database that
// answers in seconds, every waiting session held 16 KiB (6,000 sessions:
// 109 MB of live heap). buf is nil when err is not.
func (s *session) firstAnswer(conn *net.TCPConn, deadline time.Time, bound answerBound) (buf *[]byte, n int, err error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	s.awaiting = conn // the app's first bytes, and a reload (wakeAwaiting), wake the wait (openingBytes)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.awaiting = nil
		s.mu.Unlock()
		conn.SetReadDeadline(time.Time{})
		if bound.stuck != 0 {
			s.p.stuckWaits.Add(-1)
		}
	}()
	read := func(fd uintptr) bool {
		b := s.p.pool.get()
		m, e := rawRead(fd, *b)
		switch {
		case e == syscall.EAGAIN:
			s.p.pool.put(b)
			return false // parked on the poller, holding nothing
		case e != 0:
			s.p.pool.put(b)
			err = &net.OpError{Op: "read", Net: "tcp", Source: conn.LocalAddr(), Addr: conn.RemoteAddr(), Err: os.NewSyscallError("read", e)}
		case m == 0:
			s.p.pool.put(b)
			err = io.EOF
		default:
			buf, n = b, m
		}
		return true
	}
	bound.began = time.Now()
	if s.gaveUpWaiting() {
		// The app closed before its opening reached this server (while
		// it was dialed): nobody waits for the answer, and the server
		// had no time to give one. An ordinary end, as between rounds.
		return nil, 0, errAppGaveUp
	}
	for {
		owed := bound.cut(s, s.answerDeadline(deadline))
		conn.SetReadDeadline(bound.reask(owed))
		if s.gaveUpWaiting() { // after the deadline is set: a close that comes later wakes the read
			return nil, 0, s.abandonedWait(&bound)
		}
		if bound.takenOut(s) {
			return nil, 0, errServerTakenOut
		}
		if bound.reloadedElsewhere(s) {
			return nil, 0, fmt.Errorf("%w (%v), and a reload gave the session another server: %w", errAnswerTimeout, bound.stuck, os.ErrDeadlineExceeded)
		}
		if bound.elsewhereSince(s, owed) {
			return nil, 0, fmt.Errorf("%w (%v), and %w: %w", errAnswerTimeout, bound.stuck, errLeftStuck, os.ErrDeadlineExceeded)
		}
		if !bound.cut(s, s.answerDeadline(deadline)).Equal(owed) {
			continue // the app spoke meanwhile
		}
		if werr := rc.Read(read); werr != nil {
			if oe := (*net.OpError)(nil); errors.As(werr, &oe) {
				oe.Op = "read" // as conn.Read says it: "read tcp a->b: i/o timeout"
			}
			err = werr
		}
		if err != nil && s.gaveUpWaiting() {
			// Woken by the app's close, or, if this read ran only after
			// it, by what the server did then: the app's FIN is carried
			// to the server at once (directionDone), and a listener that
			// closes with its client (as Oracle's does) answers it with
			// its own FIN, which the poller may report before the
			// deadline's wake. Either way the app gave up first. Until
			// 2026-12-01 the second read as the server closing before
			// its first byte: a failure with no warning, the session an
			// ordinary end on no server (node-oracledb giving up on a
			// hung listener, one run in three).
			return nil, 0, s.abandonedWait(&bound)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && s.appLeftSilent() && !time.Now().Before(s.answerDeadline(deadline)) {
			return nil, 0, errAppLeft // no verdict, an ordinary end (open)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Woken by the app's first bytes or a reload, or owed no
			// answer (any more): wait again, to the deadline that holds
			// now.
			full := s.answerDeadline(deadline)
			if owed := bound.cut(s, full); owed.IsZero() || time.Now().Before(owed) {
				err = nil
				continue
			}
			if bound.timeout > 0 && time.Now().Before(full) {
				// answer_timeout, not the budget: the session moves on
				// only if another server can take it now; else this one
				// gets the rest of the budget, as with no other server.
				// Nor does an opening no server can answer yet (a CONNECT
				// still coming, or cut short): no server is hung for it,
				// and it ends as before (badOpening).
				s.mu.Lock()
				unfinished := s.openingUnfinishedLocked(true)
				s.mu.Unlock()
				if unfinished || !bound.elsewhere(s) {
					// Counted before the wait asks again (elsewhereSince,
					// at the loop's top): a server that came back after
					// serverBack found no stuck wait is seen by that ask.
					s.p.stuckWaits.Add(1) // until the wait ends (the deferred func above)
					bound.stuck, bound.timeout, bound.asked = bound.timeout, 0, time.Now()
					err = nil
					continue
				}
				return nil, 0, fmt.Errorf("%w (%v): %w", errAnswerTimeout, bound.timeout, err)
			}
		}
		return buf, n, err
	}
}

// errAnswerTimeout is a server that did not answer the app's opening within
// answer_timeout while another server could take the session: counted as a
// timeout, as a server silent to the budget's end is.
var errAnswerTimeout = errors.New("no first answer within answer_timeout")

// errLeftStuck is a wait that answer_timeout found with nowhere else to go
// (stuck) and that left when another server could take the session
// (elsewhereSince).
var errLeftStuck = errors.New("another server can take the session now")

// errServerTakenOut ends the wait for a first answer from a server that a
// reload took out of the session's backend.
var errServerTakenOut = errors.New("a reload took the server out while the session awaited its first answer")

// abandonedError ends the wait for a server's first answer when the app,
// an Oracle client, closed while the server held its opening unanswered:
// its own connect timeout ran out first (shorter than answer_timeout, or
// than the server takes). The session counts as outcome "abandoned",
// neither ok nor a reset (Proxy.record). It is errAppGaveUp, an end of
// stream (Cause "eof": both legs get a FIN), though not io.EOF, which
// would read as the backend's close.
type abandonedError struct {
	silent time.Duration // how long the server had held the app's opening without a byte
	hung   bool          // counted as a failure of the server (abandonedWait)
}

func (e *abandonedError) Error() string {
	return fmt.Sprintf("the app closed after its opening waited %v for the server's first answer", e.silent.Round(time.Millisecond))
}

func (e *abandonedError) Unwrap() error { return errAppGaveUp }

// abandonedVerdictAfter is the least silence (below answer_timeout) after
// which an app's giving up is held against the server (abandonedWait):
// twice fairAttempt, past which tnsguard already takes a server's silence
// for a failure. An app that gives up after a second or so (a pool's
// aggressive connect timeout) says nothing of a server that answers in
// two; one of 3 s (knex's connect_timeout=3) against the default
// answer_timeout of 5 s is counted.
const abandonedVerdictAfter = 2 * fairAttempt

// abandonedWait is the end of a wait for a first answer that the app gave
// up on. The server is blamed (a breaker failure, hung) only when tnsguard
// would have left it for another server had the app waited, and the
// evidence says hung, not slow:
//   - the wait had answer_timeout as its bound (retry_on has "reset") and
//     another server could take the session now (answerBound.elsewhere):
//     with nowhere else to go an open circuit only fails every app, and a
//     server that refused the app's service lately is nowhere to go;
//   - the server held the app's whole opening for at least
//     min(answer_timeout, abandonedVerdictAfter);
//   - it gave no session its first answer meanwhile (HeardSince), of this
//     backend or of another that has it too (Proxy.heardSince): a
//     database in a logon storm answers late, but answers, and apps that
//     give up on it must not send its sessions to a standby that may not
//     have the service.
//
// So after `failures` such sessions in a row the hung server's circuit
// opens, and the next apps reach the standby, though every app gave up
// before answer_timeout. Without it apps whose connect timeout is shorter
// than answer_timeout never got past a hung primary.
func (s *session) abandonedWait(b *answerBound) error {
	from := b.began
	if at, ok := s.spoke(); ok && at.After(from) {
		from = at
	}
	e := &abandonedError{silent: time.Since(from)}
	e.hung = b.timeout > 0 && b.srv != nil && e.silent >= min(b.timeout, abandonedVerdictAfter) &&
		!b.srv.HeardSince(from) && !s.p.heardSince(b.srv.Address, from) && b.elsewhere(s)
	return e
}

// heardSince tells whether a session of any backend got the first answer
// of the server at address at or after t. Backends that share a database
// listener (a batch pool's and an OLTP pool's, routes of several services
// to one host) each have their own failover.Server for it: until
// 2026-12-01 a backend whose apps all gave up on a listener in a logon
// storm opened its circuit while that listener answered the other
// backend's sessions, and sent its apps to the standby.
func (p *Proxy) heardSince(address string, t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		if srv := b.ServerAt(address); srv != nil && srv.HeardSince(t) {
			return true
		}
	}
	return false
}

// logAbandoned logs an abandoned session (Proxy.record), within the
// listener's log budget as the no-backend lines: the one sign, besides
// tnsguard_sessions_total{outcome="abandoned"}, that apps give up on a
// server before tnsguard would leave it (answer_timeout too long for them,
// or the server hung).
func (s *session) logAbandoned(end *sessionEnd, server string, age time.Duration) {
	if !s.l.takeLogLine("abandoned") {
		return
	}
	ae := &abandonedError{}
	errors.As(end.err, &ae)
	msg := "app gave up waiting for the server's first answer: the server had not answered; check the server, or set answer_timeout below the app's connect timeout"
	if ae.hung {
		msg = "app gave up waiting for the server's first answer: the server had not answered, counted as its failure; check the server, or set answer_timeout below the app's connect timeout"
	}
	s.logger().Warn(msg, "server", server, "waited", age.Round(time.Millisecond).String(),
		"server_silent", ae.silent.Round(time.Millisecond).String(), "answer_timeout", s.backend.Config.AnswerTimeout.Duration.String())
}

// gaveUpWaiting tells an Oracle client that closed while its whole opening
// waited for a server's answer (appGaveUp): a CONNECT, or a TCPS app's
// ClientHello (wholeClientHello). Not one whose opening no server can
// answer (cut short): that wait goes on, and ends as a bad opening does
// (badOpening), a ClientHello cut short included (openingUnfinishedLocked).
// Until 2026-12-01 a TCPS app that gave up on a hung
// listener holding its ClientHello was waited for to answer_timeout, its
// ClientHello then replayed to the standby for no one, counted ok (or
// reset, the standby's ServerHello meeting the closed socket), with no
// line, and the hung server blamed only then, seconds after the apps had
// failed.
func (s *session) gaveUpWaiting() bool {
	s.mu.Lock()
	gave := s.clientEOF && (s.looksLikeTNSLocked() && !s.openingUnfinishedLocked(true) || wholeClientHello(s.replay))
	s.mu.Unlock()
	return gave && !s.halfClosedToRead()
}

// answerBound is what bounds one attempt's wait for its first answer below
// the budget (firstAnswer); the zero value bounds nothing. It is made for
// the first answer of each new backend connection (attach) only: a
// listener that has sent a RESEND is no hung one, and a REDIRECT's node is
// no server of the backend's.
type answerBound struct {
	timeout time.Duration     // answer_timeout; 0 for none
	began   time.Time         // when the wait began: the opening had been written
	be      *failover.Backend // the servers that could take the session instead of srv
	srv     *failover.Server
	// passed: servers not to count as elsewhere: those that refused the
	// session, those it waited out, and (for a stuck wait) those whose
	// dial failed after a stuck wait of the session left for them: a
	// server whose dial failed takes one stuck wait at a time
	// (failover.Backend.ElsewhereAgain), and the one that went, back on
	// the slow primary with its wait begun anew, was the only one left to
	// go again at each re-ask, a new CONNECT each time.
	passed [3][]*failover.Server
	gen    uint64 // Proxy.backendsGen when the session took its backend's definition
	// stuck: answer_timeout, once it passed with no other server to take
	// the session (timeout is 0 from then on): a reload that gives the
	// backend one ends the wait (reloadedElsewhere), and so does a server
	// that comes back (elsewhereSince); the wait asks again at
	// asked+stuck (reask).
	stuck time.Duration
	asked time.Time // when a stuck wait last asked whether another server could take the session
}

// boundFor is the bound of the wait for srv's first answer: answer_timeout
// when the opening can be replayed to another server (retry_on has
// "reset"), none otherwise. Whether another server can take it is asked
// only once answer_timeout has passed (elsewhere).
func (s *session) boundFor(srv *failover.Server, cfg *config.Backend, gen uint64, refused, silent, scouted []*failover.Server) answerBound {
	// The lists may hold a definition's servers that a reload replaced
	// (the session moved to the new one): its servers at their addresses.
	b := answerBound{srv: srv, be: s.backend, gen: gen, passed: [3][]*failover.Server{serversIn(s.backend, refused), serversIn(s.backend, silent), serversIn(s.backend, scouted)}}
	if cfg.Retries("reset") && cfg.AnswerTimeout.Duration > 0 {
		b.timeout = cfg.AnswerTimeout.Duration
	}
	return b
}

// cut is owed (the budget's deadline for the answer, zero for none) cut
// to answer_timeout after the wait began, or after the app's first bytes
// when they came later: a server is not blamed for an app that had not
// spoken.
func (b *answerBound) cut(s *session, owed time.Time) time.Time {
	if b.timeout <= 0 || owed.IsZero() || s.spokeAt.Load() == 0 {
		return owed
	}
	from := b.began
	if at, ok := s.spoke(); ok && at.After(from) {
		from = at
	}
	if c := from.Add(b.timeout); c.Before(owed) {
		return c
	}
	return owed
}

// elsewhere tells whether another server could take the session now: one
// its plan may dial that neither refused it nor was waited out by it. With
// only one server, or none other usable, the wait goes on to the budget's
// end: cutting it would only add a connection to a slow database in a
// logon storm. Nor is a server that refused the app's service lately
// (the CONNECT is whole by now: firstAnswer asks only then).
//
// A reload since the wait began is asked instead (elsewhereIn): until the
// fix a session whose standby a reload took out left the slow primary for
// it at answer_timeout, and came back to the primary with a second CONNECT.
func (b *answerBound) elsewhere(s *session) bool {
	s.noteConnect()
	service := serviceKey(s.serviceName)
	if nb := b.reloaded(s); nb != nil {
		return b.elsewhereIn(nb, service, nil)
	}
	return b.be.Elsewhere(b.srv, service, b.passed[0], b.passed[1])
}

// elsewhereAgain is elsewhere asked again by a stuck wait
// (failover.Backend.ElsewhereAgain): not of a server that refused the
// service and has not served it since, nor, unless trial, of one whose
// circuit is not closed.
func (b *answerBound) elsewhereAgain(s *session, trial bool) bool {
	s.noteConnect()
	service := serviceKey(s.serviceName)
	if nb := b.reloaded(s); nb != nil {
		return b.elsewhereIn(nb, service, &trial)
	}
	return b.be.ElsewhereAgain(b.srv, service, trial, b.passed[0], b.passed[1], stillFailing(b.passed[2]))
}

// reloaded is the running definition of the session's backend when a
// reload replaced the one the wait began under, else nil.
func (b *answerBound) reloaded(s *session) *failover.Backend {
	if b.srv == nil || s.p.backendsGen.Load() == b.gen {
		return nil
	}
	return s.reloadedBackend()
}

// elsewhereIn is elsewhere asked of nb, a reload's definition of the
// backend: of its servers at the addresses of those the bound names. A
// server that refused the session's service lately is nowhere to go (a
// standby in a logon storm on the primary), also when nb forgot the
// refusal (no "refuse" in retry_on: Inherit): until the fix every session
// of the storm left the slow primary at a reload and its app got the
// standby's ORA-12514.
//
// again (not nil) asks as a stuck wait does (elsewhereAgain), with trial
// *again: the old definition's refusals count however long ago they came.
func (b *answerBound) elsewhereIn(nb *failover.Backend, service string, again *bool) bool {
	srv := nb.ServerAt(b.srv.Address)
	if srv == nil {
		return false // taken out: takenOut ends the wait, unless the opening is past replay
	}
	if again != nil {
		refusing := serversIn(nb, b.be.RefusedKept(service))
		return nb.ElsewhereAgain(srv, service, *again, serversIn(nb, b.passed[0]), serversIn(nb, b.passed[1]), stillFailing(serversIn(nb, b.passed[2])), refusing)
	}
	refusing := serversIn(nb, b.be.RefusedLately(service, time.Now()))
	return nb.Elsewhere(srv, service, serversIn(nb, b.passed[0]), serversIn(nb, b.passed[1]), refusing)
}

// reask is owed, the deadline of a wait for a first answer, cut to
// answer_timeout after the wait last asked whether another server could
// take the session, when it is stuck: the read wakes then and the wait
// asks again (elsewhereSince). An open period ends with time, not with an
// event that wakes the wait (Proxy.serverBack): without the re-ask, a wait
// stuck behind a standby's open circuit kept waiting on the hung primary
// after open_for, to the end of connect_budget.
func (b *answerBound) reask(owed time.Time) time.Time {
	if b.stuck <= 0 || owed.IsZero() {
		return owed
	}
	if at := b.asked.Add(b.stuck); at.Before(owed) {
		return at
	}
	return owed
}

// elsewhereSince tells, for a wait that answer_timeout found with no other
// server to go to (stuck) and that still owes the app an answer by owed,
// whether another server could take the session now: the wait ends then,
// as it would have at answer_timeout, and the session replays the opening
// to that server. It is asked when the wait is woken (a server came back:
// Proxy.serverBack; a reload; the app's bytes) and at its re-ask (reask),
// not at each read, as failover.Backend.ElsewhereAgain asks: a server that
// refused the service and has not served it since is still nowhere to go,
// and only the re-asks count a circuit whose open period is over, one
// wait at a time (failover.Server.takeScout: a logon storm's waits
// re-ask together): one takes its trial, and the trial's success wakes
// the rest. Until 2026-12-01 a standby that came up
// through its health check (a Data Guard switchover: the standby back
// while the primary hangs), or whose circuit's open_for passed, was never
// asked of: the sessions that had waited on the hung primary from before
// waited to the end of connect_budget (an Oracle app got ORA-12170) while
// new sessions reached the standby at once.
func (b *answerBound) elsewhereSince(s *session, owed time.Time) bool {
	if b.stuck == 0 || owed.IsZero() {
		return false
	}
	now := time.Now()
	if !now.Before(owed) {
		return false // the budget's end: it ends the wait as before
	}
	reask := !now.Before(b.asked.Add(b.stuck))
	if reask {
		b.asked = now // a wake between re-asks does not put the next one off
	}
	s.mu.Lock()
	unfinished := s.openingUnfinishedLocked(true)
	s.mu.Unlock()
	return !unfinished && !s.overflowed() && b.elsewhereAgain(s, reask)
}

// stillFailing is the servers of list whose last dial failed
// (failover.Server.DialFailing): a server whose dial failed after a stuck
// wait left for it is nowhere for that wait only until a session it
// serves shows it back; then the wait may go (a hung primary's).
func stillFailing(list []*failover.Server) []*failover.Server {
	var out []*failover.Server
	for _, sv := range list {
		if sv.DialFailing() {
			out = append(out, sv)
		}
	}
	return out
}

// serversIn is list as servers of b: each at its address, if b has it.
func serversIn(b *failover.Backend, list []*failover.Server) []*failover.Server {
	var out []*failover.Server
	for _, sv := range list {
		if n := b.ServerAt(sv.Address); n != nil {
			out = append(out, n)
		}
	}
	return out
}

// reloadedElsewhere tells, for a wait that answer_timeout found with no
// other server to go to (stuck), whether a reload since has given the
// session's backend one that could take it: the wait ends then, as it
// would have at answer_timeout, and the session moves to the reloaded
// definition (open). Until 2026-12-01 a reload that added a server (the
// operator's fix for a hung database) left the sessions already waiting on
// the hung one to wait out connect_budget, while new sessions reached the
// added server. It asks as a stuck wait does (elsewhereIn's again, no
// half-open trial): a reload wakes every waiting session at once, and
// until the fix a reload after a refusal's memory had run out, or while a
// server's check had let one wait go first (takeScout), sent every wait of
// a logon storm on a slow primary to the standby that had refused the
// service (each app got its ORA-12514).
func (b *answerBound) reloadedElsewhere(s *session) bool {
	if b.stuck == 0 {
		return false
	}
	nb := b.reloaded(s)
	if nb == nil {
		return false
	}
	s.noteConnect()
	trial := false
	return b.elsewhereIn(nb, serviceKey(s.serviceName), &trial)
}

// takenOut tells whether a reload took the server out of the session's
// backend since the session took its definition: the running config is
// looked at only after a reload replaced backends.
func (b *answerBound) takenOut(s *session) bool {
	if b.srv == nil || s.p.backendsGen.Load() == b.gen {
		return false
	}
	nb := s.reloadedBackend()
	return nb != nil && nb.ServerAt(b.srv.Address) == nil && !s.overflowed()
}

// wakeAwaiting wakes a session that awaits a server's first answer when
// nb, the reloaded definition of its backend, replaced the one it has: the
// wait ends (firstAnswer) when nb does not have the server (takenOut) or
// gives a wait that had nowhere else to go another server
// (reloadedElsewhere), and the new servers are dialed; else it goes on.
func (s *session) wakeAwaiting(nb *failover.Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.awaiting != nil && nb != s.backend {
		s.awaiting.SetReadDeadline(time.Now())
	}
}

// spoke is when the app's first bytes came; ok is false while it has sent
// nothing. It carries the monotonic clock's reading, as s.start does: the
// budget's deadlines are made from it. On the wall clock alone (as until
// 2026-12-02), a clock adjusted during a wait could make a wait that the
// budget's deadline ended look ended before it, and blame its server
// (budgetCut).
func (s *session) spoke() (at time.Time, ok bool) {
	n := s.spokeAt.Load()
	if n == 0 {
		return time.Time{}, false
	}
	return s.start.Add(time.Duration(n)), true
}

// answerDeadline is when the backend owes the app its first answer: at the
// end of connect_budget (budgetEnd), or connect_budget after the app's first
// bytes when they came later, so that an app that speaks late gives its
// server the same time to answer as one that spoke at once. None while the
// app has sent nothing, or more than replay_bytes (an upload: the backend's
// silence is its own business then); nor beyond the budget's end for an
// opening no server could answer. Until 2026-11-30 an app that spoke
// after the budget waited with no limit on a silent backend, and one that
// spoke just before its end was reset before its server could answer.
//
// An app that closed without a byte (a load balancer's port check) is owed
// nothing, but waits no longer than the budget's end for a server that
// speaks first: then its session ends, as an ordinary end (firstAnswer).
// Until 2026-12-01 such a session waited on a hung listener (one that
// accepts and never closes) for as long as the listener lived, holding two
// fds and a max_sessions slot: one more for every check.
func (s *session) answerDeadline(budgetEnd time.Time) time.Time {
	spoke, ok := s.spoke()
	if !ok && !budgetEnd.IsZero() && s.appLeftSilent() {
		return budgetEnd
	}
	if !ok || budgetEnd.IsZero() || s.overflowed() {
		return time.Time{}
	}
	late := spoke.Add(s.backend.Config.ConnectBudget.Duration)
	if !late.After(budgetEnd) {
		return budgetEnd
	}
	s.mu.Lock()
	// After a RESEND the opening is the app's CONNECT sent again, still on
	// its way: the listener asked for it, and answers it. Capped at the
	// budget's end, the wait ended before that CONNECT came (at once when
	// the app had spoken after the budget), and the app was reset.
	unfinished := !s.resendOwed && s.openingUnfinishedLocked(true)
	s.mu.Unlock()
	if unfinished {
		// An opening no server can answer (a CONNECT cut short, trickled)
		// is owed nothing: starting late buys a slow client no more time.
		return budgetEnd
	}
	return late
}

// replayTo writes the app's opening bytes to conn, then makes conn the
// session's backend connection. The writes are made without s.mu and end at
// deadline (connect_budget): a backend that takes no bytes fails like one
// that does not answer, and holds up neither housekeeping, nor a shutdown,
// nor the app's direction. Bytes the app sends meanwhile join the replay and
// go out in the same loop, so conn becomes the session's once it has every
// byte so far, in order; until then closeLegs closes it as s.attaching.
func (s *session) replayTo(conn *net.TCPConn, srv *failover.Server, deadline time.Time) error {
	written, timed := 0, false
	s.mu.Lock()
	s.attaching = conn
	for {
		var err error
		switch {
		case s.clientErr != nil:
			err = s.clientErr
		case s.overflow:
			err = s.overflowErrLocked()
		case s.closing:
			err = net.ErrClosed
		}
		if err != nil {
			s.attaching = nil
			s.mu.Unlock()
			return err
		}
		pending := s.replay[written:]
		if len(pending) == 0 {
			break
		}
		s.mu.Unlock()
		if !timed && !deadline.IsZero() {
			conn.SetWriteDeadline(deadline)
			timed = true
		}
		n, err := conn.Write(pending)
		s.mu.Lock()
		written += n
		s.openingSent = s.openingSent || n > 0
		if err != nil {
			s.attaching = nil
			s.mu.Unlock()
			return err
		}
	}
	if s.clientEOF {
		s.halfCloseLocked(SideBackend, conn)
	}
	s.conn, s.server, s.attaching = conn, srv, nil
	s.kaLate = s.backend.KeepaliveLate
	s.cond.Broadcast()
	s.mu.Unlock()
	if timed {
		conn.SetWriteDeadline(time.Time{})
	}
	return nil
}

// overflowed reports whether more than replay_bytes went to the backend:
// the session can no longer be re-dialed, so a backend's silence is its
// own business (an upload, say), not a failure to answer.
func (s *session) overflowed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overflow
}

// overflowErr is the error of an opening that overflowed: past
// replay_bytes, or sent on without a copy for the replay budget.
func (s *session) overflowErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.overflowErrLocked()
}

func (s *session) overflowErrLocked() error {
	if s.overflowSpent {
		return errReplayBudget
	}
	return ErrReplayOverflow
}

func (s *session) detach() {
	s.mu.Lock()
	s.conn, s.server, s.attaching, s.kaLate = nil, nil, nil, false
	s.mu.Unlock()
}

// establish passes the backend's first bytes to the app and ends the
// opening phase: from here on nothing is replayed.
func (s *session) establish(first []byte, srv *failover.Server, plan *failover.Plan) error {
	lk := s.p.linkFor(s.l.name, s.backend.Config.Name, srv.Address)
	s.mu.Lock()
	s.established, s.link = true, lk
	s.linkNow.Store(lk)
	if s.upUnarmed {
		// The app-side pump waits for the app's next bytes with no
		// deadline (clientToBackend): the idle deadline wakes it if the
		// app stays silent, to take over as the established direction,
		// which parks when idle. An app that speaks or closes first
		// costs no wake.
		s.upUnarmed = false
		s.client.SetReadDeadline(time.Now().Add(time.Duration(s.lot.after.Load())))
	}
	if !s.closing {
		// Under s.mu, as closeLegs takes link: a session aborted before
		// this line is never added, one aborted after it is removed.
		lk.addLive(s)
	}
	s.cancel()
	s.ctx, s.cancel = nil, nil
	s.noteConnectLocked()
	s.replay = nil
	s.chargeReplayLocked()
	if s.oracleApp {
		// An Oracle Net app may now check whether urgent data reaches the
		// database (urgent.go): its next reads look for the mark.
		s.urgentWatch.Store(urgentWatchReads)
	}
	// Only a dial's PROXY header needs the app's destination address; a
	// dormant session would keep the closed conn's address through it.
	s.in.dst = nil
	s.series.bytesUp.Add(float64(s.openingUp)) // the opening's bytes, counted now that the backend is known
	s.openingUp = 0
	s.mu.Unlock()
	s.servedService(srv, first)
	plan.Succeeded(srv)
	srv.Acquire()
	s.series.wait.Observe(time.Since(s.start).Seconds())
	// The wait for this answer (dials, a slow listener, a restart within
	// connect_budget) is no pause the backend's path outlived: it began
	// before this connection (touch). For the app's leg it is a pause.
	s.answeredAt.Store(int64(time.Since(s.start)))
	n, err := s.client.Write(first)
	s.toClient.Add(int64(n))
	s.series.bytesDown.Add(float64(n))
	s.touch(SideBackend)
	if err != nil {
		// The app is gone; the backend connection stays attached and is
		// closed by the normal end below.
		s.mu.Lock()
		s.clientErr = err
		s.mu.Unlock()
	}
	return nil
}

// clientToBackend is the app-to-backend direction for the session's whole
// life: during the opening it keeps what the app sends for a replay, then
// it becomes a plain pump. Either way it parks on the poller between reads,
// holding no buffer.
func (s *session) clientToBackend() *pumpErr {
	p, err := newPump(s.client, nil, s.p.pool, func(n int) {
		s.toBackend.Add(int64(n))
		s.series.bytesUp.Add(float64(n))
		s.touch(SideClient)
	})
	if err != nil {
		return &pumpErr{err: err}
	}
	s.parkable(p, true)
	defer s.openingReadsOver()
	if err := s.sendEarly(); err != nil { // bytes read past a PROXY header go first
		return &pumpErr{err: err, atWrite: true}
	}
	for {
		s.mu.Lock()
		conn, est, overflow := s.conn, s.established, s.overflow
		if overflow && !est && conn != nil {
			s.overflowSrv = s.server // the server this pump now feeds, whatever the opening does next
		}
		// The opening's reads wait without the idle deadline: a pump
		// parks only once it runs, and a wake every parkAfter for
		// nothing is what thousands of sessions held by a hung listener
		// would cost. establish arms it (upUnarmed), and run does.
		taken := est || (overflow && conn != nil)
		s.upUnarmed = !taken && p.lot != nil
		s.mu.Unlock()
		if taken {
			// Established, or past replay_bytes (no replay is possible any
			// more): plain pumping, spliced when bulk.
			p.dst = conn
			return p.run()
		}
		if err := p.wait(); err != nil {
			if p.isIdleDeadline(err) { // idle since establish armed the deadline: the pump takes over (and parks)
				continue
			}
			return &pumpErr{err: err}
		}
		if p.hasOOB { // the app's urgent byte, right after the backend's first answer (urgent.go)
			s.mu.Lock()
			conn := s.conn
			s.mu.Unlock()
			p.hasOOB = false
			if conn != nil {
				if err := p.sendUrgentTo(conn); err != nil {
					return &pumpErr{err: err, atWrite: true}
				}
			}
			continue
		}
		buf, n, rerr := p.take()
		if n > 0 {
			werr := s.openingBytes((*buf)[:n])
			p.pool.put(buf)
			if werr != nil {
				return &pumpErr{err: werr, atWrite: true}
			}
			continue
		}
		p.pool.put(buf)
		s.mu.Lock()
		est = s.established
		conn = s.conn
		if rerr == nil { // EOF: carry the half-close to whichever backend gets the session
			s.clientEOF = true
			s.cond.Broadcast() // routing stops waiting for a CONNECT
			if s.awaiting != nil {
				// The wait for a first answer looks again (firstAnswer):
				// an Oracle client that closes has given up (Oracle Net
				// never half-closes, nor does TLS before the server's
				// first flight), and its wait ends now, not at
				// answer_timeout or the budget's end; one that closes
				// without a byte (a port check) waits no longer than the
				// budget (answerDeadline).
				s.awaiting.SetReadDeadline(time.Now())
			}
			s.mu.Unlock()
			return nil
		}
		if !est {
			s.clientErr, s.clientPhase = rerr, s.openingPhaseLocked()
		}
		s.mu.Unlock()
		if !est {
			s.cancelOpening()
			if conn != nil {
				dropBackend(conn, rerr) // unblocks the first-byte read
			}
		}
		return &pumpErr{err: rerr}
	}
}

// openingReadsOver is called as the app-side pump leaves its opening: from
// then on establish does not touch the app's read deadline, which a watch
// of the app's half-closed leg (watchHalfClosed) may rely on.
func (s *session) openingReadsOver() {
	s.mu.Lock()
	s.upUnarmed = false
	s.mu.Unlock()
}

// cancelOpening ends the opening's context, if the session still has one.
func (s *session) cancelOpening() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	s.cond.Broadcast() // routing and a full replay buffer stop waiting
}

// openingBytes keeps the app's bytes for a replay and sends them on to the
// current backend connection, if any. While no backend is connected and the
// replay buffer is full, it waits (the app is held back by TCP).
func (s *session) openingBytes(b []byte) error {
	s.mu.Lock()
	limit := *s.backend.Config.ReplayBytes
	for s.conn == nil && !s.established && !s.replayRoomLocked(len(b), limit) && s.ctx.Err() == nil {
		// No room for b before a backend connection takes the opening:
		// routing must stop waiting for a CONNECT that cannot complete
		// in the buffer (it is longer than replay_bytes).
		if !s.replayHeld {
			s.replayHeld = true
			s.cond.Broadcast()
		}
		s.cond.Wait()
	}
	s.replayHeld = false
	if !s.established && s.ctx.Err() != nil {
		s.mu.Unlock()
		return net.ErrClosed // the session was ended elsewhere
	}
	spent := false // the budget, not replay_bytes, left no room for b
	if !s.established {
		if !s.overflow && s.replayRoomLocked(len(b), limit) {
			s.replay = append(s.replay, b...)
			s.chargeReplayLocked()
			s.cond.Broadcast() // routing may wait for the CONNECT
		} else {
			if !s.overflow {
				s.overflowTNS = startsWithConnect(s.replay, b)
				spent = len(s.replay)+len(b) <= limit
				s.overflowSpent = spent
			}
			s.overflow, s.replay = true, nil
			s.chargeReplayLocked()
		}
		s.openingUp += int64(len(b))
	} else {
		s.series.bytesUp.Add(float64(len(b)))
	}
	s.touch(SideClient)
	if s.toBackend.Add(int64(len(b))) == int64(len(b)) && !s.established {
		s.spokeAt.Store(max(int64(time.Since(s.start)), 1))
		if s.awaiting != nil {
			// The app's first bytes: the backend owes an answer from now,
			// and the wait for it may be parked with no deadline.
			s.awaiting.SetReadDeadline(time.Now())
		}
	}
	conn, est := s.conn, s.established
	s.openingSent = s.openingSent || conn != nil
	s.mu.Unlock()
	if spent {
		s.replayBudgetSpent()
	}
	// Written without s.mu, as replayTo writes: a backend that takes no
	// bytes must hold up only this direction. Bytes reach conn in order:
	// replayTo has written everything up to b before it set s.conn, and only
	// this goroutine writes to it after.
	if conn != nil {
		if _, err := conn.Write(b); err != nil && est {
			return err
		}
	}
	return nil
}

// pumpBackendToClient is the backend-to-app direction once established.
func (s *session) pumpBackendToClient() *pumpErr {
	s.mu.Lock()
	conn, clientErr := s.conn, s.clientErr
	s.mu.Unlock()
	if clientErr != nil {
		return &pumpErr{err: clientErr, atWrite: true}
	}
	p, err := newPump(conn, s.client, s.p.pool, func(n int) {
		s.toClient.Add(int64(n))
		s.series.bytesDown.Add(float64(n))
		s.touch(SideBackend)
	})
	if err != nil {
		return &pumpErr{err: err}
	}
	s.parkable(p, false)
	return p.run()
}

// directionDone handles the end of one direction whose source is src's leg
// and destination dst's: a clean EOF is passed on as a half-close; an error
// ends the session, resetting the app when the backend failed.
func (s *session) directionDone(pe *pumpErr, src, dst Side) {
	if pe == nil {
		s.mu.Lock()
		if s.closing {
			// abort is closing the legs (RST where it must): a FIN sent
			// now would reach that leg's peer first, as a clean close.
			s.mu.Unlock()
			return
		}
		client, conn := s.client, s.conn // a direction that ended keeps the session awake: live conns
		if dst == SideClient {
			s.halfCloseLocked(SideClient, client)
		} else if conn != nil {
			s.halfCloseLocked(SideBackend, conn)
		}
		if !s.closing {
			watch := client // src's socket, which nothing reads any more
			if src == SideBackend {
				watch = conn
			}
			s.halfWatch = time.AfterFunc(halfCloseWatchAfter, func() { s.watchHalfClosed(src, watch) })
		}
		s.mu.Unlock()
		return
	}
	if errors.Is(pe.err, net.ErrClosed) {
		return // the other direction ended the session
	}
	side := src
	if pe.atWrite {
		side = dst
	}
	s.mu.Lock()
	est := s.established
	s.mu.Unlock()
	if side == SideClient && !est && s.selfDialReset(pe.err) {
		return
	}
	err, srv, phase := pe.err, s.currentServer(), s.phaseNow(side, pe.err)
	s.mu.Lock()
	uploading := !s.established && s.overflow && side == SideBackend
	if uploading {
		// Past replay_bytes, before the backend's first byte: the opening
		// would not re-dial either (tnsguard's decision, cause proxy),
		// and may already have let go of the server.
		err, phase = fmt.Errorf("%w: %w", s.overflowErrLocked(), err), PhaseOpening
		if srv == nil {
			srv = s.overflowSrv
		}
	}
	drain := (s.established || uploading) && pe.atWrite && Cause(pe.err) == "rst" && s.legs.Load() == 2
	s.mu.Unlock()
	if drain {
		// dst's peer reset the session while this direction wrote to it.
		// What that peer sent before its reset (its last message: a
		// database's error saying why it ended the session, an app's
		// logoff) is still in its socket, which keeps it readable, or on
		// its way: the other direction passes it on and then finds the
		// reset itself (endOfStream), which ends the session, so the
		// other side reads it before its reset, as it would without
		// tnsguard. resetDrainFor bounds the wait, for a side that does
		// not read.
		//
		// In the opening (an upload past replay_bytes, before the
		// database's first byte), that other direction is the opening
		// itself (open, still running while legs is 2), waiting in
		// firstAnswer: the database's error that is its first answer
		// goes to the app (establish), and the reset behind it ends the
		// session from the established pump; a reset with no answer
		// before it ends the session from the opening, at once (the
		// read finds the end of stream, which endOfStream tells from a
		// FIN). Until 2026-11-30 this direction ended the session at
		// once, and the answer was dropped for 18-19 of 40 uploads
		// (TestDatabaseFirstAnswerBeforeItsResetReachesAnUploadingApp).
		time.AfterFunc(resetDrainFor, func() { s.abort(side, phase, err, "reset", srv) })
		return
	}
	s.abort(side, phase, err, "reset", srv)
}

// resetDrainFor is how long a session whose leg was reset while a
// direction wrote to it waits for the other direction to pass on what that
// leg's peer sent before its reset (directionDone).
const resetDrainFor = 100 * time.Millisecond

// halfCloseLocked sends side's peer a FIN on c, and notes it as tnsguard's
// own: after the peer's FIN the socket is in CLOSE, which endOfStream would
// otherwise take for a reset. Every half-close tnsguard makes goes through
// here. Under s.mu.
func (s *session) halfCloseLocked(side Side, c *net.TCPConn) {
	s.ourFIN[legIndex(side)] = true
	c.CloseWrite()
}

func legIndex(side Side) int {
	if side == SideClient {
		return 0
	}
	return 1
}

// endOfStream tells a read's end of stream from a reset whose error was
// taken elsewhere: a write to the socket (the other direction's, or the
// lot's) got ECONNRESET first, and the read that follows finds a plain 0.
// Passed on as a FIN, it would reach the other leg as a clean close; the
// socket's state tells: after a FIN it is CLOSE_WAIT, after a reset CLOSE.
// CLOSE is also where a socket ends up after a FIN each way, so a leg that
// tnsguard half-closed itself is taken at its word. nil for a real end of
// stream.
func (s *session) endOfStream(src Side) *pumpErr {
	s.mu.Lock()
	c := s.client
	if src == SideBackend {
		c = s.conn
	}
	ours := s.ourFIN[legIndex(src)]
	s.mu.Unlock()
	if ours || c == nil {
		return nil
	}
	if info, err := keepalive.ReadInfo(c); err != nil || info.State != unix.BPF_TCP_CLOSE {
		return nil
	}
	// The other direction may have half-closed this leg since ourFIN was
	// read, and the peer closed: CLOSE then follows a FIN each way.
	s.mu.Lock()
	ours = s.ourFIN[legIndex(src)]
	s.mu.Unlock()
	if ours {
		return nil
	}
	// The error the write took: a reset, but also a user timeout or an
	// unreachable host, which a reset must not stand for (the other
	// direction reports it too, and the first report is the cause). The
	// writer notes it right after its system call; a writer that lost its
	// thread in between is given a few milliseconds.
	errno := s.writeErrno[legIndex(src)].Load()
	for i := 0; errno == 0 && i < 20; i++ {
		time.Sleep(500 * time.Microsecond)
		errno = s.writeErrno[legIndex(src)].Load()
	}
	if errno == 0 {
		errno = int32(syscall.ECONNRESET)
	}
	return &pumpErr{err: os.NewSyscallError("read", syscall.Errno(errno))}
}

// noteWriteErr records the first error a write or splice to leg's socket
// took, for endOfStream: the socket's error is given to one system call
// only, and a read after it finds a plain end of stream.
func (s *session) noteWriteErr(leg int, e syscall.Errno) {
	s.writeErrno[leg].CompareAndSwap(0, int32(e))
}

// halfCloseWatchAfter is how long after a half-close watchHalfClosed
// starts: most sessions end with both halves closing at once (an app's
// close, then the server's), and would pay a goroutine for nothing. A reset
// that came meanwhile is found at the start.
const halfCloseWatchAfter = 50 * time.Millisecond

// watchHalfClosed waits, once src's peer half-closed and the other
// direction goes on, for an error on src's socket: the peer's reset, or its
// keepalive or user timeout giving up. Nothing reads that socket any more,
// so the error would otherwise wait for the other direction's next write,
// or for the session's end, and the other leg would never see a reset. It
// ends with the session (the socket closed).
func (s *session) watchHalfClosed(src Side, c *net.TCPConn) {
	if c == nil {
		return
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{}) // the pump's idle deadline: this waits as long as the session lasts
	var failed error
	err = rc.Read(func(fd uintptr) bool {
		failed = soError(fd)
		return failed != nil // no error: wait for the next event (our FIN wakes it too)
	})
	if err != nil || failed == nil {
		return // the session ended
	}
	s.abort(src, s.phaseNow(src, failed), failed, "reset", s.currentServer())
}

// serverName is srv's address, or "none" for no server: the link, label
// and log field of sessions no server took.
func serverName(srv *failover.Server) string {
	if srv == nil {
		return "none"
	}
	return srv.Address
}

// serverShownLocked is the server field of a session's log line under
// s.mu (serverName).
func (s *session) serverShownLocked() string { return serverName(s.server) }

// serverShown is serverShownLocked for a caller that does not hold s.mu.
func (s *session) serverShown() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.serverShownLocked()
}

func (s *session) currentServer() *failover.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.server
}

// phaseNow says whether the session was idle or active when a leg failed:
// idle when nothing moved for at least that leg's keepalive idle.
//
// A leg that failed with bytes of ours unanswered (TCP_INFO: the oldest
// segment was being retransmitted) was cut while it owed an answer: a query
// into a cable cut, a result to an app that vanished. Its silence since
// those bytes is the user timeout running, not idleness, so that end is
// active, unless those bytes were the first after a pause in which the peer
// answered nothing, not even a keepalive probe, and which was longer than
// any the path outlived: then the pause is where the path was lost (a
// middlebox forgot the flow and dropped the bytes that resumed it), and
// the end is idle. The same holds for a reset that answered such bytes (a
// load balancer that resets the flows it forgot), whatever keepalive idle.
//
// A reset (err) of a leg whose peer had closed (its FIN read) is that
// peer's close, neither pause nor keepalive idle: its kernel resets what
// comes after (an app that gave up on a late answer and closed, then got
// it). That end is active, unless the peer had been silent for keepalive
// idle or more within orphanLife of its FIN: a peer that half-closed and
// waits for a long result acknowledges keepalive probes, and so does the
// kernel of one that closed, for as long as it keeps the closed socket;
// such a reset came from a middlebox that forgot the half-closed flow
// (firewalls keep those for less than established ones), and the end is
// judged as any other. Past orphanLife the peer's own host may have
// forgotten the socket it closed and reset a probe itself: active.
func (s *session) phaseNow(side Side, err error) Phase {
	s.mu.Lock()
	est, opening, lk := s.established, s.openingPhaseLocked(), s.link
	fin := s.peerFIN[legIndex(side)].Load()
	peerClosed := est && fin != 0 && Cause(err) == "rst"
	idle := s.ka[legIndex(side)].Idle
	var info keepalive.Info
	infoErr := net.ErrClosed
	if est { // read only when it decides the phase
		if c := s.legSockLocked(side); c != nil {
			info, infoErr = keepalive.ReadInfo(c)
		}
	}
	s.mu.Unlock()
	if !est {
		return opening
	}
	if peerClosed && (idle <= 0 || infoErr != nil || info.LastAckRecv < idle ||
		time.Since(s.start)-time.Duration(fin) >= orphanLife) {
		return PhaseActive
	}
	if infoErr == nil {
		// Bytes that resumed a pause got no answer: retransmitted until
		// the user timeout (drop), or answered by a reset at once (a
		// middlebox that resets the flows it forgot).
		if pause, lost := s.lostInPause(info.LastAckRecv); lost && pause > s.outlived(side, lk) {
			s.lostPause.Store(int64(pause)) // the idle this end reports
			return PhaseIdle
		}
		if info.Retrying > 0 {
			return PhaseActive
		}
	}
	if s.waitedForRoom(side) || s.heldBack(side) {
		return PhaseActive
	}
	if idle <= 0 {
		// Keepalive off: only a pause that lost the path (above) says
		// idle; a leg without keepalive (turned off by a reload, say)
		// is lost to a middlebox the same way.
		return PhaseActive
	}
	if d := s.idleBeforeEnd(); d >= idle-probeSlack(idle) {
		// The peer answered a keepalive probe in this silence (its last
		// ACK came well after the last bytes: an answer to our bytes comes
		// within an RTT, a probe one keepalive idle into the silence at
		// the earliest): the path knew the flow after that much silence,
		// and keepalive refreshed it. What ended it then was no idle
		// timeout shorter than keepalive (a firewall restart or failover
		// that lost its state table, a peer that went away): the advice
		// must not blame keepalive for it (noteIdleDeath).
		// Else the path was lost by the first probe, keepalive idle after
		// the peer was last heard (the idle at death of a dropped one
		// also holds the user timeout that ran after it).
		if infoErr == nil {
			if held := d - info.LastAckRecv; held >= idle/2 {
				s.kaHeld.Store(int64(held))
			} else {
				s.kaLost.Store(int64(min(d, max(held, 0)+idle)))
			}
		}
		return PhaseIdle
	}
	return PhaseActive
}

// probeSlack is how much of keepalive idle the silence tnsguard measured
// may lack when a probe's answer ended the session. The silence runs from
// when tnsguard moved the last bytes, which is after its kernel saw them by
// a read's scheduling delay, and the kernel's probe goes keepalive idle
// after that: on a loaded runner a session whose first probe met a
// firewall that had forgotten it was measured 1.999 s silent against an
// idle of 2 s, and counted active (TestLabFirewallTimeoutCutBelowKeepaliveGivesAdvice).
func probeSlack(idle time.Duration) time.Duration {
	return min(50*time.Millisecond, idle/20)
}

// orphanLife is how long a peer's host keeps a socket its owner closed
// (Linux: net.ipv4.tcp_fin_timeout, 60 s by default), answering keepalive
// probes for it; after that it resets them.
const orphanLife = 60 * time.Second

// waitedForRoom tells whether the direction into side's leg had waited
// stallCheck or more for room in it when the leg failed (or waits still):
// its peer had closed its window, alive but not reading (a database that
// stopped reading a bulk load, an app that stopped reading a result set),
// until the user timeout gave up on it, which it does even while the peer
// answers the zero-window probes. Nothing was idle: the leg owed delivery.
func (s *session) waitedForRoom(side Side) bool {
	s.mu.Lock()
	p := s.pumps[0] // app -> backend
	if side == SideClient {
		p = s.pumps[1]
	}
	s.mu.Unlock()
	if p == nil {
		return false
	}
	if b := p.blockedAt.Load(); b != 0 && time.Now().UnixNano()-b >= int64(stallCheck) {
		return true
	}
	return p.failedWaiting.Load() >= int64(stallCheck)
}

// heldBack tells whether the direction out of side's leg had waited
// stallCheck or more for room in the other leg when side's leg failed: a
// result set waiting for an app that reads slowly (or not for a while),
// an upload waiting for a database that does. Nothing moved because the
// other leg's peer did not take the bytes; side's peer had sent them, and
// while it has more queued it keeps probing the closed window, so no
// middlebox on its leg saw an idle flow. The session owed delivery: a
// reset of side's leg then (a database that killed the session) is no
// death that keepalive should prevent.
//
// The bytes need not hold the pump up: a result (or upload) that fits in
// the kernel's buffers toward the other leg (its send buffer grows to
// tcp_wmem's 4 MiB, plus the peer's receive buffer) was all passed on,
// and waits there for the other leg's peer to take it. The session owed
// that delivery all the same, so bytes still queued in the other leg's
// socket count too (unsentToOther).
func (s *session) heldBack(side Side) bool {
	s.mu.Lock()
	p := s.pumps[1] // backend -> app: out of the backend's leg
	other := SideClient
	if side == SideClient {
		p, other = s.pumps[0], SideBackend
	}
	// Read under s.mu: a dormant session's bare fd is used under its
	// mutex only, since a revive or close (which closes it) lets the next
	// accept or dup take its number.
	unsent := 0
	if c := s.legSockLocked(other); c != nil {
		unsent = unsentToOther(c)
	}
	s.mu.Unlock()
	if p != nil {
		if b := p.blockedAt.Load(); b != 0 && time.Now().UnixNano()-b >= int64(stallCheck) {
			return true
		}
	}
	return unsent > 0
}

// unsentToOther is the number of bytes in c's send queue that its peer
// has not acknowledged yet (SIOCOUTQ), 0 when it cannot be read.
func unsentToOther(c syscall.Conn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	})
	return n
}

// outlived is the longest pause after which side's peer was heard: on
// this session, and for the database's leg on any session of its link
// (one path). The apps of a link sit behind different paths, so the app's
// leg has only its own evidence.
func (s *session) outlived(side Side, lk *link) time.Duration {
	d := s.survived[legIndex(side)].longest(time.Since(s.start), s.p.evidenceWindow)
	if side == SideBackend {
		d = max(d, lk.backendOutlived())
	}
	return d
}

// lostInPause tells whether the peer, last heard ackAgo ago, had answered
// nothing since before the last pause (of over a second) ended, and
// returns that pause. Keepalive probes are acknowledged one idle (at least
// 1 s) into a pause at the earliest, so a probe answered in the pause
// leaves the peer's silence at least that much shorter than the pause; the
// slack allows for a delayed ACK of the bytes before the pause. phaseNow
// blames the pause only if it is longer than any the leg's path outlived
// (outlived): a path that answered after longer pauses does not forget
// flows this soon, and the bytes went into a cut instead.
func (s *session) lostInPause(ackAgo time.Duration) (time.Duration, bool) {
	resumed := time.Duration(s.resumedAt.Load())
	pause := time.Duration(s.pauseBefore.Load())
	if resumed == 0 || pause <= 0 {
		return 0, false // no pause of over a second
	}
	sinceResume := time.Since(s.start) - resumed
	silence := ackAgo - sinceResume // the peer's silence up to the resume
	return pause, silence >= pause-min(500*time.Millisecond, pause/2)
}

// openingPhaseLocked is the phase of a session not established yet:
// opening while a backend connection is up (its first byte awaited),
// connect before. Under s.mu.
func (s *session) openingPhaseLocked() Phase {
	if s.conn == nil && s.attaching == nil {
		return PhaseConnect
	}
	return PhaseOpening
}

// abort ends the session on a failure, once: the first failure is the
// cause. A backend failure resets the app's connection (RST, not FIN), so
// the app's pool sees a broken connection at once; an app failure closes
// the backend connection, so the database ends its session.
func (s *session) abort(side Side, phase Phase, err error, outcome string, srv *failover.Server) {
	s.endOnce.Do(func() {
		s.end = &sessionEnd{side: side, phase: phase, err: err, outcome: outcome}
		s.idleAtEnd = s.idleBeforeEnd()
		if p := s.lostPause.Load(); p > 0 && phase == PhaseIdle {
			// Bytes that resumed a pause were lost: the session was idle
			// for the pause, not for the user timeout that followed (the
			// advice derives path_idle_timeout from this).
			s.idleAtEnd = time.Duration(p)
		}
		s.mu.Lock()
		if s.cancel != nil {
			s.cancel()
		}
		if srv == nil {
			srv = s.server
		}
		s.server, s.end.server = srv, srv // the opening may detach it next; the books keep it
		s.cond.Broadcast()
		refused := s.refusedApp != 0
		s.mu.Unlock()
		// A REFUSE handed to the app must reach it: a reset would throw
		// away what is still in the send buffer. The database's leg is
		// reset when the app's leg failed (appBroke), or when tnsguard,
		// out of fds, dropped bytes it could not pass on: a FIN
		// would tell the database that the app finished sending, and a
		// protocol that ends an upload at the end of stream would take
		// a cut-off upload for a whole one.
		s.closeLegs((side == SideBackend || Cause(err) != "eof") && !refused,
			(side == SideClient && appBroke(err)) || failover.OutOfResources(err))
		s.unpark() // parked directions wake to see their closed sockets
	})
}

// appBroke tells whether the app's leg failed: a reset, a dead peer
// (keepalive, user timeout), an unreachable host or another socket error.
// The database's leg is then reset too, not closed with a FIN (see abort).
// A clean close, tnsguard's own ends (idle_timeout, drain) and the sentinel
// ends of the opening are not the app's failure.
func appBroke(err error) bool {
	switch Cause(err) {
	case "rst", "timeout", "unreachable":
		return true
	case "error":
		var errno syscall.Errno
		return errors.As(err, &errno)
	}
	return false
}

// dropBackend closes a backend connection the opening lets go of before the
// session's end can (closeLegs), resetting it when the app's leg failed
// with appErr, as closeLegs would.
func dropBackend(conn *net.TCPConn, appErr error) {
	if appBroke(appErr) {
		conn.SetLinger(0)
	}
	conn.Close()
}

// keepaliveAfter is the age from which housekeeping sets the backend leg's
// keepalive on a session whose dial left it (failover.Backend.KeepaliveLate):
// a session that ends sooner (a health check of the app's load balancer, a
// pool's connection test, a benchmark's connect and close) never pays the
// five system calls, and one that lasts has them within 2s of its start,
// long before its first probe is due (keepalive.Settings.Late).
const keepaliveAfter = time.Second

// armKeepalive sets the backend leg's keepalive and user timeout on a
// session that has lasted keepaliveAfter, in either state (live or
// dormant), if its dial left them. It says whether housekeeping must come
// again: the keepalive is still to be set, or the session still opens (a
// re-dial attaches a connection whose keepalive is late again).
func (s *session) armKeepalive(now time.Time) (again bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if !s.kaLate || now.Sub(s.start) < keepaliveAfter {
		return s.kaLate || !s.established
	}
	c := s.backendSockLocked()
	if c == nil {
		return true
	}
	s.kaLate = false
	// A conn the opening has just closed (dropBackend, before detach: a
	// re-dial after a REFUSE or a reset) needs no keepalive; the next one
	// attached gets kaLate again.
	if err := s.ka[legIndex(SideBackend)].Apply(c); err != nil && !errors.Is(err, net.ErrClosed) {
		s.logger().Warn("cannot set keepalive on the backend connection", "server", s.serverShownLocked(), "error", err)
	}
	return !s.established
}

// retune sets ka, the keepalive a reload gave side's listener or backend,
// on that leg's socket, in either state (live or dormant). Pooled sessions
// live for days: a keepalive shortened for a firewall that forgets sooner
// than thought must reach them, not only the sessions opened after the
// reload. The database's leg is retuned once established: before that a
// re-dial may still make its socket with the settings of the dial's
// backend, which the session keeps. Setting TCP_KEEPIDLE re-arms the timer
// from the last segment received (keepalive.Settings.Late).
func (s *session) retune(side Side, ka keepalive.Settings) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retuneLocked(side, ka)
}

// retuneLocked is retune under s.mu.
func (s *session) retuneLocked(side Side, ka keepalive.Settings) {
	i := legIndex(side)
	if s.closing || s.ka[i] == ka || side == SideBackend && !s.established {
		return
	}
	s.ka[i] = ka
	if side == SideBackend && s.kaLate {
		return // armKeepalive sets the new ones
	}
	if c := s.legSockLocked(side); c != nil {
		if err := ka.Apply(c); err != nil {
			s.logger().Warn("cannot set the reloaded keepalive on a session", "server", s.serverShownLocked(), "side", string(side), "error", err)
		}
	}
}

// closeLegs closes both sockets, resetting the app's with rstApp and the
// backend's with rstDB; the backend socket's final kernel counters go to
// its link first.
func (s *session) closeLegs(rstApp, rstDB bool) {
	s.mu.Lock()
	s.closing = true
	if s.halfWatch != nil {
		s.halfWatch.Stop()
	}
	if s.link != nil { // only an established session is among its link's live ones
		info, err := s.backendInfoLocked() // in either state
		s.link.removeLive(s, info, err)
	}
	if s.dormant {
		s.closeRaw(rstApp, rstDB)
		s.mu.Unlock()
		return
	}
	client, conn := s.client, s.conn
	if conn == nil {
		conn = s.attaching // replayTo returns once closing is set: its write fails
	}
	s.mu.Unlock() // live conns do not change once closing is set
	if rstApp {
		client.SetLinger(0)
	}
	client.Close()
	if conn != nil {
		if rstDB {
			conn.SetLinger(0)
		}
		conn.Close()
	}
}

// finish closes what is left and records the session's end.
func (s *session) finish() {
	s.endOnce.Do(func() {
		s.end = &sessionEnd{outcome: "ok"}
		s.closeLegs(false, false)
	})
	s.mu.Lock()
	srv, est := s.server, s.established
	if srv == nil {
		srv = s.end.server
	}
	s.mu.Unlock()
	s.p.record(s, srv, est)
	s.releaseReplay() // after record: a session no server answered is labelled by the CONNECT it kept
}

// stallCheck is how long a direction may wait for room in its destination
// before housekeeping looks at its source.
const stallCheck = time.Second

// checkStalled ends a session whose direction has waited at least
// stallCheck for room in its destination (a backend that stopped reading,
// an app that stopped reading a result set) while its source failed: that
// direction reads its source again only once the destination takes bytes,
// which a hung peer may never do, and the reset would reach the other leg
// only at that leg's user timeout. Called about once a second; it costs
// the session's lock, and two system calls per stalled direction. It says
// whether a direction waits for room: housekeeping must come again.
func (s *session) checkStalled(now time.Time) (waiting bool) {
	s.mu.Lock()
	if s.dormant || s.closing {
		s.mu.Unlock()
		return false
	}
	var failed error
	var side Side
	for i, p := range s.pumps {
		b := int64(0)
		if p != nil {
			b = p.blockedAt.Load()
		}
		waiting = waiting || b != 0
		if b == 0 || now.UnixNano()-b < int64(stallCheck) {
			continue
		}
		src, sd := s.client, SideClient
		if i == 1 {
			src, sd = s.conn, SideBackend
		}
		if src == nil {
			continue
		}
		rc, err := src.SyscallConn()
		if err != nil {
			continue
		}
		if failed = sockError(rc); failed != nil {
			side = sd
			break
		}
	}
	s.mu.Unlock()
	if failed != nil {
		s.abort(side, s.phaseNow(side, failed), failed, "reset", nil)
		return false
	}
	return waiting
}
