package credcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/creds"
)

// These tests take Get's three steps one at a time; credcache_test.go
// drives Get as a whole.

// putEntry stores e for k as a finished fetch would have.
func (h *harness) putEntry(k creds.Key, e *entry) {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.storeLocked(k, e)
}

func credsLeft(h *harness, left time.Duration) creds.Credentials {
	return creds.Credentials{AccessKeyID: "AKIAHELD", SecretAccessKey: "s", SessionToken: "t",
		Expiration: h.clock.Now().Add(left), LastUpdated: h.clock.Now()}
}

func TestFastPath(t *testing.T) {
	errThrottled := fmt.Errorf("%w: throttled", creds.ErrUnavailable)
	errDenied := fmt.Errorf("%w: AccessDenied", creds.ErrDenied)
	tests := []struct {
		name     string
		entry    func(h *harness) *entry // nil: no entry
		result   result                  // "": a fetch is joined
		wantErr  error
		wantHeld bool
	}{
		{name: "nothing held: fetch", wantHeld: false},
		{name: "fresh: hit", result: resultHit,
			entry: func(h *harness) *entry { return &entry{creds: credsLeft(h, 50*time.Minute), hasCreds: true} }},
		{name: "due but servable: fetch, holding", wantHeld: true,
			entry: func(h *harness) *entry { return &entry{creds: credsLeft(h, 30*time.Minute), hasCreds: true} }},
		{name: "nearly expired: fetch, nothing held",
			entry: func(h *harness) *entry { return &entry{creds: credsLeft(h, 4*time.Minute), hasCreds: true} }},
		{name: "denial remembered", result: resultDeniedCached, wantErr: creds.ErrDenied,
			entry: func(h *harness) *entry {
				return &entry{denied: errDenied, deniedUntil: h.clock.Now().Add(time.Second)}
			}},
		{name: "denial forgotten: fetch",
			entry: func(h *harness) *entry { return &entry{denied: errDenied, deniedUntil: h.clock.Now()} }},
		{name: "backoff, nothing servable", result: resultBackoff, wantErr: creds.ErrUnavailable,
			entry: func(h *harness) *entry {
				return &entry{failures: 1, lastErr: errThrottled, retryAt: h.clock.Now().Add(time.Second)}
			}},
		{name: "backoff, servable credentials held", result: resultStale,
			entry: func(h *harness) *entry {
				return &entry{creds: credsLeft(h, 30*time.Minute), hasCreds: true, failures: 1, lastErr: errThrottled,
					retryAt: h.clock.Now().Add(time.Second)}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			block := make(chan struct{})
			defer close(block)
			h.sts.setBlock(block)
			k := key("r")
			if tt.entry != nil {
				h.putEntry(k, tt.entry(h))
			}
			a, cl, held := h.c.fastPath(context.Background(), k)
			if tt.result == "" {
				if cl == nil {
					t.Fatalf("answered %+v, want a fetch to wait for", a)
				}
				if h.waiters(k) != 1 {
					t.Fatalf("%d waiters, want the caller counted", h.waiters(k))
				}
				if (held != nil) != tt.wantHeld {
					t.Fatalf("held %v, want held: %v", held, tt.wantHeld)
				}
				return
			}
			if cl != nil || held != nil {
				t.Fatalf("joined a fetch (held %v), want an answer", held)
			}
			if a.result != tt.result || !errors.Is(a.err, tt.wantErr) || (tt.wantErr == nil) != (a.err == nil) {
				t.Fatalf("answer %+v, want result %s and error %v", a, tt.result, tt.wantErr)
			}
			if tt.wantErr == nil && a.creds.AccessKeyID != "AKIAHELD" {
				t.Fatalf("credentials %+v, want the held ones", a.creds)
			}
			if h.sts.count() != 0 {
				t.Fatalf("%d STS calls for an answer from the entry", h.sts.count())
			}
		})
	}
}

func TestWaitGivesUpButLeavesTheFetch(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.StaleWait = 10 * time.Millisecond })
	block := make(chan struct{})
	h.sts.setBlock(block)
	k := key("r")
	h.putEntry(k, &entry{creds: credsLeft(h, 30*time.Minute), hasCreds: true})

	// Held credentials: served after StaleWait.
	_, cl, held := h.c.fastPath(context.Background(), k)
	if a := h.c.wait(context.Background(), k, cl, held); a.result != resultStale || a.creds.AccessKeyID != "AKIAHELD" {
		t.Fatalf("answer %+v, want the held credentials as stale", a)
	}
	// A caller that goes away gets its ctx error, not counted.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, cl2, held2 := h.c.fastPath(ctx, k)
	if cl2 != cl {
		t.Fatal("second caller started another fetch")
	}
	a := h.c.wait(ctx, k, cl2, held2)
	if a.result != "" || !errors.Is(a.err, context.Canceled) {
		t.Fatalf("answer %+v, want the uncounted ctx error", a)
	}
	if h.waiters(k) != 0 {
		t.Fatalf("%d waiters after both left, want 0", h.waiters(k))
	}
	close(block)
	<-cl.done
	if h.sts.count() != 1 || cl.err != nil {
		t.Fatalf("fetch: %d calls, err %v; want it finished for later callers", h.sts.count(), cl.err)
	}
}

func TestFallback(t *testing.T) {
	errDown := fmt.Errorf("%w: throttled", creds.ErrUnavailable)
	tests := []struct {
		name   string
		left   time.Duration // 0: no entry
		result result
	}{
		{"servable credentials held", 10 * time.Minute, resultStale},
		{"credentials about to expire", 5 * time.Minute, resultMiss},
		{"nothing held", 0, resultMiss},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			k := key("r")
			if tt.left > 0 {
				h.putEntry(k, &entry{creds: credsLeft(h, tt.left), hasCreds: true})
			}
			a := h.c.fallback(k, errDown)
			if a.result != tt.result {
				t.Fatalf("result %s, want %s", a.result, tt.result)
			}
			if tt.result == resultStale {
				if a.err != nil || a.creds.AccessKeyID != "AKIAHELD" {
					t.Fatalf("answer %+v, want the held credentials", a)
				}
				return
			}
			if !errors.Is(a.err, creds.ErrUnavailable) || !strings.Contains(a.err.Error(), k.RoleARN) {
				t.Fatalf("error %v, want the fetch's, naming the role", a.err)
			}
		})
	}
}

// A nil registry and a nil logger are accepted: metrics kept but not
// registered, logs discarded.
func TestNewWithoutRegistryOrLogger(t *testing.T) {
	sts := newFakeSTS(&fakeClock{t: t0})
	c, err := New(Config{InUse: func(creds.Key) bool { return true }}, sts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), key("r")); err != nil {
		t.Fatal(err)
	}
	sts.setErr(errors.New("boom"))
	c.Prefetch(key("other"))
	if got := testutil.ToFloat64(c.m.requests.WithLabelValues(string(resultMiss))); got != 1 {
		t.Fatalf("requests{miss} = %v, want 1", got)
	}
}
