// Package prefetch warms the server's credential cache: when a pod with a
// role appears or gets its address, the controller asks the cache to fetch
// that role's credentials, so that the pod's first request costs no STS
// round trip. It applies the namespace policy first, exactly as a request
// would (service.Decide), because otherwise creating pods would be a way to
// make the server assume any role, or a role with any External ID. When a
// namespace's policy changes (its permitted expression or External ID), its
// pods are prefetched again under the new decision.
//
// It follows kubernetes/sample-controller: informer handlers only enqueue
// pod keys, Run waits for the informers to sync and then works the queue.
package prefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/service"
)

// Prefetcher is what the controller needs of the credential cache: a
// fetch started in the background that never waits.
type Prefetcher interface {
	Prefetch(key creds.Key)
}

// DefaultWorkers is Config.Workers' default.
const DefaultWorkers = 2

// Config tunes the controller.
type Config struct {
	// ServiceAccountRoles is the server's --service-account-roles: pods
	// without a role annotation may still have a role, their account's.
	ServiceAccountRoles bool
	// Workers is how many pods are handled at once; 0 means
	// DefaultWorkers. A prefetch only starts a fetch, so few suffice.
	Workers int
}

// Deps are the informers and the request path's steps the controller uses.
type Deps struct {
	// Pods is the server's pod informer, holding *podindex.Pod, not yet
	// started.
	Pods cache.SharedIndexInformer
	// Namespaces is the server's namespace informer.
	Namespaces coreinformers.NamespaceInformer
	// Current reads the namespaces decisions are taken on: the server's
	// podindex.Namespaces, which reads the API server while the namespace
	// watch is behind. nil means the informer's lister.
	Current service.NamespaceGetter
	Keys    service.KeyResolver
	Policy  service.Policy
	Cache   Prefetcher
	Log     *slog.Logger
}

// Controller is the prefetch controller.
type Controller struct {
	pods       cache.Indexer
	namespaces service.NamespaceGetter
	synced     []cache.InformerSynced
	keys       service.KeyResolver
	policy     service.Policy
	cache      Prefetcher
	workers    int
	saRoles    bool
	queue      workqueue.TypedRateLimitingInterface[string]
	log        *slog.Logger
}

// New registers the controller's handler on the pod informer, which must
// not have been started yet.
func New(cfg Config, deps Deps) (*Controller, error) {
	if deps.Pods == nil || deps.Namespaces == nil || deps.Keys == nil || deps.Policy == nil || deps.Cache == nil || deps.Log == nil {
		return nil, errors.New("prefetch: every dependency is required")
	}
	if cfg.Workers < 0 {
		return nil, fmt.Errorf("prefetch: %d workers", cfg.Workers)
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	var namespaces service.NamespaceGetter = deps.Namespaces.Lister()
	if deps.Current != nil {
		namespaces = deps.Current
	}
	c := &Controller{
		pods:       deps.Pods.GetIndexer(),
		namespaces: namespaces,
		synced:     []cache.InformerSynced{deps.Pods.HasSynced, deps.Namespaces.Informer().HasSynced},
		keys:       deps.Keys,
		policy:     deps.Policy,
		cache:      deps.Cache,
		workers:    cfg.Workers,
		saRoles:    cfg.ServiceAccountRoles,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "podiam_prefetch"}),
		log: deps.Log,
	}
	if _, err := deps.Pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueue(nil, asPod(obj)) },
		UpdateFunc: func(old, obj any) { c.enqueue(asPod(old), asPod(obj)) },
	}); err != nil {
		return nil, fmt.Errorf("add prefetch handler: %w", err)
	}
	if _, err := deps.Namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj any) { c.namespaceChanged(old, obj) },
	}); err != nil {
		return nil, fmt.Errorf("add prefetch namespace handler: %w", err)
	}
	return c, nil
}

// namespaceChanged queues every pod of a namespace whose policy changed:
// a new External ID means new sessions, which are warmed as a new pod's are.
func (c *Controller) namespaceChanged(oldObj, curObj any) {
	old, ok1 := oldObj.(*corev1.Namespace)
	cur, ok2 := curObj.(*corev1.Namespace)
	if !ok1 || !ok2 || !service.NamespacePolicyChanged(old, cur) {
		return
	}
	objs, err := c.pods.ByIndex(cache.NamespaceIndex, cur.Name)
	if err != nil {
		c.log.Error("list pods of changed namespace", "namespace", cur.Name, "error", err)
		return
	}
	for _, obj := range objs {
		if pod := asPod(obj); pod != nil {
			c.enqueue(nil, pod)
		}
	}
}

// enqueue reacts only to a pod gaining an address or changing its role
// annotations; status churn (readiness, conditions) costs nothing.
func (c *Controller) enqueue(old, cur *podindex.Pod) {
	// Static pods never get a role (the service refuses them), so their
	// roles are never fetched ahead either.
	if cur == nil || !podindex.Live(cur) || cur.DeletionTimestamp != nil || cur.Mirror {
		return
	}
	// Without a role annotation a pod has a role only through its
	// ServiceAccount; prefetch finds out which.
	if r, _ := cur.Annotation(role.AnnotationRole); r == "" && !c.saRoles {
		return
	}
	ips := cur.IPs
	if len(ips) == 0 {
		return
	}
	if old != nil && slices.Equal(old.IPs, ips) && !service.RelevantChange(old, cur) {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(cur)
	if err != nil {
		return
	}
	c.queue.Add(key)
}

// Run waits for the pod and namespace informers to sync, then handles
// queued pods until ctx is done, and returns nil once its workers have
// stopped. Until the namespaces have synced every pod would look denied
// (its namespace unknown) and be dropped, so nothing is handled before.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil // ctx ended first
	}
	var wg sync.WaitGroup
	for range c.workers {
		wg.Go(func() {
			for c.processNext() {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) processNext() bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if c.prefetch(key) {
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// prefetch applies the same policy as a request: the server must never call
// STS for a role the pod's namespace does not permit, or creating pods would
// be a way to make it assume arbitrary roles. It reports whether to try
// again later: the namespace's policy could not be known now.
func (c *Controller) prefetch(podKey string) (retry bool) {
	obj, exists, err := c.pods.GetByKey(podKey)
	if err != nil || !exists {
		return false
	}
	pod := asPod(obj)
	if pod == nil || !podindex.Live(pod) || pod.Mirror {
		return false
	}
	// The same resolver as requests use, so that a prefetch warms the very
	// key a request will ask for.
	key, err := c.keys.Key(pod)
	if err != nil {
		return false
	}
	decision, err := service.Decide(c.namespaces, c.policy, pod.Namespace, key)
	if errors.Is(err, podindex.ErrNamespaceStale) {
		// Neither warm on a policy that may be old, nor forget the pod:
		// its namespace may well permit the role.
		return true
	}
	if err != nil {
		return false
	}
	c.log.Debug("prefetching credentials", "namespace", pod.Namespace, "pod", pod.Name, "role_arn", decision.Key.RoleARN,
		"external_id_set", decision.Key.ExternalID != "")
	c.cache.Prefetch(decision.Key)
	return false
}

// asPod returns the *podindex.Pod an informer handler was given, or nil.
func asPod(obj any) *podindex.Pod {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, _ := obj.(*podindex.Pod)
	return pod
}
