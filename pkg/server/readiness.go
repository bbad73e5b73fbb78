package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/server/role"
)

// readinessTiming is how often readiness checks the base credentials.
type readinessTiming struct {
	// serving is the period while they work: a lost credential shows
	// within it.
	serving time.Duration
	// failing is the period while they do not, so the server comes back
	// soon after they do.
	failing time.Duration
	// timeout bounds one check.
	timeout time.Duration
}

// The periods New sets; tests shorten them.
const (
	readyServingPeriod = 30 * time.Second
	readyFailingPeriod = 2 * time.Second
	readyCheckTimeout  = 10 * time.Second
)

// Why the server is not serving, as /readyz says it. Fixed phrases, not
// the errors behind them: /readyz is plain HTTP on a port anything on the
// node's network can reach, and STS errors name roles and accounts. The
// errors go to the log.
const (
	reasonNotSynced = "informers not synced"
	reasonNoBase    = "base credentials unavailable"
)

// readyState holds the readiness loop's decision and reports it twice:
// to agents through the gRPC health service (setServing), and to the
// kubelet through /readyz, which needs no client certificate, so that the
// server's certificate can be issued for server auth only. One decision,
// two views: they cannot disagree. (On shutdown the gRPC server reports
// NOT_SERVING on its own while it drains; /readyz is gone by then, its
// listener closed with the same context, which the kubelet also counts as
// not ready.)
type readyState struct {
	setServing func(bool)

	mu     sync.Mutex
	reason string // why not serving; "" while serving
}

// newReadyState starts not serving, as the gRPC health service does.
func newReadyState(setServing func(bool)) *readyState {
	return &readyState{setServing: setServing, reason: reasonNotSynced}
}

// set records a decision, reason "" meaning SERVING, and tells the gRPC
// health service when serving changes (only then: its watchers are sent
// every status set, changed or not).
func (r *readyState) set(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if (r.reason == "") != (reason == "") {
		r.setServing(reason == "")
	}
	r.reason = reason
}

func (r *readyState) current() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reason
}

// ServeHTTP is /readyz: 200 "ok" while serving, 503 with the reason
// otherwise.
func (r *readyState) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if reason := r.current(); reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: "+reason+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
}

// healthz is /healthz: the process is alive and answers HTTP. It checks
// nothing else on purpose: a server that cannot reach STS must keep the
// credentials it holds, not be restarted.
func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, "ok\n")
}

// readiness decides whether the server is serving and reports it through
// set (reason "" for SERVING): not until the informers have synced and
// the base credentials can be obtained, and it keeps checking the latter
// so a server that lost its AWS credentials stops attracting agents. It
// returns nil when ctx is done.
func readiness(ctx context.Context, timing readinessTiming, set func(reason string), checkBase func(context.Context) error, synced []cache.InformerSynced, log *slog.Logger) error {
	reported := reasonNotSynced
	set(reported)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended first
	}
	log.Info("informers synced")
	for {
		cctx, cancel := context.WithTimeout(ctx, timing.timeout)
		err := checkBase(cctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		reason := ""
		if err != nil {
			reason = reasonNoBase
		}
		changed := reason != reported
		switch {
		case changed && err == nil:
			log.Info("serving")
		case changed:
			log.Warn("base credentials unavailable; reporting not serving", "error", err)
		case err != nil:
			log.Warn("base credentials still unavailable", "error", err)
		}
		if changed {
			reported = reason
			set(reason)
		}
		delay := timing.serving
		if reason != "" {
			delay = timing.failing
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// callerIdentity is what detectBaseARN needs of STS.
type callerIdentity interface {
	CallerARN(ctx context.Context) (string, error)
}

// detectBaseARN asks STS who the server is, retrying while STS is
// unreachable, because on EKS the server may start before the network.
func detectBaseARN(ctx context.Context, sts callerIdentity, log *slog.Logger) (string, error) {
	delay := 500 * time.Millisecond
	for {
		arn, err := sts.CallerARN(ctx)
		if err == nil {
			base, err := role.BaseARNFromCaller(arn)
			if err != nil {
				return "", fmt.Errorf("--role-base-arn-autodetect: %w", err)
			}
			log.Info("detected role base ARN", "role_base_arn", base)
			return base, nil
		}
		log.Warn("cannot detect role base ARN yet", "error", err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("--role-base-arn-autodetect: %w", err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}
