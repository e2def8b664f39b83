package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// warmupOf is the untimed lead-in of a timed measurement.
func warmupOf(d time.Duration) time.Duration {
	return max(d/10, 50*time.Millisecond)
}

// bulk runs iperf3 -c through in.Bulk (-R when reverse: the server sends)
// and returns the throughput in Gbit/s and the proxy processes' CPU seconds
// per GB (1e9 bytes) received by iperf3.
func bulk(ctx context.Context, iperf3 string, in *instance, d time.Duration, reverse bool) (gbps, cpuPerGB float64, err error) {
	host, port, err := net.SplitHostPort(in.Bulk)
	if err != nil {
		return 0, 0, err
	}
	secs := max(1, int(math.Round(d.Seconds())))
	var before usage
	if in.proc != nil {
		if before, err = in.usage(); err != nil {
			return 0, 0, err
		}
	}
	var rep iperfReport
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
		args := []string{"-c", host, "-p", port, "-t", strconv.Itoa(secs), "-J"}
		if reverse {
			args = append(args, "-R")
		}
		out, runErr := exec.CommandContext(rctx, iperf3, args...).Output()
		cancel()
		rep = iperfReport{}
		if jerr := json.Unmarshal(out, &rep); jerr != nil {
			return 0, 0, fmt.Errorf("iperf3: %v (%v): %.300s", runErr, jerr, out)
		}
		// The server takes a moment between tests; "busy" is worth a retry.
		if strings.Contains(rep.Error, "busy") && attempt < 10 {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		if rep.Error != "" {
			return 0, 0, fmt.Errorf("iperf3: %s", rep.Error)
		}
		if runErr != nil {
			return 0, 0, fmt.Errorf("iperf3: %w", runErr)
		}
		break
	}
	recv := rep.End.SumReceived
	if recv.Bytes <= 0 || recv.BitsPerSecond <= 0 {
		return 0, 0, errors.New("iperf3 reported no bytes received")
	}
	gbps = recv.BitsPerSecond / 1e9
	cpuPerGB = math.NaN()
	if in.proc != nil {
		after, err := in.usage()
		if err != nil {
			return 0, 0, err
		}
		cpuPerGB = (after.CPUSeconds - before.CPUSeconds) / (recv.Bytes / 1e9)
	}
	return gbps, cpuPerGB, nil
}

type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// rrResult is one request/response measurement.
type rrResult struct {
	RPS      float64
	P50, P99 time.Duration
}

// requestResponse keeps conns connections busy with back-to-back round trips
// of msgSize bytes (write, then read the echo in full) and reports requests per
// second over all connections and the latency percentiles of single round trips.
func requestResponse(ctx context.Context, addr string, conns, msgSize int, d time.Duration) (rrResult, error) {
	raddr, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return rrResult{}, err
	}
	cs := make([]*net.TCPConn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.DialTCP("tcp", nil, raddr)
		if err != nil {
			return rrResult{}, err
		}
		cs = append(cs, c)
	}
	start := time.Now()
	measureFrom := start.Add(warmupOf(d))
	end := measureFrom.Add(d)
	samples := make([][]time.Duration, conns)
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(end.Add(10 * time.Second))
			msg := make([]byte, msgSize)
			buf := make([]byte, msgSize)
			own := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errs <- err
					return
				}
				if t0.After(measureFrom) {
					own = append(own, time.Since(t0))
				}
			}
			samples[i] = own
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return rrResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return rrResult{}, err
	}
	all := slices.Concat(samples...)
	if len(all) == 0 {
		return rrResult{}, errors.New("no round trip completed")
	}
	slices.Sort(all)
	return rrResult{
		RPS: float64(len(all)) / d.Seconds(),
		P50: all[len(all)*50/100],
		P99: all[min(len(all)-1, len(all)*99/100)],
	}, nil
}

// connectRate runs workers clients that each loop: connect, one round trip of
// msgSize bytes, close. It returns completed sessions per second; failures
// are an error when they are more than 1% of attempts.
func connectRate(ctx context.Context, addr string, workers, msgSize int, d time.Duration) (float64, error) {
	raddr, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	measureFrom := start.Add(warmupOf(d))
	end := measureFrom.Add(d)
	var (
		mu       sync.Mutex
		done     int
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, msgSize)
			buf := make([]byte, msgSize)
			var ok, bad int
			var errFirst error
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				err := oneSession(raddr, msg, buf, end.Add(5*time.Second))
				if t0.Before(measureFrom) {
					continue
				}
				if err != nil {
					bad++
					if errFirst == nil {
						errFirst = err
					}
					time.Sleep(time.Millisecond) // do not spin on a refusing proxy
					continue
				}
				ok++
			}
			mu.Lock()
			done += ok
			failed += bad
			if firstErr == nil {
				firstErr = errFirst
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if done == 0 && failed == 0 {
		return 0, fmt.Errorf("no session completed within %v (after %v of warm-up)", d, warmupOf(d))
	}
	if done == 0 || failed*100 > done+failed {
		return 0, fmt.Errorf("%d of %d sessions failed, first: %v", failed, done+failed, firstErr)
	}
	return float64(done) / d.Seconds(), nil
}

func oneSession(raddr *net.TCPAddr, msg, buf []byte, deadline time.Time) error {
	c, err := net.DialTCP("tcp", nil, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// idleResult is the cost of holding idle sessions, per session.
type idleResult struct {
	KB  float64 // VmRSS delta
	FDs float64 // open fds delta
	CPU float64 // CPU the proxy used while they sat, ms a second per 1,000 sessions
}

// idleSessions opens n sessions through in.Small, each with one round trip
// so both legs are established, lets them sit, and divides the growth of
// the proxy processes' RSS and fd count by n; then measures the CPU the
// proxy uses while they sit on (for 10 settles), per 1,000 sessions.
func idleSessions(ctx context.Context, in *instance, n, msgSize int, settle time.Duration) (idleResult, error) {
	raddr, err := net.ResolveTCPAddr("tcp", in.Small)
	if err != nil {
		return idleResult{}, err
	}
	msg := make([]byte, msgSize)
	// A few sessions first, so one-time setup is in the baseline.
	for range 20 {
		if err := oneSession(raddr, msg, make([]byte, msgSize), time.Now().Add(5*time.Second)); err != nil {
			return idleResult{}, fmt.Errorf("warm-up session: %w", err)
		}
	}
	time.Sleep(settle)
	before, err := in.usage()
	if err != nil {
		return idleResult{}, err
	}

	conns := make([]*net.TCPConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	const openers = 16
	errs := make(chan error, openers)
	var wg sync.WaitGroup
	for w := range openers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, msgSize)
			for i := w; i < n && ctx.Err() == nil; i += openers {
				c, err := net.DialTCP("tcp", nil, raddr)
				if err != nil {
					errs <- fmt.Errorf("session %d: %w", i, err)
					return
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(msg); err != nil {
					errs <- fmt.Errorf("session %d: %w", i, err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errs <- fmt.Errorf("session %d: %w", i, err)
					return
				}
				c.SetDeadline(time.Time{})
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return idleResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return idleResult{}, err
	}
	time.Sleep(settle)
	after, err := in.usage()
	if err != nil {
		return idleResult{}, err
	}
	hold := 10 * settle // /proc counts CPU in 10 ms ticks: long enough for a few
	start := time.Now()
	time.Sleep(hold)
	held, err := in.usage()
	if err != nil {
		return idleResult{}, err
	}
	return idleResult{
		KB:  float64(after.RSSKB-before.RSSKB) / float64(n),
		FDs: float64(after.FDs-before.FDs) / float64(n),
		CPU: 1000 * (held.CPUSeconds - after.CPUSeconds) / time.Since(start).Seconds() / (float64(n) / 1000),
	}, nil
}
