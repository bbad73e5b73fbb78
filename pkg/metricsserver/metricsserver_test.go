package metricsserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestServeUntilCtxDone(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "up_here", Help: "h"}, func() float64 { return 1 }))
	addrc := make(chan string, 1)
	listen := func(ctx context.Context, addr string) (net.Listener, error) {
		l, err := ListenTCP(ctx, addr)
		if err == nil {
			addrc <- l.Addr().String()
		}
		return l, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	extra := map[string]http.Handler{"GET /extra": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "extra here")
	})}
	go func() { done <- Serve(ctx, listen, "127.0.0.1:0", reg, extra, slog.New(slog.DiscardHandler)) }()
	addr := <-addrc
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, b := get("/metrics"); code != http.StatusOK || !strings.Contains(b, "up_here 1") {
		t.Fatalf("scrape: %d %s", code, b)
	}
	// The extra handlers are served beside /metrics, and nothing else is.
	if code, b := get("/extra"); code != http.StatusOK || b != "extra here" {
		t.Fatalf("/extra: %d %q", code, b)
	}
	if code, _ := get("/other"); code != http.StatusNotFound {
		t.Fatalf("/other: %d, want 404", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v after ctx ended, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
}

func TestServeListenError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = Serve(context.Background(), ListenTCP, l.Addr().String(), prometheus.NewRegistry(), nil, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "metrics listen "+l.Addr().String()) {
		t.Fatalf("Serve on a taken port = %v, want a listen error", err)
	}
	if err := Serve(context.Background(), ListenTCP, "", prometheus.NewRegistry(), nil, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("Serve without an address must fail, not block")
	}
}
