package supervise

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// untilDone is a well-behaved part: it runs until asked to stop.
func untilDone(stopped chan<- string, name string) Part {
	return Part{Name: name, Run: func(ctx context.Context) error {
		<-ctx.Done()
		stopped <- name
		return nil
	}}
}

func TestRunReturnsNilWhenCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan string, 3)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, untilDone(stopped, "a"), untilDone(stopped, "b"),
			// Returning ctx's error on the way out is stopping as asked.
			Part{Name: "c", Run: func(ctx context.Context) error { <-ctx.Done(); stopped <- "c"; return fmt.Errorf("c: %w", ctx.Err()) }})
	}()
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before ctx ended", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil after ctx ended", err)
	}
	if len(stopped) != 3 {
		t.Fatalf("%d parts had stopped when Run returned, want 3", len(stopped))
	}
}

// A part that returns nil while the process is meant to run is a failure:
// it cancels the others and Run names it.
func TestRunPartStoppingIsAnError(t *testing.T) {
	stopped := make(chan string, 1)
	err := Run(context.Background(), untilDone(stopped, "cache"),
		Part{Name: "pod watch", Run: func(context.Context) error { return nil }})
	if !errors.Is(err, ErrStopped) || err.Error() != "pod watch: stopped unexpectedly" {
		t.Fatalf("Run = %v, want the pod watch's unexpected stop", err)
	}
	if got := <-stopped; got != "cache" {
		t.Fatalf("stopped %q", got)
	}
}

// The first failure is returned as it is, the others are cancelled, and
// their own errors after the cancellation do not replace it.
func TestRunFirstErrorCancelsTheRest(t *testing.T) {
	boom := errors.New("listen: address in use")
	stopped := make(chan string, 2)
	err := Run(context.Background(),
		untilDone(stopped, "metadata"),
		untilDone(stopped, "metrics"),
		Part{Name: "grpc", Run: func(context.Context) error { return boom }},
		Part{Name: "late", Run: func(ctx context.Context) error { <-ctx.Done(); return context.Cause(ctx) }},
	)
	if err != boom {
		t.Fatalf("Run = %v, want %v unchanged", err, boom)
	}
	if len(stopped) != 2 {
		t.Fatalf("%d parts stopped, want 2", len(stopped))
	}
}

// An error a part meets while stopping is still reported: a metrics server
// that cannot shut down, say, is worth knowing about.
func TestRunErrorWhileStopping(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	bad := errors.New("shutdown: listener stuck")
	err := Run(ctx, Part{Name: "metrics", Run: func(ctx context.Context) error { <-ctx.Done(); return bad }})
	if err != bad {
		t.Fatalf("Run = %v, want %v", err, bad)
	}
}

func TestRunNoParts(t *testing.T) {
	if err := Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}
