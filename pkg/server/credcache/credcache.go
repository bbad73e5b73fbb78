// Package credcache is the server's credential cache in front of STS. It
// exists so that STS sees one call per key however many pods ask, so that
// pods get credentials with ample life (SDKs refetch on every call when
// little is left), and so that a short STS outage does not reach pods whose
// credentials are still good.
//
// Fetches for one key are shared (singleflight) and detached from any single
// caller, refreshes run ahead of expiry for keys a live pod still uses, STS
// denials are remembered briefly, and the number of keys is capped without
// ever evicting one a live pod uses.
//
// A fetch that fails for a reason a retry may fix (throttling, 5xx, network)
// puts its key in exponential backoff: no new STS call for the key until the
// backoff ends, however many pods ask meanwhile. A pod whose credentials
// are due but still good gets them back at once instead of an error, so an
// STS outage shorter than the refresh window never reaches pods.
package credcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/ratelimit"
)

// Assumer obtains fresh credentials for a key from STS. Its errors should
// match creds.ErrDenied or creds.ErrUnavailable; anything else is treated
// as unavailable.
type Assumer interface {
	Assume(ctx context.Context, key creds.Key) (creds.Credentials, error)
}

// Defaults applied to zero Config fields.
const (
	DefaultRefresh      = 40 * time.Minute
	DefaultMinServe     = 5 * time.Minute
	DefaultDeniedTTL    = 30 * time.Second
	DefaultMaxEntries   = 10000
	DefaultFetchTimeout = 10 * time.Second
	DefaultStaleWait    = 250 * time.Millisecond
	// DefaultRetryBackoff and DefaultMaxRetryBackoff bound the derived
	// backoff (see Config.RetryBackoff).
	DefaultRetryBackoff    = time.Second
	DefaultMaxRetryBackoff = time.Minute
)

// refreshConcurrency bounds the STS calls one RefreshDue scan has in flight,
// so that many keys coming due together (they were fetched together when a
// deployment scaled up) do not open hundreds of calls at once.
const refreshConcurrency = 8

// ErrInvalidConfig is returned by New for a configuration that cannot work.
var ErrInvalidConfig = errors.New("credcache: invalid config")

// Config tunes the cache. Zero durations and MaxEntries take the Default*
// values; negative ones are an error.
type Config struct {
	// Refresh: credentials are refreshed ahead when this much or less
	// validity remains. Get never returns credentials with <= Refresh left
	// while STS works.
	Refresh time.Duration
	// MinServe: when STS fails, Get may still return cached credentials
	// with more than this left. Must be below Refresh.
	MinServe time.Duration
	// DeniedTTL: how long an STS denial is remembered for a key, so that a
	// pod retrying a denied role does not turn into a stream of STS calls.
	DeniedTTL time.Duration
	// MaxEntries caps the number of keys held; keys in use are never
	// evicted, so the cache grows past it when every key is in use.
	MaxEntries int
	// FetchTimeout bounds one shared STS call, limiter wait included. The
	// call runs detached from its callers' contexts.
	FetchTimeout time.Duration
	// InUse reports whether a live pod still uses key. Required. Keys not in
	// use are not refreshed and are dropped when they come due. It is called
	// with the cache's lock held, so it must be fast and must not call back
	// into the Cache.
	InUse func(creds.Key) bool
	// Limiter may be nil (no limit).
	Limiter *ratelimit.Limiter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// RefreshInterval is how often Run scans; 0 means Refresh/20 clamped to
	// [100ms, 30s], small against the refresh window so a key is refreshed
	// soon after it comes due.
	RefreshInterval time.Duration
	// RetryBackoff and MaxRetryBackoff space the fetches of a key whose
	// fetches keep failing with ErrUnavailable: after the n-th failure in a
	// row, no fetch starts for a random time in [b/2, b], b =
	// RetryBackoff*2^(n-1) capped at MaxRetryBackoff. The lower bound
	// doubles, so retries spread out whatever the jitter draws; the jitter
	// keeps keys that failed together from retrying together. Zero values
	// are derived so that several retries fit in the time held credentials
	// stay servable: MaxRetryBackoff = min(DefaultMaxRetryBackoff,
	// (Refresh-MinServe)/8), RetryBackoff = min(DefaultRetryBackoff,
	// MaxRetryBackoff/8).
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// StaleWait bounds how long Get waits for a refresh when the key's held
	// credentials can still be served: after it, Get returns the held ones
	// and the refresh goes on for later callers. A slow or failing STS thus
	// never makes a pod with valid credentials wait past its SDK's budget.
	StaleWait time.Duration
	// Rand returns a number in [0, 1) for the backoff jitter; nil means
	// math/rand/v2.
	Rand func() float64
}

// Cache is safe for concurrent use.
type Cache struct {
	cfg      Config
	delegate Assumer
	log      *slog.Logger
	m        metrics

	mu  sync.Mutex
	lru *simplelru.LRU[creds.Key, *entry]
	// size is the LRU's capacity: MaxEntries, or more while every key is in
	// use. simplelru does not expose it.
	size     int
	inflight map[creds.Key]*call
}

// entry is what the cache knows about one key. It holds either credentials,
// or a recent denial, never both: a denial means STS no longer issues
// credentials for the key, so the old ones must not be served as a fallback.
// Besides, it counts the fetches that failed in a row with ErrUnavailable:
// none starts before retryAt, and lastErr is the answer meanwhile to a
// caller with nothing servable.
type entry struct {
	creds       creds.Credentials
	hasCreds    bool
	denied      error
	deniedUntil time.Time

	failures int
	retryAt  time.Time
	lastErr  error
}

// call is one shared fetch; done is closed once creds/err are set.
type call struct {
	done    chan struct{}
	creds   creds.Credentials
	err     error
	waiters int // callers of Get sharing this call; tests read it
}

type fetchKind int

const (
	kindGet fetchKind = iota
	kindRefresh
	kindPrefetch
)

// New checks cfg and registers the metrics on reg. reg may be nil (metrics
// not registered); log may be nil (discarded).
func New(cfg Config, delegate Assumer, reg prometheus.Registerer, log *slog.Logger) (*Cache, error) {
	if delegate == nil {
		return nil, fmt.Errorf("%w: delegate is nil", ErrInvalidConfig)
	}
	if cfg.InUse == nil {
		return nil, fmt.Errorf("%w: InUse is required", ErrInvalidConfig)
	}
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	l, err := simplelru.NewLRU[creds.Key, *entry](cfg.MaxEntries, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return &Cache{
		cfg:      cfg,
		delegate: delegate,
		log:      log,
		m:        m,
		lru:      l,
		size:     cfg.MaxEntries,
		inflight: make(map[creds.Key]*call),
	}, nil
}

// withDefaults is pure so the validation rules are testable on values.
func withDefaults(cfg Config) (Config, error) {
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Refresh", &cfg.Refresh, DefaultRefresh},
		{"MinServe", &cfg.MinServe, DefaultMinServe},
		{"DeniedTTL", &cfg.DeniedTTL, DefaultDeniedTTL},
		{"FetchTimeout", &cfg.FetchTimeout, DefaultFetchTimeout},
		{"RefreshInterval", &cfg.RefreshInterval, 0},
		{"RetryBackoff", &cfg.RetryBackoff, 0},
		{"MaxRetryBackoff", &cfg.MaxRetryBackoff, 0},
		{"StaleWait", &cfg.StaleWait, DefaultStaleWait},
	} {
		switch {
		case *d.v < 0:
			return cfg, fmt.Errorf("%w: %s %v is negative", ErrInvalidConfig, d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = min(max(cfg.Refresh/20, 100*time.Millisecond), 30*time.Second)
	}
	if cfg.MaxEntries < 0 {
		return cfg, fmt.Errorf("%w: MaxEntries %d is negative", ErrInvalidConfig, cfg.MaxEntries)
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MinServe >= cfg.Refresh {
		return cfg, fmt.Errorf("%w: MinServe %v must be below Refresh %v", ErrInvalidConfig, cfg.MinServe, cfg.Refresh)
	}
	if cfg.MaxRetryBackoff == 0 {
		cfg.MaxRetryBackoff = max(min(DefaultMaxRetryBackoff, (cfg.Refresh-cfg.MinServe)/8), time.Millisecond)
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = max(min(DefaultRetryBackoff, cfg.MaxRetryBackoff/8), time.Millisecond)
	}
	if cfg.RetryBackoff > cfg.MaxRetryBackoff {
		return cfg, fmt.Errorf("%w: RetryBackoff %v is above MaxRetryBackoff %v", ErrInvalidConfig, cfg.RetryBackoff, cfg.MaxRetryBackoff)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	return cfg, nil
}

// backoff is how long a key waits after its n-th failed fetch in a row
// (n >= 1): a random point in [b/2, b], b = base*2^(n-1) capped at maxB.
// r is in [0, 1).
func backoff(n int, base, maxB time.Duration, r float64) time.Duration {
	b := base
	for i := 1; i < n && b < maxB; i++ {
		b *= 2
	}
	b = min(b, maxB)
	return b/2 + time.Duration(r*float64(b-b/2))
}

// Get returns valid credentials for key. A fetch is shared by every caller
// for the key and runs detached from ctx, bounded by FetchTimeout; a caller
// whose ctx ends first returns its ctx error and leaves the fetch running
// for the others. A caller holding servable credentials waits at most
// StaleWait, and none waits on a key in backoff.
func (c *Cache) Get(ctx context.Context, key creds.Key) (creds.Credentials, error) {
	a, cl, held := c.fastPath(ctx, key)
	if cl != nil {
		a = c.wait(ctx, key, cl, held)
	}
	// A caller that gave up waiting got no answer from the cache: it is not
	// counted.
	if a.result != "" {
		c.m.requests.WithLabelValues(string(a.result)).Inc()
	}
	return a.creds, a.err
}

// answer is what Get returns, with the requests metric's label.
type answer struct {
	creds  creds.Credentials
	err    error
	result result // "": not counted
}

// fastPath answers from the key's entry when it can: a remembered denial,
// credentials with more than Refresh left, or a key in backoff (held
// credentials, else the last error). Otherwise it joins the key's fetch,
// starting one if none runs, and returns it (cl is then non-nil and a
// unset) with the credentials that may be served if the fetch is slow or
// fails (held, nil if none).
func (c *Cache) fastPath(ctx context.Context, key creds.Key) (a answer, cl *call, held *creds.Credentials) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if e, ok := c.lru.Get(key); ok {
		if e.denied != nil && now.Before(e.deniedUntil) {
			return answer{err: fmt.Errorf("credcache: %s (cached): %w", key.RoleARN, e.denied), result: resultDeniedCached}, nil, nil
		}
		if e.hasCreds && e.creds.Remaining(now) > c.cfg.Refresh {
			return answer{creds: e.creds, result: resultHit}, nil, nil
		}
		if e.hasCreds && e.creds.Remaining(now) > c.cfg.MinServe {
			cr := e.creds
			held = &cr
		}
		if now.Before(e.retryAt) {
			if held != nil {
				return answer{creds: *held, result: resultStale}, nil, nil
			}
			wait := e.retryAt.Sub(now)
			return answer{err: fmt.Errorf("credcache: %s: retrying in %s: %w", key.RoleARN, wait.Round(time.Millisecond), e.lastErr),
				result: resultBackoff}, nil, nil
		}
	}
	cl, ok := c.inflight[key]
	if !ok {
		cl = c.startLocked(ctx, key, kindGet)
	}
	cl.waiters++
	return answer{}, cl, held
}

// wait waits for the fetch cl of key: until it ends, until ctx is done, or,
// when held credentials can be served, for StaleWait at most.
func (c *Cache) wait(ctx context.Context, key creds.Key, cl *call, held *creds.Credentials) answer {
	var staleAfter <-chan time.Time
	if held != nil {
		t := time.NewTimer(c.cfg.StaleWait)
		defer t.Stop()
		staleAfter = t.C
	}
	select {
	case <-cl.done:
	case <-staleAfter:
		c.leave(cl)
		return answer{creds: *held, result: resultStale}
	case <-ctx.Done():
		c.leave(cl)
		return answer{err: fmt.Errorf("credcache: waiting for %s: %w", key.RoleARN, ctx.Err())}
	}
	switch {
	case cl.err == nil:
		return answer{creds: cl.creds, result: resultMiss}
	case errors.Is(cl.err, creds.ErrDenied):
		return answer{err: fmt.Errorf("credcache: %s: %w", key.RoleARN, cl.err), result: resultMiss}
	}
	return c.fallback(key, cl.err)
}

// leave stops counting a caller that no longer waits for cl.
func (c *Cache) leave(cl *call) {
	c.mu.Lock()
	cl.waiters--
	c.mu.Unlock()
}

// fallback answers a caller whose fetch failed for a reason a retry may
// fix (err): what the cache still holds is better than an error as long as
// the SDK can use it for a while.
func (c *Cache) fallback(key creds.Key, err error) answer {
	c.mu.Lock()
	e, ok := c.lru.Peek(key)
	serve := ok && e.hasCreds && e.creds.Remaining(c.cfg.Now()) > c.cfg.MinServe
	var stale creds.Credentials
	if serve {
		stale = e.creds
	}
	c.mu.Unlock()
	if serve {
		return answer{creds: stale, result: resultStale}
	}
	return answer{err: fmt.Errorf("credcache: %s: %w", key.RoleARN, err), result: resultMiss}
}

// Peek returns key's credentials without ever starting a fetch: those held
// while they have more than Refresh left, else the answer of the fetch under
// way, waited for until ctx is done (leaving it running for the others).
// ok is false when none are held fresh and none are being fetched, or the
// fetch failed. It serves pushing credentials to agents, which must never
// cost an STS call a request would not make.
func (c *Cache) Peek(ctx context.Context, key creds.Key) (cr creds.Credentials, ok bool) {
	c.mu.Lock()
	if e, found := c.lru.Peek(key); found && e.hasCreds && e.creds.Remaining(c.cfg.Now()) > c.cfg.Refresh {
		cr = e.creds
		c.mu.Unlock()
		return cr, true
	}
	cl, found := c.inflight[key]
	if !found {
		c.mu.Unlock()
		return creds.Credentials{}, false
	}
	cl.waiters++
	c.mu.Unlock()
	select {
	case <-cl.done:
	case <-ctx.Done():
		c.leave(cl)
		return creds.Credentials{}, false
	}
	if cl.err != nil {
		return creds.Credentials{}, false
	}
	return cl.creds, true
}

// Prefetch starts a background fetch for key if it is absent or due, the
// limiter has a Prefetch token to spare, and no fetch is already running.
// It never waits: a skipped prefetch costs only the pod's first Get.
func (c *Cache) Prefetch(key creds.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.inflight[key]; ok || !c.dueLocked(key, c.cfg.Now()) ||
		(c.cfg.Limiter != nil && !c.cfg.Limiter.Allow(ratelimit.Prefetch)) {
		c.m.prefetches.WithLabelValues(string(resultSkipped)).Inc()
		return
	}
	c.startLocked(context.Background(), key, kindPrefetch)
}

// dueLocked reports whether key needs a fetch: no denial is being
// remembered, the key is not in backoff, and no credentials with more than
// Refresh left are held.
func (c *Cache) dueLocked(key creds.Key, now time.Time) bool {
	e, ok := c.lru.Peek(key)
	if !ok {
		return true
	}
	if e.denied != nil && now.Before(e.deniedUntil) || now.Before(e.retryAt) {
		return false
	}
	return !e.hasCreds || e.creds.Remaining(now) <= c.cfg.Refresh
}

// Run calls RefreshDue every RefreshInterval until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.RefreshInterval)
	defer t.Stop()
	for {
		c.RefreshDue(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RefreshDue refreshes every due key that is still in use and drops due
// keys that are not, and expired denials; then it waits for those refreshes
// (or ctx). Fresh keys are kept whether in use or not, so a pod restarting
// with the same role is served from the cache.
func (c *Cache) RefreshDue(ctx context.Context) {
	c.mu.Lock()
	now := c.cfg.Now()
	var refresh []creds.Key
	for _, k := range c.lru.Keys() {
		e, _ := c.lru.Peek(k)
		if _, busy := c.inflight[k]; busy || !c.dueLocked(k, now) {
			continue // fresh, a remembered denial, in backoff, or being fetched already
		}
		// Only keys holding credentials are refreshed: an expired denial or
		// a first fetch that failed is retried when a pod asks again, not on
		// a timer. The failure count stays while a pod uses the key, so its
		// next failure backs off further.
		switch inUse := c.cfg.InUse(k); {
		case e.hasCreds && inUse:
			refresh = append(refresh, k)
		case e.failures > 0 && e.denied == nil && inUse:
		default:
			c.lru.Remove(k)
		}
	}
	c.shrinkLocked()
	c.mu.Unlock()

	sem := make(chan struct{}, refreshConcurrency)
	var wg sync.WaitGroup
	for _, k := range refresh {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		c.mu.Lock()
		cl, ok := c.inflight[k]
		if !ok {
			cl = c.startLocked(ctx, k, kindRefresh)
		}
		c.mu.Unlock()
		wg.Go(func() {
			defer func() { <-sem }()
			select {
			case <-cl.done:
			case <-ctx.Done():
			}
		})
	}
	wg.Wait()
}

// Len is the number of keys held, denials included.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// startLocked registers and starts a shared fetch. parent provides values
// only: the fetch is detached from its cancellation.
func (c *Cache) startLocked(parent context.Context, key creds.Key, kind fetchKind) *call {
	cl := &call{done: make(chan struct{})}
	c.inflight[key] = cl
	go c.fetch(context.WithoutCancel(parent), key, kind, cl)
	return cl
}

func (c *Cache) fetch(parent context.Context, key creds.Key, kind fetchKind, cl *call) {
	ctx, cancel := context.WithTimeout(parent, c.cfg.FetchTimeout)
	defer cancel()
	cr, err := c.assume(ctx, key, kind)
	if err != nil && !errors.Is(err, creds.ErrDenied) && !errors.Is(err, creds.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", creds.ErrUnavailable, err)
	}

	// The entry changes first, so that from here on Gets see the new
	// credentials, the denial or the backoff instead of joining this call.
	var failures int
	var retryAt time.Time
	c.mu.Lock()
	switch {
	case err == nil:
		c.storeLocked(key, &entry{creds: cr, hasCreds: true})
	case errors.Is(err, creds.ErrDenied):
		c.storeLocked(key, &entry{denied: err, deniedUntil: c.cfg.Now().Add(c.cfg.DeniedTTL)})
	default:
		failures, retryAt = c.failedLocked(key, err)
	}
	c.mu.Unlock()

	// Accounted before done is closed, so whoever waited on the call sees
	// the metrics and the log line already written.
	c.account(key, kind, err, failures, retryAt)

	c.mu.Lock()
	delete(c.inflight, key)
	cl.creds, cl.err = cr, err
	close(cl.done)
	c.mu.Unlock()
}

// failedLocked records a fetch that failed with ErrUnavailable and starts
// the key's backoff. Held credentials stay: they are still the best answer
// while they last.
func (c *Cache) failedLocked(key creds.Key, err error) (failures int, retryAt time.Time) {
	e, ok := c.lru.Peek(key)
	if !ok {
		e = &entry{}
		c.storeLocked(key, e)
	}
	e.denied, e.deniedUntil = nil, time.Time{}
	e.failures++
	e.lastErr = err
	e.retryAt = c.cfg.Now().Add(backoff(e.failures, c.cfg.RetryBackoff, c.cfg.MaxRetryBackoff, c.cfg.Rand()))
	return e.failures, e.retryAt
}

// account counts a finished fetch and logs a failure; one a retry may fix
// comes with its backoff: no call for the key goes to STS before retry_at.
func (c *Cache) account(key creds.Key, kind fetchKind, err error, failures int, retryAt time.Time) {
	res := resultOK
	if err != nil {
		res = resultError
	}
	switch kind {
	case kindRefresh:
		c.m.refreshes.WithLabelValues(string(res)).Inc()
	case kindPrefetch:
		c.m.prefetches.WithLabelValues(string(res)).Inc()
	}
	if err == nil {
		return
	}
	args := []any{"role_arn", key.RoleARN, "error", err}
	if failures > 0 {
		args = append(args, "failures", failures, "retry_at", retryAt)
	}
	switch {
	case kind == kindRefresh:
		c.log.Warn("credential refresh failed", args...)
	case kind == kindPrefetch:
		c.log.Info("credential prefetch failed", args...)
	case failures > 0:
		// A denial for a pod's request is logged where it is answered,
		// with the pod.
		c.log.Warn("credential fetch failed", args...)
	}
}

func (c *Cache) assume(ctx context.Context, key creds.Key, kind fetchKind) (creds.Credentials, error) {
	// A prefetch took its token in Prefetch, without waiting.
	if c.cfg.Limiter != nil && kind != kindPrefetch {
		p := ratelimit.Request
		if kind == kindRefresh {
			p = ratelimit.Refresh
		}
		if err := c.cfg.Limiter.Wait(ctx, p); err != nil {
			return creds.Credentials{}, fmt.Errorf("%w: rate limited: %w", creds.ErrUnavailable, err)
		}
	}
	return c.delegate.Assume(ctx, key)
}

// storeLocked sets key's entry, making room first when key is new. The
// victim is the least recently used key no live pod uses; when every key is
// in use the cache grows instead, because evicting one would only make its
// pod's next request wait on STS.
func (c *Cache) storeLocked(key creds.Key, e *entry) {
	if old, ok := c.lru.Peek(key); ok {
		*old = *e
		return
	}
	if c.lru.Len() >= c.cfg.MaxEntries {
		evicted := false
		for _, k := range c.lru.Keys() {
			if _, busy := c.inflight[k]; busy || c.cfg.InUse(k) {
				continue
			}
			c.lru.Remove(k)
			c.m.evictions.Inc()
			evicted = true
			break
		}
		if !evicted {
			c.m.overCapacity.Inc()
		}
	}
	if c.lru.Len() >= c.size {
		c.size = c.lru.Len() + 1
		c.lru.Resize(c.size)
	}
	c.lru.Add(key, e) // there is room, so simplelru itself never evicts
	c.m.entries.Set(float64(c.lru.Len()))
}

// shrinkLocked returns the LRU to MaxEntries once drops made room, so the
// cap applies again after a period when every key was in use.
func (c *Cache) shrinkLocked() {
	if c.size > c.cfg.MaxEntries {
		c.size = max(c.lru.Len(), c.cfg.MaxEntries)
		c.lru.Resize(c.size) // never below Len, so nothing is evicted here
	}
	c.m.entries.Set(float64(c.lru.Len()))
}
