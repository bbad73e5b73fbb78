package prefetch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/session"
)

const base = "arn:aws:iam::123456789012:role/"

// recorder is a Prefetcher that remembers what it was asked for.
type recorder struct {
	mu   sync.Mutex
	keys []creds.Key
	ch   chan creds.Key
}

func newRecorder() *recorder { return &recorder{ch: make(chan creds.Key, 100)} }

func (r *recorder) Prefetch(k creds.Key) {
	r.mu.Lock()
	r.keys = append(r.keys, k)
	r.mu.Unlock()
	r.ch <- k
}

func (r *recorder) all() []creds.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]creds.Key(nil), r.keys...)
}

func namespace(name, permitted string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if permitted != "" {
		ns.Annotations = map[string]string{role.AnnotationPermitted: permitted}
	}
	return ns
}

func pod(ns, name, ip, roleName string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{role.AnnotationRole: roleName}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			HostIPs: []corev1.HostIP{{IP: "10.0.0.1"}}},
	}
}

// setup builds the controller on informers of a fake clientset, as the
// server builds it on real ones; nothing is started.
func setup(t *testing.T, objs ...any) (*Controller, informers.SharedInformerFactory, *fake.Clientset, *recorder) {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Namespace:
			if _, err := client.CoreV1().Namespaces().Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		case *corev1.Pod:
			if _, err := client.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(podindex.Transform))
	resolver, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := session.New(session.Config{DefaultSession: "kiam"}, session.Deps{Roles: resolver})
	if err != nil {
		t.Fatal(err)
	}
	checker, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	c, err := New(Config{}, Deps{
		Pods:       factory.Core().V1().Pods().Informer(),
		Namespaces: factory.Core().V1().Namespaces(),
		Keys:       keys,
		Policy:     checker,
		Cache:      rec,
		Log:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, factory, client, rec
}

// startInformers starts the factory's informers until the test ends.
func startInformers(t *testing.T, factory informers.SharedInformerFactory) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	// Shutdown waits for the informers, which stop only once ctx is done.
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	return ctx
}

// run starts Run and returns a function that stops it and reports what it
// returned.
func run(t *testing.T, c *Controller) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return after ctx ended")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func waitKey(t *testing.T, rec *recorder) creds.Key {
	t.Helper()
	select {
	case k := <-rec.ch:
		return k
	case <-time.After(10 * time.Second):
		t.Fatal("no prefetch")
		return creds.Key{}
	}
}

// A permitted role is prefetched under the key a request would use; a role
// the namespace does not permit, or a namespace without the annotation,
// never reaches the cache.
func TestPrefetchOnlyPermittedRoles(t *testing.T) {
	c, factory, client, rec := setup(t,
		namespace("open", "^"+base+"app-.*$"),
		namespace("closed", ""),
		pod("open", "denied", "10.1.0.2", "admin"),
		pod("closed", "unannotated-ns", "10.1.0.3", "app-web"),
		pod("open", "allowed", "10.1.0.4", "app-web"),
		mirror(pod("open", "static-admin", "10.1.0.7", "app-admin")),
	)
	stop := run(t, c)
	ctx := startInformers(t, factory)

	if k := waitKey(t, rec); k.RoleARN != base+"app-web" || k.SessionName == "" {
		t.Fatalf("prefetched %+v, want %sapp-web", k, base)
	}
	// A pod appearing later, denied, and one permitted after it: the
	// permitted one proves the denied one was handled first (one queue,
	// handled in order by whichever worker) or at least handled by now.
	if _, err := client.CoreV1().Pods("open").Create(ctx, pod("open", "later-denied", "10.1.0.5", "root"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Pods("open").Create(ctx, pod("open", "later-allowed", "10.1.0.6", "app-db"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if k := waitKey(t, rec); k.RoleARN != base+"app-db" {
		t.Fatalf("prefetched %+v, want %sapp-db", k, base)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v after ctx ended, want nil", err)
	}
	for _, k := range rec.all() {
		if k.RoleARN != base+"app-web" && k.RoleARN != base+"app-db" {
			t.Errorf("prefetched %s, which its namespace does not permit or a static pod asked for", k.RoleARN)
		}
	}
}

// mirror marks p as a static pod's mirror, as the kubelet does.
func mirror(p *corev1.Pod) *corev1.Pod {
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[corev1.MirrorPodAnnotationKey] = "hash"
	return p
}

// Pods queued before the namespaces have synced are handled once they
// have: before, every namespace would look absent, and so every pod
// denied and dropped.
func TestPrefetchWaitsForSync(t *testing.T) {
	c, factory, _, rec := setup(t,
		namespace("open", "^"+base+"app-.*$"),
		pod("open", "allowed", "10.1.0.4", "app-web"),
	)
	stop := run(t, c)
	// Only the pod informer runs: its handler queues the pod, and Run
	// must hold it until the namespace informer has synced too.
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer func() { cancel(); running.Wait() }()
	podInformer := factory.Core().V1().Pods().Informer()
	running.Go(func() { podInformer.Run(ctx.Done()) })
	for !podInformer.HasSynced() {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case k := <-rec.ch:
		t.Fatalf("prefetched %+v before the namespaces synced", k)
	case <-time.After(300 * time.Millisecond):
	}
	if c.queue.Len() != 1 {
		t.Fatalf("queue holds %d pods, want the one waiting", c.queue.Len())
	}
	nsInformer := factory.Core().V1().Namespaces().Informer()
	running.Go(func() { nsInformer.Run(ctx.Done()) })
	if k := waitKey(t, rec); k.RoleARN != base+"app-web" {
		t.Fatalf("prefetched %+v", k)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// Run stopped before the informers ever sync returns nil without handling
// anything, as a part stopping on request must.
func TestRunStopsBeforeSync(t *testing.T) {
	c, _, _, rec := setup(t, namespace("open", ".*"), pod("open", "p", "10.1.0.4", "app-web"))
	stop := run(t, c)
	time.Sleep(50 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if n := len(rec.all()); n != 0 {
		t.Fatalf("%d prefetches without synced informers", n)
	}
}

// Status churn does not queue a pod again; a new address or role does.
func TestEnqueueOnlyRelevantChanges(t *testing.T) {
	c, _, _, _ := setup(t)
	p := podindex.FromAPI(pod("ns", "p", "10.1.0.4", "app-web"))
	c.enqueue(nil, p)
	if c.queue.Len() != 1 {
		t.Fatalf("new pod with a role and an address: queue %d", c.queue.Len())
	}
	k, _ := c.queue.Get()
	c.queue.Done(k)
	c.queue.Forget(k)

	same := podindex.FromAPI(pod("ns", "p", "10.1.0.4", "app-web"))
	same.ResourceVersion = "2"
	c.enqueue(p, same)
	if c.queue.Len() != 0 {
		t.Fatal("an update that changes nothing relevant was queued")
	}
	c.enqueue(p, podindex.FromAPI(pod("ns", "p", "10.1.0.4", "app-db")))
	if c.queue.Len() != 1 {
		t.Fatal("a role change was not queued")
	}
	noRole := podindex.FromAPI(pod("ns", "q", "10.1.0.5", ""))
	c.enqueue(nil, noRole)
	noIP := podindex.FromAPI(pod("ns", "r", "", "app-web"))
	c.enqueue(nil, noIP)
	if c.queue.Len() != 1 {
		t.Fatal("a pod without a role or without an address was queued")
	}
}

// Prefetch decides the External ID as a request does: the namespace's
// applies, a pod naming another is never prefetched (the server would
// otherwise assume a role with an External ID the namespace does not
// own), and a changed namespace External ID warms the new sessions.
func TestPrefetchNamespaceExternalID(t *testing.T) {
	owned := namespace("owned", "^"+base+"app-.*$")
	owned.Annotations[role.AnnotationExternalID] = "tenant-1"
	other := pod("owned", "other-id", "10.2.0.1", "app-other")
	other.Annotations[role.AnnotationExternalID] = "tenant-9"
	same := pod("owned", "same-id", "10.2.0.2", "app-same")
	same.Annotations[role.AnnotationExternalID] = "tenant-1"
	c, factory, client, rec := setup(t, owned, other, same, pod("owned", "none", "10.2.0.3", "app-none"))
	stop := run(t, c)
	ctx := startInformers(t, factory)

	got := map[string]string{}
	for range 2 {
		k := waitKey(t, rec)
		got[k.RoleARN] = k.ExternalID
	}
	want := map[string]string{base + "app-same": "tenant-1", base + "app-none": "tenant-1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("prefetched %v, want %v", got, want)
	}

	// The namespace's External ID changes: its pods are prefetched again
	// with the new one (and the mismatched pod still not: it now matches
	// neither).
	changed := owned.DeepCopy()
	changed.Annotations[role.AnnotationExternalID] = "tenant-2"
	if _, err := client.CoreV1().Namespaces().Update(ctx, changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// app-same now mismatches (the pod says tenant-1); app-none follows.
	if k := waitKey(t, rec); k.RoleARN != base+"app-none" || k.ExternalID != "tenant-2" {
		t.Fatalf("after the change prefetched %+v, want app-none with tenant-2", k)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, k := range rec.all() {
		if k.RoleARN == base+"app-other" || (k.RoleARN == base+"app-same" && k.ExternalID != "tenant-1") {
			t.Errorf("prefetched %+v, which a request would be denied", k)
		}
	}
}

// --external-id-from=namespace: a pod naming an External ID is never
// prefetched, even the namespace's own.
func TestPrefetchExternalIDFromNamespace(t *testing.T) {
	owned := namespace("owned", "^"+base+"app-.*$")
	owned.Annotations[role.AnnotationExternalID] = "tenant-1"
	named := pod("owned", "named", "10.2.0.1", "app-named")
	named.Annotations[role.AnnotationExternalID] = "tenant-1"
	client := fake.NewClientset(owned, named, pod("owned", "plain", "10.2.0.2", "app-plain"))
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(podindex.Transform))
	resolver, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	checker, err := policy.New(policy.Config{ExternalIDFrom: policy.ExternalIDFromNamespace})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	keys, err := session.New(session.Config{DefaultSession: "kiam"}, session.Deps{Roles: resolver})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Workers: 1}, Deps{
		Pods: factory.Core().V1().Pods().Informer(), Namespaces: factory.Core().V1().Namespaces(),
		Keys: keys, Policy: checker, Cache: rec, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	ctx := startInformers(t, factory)
	if k := waitKey(t, rec); k.RoleARN != base+"app-plain" || k.ExternalID != "tenant-1" {
		t.Fatalf("prefetched %+v, want app-plain with the namespace's External ID", k)
	}
	// One worker handles the queue in order: once a pod created now is
	// prefetched, the named pod, queued before it, has been handled.
	if _, err := client.CoreV1().Pods("owned").Create(ctx, pod("owned", "later", "10.2.0.3", "app-later"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if k := waitKey(t, rec); k.RoleARN != base+"app-later" {
		t.Fatalf("prefetched %+v, want app-later", k)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, k := range rec.all() {
		if k.RoleARN == base+"app-named" {
			t.Errorf("prefetched %+v for a pod that names an External ID", k)
		}
	}
}

// A pod without a role annotation is queued only where it may have a role
// through its ServiceAccount; prefetch then resolves it like a request.
func TestEnqueueWithoutOwnRole(t *testing.T) {
	c, _, _, _ := setup(t)
	p := podindex.FromAPI(pod("open", "inherits", "10.1.0.9", ""))
	c.enqueue(nil, p)
	if n := c.queue.Len(); n != 0 {
		t.Fatalf("%d queued without ServiceAccount roles, want 0", n)
	}
	c.saRoles = true
	c.enqueue(nil, p)
	if n := c.queue.Len(); n != 1 {
		t.Fatalf("%d queued with ServiceAccount roles, want 1", n)
	}
}

// staleNamespaces fails with ErrNamespaceStale until it has been asked
// fail times, then answers from ns, as the server's namespace reader does
// while its watch is behind and then the API server answers.
type staleNamespaces struct {
	mu    sync.Mutex
	fail  int
	calls int
	ns    map[string]*corev1.Namespace
}

func (s *staleNamespaces) Get(name string) (*corev1.Namespace, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls <= s.fail {
		return nil, fmt.Errorf("namespace %s: %w", name, podindex.ErrNamespaceStale)
	}
	return s.ns[name], nil
}

// A pod whose namespace's policy cannot be known now is neither prefetched
// on the informer's (maybe old) namespace nor forgotten: it is tried again,
// and prefetched once the policy can be read and permits the role.
func TestPrefetchWaitsForStaleNamespace(t *testing.T) {
	c, factory, _, rec := setup(t,
		// The informer's namespace permits nothing: a prefetch decided on
		// it would never happen; one decided on the reader's does.
		namespace("app", ""),
		pod("app", "web", "10.1.0.2", "app-web"),
	)
	reader := &staleNamespaces{fail: 3, ns: map[string]*corev1.Namespace{"app": namespace("app", "^"+base+"app-.*$")}}
	c.namespaces = reader
	run(t, c)
	startInformers(t, factory)
	if k := waitKey(t, rec); k.RoleARN != base+"app-web" {
		t.Fatalf("prefetched %+v, want %sapp-web", k, base)
	}
	reader.mu.Lock()
	defer reader.mu.Unlock()
	if reader.calls != 4 {
		t.Fatalf("namespace read %d times, want 3 stale and 1 answered", reader.calls)
	}
}
