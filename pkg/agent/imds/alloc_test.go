//go:build !race

package imds

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/agent/metadoc"
)

// TestWarmPathAllocatesNothing: a warm request from a pod (path already
// canonical, documents built when the answer was received) allocates
// nothing in the handler, so that the agent costs no more garbage than
// net/http itself. The race detector allocates on its own, hence the build
// tag.
func TestWarmPathAllocatesNothing(t *testing.T) {
	h, err := New(Config{}, staticProvider{metadoc.Build(benchCreds(), time.Now())}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range benchPaths {
		for _, remote := range []string{ipApp + ":40000", "[" + ipV6 + "]:40000"} {
			r := httptest.NewRequest(http.MethodGet, p.path, nil)
			r.RemoteAddr = remote
			w := discardWriter{h: http.Header{}}
			h.ServeHTTP(w, r) // metric children are resolved on first use
			if n := testing.AllocsPerRun(100, func() {
				clear(w.h)
				h.ServeHTTP(w, r)
			}); n != 0 {
				t.Errorf("%s from %s: %v allocations per request, want 0", p.name, remote, n)
			}
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = Canonical(benchPaths[0].path) }); n != 0 {
		t.Errorf("Canonical of a canonical path: %v allocations", n)
	}
}
