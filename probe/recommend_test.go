package probe

import (
	"testing"
	"time"
)

func TestRecommend(t *testing.T) {
	s := time.Second
	for _, c := range []struct {
		path time.Duration
		want Recommendation
	}{
		// path = whole seconds, at least 1s; idle = path/3, interval = path/9,
		// each whole seconds, at least 1s; count 3; user_timeout = idle+interval*count.
		{0, Recommendation{1 * s, 1 * s, 1 * s, 3, 4 * s}},
		{500 * time.Millisecond, Recommendation{1 * s, 1 * s, 1 * s, 3, 4 * s}},
		{3 * s, Recommendation{3 * s, 1 * s, 1 * s, 3, 4 * s}},
		{5*s + 900*time.Millisecond, Recommendation{5 * s, 1 * s, 1 * s, 3, 4 * s}},
		{9 * s, Recommendation{9 * s, 3 * s, 1 * s, 3, 6 * s}},
		{10 * s, Recommendation{10 * s, 3 * s, 1 * s, 3, 6 * s}},
		{4 * time.Minute, Recommendation{240 * s, 80 * s, 26 * s, 3, 158 * s}},
		{350 * s, Recommendation{350 * s, 116 * s, 38 * s, 3, 230 * s}},
		{5 * time.Minute, Recommendation{300 * s, 100 * s, 33 * s, 3, 199 * s}},
		{time.Hour, Recommendation{3600 * s, 1200 * s, 400 * s, 3, 2400 * s}},
	} {
		if got := Recommend(c.path); got != c.want {
			t.Errorf("Recommend(%v) = %+v, want %+v", c.path, got, c.want)
		}
	}
}

func TestRecommendFromIdle(t *testing.T) {
	if _, ok := RecommendFromIdle(nil); ok {
		t.Error("no idle times: ok")
	}
	if _, ok := RecommendFromIdle([]time.Duration{200 * time.Millisecond}); ok {
		t.Error("only sub-second idle times: ok")
	}
	got, ok := RecommendFromIdle([]time.Duration{20 * time.Minute, 5*time.Minute + 30*time.Second, 300 * time.Millisecond, time.Hour})
	if want := Recommend(5*time.Minute + 30*time.Second); !ok || got != want {
		t.Errorf("got %+v %v, want %+v (from the shortest idle of at least 1s)", got, ok, want)
	}
}
