package podindex

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/podiam/podiam/test/syncbuf"
)

// fakeLW answers List and Watch with the next queued error, or success;
// each successful Watch hands out a fake watch the test drives.
type fakeLW struct {
	mu      sync.Mutex
	errs    []error
	watches []*watch.FakeWatcher
}

func (f *fakeLW) next() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		return nil
	}
	err := f.errs[0]
	f.errs = f.errs[1:]
	return err
}

func (f *fakeLW) failNext(errs ...error) {
	f.mu.Lock()
	f.errs = append(f.errs, errs...)
	f.mu.Unlock()
}

func (f *fakeLW) List(metav1.ListOptions) (runtime.Object, error) {
	if err := f.next(); err != nil {
		return nil, err
	}
	return &corev1.PodList{}, nil
}

func (f *fakeLW) Watch(metav1.ListOptions) (watch.Interface, error) {
	if err := f.next(); err != nil {
		return nil, err
	}
	w := watch.NewFake()
	f.mu.Lock()
	f.watches = append(f.watches, w)
	f.mu.Unlock()
	return w, nil
}

// eventually waits for cond, which a watch's forwarding goroutine sets.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func TestWatchTracker(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	logs := &syncbuf.Buffer{}
	reg := prometheus.NewRegistry()
	w, err := NewWatchTracker(WatchConfig{Settle: 2 * time.Second, Now: clk.Now}, reg,
		slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeLW{}
	lw := w.Wrap(inner)
	gauge := func() float64 {
		t.Helper()
		n, err := testutil.GatherAndCount(reg, "podiam_server_pod_watch_current")
		if err != nil || n != 1 {
			t.Fatalf("gauge registered %d times: %v", n, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "podiam_server_pod_watch_current" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}

	if w.Current() {
		t.Fatal("current before any watch")
	}
	if _, err := lw.List(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	first, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.Current() || gauge() != 1 {
		t.Fatalf("not current right after a watch that continues a fresh list (gauge %v)", gauge())
	}
	clk.Step(2 * time.Second)
	if !w.Current() || gauge() != 1 {
		t.Fatalf("not current after the settle time (gauge %v)", gauge())
	}

	// Events pass through unchanged.
	pod := mkPod("a", ips("10.0.0.1"))
	go inner.watches[0].Add(pod)
	if ev := <-first.ResultChan(); ev.Type != watch.Added || ev.Object != pod {
		t.Fatalf("event %v %v", ev.Type, ev.Object)
	}

	// The API server goes away: the stream ends, then calls fail.
	inner.watches[0].Stop()
	if _, ok := <-first.ResultChan(); ok {
		t.Fatal("result channel still open after the inner watch ended")
	}
	eventually(t, "watch to count as closed", func() bool { return !w.Current() })
	refused := errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
	inner.failNext(refused, refused, refused)
	for range 2 {
		if _, err := lw.Watch(metav1.ListOptions{}); !errors.Is(err, refused) {
			t.Fatalf("Watch = %v, want the inner error", err)
		}
	}
	if _, err := lw.List(metav1.ListOptions{}); !errors.Is(err, refused) {
		t.Fatalf("List = %v, want the inner error", err)
	}
	if w.Current() || gauge() != 0 {
		t.Fatal("current while every call fails")
	}
	if got := testutil.ToFloat64(w.errors); got != 3 {
		t.Fatalf("errors = %v, want 3", got)
	}
	if n := strings.Count(logs.String(), "pod watch failing"); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1:\n%s", n, logs)
	}

	// An empty watch, what client-go returns when its call met EOF (a
	// load balancer with no API server behind it), is another failure.
	clk.Step(5 * time.Second)
	empty, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inner.watches[1].Stop()
	if _, ok := <-empty.ResultChan(); ok {
		t.Fatal("empty watch delivered an event")
	}
	eventually(t, "empty watch to count as failed", func() bool { return testutil.ToFloat64(w.errors) == 4 })
	if w.Current() || strings.Contains(logs.String(), "pod watch restored") {
		t.Fatalf("an empty watch counted as a recovery:\n%s", logs)
	}

	second, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w.Current() || strings.Contains(logs.String(), "pod watch restored") {
		t.Fatal("restored as soon as a watch call returned")
	}
	clk.Step(2 * time.Second)
	if !w.Current() {
		t.Fatal("not current after the watch came back and settled")
	}
	if !strings.Contains(logs.String(), "pod watch restored") || !strings.Contains(logs.String(), "failed_calls=4") {
		t.Fatalf("no restore line with the failure count:\n%s", logs)
	}
	if n := strings.Count(logs.String(), "pod watch failing"); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1:\n%s", n, logs)
	}

	// A too-old resource version is routine: counted, not warned about.
	gone := apierrors.NewResourceExpired("too old resource version")
	go inner.watches[2].Error(&gone.ErrStatus)
	if ev := <-second.ResultChan(); ev.Type != watch.Error {
		t.Fatalf("event %v, want the error passed on", ev.Type)
	}
	if got := testutil.ToFloat64(w.errors); got != 5 {
		t.Fatalf("errors = %v, want 5", got)
	}
	// Any other error event starts an outage.
	internal := apierrors.NewInternalError(errors.New("etcd down"))
	go inner.watches[2].Error(&internal.ErrStatus)
	<-second.ResultChan()
	if n := strings.Count(logs.String(), "pod watch failing"); n != 2 {
		t.Fatalf("%d warnings, want a second one for the internal error:\n%s", n, logs)
	}

	// The consumer stopping the watch closes it too, once, and that is no
	// failure even right after it opened.
	before := testutil.ToFloat64(w.errors)
	third, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	second.Stop()
	third.Stop()
	third.Stop()
	if _, ok := <-third.ResultChan(); ok {
		t.Fatal("result channel open after Stop")
	}
	eventually(t, "stopped watches to count as closed", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.open == 0
	})
	if w.Current() || testutil.ToFloat64(w.errors) != before {
		t.Fatalf("after the consumer stopped its watches: current %v, errors %v (was %v)", w.Current(), testutil.ToFloat64(w.errors), before)
	}
}

// A watch call that hangs reports nothing; the gap is noticed anyway.
func TestWatchTrackerNoticesGap(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	logs := &syncbuf.Buffer{}
	w, err := NewWatchTracker(WatchConfig{Settle: 2 * time.Second, Now: clk.Now}, nil, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeLW{}
	lw := w.Wrap(inner)
	first, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Minute)
	if !w.Current() {
		t.Fatal("not current")
	}
	go inner.watches[0].Add(mkPod("a"))
	<-first.ResultChan()
	inner.watches[0].Stop() // the API server went away; the next call hangs
	<-first.ResultChan()
	eventually(t, "watch to close", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.open == 0 })
	clk.Step(time.Second)
	if w.Current() || strings.Contains(logs.String(), "pod watch failing") {
		t.Fatalf("a gap shorter than the settle time is a normal watch restart:\n%s", logs)
	}
	clk.Step(time.Second)
	if w.Current() || !strings.Contains(logs.String(), "pod watch failing") || !strings.Contains(logs.String(), "no watch open") {
		t.Fatalf("a gap of the settle time was not noticed:\n%s", logs)
	}
	clk.Step(10 * time.Second)
	w.Current()
	if n := strings.Count(logs.String(), "pod watch failing"); n != 1 || testutil.ToFloat64(w.errors) != 1 {
		t.Fatalf("one gap counted %d times (%v errors):\n%s", n, testutil.ToFloat64(w.errors), logs)
	}
	if _, err := lw.Watch(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(2 * time.Second)
	if !w.Current() || !strings.Contains(logs.String(), "failing_for=14s") {
		t.Fatalf("restore line lacks the whole gap:\n%s", logs)
	}
}

func TestNewWatchTrackerRejects(t *testing.T) {
	if _, err := NewWatchTracker(WatchConfig{Settle: -time.Second}, nil, nil); err == nil {
		t.Error("negative settle accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := NewWatchTracker(WatchConfig{}, reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWatchTracker(WatchConfig{}, reg, nil); err == nil {
		t.Error("registering twice on one registry succeeded")
	}
}

// After an outage, a watch resumed from the old resource version must
// settle, while one that follows a successful relist is current at once.
func TestWatchTrackerResumeVersusRelist(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	w, err := NewWatchTracker(WatchConfig{Settle: 2 * time.Second, Now: clk.Now}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeLW{}
	lw := w.Wrap(inner)
	if _, err := lw.List(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	first, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !w.Current() {
		t.Fatal("not current after list and watch")
	}
	first.Stop()
	eventually(t, "watch to count as closed", func() bool { return !w.Current() })

	clk.Step(10 * time.Second)
	resumed, err := lw.Watch(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w.Current() {
		t.Fatal("a watch resumed long after the last list counted as current at once")
	}
	resumed.Stop()
	eventually(t, "resumed watch to count as closed", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.open == 0
	})

	clk.Step(time.Second)
	if _, err := lw.List(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(100 * time.Millisecond)
	if _, err := lw.Watch(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if !w.Current() {
		t.Fatal("a watch right after a successful relist is not current")
	}
}
