package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

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

func newFake(t *testing.T, rate float64, burst int) (*Limiter, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	l, err := New(Config{Rate: rate, Burst: burst, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Rate: 0, Burst: 1},
		{Rate: -1, Burst: 1},
		{Rate: 1, Burst: 0},
		{Rate: 1, Burst: -3},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New(%+v) err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

// countAllowed takes tokens at priority p on a frozen clock until refused.
func countAllowed(l *Limiter, p Priority) int {
	n := 0
	for l.Allow(p) {
		n++
		if n > 1000 {
			break
		}
	}
	return n
}

func TestAllowReserves(t *testing.T) {
	tests := []struct {
		burst                      int
		refresh, request, prefetch int // tokens each may take from a full bucket alone
	}{
		{burst: 1, refresh: 1, request: 1, prefetch: 1},
		{burst: 2, refresh: 2, request: 1, prefetch: 1},
		{burst: 10, refresh: 10, request: 9, prefetch: 5},
		{burst: 100, refresh: 100, request: 90, prefetch: 50},
		{burst: 15, refresh: 15, request: 13, prefetch: 7},
	}
	for _, tt := range tests {
		for _, c := range []struct {
			p    Priority
			want int
		}{{Refresh, tt.refresh}, {Request, tt.request}, {Prefetch, tt.prefetch}} {
			l, _ := newFake(t, 1, tt.burst)
			if got := countAllowed(l, c.p); got != c.want {
				t.Errorf("burst %d priority %d: allowed %d, want %d", tt.burst, c.p, got, c.want)
			}
		}
	}
}

func TestAllowHigherPriorityGetsReserve(t *testing.T) {
	l, _ := newFake(t, 1, 10)
	if got := countAllowed(l, Prefetch); got != 5 {
		t.Fatalf("prefetch took %d, want 5", got)
	}
	if got := countAllowed(l, Request); got != 4 {
		t.Fatalf("request took %d after prefetch, want 4", got)
	}
	if l.Allow(Prefetch) {
		t.Fatal("prefetch allowed below its reserve")
	}
	if got := countAllowed(l, Refresh); got != 1 {
		t.Fatalf("refresh took %d of the reserve, want 1", got)
	}
}

func TestAllowRefillsAndCaps(t *testing.T) {
	l, clk := newFake(t, 2, 4) // 2 tokens/s
	if got := countAllowed(l, Refresh); got != 4 {
		t.Fatalf("initial burst %d, want 4", got)
	}
	clk.Add(400 * time.Millisecond) // 0.8 token
	if l.Allow(Refresh) {
		t.Fatal("allowed with 0.8 token")
	}
	clk.Add(100 * time.Millisecond) // 1.0 token
	if !l.Allow(Refresh) {
		t.Fatal("refused with 1 token")
	}
	clk.Add(time.Hour) // refill is capped at burst
	if got := countAllowed(l, Refresh); got != 4 {
		t.Fatalf("after long idle took %d, want burst 4", got)
	}
	clk.Add(-time.Minute) // a clock stepping back adds nothing
	if l.Allow(Refresh) {
		t.Fatal("clock stepping back produced a token")
	}
}

func TestAllowUnknownPriorityIsLowest(t *testing.T) {
	l, _ := newFake(t, 1, 10)
	if got := countAllowed(l, Priority(42)); got != 5 {
		t.Fatalf("unknown priority took %d, want prefetch's 5", got)
	}
	if got := countAllowed(l, Priority(-1)); got != 0 {
		t.Fatalf("negative priority took %d, want 0 after prefetch share", got)
	}
}

func TestWaitBlocksForRefill(t *testing.T) {
	l, err := New(Config{Rate: 20, Burst: 1}) // one token every 50ms
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	if err := l.Wait(ctx, Request); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Fatalf("first wait took %v with a full bucket", d)
	}
	for range 2 {
		if err := l.Wait(ctx, Request); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("three tokens at 20/s burst 1 took %v, want >= 100ms", d)
	}
}

func TestWaitContextDone(t *testing.T) {
	l, err := New(Config{Rate: 0.001, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Allow(Refresh) {
		t.Fatal("full bucket refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = l.Wait(ctx, Refresh)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("wait returned %v after its deadline", d)
	}

	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	l2, _ := New(Config{Rate: 1, Burst: 1})
	if err := l2.Wait(cancelled, Refresh); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v on a cancelled ctx, want Canceled", err)
	}
	if !l2.Allow(Refresh) {
		t.Fatal("a cancelled Wait consumed a token")
	}
}

// With the bucket empty, a Refresh waiter needs one token and a Prefetch
// waiter needs six (burst 10), so the refresh must finish first even though
// it started last.
func TestWaitPriorityOrder(t *testing.T) {
	l, err := New(Config{Rate: 25, Burst: 10}) // 40ms per token
	if err != nil {
		t.Fatal(err)
	}
	for l.Allow(Refresh) {
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	order := make(chan Priority, 2)
	var wg sync.WaitGroup
	for _, p := range []Priority{Prefetch, Refresh} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Wait(ctx, p); err != nil {
				t.Error(err)
			}
			order <- p
		}()
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	if first := <-order; first != Refresh {
		t.Fatalf("first done = %d, want Refresh", first)
	}
}
