package server

import (
	"context"
	"fmt"
	"log/slog"
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

// readiness reports SERVING (through setServing) once the informers have
// synced and the base credentials can be obtained, and keeps checking the
// latter so a server that lost its AWS credentials stops attracting
// agents. It returns nil when ctx is done.
func readiness(ctx context.Context, timing readinessTiming, setServing func(bool), checkBase func(context.Context) error, synced []cache.InformerSynced, log *slog.Logger) error {
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended first
	}
	log.Info("informers synced")
	serving := false
	for {
		cctx, cancel := context.WithTimeout(ctx, timing.timeout)
		err := checkBase(cctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if ok := err == nil; ok != serving {
			serving = ok
			setServing(ok)
			if ok {
				log.Info("serving")
			} else {
				log.Warn("base credentials unavailable; reporting not serving", "error", err)
			}
		} else if err != nil {
			log.Warn("base credentials still unavailable", "error", err)
		}
		delay := timing.serving
		if !serving {
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
