package config

import (
	"fmt"
	"time"
)

// Duration is a Go duration written as a TOML string ("30s", "5m"). Set
// tells an explicit "0s" apart from a key that was left out, so defaults
// apply only to missing keys.
type Duration struct {
	time.Duration
	Set bool
}

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q: use a Go duration such as \"30s\" or \"5m\"", b)
	}
	if v < 0 {
		return fmt.Errorf("bad duration %q: must not be negative", b)
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
