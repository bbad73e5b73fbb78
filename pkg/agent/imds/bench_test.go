package imds

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/creds"
)

// staticProvider answers every address with the same credentials, as the
// agent cache does on a hit.
type staticProvider struct{ pc creds.PodCredentials }

func (p staticProvider) Credentials(context.Context, string) (creds.PodCredentials, error) {
	return p.pc, nil
}

// discardWriter is a ResponseWriter that keeps nothing but the header map,
// so that the benchmark measures the handler, not a recorder.
type discardWriter struct{ h http.Header }

func (w discardWriter) Header() http.Header         { return w.h }
func (w discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w discardWriter) WriteHeader(int)             {}

// BenchmarkServeHTTPCredentials is the agent's hot path without the
// network: a warm credential request from a pod.
func BenchmarkServeHTTPCredentials(b *testing.B) {
	pc := podCreds(appRoleARN)
	pc.Credentials.Expiration = time.Now().Add(time.Hour)
	h, err := New(Config{}, staticProvider{pc}, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/latest/meta-data/iam/security-credentials/app-role", nil)
	r.RemoteAddr = ipApp + ":40000"
	w := discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
}
