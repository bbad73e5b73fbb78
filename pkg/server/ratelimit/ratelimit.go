// Package ratelimit is a token bucket whose callers have a priority, so that
// the server's calls to STS stay under one rate while refreshes of
// credentials that pods already use are never starved by a burst of new pods
// (a node drain can start hundreds at once) or by prefetches.
//
// Priorities work by reserve: a caller may take a token only if enough
// tokens remain afterwards for the priorities above it.
//
//	Refresh   no reserve: may take the last token.
//	Request   must leave ceil(10% of burst) tokens.
//	Prefetch  must leave ceil(50% of burst) tokens.
//
// A reserve never exceeds burst-1, so every priority can eventually proceed
// (with burst 1 there is no room for a reserve and the priorities are equal).
// The reserves are whole tokens rounded up so that a small burst still
// protects at least one token for refreshes.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Priority orders callers; a lower value is more important.
type Priority int

// Priorities, most important first.
const (
	// Refresh renews credentials a live pod already uses.
	Refresh Priority = iota
	// Request serves a pod waiting for credentials now.
	Request
	// Prefetch warms the cache for a pod that has not asked yet.
	Prefetch
)

// reserveFraction is the share of the burst a priority must leave behind.
var reserveFraction = [...]float64{Refresh: 0, Request: 0.10, Prefetch: 0.50}

// ErrInvalidConfig is returned by New for a rate or burst that cannot work.
var ErrInvalidConfig = errors.New("ratelimit: invalid config")

// Config sets the bucket. Rate is tokens per second, Burst the bucket size.
type Config struct {
	Rate  float64
	Burst int
	// Now is the clock; nil means time.Now. Tests inject it.
	Now func() time.Time
}

// Limiter is safe for concurrent use.
type Limiter struct {
	rate    float64
	burst   float64
	reserve [len(reserveFraction)]float64
	now     func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// New returns a full bucket.
func New(cfg Config) (*Limiter, error) {
	if !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return nil, fmt.Errorf("%w: rate %v must be positive and finite", ErrInvalidConfig, cfg.Rate)
	}
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("%w: burst %d must be at least 1", ErrInvalidConfig, cfg.Burst)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	l := &Limiter{rate: cfg.Rate, burst: float64(cfg.Burst), now: now, tokens: float64(cfg.Burst), last: now()}
	for p, f := range reserveFraction {
		l.reserve[p] = math.Min(math.Ceil(f*l.burst), l.burst-1)
	}
	return l, nil
}

// Allow takes a token for p if one is allowed now.
func (l *Limiter) Allow(p Priority) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.takeLocked(p) == 0
}

// Wait blocks until p may take a token, then takes it. It sleeps on a timer
// until the earliest moment the bucket could allow p; another caller may
// take the token first, in which case it sleeps again.
func (l *Limiter) Wait(ctx context.Context, p Priority) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ratelimit: wait: %w", err)
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		l.mu.Lock()
		d := l.takeLocked(p)
		l.mu.Unlock()
		if d == 0 {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ratelimit: wait: %w", ctx.Err())
		case <-timer.C:
		}
	}
}

// takeLocked takes a token and returns 0, or returns how long until p could
// take one at the current refill rate.
func (l *Limiter) takeLocked(p Priority) time.Duration {
	now := l.now()
	// A clock that steps back must not add or remove tokens.
	if elapsed := now.Sub(l.last); elapsed > 0 {
		l.tokens = math.Min(l.burst, l.tokens+elapsed.Seconds()*l.rate)
		l.last = now
	}
	need := 1 + l.reserve[clamp(p)]
	// The epsilon absorbs float rounding so a timer sized exactly for the
	// missing tokens is not followed by a second, nanosecond-long one.
	if l.tokens+1e-9 >= need {
		l.tokens--
		return 0
	}
	// Bounded below so a waiter cannot spin, and above so a tiny rate cannot
	// overflow the Duration; a waiter past the cap simply checks again.
	secs := (need - l.tokens) / l.rate
	return time.Duration(math.Min(math.Max(secs, 0.001), 3600) * float64(time.Second))
}

// clamp treats an unknown priority as the least important one rather than
// failing, since a wrong value must not bypass the reserve.
func clamp(p Priority) Priority {
	if p < Refresh || p > Prefetch {
		return Prefetch
	}
	return p
}
