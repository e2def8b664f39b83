package main

import (
	"os"
	"slices"
	"testing"
)

// The new process takes the old one's "sessions N,N,..." line once that
// stopped accepting, and anything else (a garbled line, the pipe closed
// without one: the old process ended) for no line: the counts at the
// handover stand.
func TestUpgradeReadsTheOldProcessSessionsLine(t *testing.T) {
	for _, c := range []struct {
		sent string
		want []int64
	}{
		{"sessions 3,0,12\n", []int64{3, 0, 12}},
		{"sessions \n", []int64{}}, // no listener
		{"sessions 3,x\n", nil},
		{"sessions 3,-1\n", nil},
		{"sessions 3,1", nil}, // cut before its end
		{"stopped\n", nil},
		{"", nil},
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(c.sent))
		w.Close()
		got := readSessions(r)
		r.Close()
		if !slices.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("%q: read %v, want %v", c.sent, got, c.want)
		}
	}
}
