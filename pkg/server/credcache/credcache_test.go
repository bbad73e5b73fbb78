package credcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/ratelimit"

	"github.com/podiam/podiam/test/syncbuf"
)

const session = time.Hour

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeSTS counts calls, optionally blocks until released, and answers with
// err when set, else with credentials valid for one session from the clock.
type fakeSTS struct {
	clock *fakeClock

	mu      sync.Mutex
	calls   int
	perKey  map[creds.Key]int
	err     error
	block   chan struct{} // nil: answer at once
	ctxErrs []error       // ctx.Err() seen when each call returned
	hasDL   []bool        // whether each call's ctx had a deadline
}

func newFakeSTS(clk *fakeClock) *fakeSTS {
	return &fakeSTS{clock: clk, perKey: map[creds.Key]int{}}
}

func (f *fakeSTS) Assume(ctx context.Context, key creds.Key) (creds.Credentials, error) {
	f.mu.Lock()
	f.calls++
	f.perKey[key]++
	n, block := f.calls, f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
		}
	}
	_, hasDL := ctx.Deadline()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ctxErrs = append(f.ctxErrs, ctx.Err())
	f.hasDL = append(f.hasDL, hasDL)
	if ctx.Err() != nil {
		return creds.Credentials{}, fmt.Errorf("fake sts: %w", ctx.Err())
	}
	if f.err != nil {
		return creds.Credentials{}, f.err
	}
	now := f.clock.Now()
	return creds.Credentials{
		AccessKeyID:     fmt.Sprintf("AKIA%04d", n),
		SecretAccessKey: fmt.Sprintf("secret-%04d", n),
		SessionToken:    fmt.Sprintf("token-%04d", n),
		Expiration:      now.Add(session),
		LastUpdated:     now,
	}, nil
}

func (f *fakeSTS) setErr(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }
func (f *fakeSTS) setBlock(ch chan struct{}) {
	f.mu.Lock()
	f.block = ch
	f.mu.Unlock()
}
func (f *fakeSTS) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.calls }
func (f *fakeSTS) countKey(k creds.Key) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.perKey[k]
}

// inUse is a concurrency-safe set for Config.InUse.
type inUse struct {
	mu   sync.Mutex
	keys map[creds.Key]bool
}

func (u *inUse) set(k creds.Key, v bool) { u.mu.Lock(); u.keys[k] = v; u.mu.Unlock() }
func (u *inUse) InUse(k creds.Key) bool  { u.mu.Lock(); defer u.mu.Unlock(); return u.keys[k] }

type harness struct {
	c     *Cache
	clock *fakeClock
	sts   *fakeSTS
	reg   *prometheus.Registry
	use   *inUse
	logs  *syncbuf.Buffer
}

// newHarness builds a cache with the server's default lifetimes on a fake
// clock. Every key is in use unless the test says otherwise.
func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	clk := &fakeClock{t: t0}
	h := &harness{
		clock: clk,
		sts:   newFakeSTS(clk),
		reg:   prometheus.NewRegistry(),
		use:   &inUse{keys: map[creds.Key]bool{}},
		logs:  &syncbuf.Buffer{},
	}
	cfg := Config{
		Refresh:      40 * time.Minute,
		MinServe:     5 * time.Minute,
		DeniedTTL:    30 * time.Second,
		MaxEntries:   100,
		FetchTimeout: 5 * time.Second,
		InUse:        func(k creds.Key) bool { return true },
		Now:          clk.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, h.sts, h.reg, log)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	return h
}

func (h *harness) metric(t *testing.T, name, result string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := result == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == result {
					match = true
				}
			}
			if !match {
				continue
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{result=%q} not registered", name, result)
	return 0
}

// waiters is how many Gets share the in-flight call for key.
func (h *harness) waiters(key creds.Key) int {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if cl, ok := h.c.inflight[key]; ok {
		return cl.waiters
	}
	return -1
}

func (h *harness) idle() bool {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return len(h.c.inflight) == 0
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func key(name string) creds.Key {
	return creds.Key{RoleARN: "arn:aws:iam::123456789012:role/" + name, SessionName: "kiam-kiam"}
}

func TestWithDefaults(t *testing.T) {
	tests := []struct {
		name    string
		in      Config
		want    func(Config) bool
		wantErr bool
	}{
		{name: "zero takes defaults", in: Config{}, want: func(c Config) bool {
			return c.Refresh == DefaultRefresh && c.MinServe == DefaultMinServe && c.DeniedTTL == DefaultDeniedTTL &&
				c.MaxEntries == DefaultMaxEntries && c.FetchTimeout == DefaultFetchTimeout &&
				c.RefreshInterval == 30*time.Second && c.Now != nil && c.Rand != nil &&
				c.RetryBackoff == time.Second && c.MaxRetryBackoff == time.Minute && c.StaleWait == DefaultStaleWait
		}},
		{name: "backoff derived from a short refresh window", in: Config{Refresh: 30 * time.Second, MinServe: 15 * time.Second},
			want: func(c Config) bool {
				return c.MaxRetryBackoff == 1875*time.Millisecond && c.RetryBackoff == 1875*time.Millisecond/8
			}},
		{name: "explicit backoff kept", in: Config{RetryBackoff: 2 * time.Second, MaxRetryBackoff: 3 * time.Second},
			want: func(c Config) bool { return c.RetryBackoff == 2*time.Second && c.MaxRetryBackoff == 3*time.Second }},
		{name: "backoff above its cap", in: Config{RetryBackoff: 2 * time.Minute}, wantErr: true},
		{name: "negative backoff", in: Config{RetryBackoff: -time.Second}, wantErr: true},
		{name: "negative stale wait", in: Config{StaleWait: -time.Second}, wantErr: true},
		{name: "interval derived from refresh", in: Config{Refresh: 200 * time.Second, MinServe: time.Second},
			want: func(c Config) bool { return c.RefreshInterval == 10*time.Second }},
		{name: "interval floor", in: Config{Refresh: time.Second, MinServe: time.Millisecond},
			want: func(c Config) bool { return c.RefreshInterval == 100*time.Millisecond }},
		{name: "explicit interval kept", in: Config{RefreshInterval: time.Minute},
			want: func(c Config) bool { return c.RefreshInterval == time.Minute }},
		{name: "negative refresh", in: Config{Refresh: -time.Second}, wantErr: true},
		{name: "negative denied ttl", in: Config{DeniedTTL: -time.Second}, wantErr: true},
		{name: "negative max entries", in: Config{MaxEntries: -1}, wantErr: true},
		{name: "min serve not below refresh", in: Config{Refresh: 5 * time.Minute, MinServe: 5 * time.Minute}, wantErr: true},
		{name: "min serve default above short refresh", in: Config{Refresh: time.Minute}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := withDefaults(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("err = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.want(got) {
				t.Fatalf("unexpected config %+v", got)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	use := func(creds.Key) bool { return true }
	sts := newFakeSTS(&fakeClock{t: t0})
	if _, err := New(Config{InUse: use}, nil, nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil delegate: err = %v", err)
	}
	if _, err := New(Config{}, sts, nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil InUse: err = %v", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{InUse: use}, sts, reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{InUse: use}, sts, reg, nil); err == nil {
		t.Error("registering twice on one registry succeeded")
	}
}

func TestConcurrentGetsShareOneFetch(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	h.sts.setBlock(release)
	k := key("web")

	const n = 200
	results := make(chan creds.Credentials, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			cr, err := h.c.Get(context.Background(), k)
			if err != nil {
				t.Error(err)
			}
			results <- cr
		})
	}
	eventually(t, "200 waiters", func() bool { return h.waiters(k) == n })
	close(release)
	wg.Wait()
	close(results)

	if got := h.sts.count(); got != 1 {
		t.Fatalf("Assume called %d times, want 1", got)
	}
	for cr := range results {
		if cr.AccessKeyID != "AKIA0001" {
			t.Fatalf("caller got %q, want the shared AKIA0001", cr.AccessKeyID)
		}
	}
	if got := h.metric(t, "podiam_credcache_requests_total", "miss"); got != n {
		t.Fatalf("miss = %v, want %d", got, n)
	}
	if _, err := h.c.Get(context.Background(), k); err != nil || h.sts.count() != 1 {
		t.Fatalf("a later Get was not a hit: err %v, calls %d", err, h.sts.count())
	}
	if got := h.metric(t, "podiam_credcache_requests_total", "hit"); got != 1 {
		t.Fatalf("hit = %v, want 1", got)
	}
	if got := h.metric(t, "podiam_credcache_entries", ""); got != 1 {
		t.Fatalf("entries = %v, want 1", got)
	}
}

func TestCancelledWaiterDoesNotCancelFetch(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	h.sts.setBlock(release)
	k := key("web")

	ctx, cancel := context.WithCancel(context.Background())
	cancelledErr := make(chan error, 1)
	go func() {
		_, err := h.c.Get(ctx, k)
		cancelledErr <- err
	}()
	// The cancellable caller starts the fetch, so it is its ctx that must
	// not reach STS.
	eventually(t, "first waiter", func() bool { return h.waiters(k) == 1 })
	other := make(chan error, 1)
	var got creds.Credentials
	go func() {
		var err error
		got, err = h.c.Get(context.Background(), k)
		other <- err
	}()
	eventually(t, "2 waiters", func() bool { return h.waiters(k) == 2 })

	cancel()
	select {
	case err := <-cancelledErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled caller err = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled caller kept waiting for the fetch")
	}
	close(release)
	if err := <-other; err != nil {
		t.Fatalf("other caller: %v", err)
	}
	if got.AccessKeyID != "AKIA0001" {
		t.Fatalf("other caller got %+v", got)
	}
	h.sts.mu.Lock()
	defer h.sts.mu.Unlock()
	if h.sts.ctxErrs[0] != nil {
		t.Fatalf("shared fetch ctx was cancelled: %v", h.sts.ctxErrs[0])
	}
	if !h.sts.hasDL[0] {
		t.Fatal("shared fetch ctx has no FetchTimeout deadline")
	}
}

func TestFetchTimeoutIsUnavailable(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FetchTimeout = 50 * time.Millisecond })
	h.sts.setBlock(make(chan struct{})) // never released
	_, err := h.c.Get(context.Background(), key("slow"))
	if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrUnavailable wrapping DeadlineExceeded", err)
	}
}

func TestGetRefreshesAheadAtThreshold(t *testing.T) {
	tests := []struct {
		name      string
		elapsed   time.Duration // since the first fetch; session is 1h, Refresh 40m
		wantCalls int
	}{
		{"fresh", time.Minute, 1},
		{"just above threshold", 20*time.Minute - time.Second, 1},
		{"at threshold", 20 * time.Minute, 2},
		{"past threshold", 30 * time.Minute, 2},
		{"expired", 2 * time.Hour, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			k := key("web")
			if _, err := h.c.Get(context.Background(), k); err != nil {
				t.Fatal(err)
			}
			h.clock.Add(tt.elapsed)
			cr, err := h.c.Get(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.sts.count(); got != tt.wantCalls {
				t.Fatalf("calls = %d, want %d", got, tt.wantCalls)
			}
			if left := cr.Remaining(h.clock.Now()); left <= 40*time.Minute {
				t.Fatalf("served credentials with %v left, want > 40m", left)
			}
		})
	}
}

func TestRefreshDueOnlyKeysInUse(t *testing.T) {
	h := newHarness(t, nil)
	h.c.cfg.InUse = h.use.InUse
	used, unused, unusedFresh := key("used"), key("unused"), key("fresh")
	h.use.set(used, true)
	ctx := context.Background()
	for _, k := range []creds.Key{used, unused} {
		if _, err := h.c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	h.clock.Add(15 * time.Minute)
	if _, err := h.c.Get(ctx, unusedFresh); err != nil {
		t.Fatal(err)
	}

	h.c.RefreshDue(ctx) // nothing is due yet
	if got := h.sts.count(); got != 3 || h.c.Len() != 3 {
		t.Fatalf("early scan: calls %d len %d, want 3 and 3", got, h.c.Len())
	}

	h.clock.Add(5 * time.Minute) // used and unused now have exactly 40m left
	h.c.RefreshDue(ctx)
	if got := h.sts.countKey(used); got != 2 {
		t.Fatalf("used key fetched %d times, want 2", got)
	}
	if got := h.sts.countKey(unused); got != 1 {
		t.Fatalf("unused key fetched %d times, want 1 (not refreshed)", got)
	}
	if h.c.Len() != 2 {
		t.Fatalf("len = %d, want 2 (unused due key dropped, unused fresh key kept)", h.c.Len())
	}
	h.c.mu.Lock()
	_, hasUnused := h.c.lru.Peek(unused)
	_, hasFresh := h.c.lru.Peek(unusedFresh)
	h.c.mu.Unlock()
	if hasUnused || !hasFresh {
		t.Fatalf("unused kept %v, fresh kept %v; want false, true", hasUnused, hasFresh)
	}
	if got := h.metric(t, "podiam_credcache_refreshes_total", "ok"); got != 1 {
		t.Fatalf("refreshes ok = %v, want 1", got)
	}
	if got := h.metric(t, "podiam_credcache_entries", ""); got != 2 {
		t.Fatalf("entries gauge = %v, want 2", got)
	}
	cr, err := h.c.Get(ctx, used)
	if err != nil || cr.AccessKeyID != "AKIA0004" || h.sts.count() != 4 {
		t.Fatalf("Get after refresh: %v %q calls %d, want the refreshed AKIA0004 from cache", err, cr.AccessKeyID, h.sts.count())
	}
}

func TestRefreshFailureKeepsCredentialsAndLogs(t *testing.T) {
	h := newHarness(t, nil)
	k := key("web")
	ctx := context.Background()
	if _, err := h.c.Get(ctx, k); err != nil {
		t.Fatal(err)
	}
	h.sts.setErr(fmt.Errorf("throttled: %w", creds.ErrUnavailable))
	h.clock.Add(25 * time.Minute)
	h.c.RefreshDue(ctx)

	if got := h.metric(t, "podiam_credcache_refreshes_total", "error"); got != 1 {
		t.Fatalf("refreshes error = %v, want 1", got)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "role_arn="+k.RoleARN) || !strings.Contains(logs, "throttled") ||
		!strings.Contains(logs, "failures=1") || !strings.Contains(logs, "retry_at=2025-06-01T12:25:") {
		t.Fatalf("refresh failure log lacks role_arn, error, failures or retry_at: %q", logs)
	}
	if strings.Contains(logs, "secret-0001") || strings.Contains(logs, "token-0001") {
		t.Fatalf("log leaked a secret: %q", logs)
	}
	cr, err := h.c.Get(ctx, k)
	if err != nil || cr.AccessKeyID != "AKIA0001" {
		t.Fatalf("Get after failed refresh: %v %q, want stale AKIA0001", err, cr.AccessKeyID)
	}
	h.sts.setErr(nil)
	h.c.RefreshDue(ctx) // in backoff: no call yet
	if got := h.sts.count(); got != 2 {
		t.Fatalf("calls = %d during the backoff, want 2", got)
	}
	h.clock.Add(h.c.cfg.MaxRetryBackoff)
	h.c.RefreshDue(ctx) // still due, so the next scan after the backoff retries
	if got := h.metric(t, "podiam_credcache_refreshes_total", "ok"); got != 1 {
		t.Fatalf("refreshes ok = %v after recovery, want 1", got)
	}
}

func TestDeniedCachedForTTL(t *testing.T) {
	h := newHarness(t, nil)
	k := key("forbidden")
	ctx := context.Background()
	h.sts.setErr(fmt.Errorf("AccessDenied: %w", creds.ErrDenied))

	for i := range 3 {
		_, err := h.c.Get(ctx, k)
		if !errors.Is(err, creds.ErrDenied) {
			t.Fatalf("get %d: err = %v, want ErrDenied", i, err)
		}
	}
	if got := h.sts.count(); got != 1 {
		t.Fatalf("calls = %d within DeniedTTL, want 1", got)
	}
	if got := h.metric(t, "podiam_credcache_requests_total", "denied_cached"); got != 2 {
		t.Fatalf("denied_cached = %v, want 2", got)
	}
	h.c.Prefetch(k) // a remembered denial is not prefetched either
	if got := h.sts.count(); got != 1 {
		t.Fatalf("prefetch of a denied key called STS")
	}

	h.clock.Add(30*time.Second - time.Nanosecond)
	if _, err := h.c.Get(ctx, k); !errors.Is(err, creds.ErrDenied) || h.sts.count() != 1 {
		t.Fatalf("just before TTL: err %v calls %d", err, h.sts.count())
	}
	h.clock.Add(time.Nanosecond)
	h.sts.setErr(nil)
	if _, err := h.c.Get(ctx, k); err != nil || h.sts.count() != 2 {
		t.Fatalf("after TTL: err %v calls %d, want success from a second call", err, h.sts.count())
	}
}

// A denial on refresh means STS no longer issues credentials for the key;
// the old credentials must not be served as a fallback.
func TestDeniedOnRefreshDropsCredentials(t *testing.T) {
	h := newHarness(t, nil)
	k := key("revoked")
	ctx := context.Background()
	if _, err := h.c.Get(ctx, k); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(25 * time.Minute)
	h.sts.setErr(fmt.Errorf("AccessDenied: %w", creds.ErrDenied))
	h.c.RefreshDue(ctx)
	if _, err := h.c.Get(ctx, k); !errors.Is(err, creds.ErrDenied) {
		t.Fatalf("err = %v, want cached ErrDenied", err)
	}
	// No pod asked, so nobody else logs a denial found by a refresh.
	if logs := h.logs.String(); !strings.Contains(logs, "credential refresh failed") || !strings.Contains(logs, "AccessDenied") {
		t.Fatalf("refresh denial not logged: %q", logs)
	}
	h.clock.Add(time.Minute) // denial expired; STS now unavailable
	h.sts.setErr(creds.ErrUnavailable)
	if _, err := h.c.Get(ctx, k); !errors.Is(err, creds.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable and no stale fallback", err)
	}
	h.use.set(k, false)
	h.c.cfg.InUse = h.use.InUse
	h.clock.Add(h.c.cfg.MaxRetryBackoff) // past the backoff of that failure
	h.c.RefreshDue(ctx)
	if h.c.Len() != 0 {
		t.Fatalf("failed key no pod uses kept: len %d", h.c.Len())
	}
}

func TestUnavailableFallsBackToCached(t *testing.T) {
	tests := []struct {
		name      string
		elapsed   time.Duration // since the first fetch of a 1h session
		err       error
		wantStale bool
	}{
		{"due, plenty left", 30 * time.Minute, creds.ErrUnavailable, true},
		{"just above MinServe", 55*time.Minute - time.Second, creds.ErrUnavailable, true},
		{"at MinServe", 55 * time.Minute, creds.ErrUnavailable, false},
		{"expired", 2 * time.Hour, creds.ErrUnavailable, false},
		{"unclassified error", 30 * time.Minute, errors.New("connection reset"), true},
		{"unclassified error, too little left", 56 * time.Minute, errors.New("connection reset"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			k := key("web")
			ctx := context.Background()
			if _, err := h.c.Get(ctx, k); err != nil {
				t.Fatal(err)
			}
			h.sts.setErr(tt.err)
			h.clock.Add(tt.elapsed)
			for i := range 2 { // the second is answered from the backoff
				cr, err := h.c.Get(ctx, k)
				if tt.wantStale {
					if err != nil || cr.AccessKeyID != "AKIA0001" {
						t.Fatalf("get %d: %v %q, want stale AKIA0001", i, err, cr.AccessKeyID)
					}
				} else {
					if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, tt.err) {
						t.Fatalf("get %d: err = %v, want ErrUnavailable wrapping %v", i, err, tt.err)
					}
				}
			}
			if got := h.sts.count(); got != 2 {
				t.Fatalf("calls = %d, want 2 (no new call while the key backs off)", got)
			}
			wantStale, wantBackoff := 0.0, 1.0
			if tt.wantStale {
				wantStale, wantBackoff = 2, 0
			}
			if got := h.metric(t, "podiam_credcache_requests_total", "stale"); got != wantStale {
				t.Fatalf("stale = %v, want %v", got, wantStale)
			}
			if got := h.metric(t, "podiam_credcache_requests_total", "backoff"); got != wantBackoff {
				t.Fatalf("backoff = %v, want %v", got, wantBackoff)
			}
		})
	}
}

// With nothing to serve, a key in backoff fails at once with the last
// error, and only a pod that still uses it keeps its failure count.
func TestUnavailableWithNothingCached(t *testing.T) {
	h := newHarness(t, nil)
	h.c.cfg.InUse = h.use.InUse
	k := key("web")
	h.use.set(k, true)
	ctx := context.Background()
	h.sts.setErr(errors.New("dial tcp: refused"))
	if _, err := h.c.Get(ctx, k); !errors.Is(err, creds.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	_, err := h.c.Get(ctx, k)
	if !errors.Is(err, creds.ErrUnavailable) || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "retrying in") {
		t.Fatalf("err in backoff = %v, want ErrUnavailable with the last error and the wait", err)
	}
	if h.sts.count() != 1 {
		t.Fatalf("calls = %d, want 1", h.sts.count())
	}
	h.clock.Add(h.c.cfg.MaxRetryBackoff)
	h.c.RefreshDue(ctx) // in use: kept, but not retried on a timer
	if h.c.Len() != 1 || h.sts.count() != 1 {
		t.Fatalf("after the backoff: len %d calls %d, want 1 and 1", h.c.Len(), h.sts.count())
	}
	if _, err := h.c.Get(ctx, k); !errors.Is(err, creds.ErrUnavailable) || h.sts.count() != 2 {
		t.Fatalf("Get after the backoff: err %v calls %d, want a second call", err, h.sts.count())
	}
	h.c.mu.Lock()
	e, _ := h.c.lru.Peek(k)
	failures := e.failures
	h.c.mu.Unlock()
	if failures != 2 {
		t.Fatalf("failures = %d, want 2: the count must survive the scan", failures)
	}
	h.use.set(k, false)
	h.clock.Add(h.c.cfg.MaxRetryBackoff)
	h.c.RefreshDue(ctx)
	if h.c.Len() != 0 {
		t.Fatalf("failed key no pod uses kept: len %d", h.c.Len())
	}
}

func TestBackoff(t *testing.T) {
	const base, maxB = time.Second, time.Minute
	tests := []struct {
		n      int
		r      float64
		lo, hi time.Duration
	}{
		{1, 0, 500 * time.Millisecond, 500 * time.Millisecond},
		{1, 0.999999, 999 * time.Millisecond, time.Second},
		{2, 0, time.Second, time.Second},
		{3, 0.5, 3 * time.Second, 3 * time.Second},
		{6, 0, 16 * time.Second, 16 * time.Second},
		{7, 0, 30 * time.Second, 30 * time.Second}, // 64s capped at 60s
		{7, 0.999999, 59 * time.Second, time.Minute},
		{1000, 0, 30 * time.Second, 30 * time.Second}, // no overflow
	}
	for _, tt := range tests {
		if got := backoff(tt.n, base, maxB, tt.r); got < tt.lo || got > tt.hi {
			t.Errorf("backoff(%d, r=%v) = %v, want in [%v, %v]", tt.n, tt.r, got, tt.lo, tt.hi)
		}
	}
	// The lower bound doubles, so whatever the jitter, the n+1-th wait is
	// never shorter than the n-th while it is below the cap (1s..32s).
	for n := 1; n < 6; n++ {
		if hiN, loNext := backoff(n, base, maxB, 0.999999), backoff(n+1, base, maxB, 0); loNext < hiN-time.Millisecond {
			t.Errorf("backoff %d can be %v but %d only %v", n, hiN, n+1, loNext)
		}
	}
}

// A key whose fetches fail is retried at doubling intervals however often
// pods ask, its held credentials are served meanwhile, and a success ends
// the backoff.
func TestFailingKeyBacksOff(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.RetryBackoff = time.Second
		c.MaxRetryBackoff = 8 * time.Second
		c.Rand = func() float64 { return 0 } // waits of exactly b/2
	})
	k := key("web")
	ctx := context.Background()
	if _, err := h.c.Get(ctx, k); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(25 * time.Minute) // due, 35m left: servable
	h.sts.setErr(fmt.Errorf("Throttling: %w", creds.ErrUnavailable))

	calls := h.sts.count()
	var waits []time.Duration
	var since time.Duration
	for range 600 { // ten minutes of a pod asking every second
		cr, err := h.c.Get(ctx, k)
		if err != nil || cr.AccessKeyID != "AKIA0001" {
			t.Fatalf("Get while STS fails: %v %q, want the held AKIA0001", err, cr.AccessKeyID)
		}
		h.c.RefreshDue(ctx)
		if n := h.sts.count(); n != calls {
			waits = append(waits, since)
			calls, since = n, 0
		}
		h.clock.Add(time.Second)
		since += time.Second
	}
	want := []time.Duration{0, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	// Checked on a one-second grid: each wait rounds up to whole seconds.
	for i, w := range want {
		if i >= len(waits) {
			t.Fatalf("only %d calls in ten minutes: %v", len(waits), waits)
		}
		if got, lo := waits[i], w.Truncate(time.Second); got < lo || got > lo+time.Second {
			t.Errorf("wait before call %d = %v, want about %v (all %v)", i+1, got, w, waits)
		}
	}
	if len(waits) > 160 {
		t.Errorf("%d calls in ten minutes, want backoff-bound (about 150 at the 4s cap)", len(waits))
	}

	h.sts.setErr(nil)
	h.clock.Add(8 * time.Second)
	if cr, err := h.c.Get(ctx, k); err != nil || cr.AccessKeyID == "AKIA0001" {
		t.Fatalf("after recovery: %v %q, want fresh credentials", err, cr.AccessKeyID)
	}
	h.c.mu.Lock()
	e, _ := h.c.lru.Peek(k)
	failures, retryAt := e.failures, e.retryAt
	h.c.mu.Unlock()
	if failures != 0 || !retryAt.IsZero() {
		t.Fatalf("after success: failures %d retryAt %v, want the backoff reset", failures, retryAt)
	}
}

// A refresh that hangs does not hold up a pod whose credentials are due
// but still good: it gets them after StaleWait, and the fresh ones later.
func TestStaleWaitBoundsSlowRefresh(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.StaleWait = 20 * time.Millisecond })
	k := key("web")
	ctx := context.Background()
	if _, err := h.c.Get(ctx, k); err != nil {
		t.Fatal(err)
	}
	h.clock.Add(25 * time.Minute)
	release := make(chan struct{})
	h.sts.setBlock(release)
	got := make(chan creds.Credentials, 1)
	go func() {
		cr, err := h.c.Get(ctx, k)
		if err != nil {
			t.Error(err)
		}
		got <- cr
	}()
	select {
	case cr := <-got:
		if cr.AccessKeyID != "AKIA0001" {
			t.Fatalf("got %q, want the held AKIA0001", cr.AccessKeyID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Get waited for a hanging refresh although it held valid credentials")
	}
	if h.waiters(k) != 0 {
		t.Fatalf("the caller that gave up is still counted as a waiter")
	}
	close(release)
	eventually(t, "refresh to finish", h.idle)
	if cr, err := h.c.Get(ctx, k); err != nil || cr.AccessKeyID != "AKIA0002" {
		t.Fatalf("after the refresh: %v %q, want AKIA0002 as a hit", err, cr.AccessKeyID)
	}
	if got := h.metric(t, "podiam_credcache_requests_total", "stale"); got != 1 {
		t.Fatalf("stale = %v, want 1", got)
	}
}

func TestLRUNeverEvictsInUse(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxEntries = 2 })
	h.c.cfg.InUse = h.use.InUse
	ctx := context.Background()
	get := func(k creds.Key) {
		t.Helper()
		if _, err := h.c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	has := func(k creds.Key) bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		return h.c.lru.Contains(k)
	}
	a, b, c, d, e := key("a"), key("b"), key("c"), key("d"), key("e")
	for _, k := range []creds.Key{a, b, c} {
		h.use.set(k, true)
	}

	get(a)
	get(b)
	get(c) // every key in use: grow past the cap
	if h.c.Len() != 3 || !has(a) || !has(b) {
		t.Fatalf("len %d, a %v, b %v: an in-use key was evicted", h.c.Len(), has(a), has(b))
	}
	if got := h.metric(t, "podiam_credcache_over_capacity_total", ""); got != 1 {
		t.Fatalf("over capacity = %v, want 1", got)
	}
	if got := h.metric(t, "podiam_credcache_evictions_total", ""); got != 0 {
		t.Fatalf("evictions = %v, want 0", got)
	}

	// a is the oldest but still in use; b is the oldest not in use.
	h.use.set(b, false)
	get(d)
	if has(b) || !has(a) || !has(c) || !has(d) {
		t.Fatalf("after inserting d: a %v b %v c %v d %v, want b evicted only", has(a), has(b), has(c), has(d))
	}
	if got := h.metric(t, "podiam_credcache_evictions_total", ""); got != 1 {
		t.Fatalf("evictions = %v, want 1", got)
	}

	// A hit refreshes recency: with a and c unused, touching a makes c the victim.
	h.use.set(a, false)
	h.use.set(c, false)
	get(a)
	get(e)
	if !has(a) || has(c) {
		t.Fatalf("after inserting e: a %v c %v, want a kept (recently used) and c evicted", has(a), has(c))
	}
	if got := h.metric(t, "podiam_credcache_evictions_total", ""); got != 2 {
		t.Fatalf("evictions = %v, want 2", got)
	}
}

// After a period over the cap, dropping keys brings the cap back.
func TestLRUShrinksBackToCap(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxEntries = 2 })
	h.c.cfg.InUse = h.use.InUse
	ctx := context.Background()
	keys := []creds.Key{key("a"), key("b"), key("c"), key("d")}
	for _, k := range keys {
		h.use.set(k, true)
		if _, err := h.c.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if h.c.Len() != 4 {
		t.Fatalf("len %d, want 4", h.c.Len())
	}
	for _, k := range keys {
		h.use.set(k, false)
	}
	h.clock.Add(25 * time.Minute)
	h.c.RefreshDue(ctx)
	if h.c.Len() != 0 || h.c.size != 2 {
		t.Fatalf("after dropping unused keys: len %d size %d, want 0 and 2", h.c.Len(), h.c.size)
	}
	for _, n := range []string{"x", "y", "z"} {
		if _, err := h.c.Get(ctx, key(n)); err != nil {
			t.Fatal(err)
		}
	}
	if h.c.Len() != 2 {
		t.Fatalf("len %d after three unused keys, want the cap 2", h.c.Len())
	}
}

func TestPrefetch(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	h.sts.setBlock(release)
	k := key("new-pod")

	returned := make(chan struct{})
	go func() {
		h.c.Prefetch(k)
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Prefetch blocked on STS")
	}
	h.c.Prefetch(k) // in flight: skipped
	got := make(chan error, 1)
	go func() {
		_, err := h.c.Get(context.Background(), k)
		got <- err
	}()
	eventually(t, "Get to join the prefetch", func() bool { return h.waiters(k) == 1 })
	close(release)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n := h.sts.count(); n != 1 {
		t.Fatalf("calls = %d, want 1 shared by Prefetch and Get", n)
	}
	h.c.Prefetch(k) // fresh: skipped
	if n := h.sts.count(); n != 1 {
		t.Fatalf("prefetch of a fresh key called STS")
	}
	if v := h.metric(t, "podiam_credcache_prefetches_total", "ok"); v != 1 {
		t.Fatalf("prefetch ok = %v, want 1", v)
	}
	if v := h.metric(t, "podiam_credcache_prefetches_total", "skipped"); v != 2 {
		t.Fatalf("prefetch skipped = %v, want 2", v)
	}

	h.clock.Add(20 * time.Minute) // due: a prefetch refreshes it
	h.sts.setErr(creds.ErrUnavailable)
	h.c.Prefetch(k)
	eventually(t, "prefetch to finish", h.idle)
	if v := h.metric(t, "podiam_credcache_prefetches_total", "error"); v != 1 {
		t.Fatalf("prefetch error = %v, want 1", v)
	}
}

// The limiter's reserves reach the cache: prefetches stop at half the
// burst, requests at the last token, and a refresh may still take it.
func TestLimiterPriorities(t *testing.T) {
	clk := &fakeClock{t: t0}
	lim, err := ratelimit.New(ratelimit.Config{Rate: 1e-9, Burst: 10, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *Config) {
		c.Limiter = lim
		c.FetchTimeout = 100 * time.Millisecond
		c.Now = clk.Now
	})
	h.clock = clk
	h.sts.clock = clk
	h.c.cfg.InUse = h.use.InUse
	ctx := context.Background()

	for i := range 6 {
		h.c.Prefetch(key(fmt.Sprintf("pre%d", i)))
	}
	eventually(t, "prefetches to finish", h.idle)
	if v := h.metric(t, "podiam_credcache_prefetches_total", "ok"); v != 5 {
		t.Fatalf("prefetch ok = %v, want 5 (half of burst 10)", v)
	}
	if v := h.metric(t, "podiam_credcache_prefetches_total", "skipped"); v != 1 {
		t.Fatalf("prefetch skipped = %v, want 1", v)
	}

	for i := range 4 {
		if _, err := h.c.Get(ctx, key(fmt.Sprintf("req%d", i))); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := h.c.Get(short, key("req-starved")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request past its reserve: err = %v, want to wait and time out", err)
	}
	eventually(t, "starved fetch to time out", h.idle)
	if n := h.sts.count(); n != 9 {
		t.Fatalf("calls = %d, want 9 (5 prefetches, 4 requests)", n)
	}

	h.use.set(key("pre0"), true)
	clk.Add(25 * time.Minute)
	h.c.RefreshDue(ctx)
	if v := h.metric(t, "podiam_credcache_refreshes_total", "ok"); v != 1 {
		t.Fatalf("refresh ok = %v, want 1: refresh must get the token reserved from requests", v)
	}
	if n := h.sts.count(); n != 10 {
		t.Fatalf("calls = %d, want 10", n)
	}
}

func TestRunRefreshesUntilCancelled(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RefreshInterval = 5 * time.Millisecond })
	k := key("web")
	if _, err := h.c.Get(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.c.Run(ctx) }()

	h.clock.Add(21 * time.Minute)
	eventually(t, "Run to refresh the due key", func() bool { return h.sts.count() == 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if v := testutil.ToFloat64(h.c.m.refreshes.WithLabelValues("ok")); v != 1 {
		t.Fatalf("refresh ok = %v, want 1", v)
	}
}

// Two namespaces using one role with different External IDs hold two
// sessions: the External ID is part of the key, so neither namespace is
// ever given the session assumed with the other's.
func TestExternalIDSeparatesEntries(t *testing.T) {
	h := newHarness(t, nil)
	a, b := key("shared"), key("shared")
	a.ExternalID, b.ExternalID = "tenant-a", "tenant-b"
	ca, err := h.c.Get(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := h.c.Get(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	if ca.AccessKeyID == cb.AccessKeyID || h.sts.countKey(a) != 1 || h.sts.countKey(b) != 1 || h.c.Len() != 2 {
		t.Fatalf("keys %s and %s, calls %d and %d, %d entries; want two sessions from two calls",
			ca.AccessKeyID, cb.AccessKeyID, h.sts.countKey(a), h.sts.countKey(b), h.c.Len())
	}
	for k, want := range map[creds.Key]string{a: ca.AccessKeyID, b: cb.AccessKeyID} {
		if c, err := h.c.Get(context.Background(), k); err != nil || c.AccessKeyID != want {
			t.Fatalf("Get(%s) = %s, %v; want its own %s", k.ExternalID, c.AccessKeyID, err, want)
		}
	}
	if h.sts.count() != 2 {
		t.Fatalf("%d STS calls, want 2", h.sts.count())
	}
}

// TestPeekNeverFetches: Peek answers with held credentials or the fetch
// under way, and never makes an STS call itself; a caller giving up leaves
// the shared fetch running.
func TestPeekNeverFetches(t *testing.T) {
	h := newHarness(t, nil)
	k := key("pushed-pod")
	if _, ok := h.c.Peek(context.Background(), k); ok || h.sts.count() != 0 {
		t.Fatalf("Peek of an unknown key: ok %v, %d STS calls", ok, h.sts.count())
	}
	release := make(chan struct{})
	h.sts.setBlock(release)
	h.c.Prefetch(k)
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan bool, 1)
	go func() { _, ok := h.c.Peek(ctx, k); gaveUp <- ok }()
	got := make(chan creds.Credentials, 1)
	go func() { c, _ := h.c.Peek(context.Background(), k); got <- c }()
	eventually(t, "two Peeks to join the prefetch", func() bool { return h.waiters(k) == 2 })
	cancel()
	if <-gaveUp {
		t.Fatal("a cancelled Peek reported credentials")
	}
	close(release)
	if c := <-got; c.AccessKeyID == "" {
		t.Fatal("Peek did not get the prefetch's answer")
	}
	if c, ok := h.c.Peek(context.Background(), k); !ok || c.AccessKeyID == "" {
		t.Fatal("held credentials not peeked")
	}
	if h.sts.count() != 1 {
		t.Fatalf("%d STS calls, want the prefetch's only", h.sts.count())
	}
}
