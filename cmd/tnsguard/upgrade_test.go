package main

import (
	"os"
	"slices"
	"testing"
	"time"
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
		var got []int64
		followSessions(r, func(c []int64) bool { got = c; return false })
		r.Close()
		if !slices.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("%q: read %v, want %v", c.sent, got, c.want)
		}
	}
}

// The old process says its sessions again as the connections it accepted
// last are let in or turned away: the new process takes each line, until
// the pipe's end.
func TestUpgradeFollowsTheOldProcessSessionsLines(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.Write([]byte("sessions 5,2\nsessions 3,2\n"))
	go func() {
		time.Sleep(100 * time.Millisecond)
		w.Write([]byte("sessions 1,0\n"))
		w.Close()
	}()
	var got [][]int64
	n := followSessions(r, func(c []int64) bool { got = append(got, c); return true })
	want := [][]int64{{5, 2}, {3, 2}, {1, 0}}
	if n != 3 || !slices.EqualFunc(got, want, slices.Equal[[]int64]) {
		t.Errorf("followed %d lines: %v, want %v", n, got, want)
	}
}

// The listeners' names handed to the new process come back as they were,
// whatever they hold (a listener's name may be any string, commas and
// spaces too), and a list that an upgrade did not write is refused.
func TestUpgradeHandsOverTheListenersNames(t *testing.T) {
	for _, names := range [][]string{{}, {"a"}, {"ora,1", "b c", "%41", "ü+", ""}} {
		got, ok := parseNames(formatNames(names))
		if !ok || !slices.Equal(got, names) {
			t.Errorf("%q came back as %q (ok %v)", names, got, ok)
		}
	}
	if _, ok := parseNames("a,%zz"); ok {
		t.Error(`"a,%zz" taken for a list of names`)
	}
}
