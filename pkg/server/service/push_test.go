package service

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/syncbuf"
)

// indexedPods looks pods up in the watcher's indexer, as the pod index
// reads the informer's: a push sees the state its change was sent for.
type indexedPods struct{ idx cache.Indexer }

func (p indexedPods) Lookup(_ context.Context, ip string) (*podindex.Pod, error) {
	for _, obj := range p.idx.List() {
		if pod := asPod(obj); pod != nil && podindex.Live(pod) && slices.Contains(pod.IPs, ip) {
			return pod, nil
		}
	}
	return nil, podindex.ErrNotFound
}

// annotationKeys resolves a pod's role annotation to a role ARN.
type annotationKeys struct{}

func (annotationKeys) Key(pod *podindex.Pod) (creds.Key, error) {
	r, _ := pod.Annotation(role.AnnotationRole)
	if r == "" {
		return creds.Key{}, role.ErrNoRole
	}
	return creds.Key{RoleARN: "arn:aws:iam::123456789012:role/" + r, SessionName: "kiam-kiam"}, nil
}

// permitted allows roles whose ARN ends in an allowed name.
type permitted struct{ names []string }

func (p permitted) Decide(_ policy.Namespace, key creds.Key) (policy.Decision, error) {
	for _, n := range p.names {
		if strings.HasSuffix(key.RoleARN, "/"+n) {
			return policy.Decision{Key: key}, nil
		}
	}
	return policy.Decision{}, errors.New("not permitted")
}

// fakePushSource holds credentials for some keys; gate, when set, holds
// Peek until it is closed, as a fetch under way would.
type fakePushSource struct {
	mu         sync.Mutex
	held       map[string]creds.Credentials // by role ARN
	prefetched []string
	gate       chan struct{}
	peeked     chan string
}

func (f *fakePushSource) Prefetch(key creds.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prefetched = append(f.prefetched, key.RoleARN)
}

func (f *fakePushSource) Peek(ctx context.Context, key creds.Key) (creds.Credentials, bool) {
	f.mu.Lock()
	gate, peeked := f.gate, f.peeked
	f.mu.Unlock()
	if peeked != nil {
		peeked <- key.RoleARN
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return creds.Credentials{}, false
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.held[key.RoleARN]
	return c, ok
}

type pushFixture struct {
	svc    *Service
	w      *NodeWatcher
	idx    cache.Indexer
	src    *fakePushSource
	events *record.FakeRecorder
	logs   *syncbuf.Buffer
}

func newPushFixture(t *testing.T, allowed ...string) *pushFixture {
	t.Helper()
	w, idx := newTestWatcher(t)
	fx := &pushFixture{w: w, idx: idx, events: record.NewFakeRecorder(10), logs: &syncbuf.Buffer{},
		src: &fakePushSource{held: map[string]creds.Credentials{}}}
	ns := fakeNamespaces{ns: map[string]*corev1.Namespace{"ns": {ObjectMeta: metav1.ObjectMeta{Name: "ns"}}}}
	svc, err := New(Config{PodWait: time.Second, NodeBinding: true, Push: true, PushPrefetch: true}, Deps{
		Pods:        indexedPods{idx},
		Namespaces:  ns,
		Keys:        annotationKeys{},
		Policy:      permitted{allowed},
		Credentials: &fakeCreds{answer: func(context.Context) (creds.Credentials, error) { return testCreds, nil }},
		Push:        fx.src,
		Events:      fx.events,
		Watcher:     w,
		Synced:      func() bool { return true },
	}, prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(fx.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	fx.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = svc.RunPushes(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return fx
}

// subscribe opens a stream for host, taking pushes or not, and waits for
// its snapshot.
func (fx *pushFixture) subscribe(t *testing.T, host string, credentials bool) <-chan *pb.PodEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan *pb.PodEvent, 100)
	run := fx.w.Stream
	if credentials {
		run = fx.w.StreamWithCredentials
	}
	go func() { _ = run(ctx, host, func(ev *pb.PodEvent) error { out <- ev; return nil }) }()
	for ev := next(t, out); ev.GetType() != pb.PodEvent_TYPE_SYNCED; ev = next(t, out) {
	}
	return out
}

// add stores pod in the index, then tells the watcher, as an informer does.
func (fx *pushFixture) add(old, pod *podindex.Pod) {
	if old != nil {
		_ = fx.idx.Update(pod)
	} else {
		_ = fx.idx.Add(pod)
	}
	fx.w.podChanged(old, pod)
}

func (fx *pushFixture) pushes(result pushResult) int {
	return int(testutil.ToFloat64(fx.svc.push.count.WithLabelValues(string(result))))
}

func expectType(t *testing.T, ch <-chan *pb.PodEvent, typ pb.PodEvent_Type) *pb.PodEvent {
	t.Helper()
	ev := next(t, ch)
	if ev.GetType() != typ {
		t.Fatalf("got %v, want %v", ev, typ)
	}
	return ev
}

// TestPushNewPod: a permitted pod getting its address has its credentials
// pushed to its node's agents that take them, after the change, and to no
// other agent; the audit line says so and carries no secret.
func TestPushNewPod(t *testing.T) {
	fx := newPushFixture(t, "app")
	fx.src.held["arn:aws:iam::123456789012:role/app"] = testCreds
	taking := fx.subscribe(t, nodeIP, true)
	old := fx.subscribe(t, nodeIP, false)
	other := fx.subscribe(t, "192.168.0.2", true)

	fx.add(nil, testPod("app", podIP, nodeIP, "app"))
	expectType(t, taking, pb.PodEvent_TYPE_CHANGED)
	ev := expectType(t, taking, pb.PodEvent_TYPE_CREDENTIALS)
	if ev.GetIp() != podIP || ev.GetUid() != "uid-app" || ev.GetCredentials().GetCredentials().GetAccessKeyId() != testCreds.AccessKeyID ||
		ev.GetCredentials().GetPod().GetRoleArn() != "arn:aws:iam::123456789012:role/app" {
		t.Fatalf("pushed %v", ev)
	}
	expectType(t, old, pb.PodEvent_TYPE_CHANGED)
	expectNone(t, old)
	expectNone(t, other)
	if fx.pushes(pushSent) != 1 {
		t.Fatalf("pushed %d, want 1", fx.pushes(pushSent))
	}
	if !slices.Equal(fx.src.prefetched, []string{"arn:aws:iam::123456789012:role/app"}) {
		t.Fatalf("prefetched %v", fx.src.prefetched)
	}
	logs := fx.logs.String()
	if !strings.Contains(logs, `"delivery":"push"`) || strings.Contains(logs, testCreds.SecretAccessKey) || strings.Contains(logs, testCreds.SessionToken) {
		t.Fatalf("audit line: %s", logs)
	}
}

// TestPushRefused: a pod the request path would refuse (policy, no role)
// gets nothing pushed, and nothing is recorded against it: no Event, no
// denial, no STS call.
func TestPushRefused(t *testing.T) {
	fx := newPushFixture(t, "app")
	fx.src.held["arn:aws:iam::123456789012:role/other"] = testCreds
	ch := fx.subscribe(t, nodeIP, true)
	fx.add(nil, testPod("denied", podIP, nodeIP, "other"))
	fx.add(nil, testPod("norole", "10.0.0.2", nodeIP, ""))
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	expectNone(t, ch)
	waitUntil(t, func() bool { return fx.pushes(pushRefused) == 2 })
	if len(fx.src.prefetched) != 0 || len(fx.events.Events) != 0 ||
		testutil.ToFloat64(fx.svc.denials.WithLabelValues("not_permitted")) != 0 {
		t.Fatalf("prefetched %v, %d events", fx.src.prefetched, len(fx.events.Events))
	}
}

// TestPushVoidedByLaterChange: credentials decided for the pod's old role
// are never sent after the change that revoked them; the push decided
// after it goes out instead.
func TestPushVoidedByLaterChange(t *testing.T) {
	fx := newPushFixture(t, "app", "next")
	fx.src.held["arn:aws:iam::123456789012:role/app"] = testCreds
	fx.src.held["arn:aws:iam::123456789012:role/next"] = creds.Credentials{AccessKeyID: "ASIANEXT", SecretAccessKey: "s", SessionToken: "t",
		Expiration: time.Now().Add(time.Hour)}
	fx.src.gate, fx.src.peeked = make(chan struct{}), make(chan string, 4)
	ch := fx.subscribe(t, nodeIP, true)
	first := testPod("app", podIP, nodeIP, "app")
	fx.add(nil, first)
	if r := <-fx.src.peeked; !strings.HasSuffix(r, "/app") {
		t.Fatalf("peeked %s", r)
	}
	// The role changes while the first push waits for its credentials;
	// the address's next push waits for the first to end.
	fx.add(first, testPod("app", podIP, nodeIP, "next"))
	close(fx.src.gate)
	if r := <-fx.src.peeked; !strings.HasSuffix(r, "/next") {
		t.Fatalf("peeked %s", r)
	}
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	if ev := expectType(t, ch, pb.PodEvent_TYPE_CREDENTIALS); ev.GetCredentials().GetCredentials().GetAccessKeyId() != "ASIANEXT" {
		t.Fatalf("pushed %v, want the new role's", ev)
	}
	expectNone(t, ch)
	if fx.pushes(pushSuperseded) != 1 {
		t.Fatalf("superseded %d, want 1", fx.pushes(pushSuperseded))
	}
}

// TestPushNothingHeld: with nothing held or being fetched for the pod's
// session, nothing is pushed; a terminating pod gets nothing either.
func TestPushNothingHeld(t *testing.T) {
	fx := newPushFixture(t, "app")
	ch := fx.subscribe(t, nodeIP, true)
	fx.add(nil, testPod("app", podIP, nodeIP, "app"))
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	expectNone(t, ch)
	waitUntil(t, func() bool { return fx.pushes(pushUnavailable) == 1 })

	fx.src.mu.Lock()
	fx.src.held["arn:aws:iam::123456789012:role/app"] = testCreds
	fx.src.mu.Unlock()
	now := metav1.Now()
	fx.add(nil, testPod("ending", "10.0.0.3", nodeIP, "app", func(p *corev1.Pod) { p.DeletionTimestamp = &now }))
	expectType(t, ch, pb.PodEvent_TYPE_CHANGED)
	expectNone(t, ch)
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
