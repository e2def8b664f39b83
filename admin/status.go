package admin

import (
	_ "embed"
	"net/http"
	"strconv"
	"time"
)

// statusPage is the status page: one self-contained file (inline CSS and
// JS, no external resource) that polls /api/links and /api/resets.
//
//go:embed status.html
var statusPage []byte

// Reset history answers: /api/resets?limit=N, newest first.
const (
	defaultResetLimit = 100
	maxResetLimit     = 1000 // the proxy's ring size
)

// statusCSP forbids every resource from elsewhere: the page must work
// offline and show config names and service names (sent by clients) as
// text only.
const statusCSP = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// handleStatus adds the status page (/ and /status) and /api/resets.
func handleStatus(mux *http.ServeMux, src Source, heavy heavyGate) {
	page := func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", statusCSP)
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(statusPage)
	}
	mux.HandleFunc("GET /{$}", page)
	mux.HandleFunc("GET /status", page)
	mux.Handle("GET /api/resets", heavy.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := defaultResetLimit
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxResetLimit {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": "limit must be an integer from 1 to " + strconv.Itoa(maxResetLimit)})
				return
			}
			limit = n
		}
		// now carries the proxy's time zone: resets_by_hour counts hours
		// of the day in it.
		writeJSON(w, http.StatusOK, map[string]any{"now": time.Now(), "resets": src.Resets(limit)})
	})))
}
