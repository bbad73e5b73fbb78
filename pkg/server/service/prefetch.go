package service

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/role"
)

// IndexCredKey indexes live pods by the session key they would use, so the
// credential cache can ask "does any live pod still use this role?".
const IndexCredKey = "podiam-credkey"

// CredKeyIndexFunc indexes live pods with a valid role under their key.
// Pods still pending without an address count: they are about to ask.
func CredKeyIndexFunc(keys KeyResolver, defaultSession string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) {
			return nil, nil
		}
		key, err := keys.Key(pod.GetAnnotations(), defaultSession)
		if err != nil {
			return nil, nil
		}
		return []string{key.String()}, nil
	}
}

// InUse reports whether any live pod in the indexer uses key.
func InUse(pods cache.Indexer) func(creds.Key) bool {
	return func(key creds.Key) bool {
		objs, err := pods.ByIndex(IndexCredKey, key.String())
		return err == nil && len(objs) > 0
	}
}

// Prefetcher is interface the prefetch controller needs of the cache.
type Prefetcher interface {
	Prefetch(key creds.Key)
}

// PrefetchController warms the credential cache when a pod with a role
// appears or gets its address, so that its first request costs no STS
// round trip. It follows the sample-controller shape: informer handlers
// only enqueue, workers do the rest.
type PrefetchController struct {
	pods       cache.Indexer
	namespaces NamespaceGetter
	keys       KeyResolver
	policy     PolicyChecker
	cache      Prefetcher
	session    string
	queue      workqueue.TypedRateLimitingInterface[string]
	log        *slog.Logger
}

// NewPrefetchController registers handlers on a pod informer that has not
// been started yet.
func NewPrefetchController(defaultSession string, pods cache.SharedIndexInformer, namespaces NamespaceGetter,
	keys KeyResolver, policy PolicyChecker, c Prefetcher, log *slog.Logger) (*PrefetchController, error) {
	pc := &PrefetchController{
		pods:       pods.GetIndexer(),
		namespaces: namespaces,
		keys:       keys,
		policy:     policy,
		cache:      c,
		session:    defaultSession,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "podiam_prefetch"}),
		log: log,
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { pc.enqueue(nil, asPod(obj)) },
		UpdateFunc: func(old, obj any) {
			pc.enqueue(asPod(old), asPod(obj))
		},
	}); err != nil {
		return nil, fmt.Errorf("add prefetch handler: %w", err)
	}
	return pc, nil
}

// enqueue reacts only to a pod gaining an address or changing its role
// annotations; status churn (readiness, conditions) costs nothing.
func (pc *PrefetchController) enqueue(old, cur *podindex.Pod) {
	if cur == nil || !podindex.Live(cur) || cur.DeletionTimestamp != nil {
		return
	}
	if r, _ := cur.Annotation(role.AnnotationRole); r == "" {
		return
	}
	ips := cur.IPs
	if len(ips) == 0 {
		return
	}
	if old != nil && slices.Equal(old.IPs, ips) && !relevantChange(old, cur) {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(cur)
	if err != nil {
		return
	}
	pc.queue.Add(key)
}

// Run processes the queue with workers until ctx is done.
func (pc *PrefetchController) Run(ctx context.Context, workers int) error {
	defer pc.queue.ShutDown()
	for range workers {
		go wait.UntilWithContext(ctx, pc.runWorker, 0)
	}
	<-ctx.Done()
	return nil
}

func (pc *PrefetchController) runWorker(ctx context.Context) {
	for pc.processNext() {
	}
}

func (pc *PrefetchController) processNext() bool {
	key, quit := pc.queue.Get()
	if quit {
		return false
	}
	defer pc.queue.Done(key)
	pc.prefetch(key)
	pc.queue.Forget(key)
	return true
}

// prefetch applies the same policy as a request: the server must never call
// STS for a role the pod's namespace does not permit, or creating pods would
// be a way to make it assume arbitrary roles.
func (pc *PrefetchController) prefetch(podKey string) {
	obj, exists, err := pc.pods.GetByKey(podKey)
	if err != nil || !exists {
		return
	}
	pod := asPod(obj)
	if pod == nil || !podindex.Live(pod) {
		return
	}
	key, err := pc.keys.Key(pod.GetAnnotations(), pc.session)
	if err != nil {
		return
	}
	ns, err := pc.namespaces.Get(pod.Namespace)
	if err != nil {
		return
	}
	expr, present := ns.Annotations[role.AnnotationPermitted]
	if pc.policy.Check(expr, present, key.RoleARN) != nil {
		return
	}
	pc.log.Debug("prefetching credentials", "namespace", pod.Namespace, "pod", pod.Name, "role_arn", key.RoleARN)
	pc.cache.Prefetch(key)
}
