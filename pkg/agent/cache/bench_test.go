package cache

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/podiam/podiam/pkg/agent/sandbox"
)

// BenchmarkHit is a warm hit, with and without reading the pending
// sandbox changes from a real netlink socket first (what every request
// pays for never missing a new pod's change).
func BenchmarkHit(b *testing.B) {
	for _, withChanges := range []bool{false, true} {
		name := "no-changes-source"
		if withChanges {
			name = "netlink-drain"
		}
		b.Run(name, func(b *testing.B) {
			clk := testingclock.NewFakeClock(t0)
			cfg := Config{Now: clk.Now}
			if withChanges {
				w, err := sandbox.NewWatcher()
				if err != nil {
					b.Fatal(err)
				}
				defer w.Close()
				cfg.Changes = w
			}
			c, err := New(cfg, &fakeFetcher{answer: issuing(clk)}, prometheus.NewRegistry(), nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Credentials(b.Context(), "10.0.0.1"); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Credentials(b.Context(), "10.0.0.1"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
