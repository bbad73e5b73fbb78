// Package metricsserver serves a Prometheus registry over HTTP for the
// agent and the server alike, and beside it whatever else a side wants
// answered in plain HTTP (the server's /readyz and /healthz, which the
// kubelet probes without a client certificate). Each side opens its
// listener its own way: the agent with SO_REUSEPORT, so that old and new
// agents overlap in a rolling update, the server with a plain listener.
//
// The agent links this package, so it must not import client-go or the AWS
// SDK.
package metricsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ListenFunc opens a listener on addr.
type ListenFunc func(ctx context.Context, addr string) (net.Listener, error)

// ListenTCP is a plain TCP ListenFunc.
func ListenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", addr)
}

// shutdownTimeout bounds how long a scrape in progress may hold up exit.
const shutdownTimeout = 5 * time.Second

// Serve serves /metrics from reg, and each of extra's handlers on its
// http.ServeMux pattern, on a listener from listen until ctx is done, then
// shuts down (waiting up to shutdownTimeout for requests in progress) and
// returns nil. It returns an error when it cannot listen or when serving
// fails. extra may be nil.
func Serve(ctx context.Context, listen ListenFunc, addr string, reg *prometheus.Registry, extra map[string]http.Handler, log *slog.Logger) error {
	if addr == "" {
		return errors.New("metrics: no listen address")
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	for pattern, h := range extra {
		mux.Handle(pattern, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	lis, err := listen(ctx, addr)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	log.Info("serving metrics", "addr", lis.Addr().String())
	// Shut down from a goroutine that Serve waits for, so that nothing is
	// left running once Serve has returned.
	stopped := make(chan struct{})
	shutdownErr := make(chan error, 1)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
			shutdownErr <- nil
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		shutdownErr <- srv.Shutdown(sctx)
	}()
	err = srv.Serve(lis)
	close(stopped)
	serr := <-shutdownErr
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	// A scrape still running after shutdownTimeout is cut off with the
	// process; that is no reason to fail an otherwise clean exit.
	if serr != nil {
		log.Warn("metrics server did not shut down cleanly", "error", serr)
	}
	return nil
}
