package config

import (
	"fmt"
	"math"
	"regexp"
	"time"
)

// Duration is a Go duration written as a TOML string ("30s", "5m"). Set
// tells an explicit "0s" apart from a key that was left out, so defaults
// apply only to missing keys.
type Duration struct {
	time.Duration
	Set bool
}

// badDuration starts every error of Duration.UnmarshalText: Parse puts the
// key in front of it.
const badDuration = "bad duration"

// goDuration is the syntax time.ParseDuration reads (whatever the size).
var goDuration = regexp.MustCompile(`^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		if goDuration.Match(b) {
			// Written right, but past what time.Duration holds:
			// ParseDuration says "invalid duration" for both.
			if b[0] == '-' {
				return fmt.Errorf("%s %q: must not be negative", badDuration, b)
			}
			return fmt.Errorf("%s %q: longer than the longest duration, %v (about 292 years)", badDuration, b, time.Duration(math.MaxInt64))
		}
		return fmt.Errorf("%s %q: use a Go duration such as \"30s\" or \"5m\"", badDuration, b)
	}
	if v < 0 {
		return fmt.Errorf("%s %q: must not be negative", badDuration, b)
	}
	d.Duration, d.Set = v, true
	return nil
}

// MarshalText writes the duration back in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

func (d *Duration) orDefault(v time.Duration) {
	if !d.Set {
		d.Duration, d.Set = v, true
	}
}

func intOr(p *int, v int) *int {
	if p != nil {
		return p
	}
	return &v
}

// Routes maps a service name to a backend name (listener routes). The TOML
// library would leave a routes that is not a table (routes = ["SALES=b"])
// empty without a word, and every session would go to the default.
type Routes map[string]string

// UnmarshalTOML implements toml.Unmarshaler: a table of strings only.
func (r *Routes) UnmarshalTOML(v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("routes must be a table of SERVICE = \"backend\", such as routes = { \"SALES\" = \"sales\" }, not %s", tomlKind(v))
	}
	out := make(Routes, len(m))
	for k, b := range m {
		name, ok := b.(string)
		if !ok {
			return fmt.Errorf("routes: %q must name a backend (a string), not %s", k, tomlKind(b))
		}
		out[k] = name
	}
	*r = out
	return nil
}

// tomlKind names a decoded TOML value's type as the TOML text has it.
func tomlKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}
