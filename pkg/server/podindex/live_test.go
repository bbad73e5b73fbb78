package podindex

import (
	"bytes"
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
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeLive is the API server as LivePods sees it: a set of pods, or an
// error. It counts calls so tests see when the index answered alone.
type fakeLive struct {
	mu     sync.Mutex
	pods   []*corev1.Pod
	err    error
	getErr error
	calls  int
	// hangAfter > 0: calls after that many hang until their ctx ends.
	hangAfter int
}

func (f *fakeLive) ByIP(ctx context.Context, ip string) ([]*corev1.Pod, error) {
	f.mu.Lock()
	f.calls++
	if f.hangAfter > 0 && f.calls > f.hangAfter {
		f.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []*corev1.Pod
	for _, p := range f.pods {
		if p.Status.PodIP == ip { // what the status.podIP field selector matches
			out = append(out, p)
		}
	}
	return out, nil
}

func (f *fakeLive) add(p *corev1.Pod) { f.mu.Lock(); f.pods = append(f.pods, p); f.mu.Unlock() }
func (f *fakeLive) count() int        { f.mu.Lock(); defer f.mu.Unlock(); return f.calls }

func (f *fakeLive) Get(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.getErr != nil {
		return nil, f.getErr
	}
	for _, p := range f.pods {
		if p.Namespace == namespace && p.Name == name {
			return p, nil
		}
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

func withUID(uid string) podOpt { return func(p *corev1.Pod) { p.UID = types.UID(uid) } }
func withRV(rv string) podOpt   { return func(p *corev1.Pod) { p.ResourceVersion = rv } }

// full makes a pod as the API server returns it, with what Transform drops.
func full(p *corev1.Pod) {
	p.Annotations = map[string]string{"iam.amazonaws.com/role": "app", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app:1"}}
}

// TestLookupLive covers the index answering while its watch is down: the
// API server's view wins, pods it no longer has never match, and no answer
// from it means no answer at all.
func TestLookupLive(t *testing.T) {
	const ip = "10.0.0.1"
	old := mkPod("old", ips(ip), withRV("1"))
	tests := []struct {
		name     string
		indexed  []*corev1.Pod
		live     []*corev1.Pod
		listErr  error
		getErr   error
		want     string // pod name; "" for an error
		wantUID  string // if set, the answer's UID
		wantRV   string // if set, the answer's resourceVersion
		wantRole string // if set, the answer's role annotation
		wantErr  error
		wantStat string // metric result
	}{
		{name: "api server agrees", indexed: []*corev1.Pod{old}, live: []*corev1.Pod{old},
			want: "old", wantStat: liveConfirmed},
		{name: "newer version of the same pod is the same answer, and served",
			indexed: []*corev1.Pod{old}, live: []*corev1.Pod{mkPod("old", ips(ip), withRV("7"))},
			want: "old", wantRV: "7", wantStat: liveConfirmed},
		{name: "old pod deleted, address reused by a pod with another role",
			indexed: []*corev1.Pod{old}, live: []*corev1.Pod{mkPod("new", ips(ip))},
			want: "new", wantStat: liveCorrected},
		{name: "old pod deleted, address free",
			indexed: []*corev1.Pod{old}, wantErr: ErrNotFound, wantStat: liveCorrected},
		{name: "old pod finished", indexed: []*corev1.Pod{old},
			live:    []*corev1.Pod{mkPod("old", ips(ip), phase(corev1.PodSucceeded), withRV("2"))},
			wantErr: ErrNotFound, wantStat: liveCorrected},
		{name: "pod recreated under the same name gets the live object",
			indexed: []*corev1.Pod{old}, live: []*corev1.Pod{mkPod("old", ips(ip), withUID("uid-old-2"))},
			want: "old", wantUID: "uid-old-2", wantStat: liveCorrected},
		{name: "pod unknown to the index", live: []*corev1.Pod{mkPod("fresh", ips(ip), full)},
			want: "fresh", wantRole: "app", wantStat: liveCorrected},
		{name: "second address is found through the indexed pod",
			indexed: []*corev1.Pod{mkPod("dual", ips("10.0.9.9", ip))},
			live:    []*corev1.Pod{mkPod("dual", ips("10.0.9.9", ip))},
			want:    "dual", wantStat: liveConfirmed},
		{name: "two live pods conflict", live: []*corev1.Pod{mkPod("a", ips(ip)), mkPod("b", ips(ip))},
			wantErr: ErrConflict, wantStat: liveCorrected},
		{name: "api server unreachable", indexed: []*corev1.Pod{old},
			listErr: errors.New("dial tcp: connect: connection refused"), wantErr: ErrStale, wantStat: liveFailed},
		{name: "pod read fails", indexed: []*corev1.Pod{mkPod("dual", ips("10.0.9.9", ip))},
			getErr: errors.New("Too Many Requests"), wantErr: ErrStale, wantStat: liveFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			live := &fakeLive{pods: tc.live, err: tc.listErr, getErr: tc.getErr}
			logs := &bytes.Buffer{}
			idx := newLiveIndex(t, live, func() bool { return false }, logs)
			for _, p := range tc.indexed {
				if err := idx.informer.GetIndexer().Add(FromAPI(p)); err != nil {
					t.Fatal(err)
				}
			}
			// Only "no pod" waits (for a pod about to get the address).
			wait := 5 * time.Second
			if errors.Is(tc.wantErr, ErrNotFound) {
				wait = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			start := time.Now()
			pod, err := idx.Lookup(ctx, ip)
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("Lookup waited %v", d)
			}
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case err != nil || pod.Name != tc.want:
				t.Fatalf("got %v %v, want pod %s", pod, err, tc.want)
			case tc.wantUID != "" && string(pod.UID) != tc.wantUID:
				t.Fatalf("uid %s, want the live pod's %s", pod.UID, tc.wantUID)
			case tc.wantRV != "" && pod.ResourceVersion != tc.wantRV:
				t.Fatalf("resourceVersion %s, want the live pod's %s", pod.ResourceVersion, tc.wantRV)
			}
			// Live pods are converted as informer pods are.
			if tc.wantRole != "" {
				if r, _ := pod.Annotation("iam.amazonaws.com/role"); r != tc.wantRole {
					t.Fatalf("live pod's role = %q, want %q", r, tc.wantRole)
				}
			}
			got := testutil.ToFloat64(idx.liveLookups.WithLabelValues(tc.wantStat))
			if errors.Is(tc.wantErr, ErrNotFound) {
				// Asked again every livePoll during the wait.
				if got < 2 {
					t.Fatalf("live lookups %s = %v while waiting %v, want several", tc.wantStat, got, wait)
				}
			} else if got != 1 {
				t.Fatalf("live lookups %s = %v, want 1", tc.wantStat, got)
			}
			if tc.wantStat == liveCorrected && !strings.Contains(logs.String(), "pod index is behind") {
				t.Fatalf("correction not logged: %q", logs)
			}
		})
	}
}

// The pod-start race while the watch is down: the pod gets its address
// during the wait, and no event will tell.
func TestLookupLiveWaitsForPod(t *testing.T) {
	live := &fakeLive{}
	idx := newLiveIndex(t, live, func() bool { return false }, &bytes.Buffer{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		live.add(mkPod("starting", ips("10.0.0.7")))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pod, err := idx.Lookup(ctx, "10.0.0.7")
	if err != nil || pod.Name != "starting" {
		t.Fatalf("got %v %v, want the pod that got the address during the wait", pod, err)
	}
	if n := live.count(); n < 2 {
		t.Fatalf("%d live calls, want a first one and another after the pod appeared", n)
	}
}

// A wait that runs out while the API server is being asked keeps the
// answer it had: no pod, not "unknown".
func TestLookupLiveWaitEndsDuringRead(t *testing.T) {
	live := &fakeLive{hangAfter: 1}
	idx := newLiveIndex(t, live, func() bool { return false }, &bytes.Buffer{})
	ctx, cancel := context.WithTimeout(context.Background(), livePoll+100*time.Millisecond)
	defer cancel()
	if _, err := idx.Lookup(ctx, "10.0.0.8"); !errors.Is(err, ErrNotFound) || errors.Is(err, ErrStale) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if n := live.count(); n != 2 {
		t.Fatalf("%d live calls, want 2 (the second cut by the wait)", n)
	}
}

func TestLookupCurrentIndexSkipsLive(t *testing.T) {
	live := &fakeLive{err: errors.New("must not be called")}
	current := true
	var mu sync.Mutex
	idx := newLiveIndex(t, live, func() bool { mu.Lock(); defer mu.Unlock(); return current }, &bytes.Buffer{})
	if err := idx.informer.GetIndexer().Add(FromAPI(mkPod("a", ips("10.0.0.1")))); err != nil {
		t.Fatal(err)
	}
	if pod, err := idx.Lookup(context.Background(), "10.0.0.1"); err != nil || pod.Name != "a" || live.calls != 0 {
		t.Fatalf("current index: %v %v, %d live calls", pod, err, live.calls)
	}
	mu.Lock()
	current = false
	mu.Unlock()
	if _, err := idx.Lookup(context.Background(), "10.0.0.1"); !errors.Is(err, ErrStale) || live.calls != 1 {
		t.Fatalf("stale index: err %v, %d live calls; want ErrStale after one", err, live.calls)
	}
}

func TestNewRejectsCurrentWithoutLive(t *testing.T) {
	inf := informers.NewSharedInformerFactory(fake.NewClientset(), 0).Core().V1().Pods().Informer()
	if _, err := New(inf, Config{Current: func() bool { return true }}, nil, nil); err == nil {
		t.Error("Current without Live accepted")
	}
	if _, err := New(inf, Config{LiveTimeout: -time.Second}, nil, nil); err == nil {
		t.Error("negative LiveTimeout accepted")
	}
}

func newLiveIndex(t *testing.T, live LivePods, current func() bool, logs *bytes.Buffer) *Index {
	t.Helper()
	inf := informers.NewSharedInformerFactory(fake.NewClientset(), 0).Core().V1().Pods().Informer()
	idx, err := New(inf, Config{Current: current, Live: live, Now: func() time.Time { return t0 }},
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return idx
}
