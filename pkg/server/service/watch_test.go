package service

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/server/podindex"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// testPod makes a pod as the informer stores it; edit, if given, changes
// the API object first.
func testPod(name, ip, host, roleName string, edit ...func(*corev1.Pod)) *podindex.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name),
			Annotations: map[string]string{"iam.amazonaws.com/role": roleName}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning,
			PodIPs: []corev1.PodIP{{IP: ip}}, HostIPs: []corev1.HostIP{{IP: host}}},
	}
	for _, e := range edit {
		e(p)
	}
	return podindex.FromAPI(p)
}

// newTestWatcher builds a watcher over a plain indexer; the informer
// plumbing is exercised by the integration tests.
func newTestWatcher(t *testing.T) (*NodeWatcher, cache.Indexer) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
		IndexHostIP:          hostIPIndexFunc,
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
	})
	return &NodeWatcher{pods: idx, log: slog.New(slog.DiscardHandler), subs: map[*subscriber]struct{}{}, changes: map[string]uint64{}}, idx
}

// stream starts Stream for host and returns a channel of what it sends.
func stream(t *testing.T, w *NodeWatcher, host string) <-chan *pb.PodEvent {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan *pb.PodEvent, 100)
	go func() {
		_ = w.Stream(ctx, host, func(ev *pb.PodEvent) error { out <- ev; return nil })
	}()
	return out
}

func next(t *testing.T, ch <-chan *pb.PodEvent) *pb.PodEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(2 * time.Second):
		t.Fatal("no event")
		return nil
	}
}

func expectNone(t *testing.T, ch <-chan *pb.PodEvent) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected event %v", ev)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestNodeWatcher(t *testing.T) {
	w, idx := newTestWatcher(t)
	a := testPod("a", "10.0.0.1", "192.168.0.1", "ra")
	elsewhere := testPod("b", "10.0.0.2", "192.168.0.2", "rb")
	_ = idx.Add(a)
	_ = idx.Add(elsewhere)

	ch := stream(t, w, "192.168.0.1")
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_PRESENT || ev.GetIp() != "10.0.0.1" || ev.GetUid() != "uid-a" {
		t.Fatalf("snapshot = %v", ev)
	}
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_SYNCED {
		t.Fatalf("want SYNCED, got %v", ev)
	}
	// Wait until the stream is subscribed (it subscribes before the
	// snapshot, so it is by now).

	// A pod on another node is not this agent's business.
	w.podChanged(nil, testPod("c", "10.0.0.3", "192.168.0.2", "rc"))
	expectNone(t, ch)

	// Status churn without a relevant change sends nothing.
	churn := a.DeepCopy()
	churn.ResourceVersion = "2"
	w.podChanged(a, churn)
	expectNone(t, ch)

	// A role change tells the agent to drop what it holds for the address.
	changed := testPod("a", "10.0.0.1", "192.168.0.1", "other")
	w.podChanged(a, changed)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.0.0.1" {
		t.Fatalf("role change = %v", ev)
	}

	// So does an annotation appearing, even empty: the key may not change,
	// but the agent re-asks rather than reason about it.
	withExt := testPod("a", "10.0.0.1", "192.168.0.1", "other", func(p *corev1.Pod) {
		p.Annotations["iam.amazonaws.com/external-id"] = ""
	})
	w.podChanged(changed, withExt)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.0.0.1" {
		t.Fatalf("annotation added = %v", ev)
	}

	// The pod finishing deletes its address.
	done := changed.DeepCopy()
	done.Phase = corev1.PodSucceeded
	w.podChanged(changed, done)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_DELETED || ev.GetUid() != "uid-a" {
		t.Fatalf("finish = %v", ev)
	}

	// A new pod on the same address is a change for that address.
	reuse := testPod("new", "10.0.0.1", "192.168.0.1", "rn")
	w.podChanged(nil, reuse)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetUid() != "uid-new" {
		t.Fatalf("reuse = %v", ev)
	}

	// Deletion, including through a tombstone.
	w.podChanged(asPod(cache.DeletedFinalStateUnknown{Key: "ns/new", Obj: reuse}), nil)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_DELETED || ev.GetIp() != "10.0.0.1" {
		t.Fatalf("delete = %v", ev)
	}

	// A namespace policy change reaches every pod of the namespace here.
	_ = idx.Update(a)
	nsOld := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{"iam.amazonaws.com/permitted": ".*"}}}
	nsSame := nsOld.DeepCopy()
	w.namespaceChanged(nsOld, nsSame)
	expectNone(t, ch)
	nsNew := nsOld.DeepCopy()
	delete(nsNew.Annotations, "iam.amazonaws.com/permitted")
	w.namespaceChanged(nsOld, nsNew)
	if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.0.0.1" {
		t.Fatalf("namespace change = %v", ev)
	}

	// So does an External ID set, changed or removed: credentials assumed
	// with the old one must not stay in the agents' caches.
	for _, step := range []struct{ from, to string }{{"", "tenant-1"}, {"tenant-1", "tenant-2"}, {"tenant-2", ""}} {
		from, to := nsOld.DeepCopy(), nsOld.DeepCopy()
		if step.from != "" {
			from.Annotations["iam.amazonaws.com/external-id"] = step.from
		}
		if step.to != "" {
			to.Annotations["iam.amazonaws.com/external-id"] = step.to
		}
		w.namespaceChanged(from, to)
		if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.0.0.1" {
			t.Fatalf("External ID %q -> %q: %v", step.from, step.to, ev)
		}
	}
	// Annotations that decide nothing change nothing.
	other := nsOld.DeepCopy()
	other.Annotations["iam.amazonaws.com/unrelated"] = "x"
	other.Annotations["team"] = "y"
	w.namespaceChanged(nsOld, other)
	expectNone(t, ch)
}

func TestNodeWatcherOverflowEndsStream(t *testing.T) {
	w, _ := newTestWatcher(t)
	block := make(chan struct{})
	errc := make(chan error, 1)
	synced := make(chan struct{})
	go func() {
		errc <- w.Stream(context.Background(), "192.168.0.1", func(ev *pb.PodEvent) error {
			if ev.GetType() == pb.PodEvent_TYPE_SYNCED {
				close(synced)
				return nil
			}
			<-block
			return nil
		})
	}()
	<-synced
	for i := range subscriberBuffer + 2 {
		w.podChanged(nil, testPod("p", "10.1.0.1", "192.168.0.1", "r"+string(rune('a'+i%26))))
	}
	close(block)
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("overflowing stream ended without error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a subscriber that fell behind was not cut off")
	}
}

func TestNodeWatcherRejectsBadHost(t *testing.T) {
	w, _ := newTestWatcher(t)
	if err := w.Stream(context.Background(), "nope", func(*pb.PodEvent) error { return nil }); err == nil {
		t.Fatal("bad host accepted")
	}
}

// A change to a ServiceAccount's role annotation reaches the agents of the
// pods that take their role from it, and only those.
func TestNodeWatcherServiceAccountChanged(t *testing.T) {
	w, idx := newTestWatcher(t)
	asAPI := func(p *corev1.Pod) { p.Spec.ServiceAccountName = "api" }
	inherits := testPod("a", "10.0.0.1", "192.168.0.1", "", asAPI)
	owns := testPod("b", "10.0.0.2", "192.168.0.1", "own", asAPI)
	otherAccount := testPod("c", "10.0.0.3", "192.168.0.1", "")
	_ = idx.Add(inherits)
	_ = idx.Add(owns)
	_ = idx.Add(otherAccount)
	ch := stream(t, w, "192.168.0.1")
	for range 4 { // three PRESENT, SYNCED
		next(t, ch)
	}
	sa := func(roleName string) *corev1.ServiceAccount {
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "api",
			Annotations: map[string]string{"iam.amazonaws.com/role": roleName}}}
	}

	w.serviceAccountChanged(sa("r1"), sa("r1")) // a resync
	expectNone(t, ch)
	for _, tc := range []struct {
		name     string
		old, cur *corev1.ServiceAccount
	}{
		{"role changed", sa("r1"), sa("r2")},
		{"role added", nil, sa("r1")},
		{"account deleted", sa("r2"), nil},
		{"role removed", sa("r2"), sa("")},
	} {
		w.serviceAccountChanged(tc.old, tc.cur)
		if ev := next(t, ch); ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.0.0.1" {
			t.Fatalf("%s: %v, want CHANGED for the pod that inherits the role", tc.name, ev)
		}
		expectNone(t, ch)
	}
}
