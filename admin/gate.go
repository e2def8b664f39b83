package admin

import (
	"bytes"
	"net/http"
)

// maxHeavy bounds the answers that read every session, link or series at
// once (/metrics, /api/links, /api/resets) being made at a time. Each
// costs tens of ms of CPU and a few MB of heap with thousands of sessions
// (about 50 ms for /metrics with 8,300 sessions on 640 links). 30 clients
// asking at once in a loop took the heap from 98 to 250 MB (the shipped
// Kubernetes memory limit is 256 MiB) and the data path's round trips
// from 0.2 ms to 100 ms (median) and 270 ms (p99), with both CPUs on
// answers. One at a time, the same load left 0.5 ms and 20 ms, 112 MB,
// and a scrape among them took 0.8 s at most. Beyond the bound, requests
// wait their turn: Prometheus and the status page see a slower answer,
// not an error.
const maxHeavy = 1

// heavyGate lets maxHeavy handlers run at once. An answer is made into a
// buffer under the gate and written to the client after it, so a client
// that reads slowly holds no one else up.
type heavyGate chan struct{}

func newHeavyGate() heavyGate { return make(heavyGate, maxHeavy) }

func (g heavyGate) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case g <- struct{}{}:
		case <-r.Context().Done(): // the client left while it waited
			return
		}
		b := &bufferedAnswer{header: http.Header{}}
		func() {
			defer func() { <-g }()
			h.ServeHTTP(b, r)
		}()
		for k, v := range b.header {
			w.Header()[k] = v
		}
		if b.code != 0 {
			w.WriteHeader(b.code)
		}
		w.Write(b.body.Bytes())
	})
}

// bufferedAnswer is an http.ResponseWriter that keeps the answer.
type bufferedAnswer struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedAnswer) Header() http.Header { return b.header }

func (b *bufferedAnswer) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}

func (b *bufferedAnswer) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.body.Write(p)
}
