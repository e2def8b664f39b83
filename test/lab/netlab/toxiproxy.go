package netlab

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// ToxiproxyArgs configures the "toxiproxy" helper: a Toxiproxy server (no HTTP API)
// with one proxy from Listen to Upstream and a latency toxic in both directions.
type ToxiproxyArgs struct {
	Listen   string
	Upstream string
	// Latency is added to every chunk of data in each direction, above TCP: the
	// kernel's RTT of either leg does not see it, an application round trip sees
	// twice of it.
	Latency time.Duration
}

// StartToxiproxy starts a Toxiproxy proxy in namespace ns from listen to upstream with
// the given latency toxic on both streams.
func (l *Lab) StartToxiproxy(t testing.TB, ns string, a ToxiproxyArgs) *Proc {
	t.Helper()
	return l.StartHelper(t, ns, "toxiproxy", a)
}

func toxiproxyMain(args string) error {
	var a ToxiproxyArgs
	if err := json.Unmarshal([]byte(args), &a); err != nil {
		return err
	}
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.New(io.Discard))
	proxy := toxiproxy.NewProxy(server, "lab", a.Listen, a.Upstream)
	if err := proxy.Start(); err != nil {
		return err
	}
	if a.Latency > 0 {
		for _, stream := range []string{"upstream", "downstream"} {
			toxic := fmt.Sprintf(`{"name":"latency_%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d,"jitter":0}}`,
				stream, stream, a.Latency.Milliseconds())
			if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(toxic)); err != nil {
				return err
			}
		}
	}
	var mu sync.Mutex
	writeEvent(&mu, Event{Event: "ready", Addr: proxy.Listen})
	select {}
}
