package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// runner lets the demo reuse test/testenv, whose helpers take a testing.TB,
// in a program. It behaves like a *testing.T for the methods testenv calls:
// Fatalf ends the calling goroutine (so the demo runs in one of its own),
// cleanups run last-in first-out, and TempDir makes directories under the
// run's directory, which the supervisor deletes whatever happens.
//
// The embedded testing.TB is nil; it is there only because TB has an
// unexported method. A testenv change that calls another method panics in
// the demo, and the demo's own test (which CI runs) catches that.
type runner struct {
	testing.TB

	dir string // every TempDir lives here

	mu       sync.Mutex
	cleanups []func()
	closed   bool // cleanups have run: later ones run at once
	failed   bool
	errs     []string // Errorf and Fatalf messages
	logs     []string // Logf messages, shown when the run failed
	dirs     int
}

func newRunner(dir string) *runner { return &runner{dir: dir} }

func (r *runner) Helper()      {}
func (r *runner) Name() string { return "podiam-demo" }

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *runner) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

// Fatalf records the failure and ends the calling goroutine, as
// testing.T.Fatalf does; deferred calls in that goroutine still run.
func (r *runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

func (r *runner) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

func (r *runner) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *runner) Log(args ...any) { r.Logf("%s", fmt.Sprint(args...)) }

// Cleanup registers f. Once the cleanups have run (the demo was
// interrupted while a helper was still starting something), f runs at once
// so that nothing it guards outlives the demo.
func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		f()
		return
	}
	r.cleanups = append(r.cleanups, f)
	r.mu.Unlock()
}

// TempDir returns a new directory under the run's directory.
func (r *runner) TempDir() string {
	r.mu.Lock()
	r.dirs++
	n := r.dirs
	r.mu.Unlock()
	dir, err := os.MkdirTemp(r.dir, fmt.Sprintf("t%d-", n))
	if err != nil {
		r.Fatalf("temp dir: %v", err)
	}
	return dir
}

// runCleanups runs every registered cleanup, newest first. A cleanup that
// calls Fatalf ends only itself, as in the testing package.
func (r *runner) runCleanups() {
	for {
		r.mu.Lock()
		if len(r.cleanups) == 0 {
			r.closed = true
			r.mu.Unlock()
			return
		}
		f := r.cleanups[len(r.cleanups)-1]
		r.cleanups = r.cleanups[:len(r.cleanups)-1]
		r.mu.Unlock()
		r.inGoroutine(f)
	}
}

// inGoroutine runs f in a goroutine of its own and waits for it, so that a
// Fatalf inside f ends f and not the caller.
func (r *runner) inGoroutine(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// report returns the recorded errors and, if any, the logged lines that
// explain them (testenv logs process output on failure).
func (r *runner) report() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.errs {
		fmt.Fprintf(&b, "%s\n", e)
	}
	for _, l := range r.logs {
		fmt.Fprintf(&b, "%s\n", l)
	}
	return b.String()
}
