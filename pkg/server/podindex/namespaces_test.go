package podindex

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	testingclock "k8s.io/utils/clock/testing"
)

// nsMap is a namespace lister over a map.
type nsMap map[string]*corev1.Namespace

func (m nsMap) Get(name string) (*corev1.Namespace, error) {
	if ns, ok := m[name]; ok {
		return ns, nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// fakeLiveNS answers from ns, or fails with err, counting calls and
// keeping the last deadline it was given.
type fakeLiveNS struct {
	mu       sync.Mutex
	ns       nsMap
	err      error
	calls    int
	deadline time.Duration
}

func (f *fakeLiveNS) Get(ctx context.Context, name string) (*corev1.Namespace, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if d, ok := ctx.Deadline(); ok {
		f.deadline = time.Until(d)
	}
	if f.err != nil {
		return nil, f.err
	}
	return f.ns.Get(name)
}

func (f *fakeLiveNS) List(context.Context) ([]*corev1.Namespace, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	var out []*corev1.Namespace
	for _, ns := range f.ns {
		out = append(out, ns)
	}
	return out, nil
}

func (f *fakeLiveNS) set(ns *corev1.Namespace) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ns[ns.Name] = ns
}

func namespace(name, permitted string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if permitted != "" {
		ns.Annotations = map[string]string{"iam.amazonaws.com/permitted": permitted}
	}
	return ns
}

// The getter follows the namespace watch as the tracker sees it: the
// informer's store while the watch is current; the API server while it is
// not, even when the store has the namespace; and an error wrapping
// ErrNamespaceStale, never the store's answer, when the API server does not
// answer.
func TestNamespacesFollowTheWatch(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	tracker, err := NewWatchTracker(WatchConfig{Resource: "namespace", Settle: 2 * time.Second, Now: clk.Now}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inner := &fakeLW{}
	lw := tracker.Wrap(inner)
	cached := nsMap{"app": namespace("app", ".*")}
	live := &fakeLiveNS{ns: nsMap{"app": namespace("app", "")}}
	reg := prometheus.NewRegistry()
	n, err := NewNamespaces(NamespacesConfig{Cached: cached, Current: tracker.Current, Live: live, Timeout: time.Second}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	read := func() (*corev1.Namespace, error) {
		t.Helper()
		return n.Get("app")
	}
	reads := func(result string) float64 {
		return testutil.ToFloat64(n.live.WithLabelValues(result))
	}

	// Current: the store answers, the API server is not asked.
	if _, err := lw.List(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := lw.Watch(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if ns, err := read(); err != nil || ns.Annotations["iam.amazonaws.com/permitted"] != ".*" || live.calls != 0 {
		t.Fatalf("current watch: got %v, %v after %d live reads; want the cached namespace", ns, err, live.calls)
	}

	// The watch ends and calls fail: the API server's namespace, which
	// no longer permits anything, wins over the store's.
	inner.failNext(errors.New("connection refused"))
	inner.watches[0].Stop()
	eventually(t, "the watch to close", func() bool { return !tracker.Current() })
	if _, err := lw.Watch(metav1.ListOptions{}); err == nil {
		t.Fatal("watch did not fail")
	}
	ns, err := read()
	if err != nil || len(ns.Annotations) != 0 || live.calls != 1 {
		t.Fatalf("stale watch: got %v, %v after %d live reads; want the api server's namespace", ns, err, live.calls)
	}
	if live.deadline <= 0 || live.deadline > time.Second {
		t.Fatalf("live read deadline %s, want at most the 1s timeout", live.deadline)
	}
	if reads("corrected") != 1 {
		t.Fatalf("corrected reads %v, want 1", reads("corrected"))
	}

	// A namespace deleted meanwhile is gone, as the informer would say.
	delete(live.ns, "app")
	if _, err := read(); !apierrors.IsNotFound(err) {
		t.Fatalf("deleted namespace: got %v, want NotFound", err)
	}

	// The API server does not answer either: stale, not the store's
	// namespace, and not NotFound (which would decide as "no policy").
	live.err = errors.New("dial tcp: connection refused")
	if ns, err := read(); !errors.Is(err, ErrNamespaceStale) || apierrors.IsNotFound(err) || ns != nil {
		t.Fatalf("api server down: got %v, %v; want ErrNamespaceStale", ns, err)
	}
	if reads("failed") != 1 {
		t.Fatalf("failed reads %v, want 1", reads("failed"))
	}

	// The watch reopens (not right after a list, which would make it
	// current at once) and settles: the store again, no more live reads.
	live.err = nil
	live.ns["app"] = namespace("app", "")
	clk.Step(5 * time.Second)
	if _, err := lw.Watch(metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	calls := live.calls
	if _, err := read(); err != nil || live.calls != calls+1 {
		t.Fatalf("watch not settled yet: %v, %d live reads, want one more", err, live.calls-calls)
	}
	clk.Step(2 * time.Second)
	if ns, err := read(); err != nil || ns.Annotations["iam.amazonaws.com/permitted"] != ".*" || live.calls != calls+1 {
		t.Fatalf("settled watch: got %v, %v, %d live reads; want the cached namespace", ns, err, live.calls-calls)
	}
}

// APINamespaces reads through the clientset and keeps NotFound
// recognisable through its wrapping.
func TestAPINamespaces(t *testing.T) {
	client := fake.NewClientset(namespace("app", "x"))
	a := APINamespaces{Client: client.CoreV1()}
	ns, err := a.Get(t.Context(), "app")
	if err != nil || ns.Annotations["iam.amazonaws.com/permitted"] != "x" {
		t.Fatalf("got %v, %v", ns, err)
	}
	if _, err := a.Get(t.Context(), "gone"); !apierrors.IsNotFound(err) {
		t.Fatalf("missing namespace: %v, want NotFound", err)
	}
}

func TestNamespacesConfigValidate(t *testing.T) {
	ok := NamespacesConfig{Cached: nsMap{}, Current: func() bool { return true }, Live: &fakeLiveNS{}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]NamespacesConfig{
		"no lister":        {Current: ok.Current, Live: ok.Live},
		"no tracker":       {Cached: ok.Cached, Live: ok.Live},
		"no live reader":   {Cached: ok.Cached, Current: ok.Current},
		"negative timeout": {Cached: ok.Cached, Current: ok.Current, Live: ok.Live, Timeout: -time.Second},
	} {
		if c.Validate() == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

// Two trackers on one registry, each with its own metric names; the pod
// tracker keeps the names it always had.
func TestWatchTrackerMetricNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewWatchTracker(WatchConfig{}, reg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewWatchTracker(WatchConfig{Resource: "namespace"}, reg, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"podiam_server_pod_watch_current", "podiam_server_namespace_watch_current"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 1 {
			t.Errorf("%s gathered %d times: %v", name, n, err)
		}
	}
	if _, err := NewWatchTracker(WatchConfig{Resource: "Name Space"}, nil, nil); err == nil {
		t.Error("a resource name that cannot be part of a metric name was accepted")
	}
}

// While the watch is not current, Run tells of each policy change it
// reads from the API server once (against the store at first, then against
// what it told), ignores other annotations and namespaces new since, and
// reads nothing while the watch is current.
func TestNamespacesRecheck(t *testing.T) {
	var current atomic.Bool
	cached := nsMap{"app": namespace("app", ".*"), "same": namespace("same", "x")}
	live := &fakeLiveNS{ns: nsMap{"app": namespace("app", ".*"), "same": namespace("same", "x"), "new": namespace("new", "y")}}
	type change struct{ old, cur string }
	changes := make(chan change, 10)
	n, err := NewNamespaces(NamespacesConfig{
		Cached: cached, Current: current.Load, Live: live, RecheckInterval: 5 * time.Millisecond,
		Changed: func(old, cur *corev1.Namespace) {
			changes <- change{old.Annotations["iam.amazonaws.com/permitted"], cur.Annotations["iam.amazonaws.com/permitted"]}
		},
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	current.Store(true)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	time.Sleep(50 * time.Millisecond)
	live.mu.Lock()
	calls := live.calls
	live.mu.Unlock()
	if calls != 0 {
		t.Fatalf("%d live reads while the watch was current", calls)
	}

	next := func(want change) {
		t.Helper()
		select {
		case got := <-changes:
			if got != want {
				t.Fatalf("told %+v, want %+v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("not told %+v", want)
		}
	}
	quiet := func() {
		t.Helper()
		select {
		case got := <-changes:
			t.Fatalf("told %+v, want nothing", got)
		case <-time.After(50 * time.Millisecond):
		}
	}
	current.Store(false)
	quiet()
	denied := namespace("app", "^$")
	live.set(denied)
	next(change{".*", "^$"})
	quiet() // once, not on every round
	other := namespace("same", "x")
	other.Annotations["unrelated"] = "1"
	live.set(other)
	quiet()
	live.set(namespace("app", "a"))
	next(change{"^$", "a"})

	// Current again: what was told is forgotten; the relist tells the rest.
	current.Store(true)
	time.Sleep(20 * time.Millisecond)
	current.Store(false)
	next(change{".*", "a"})
}
