package server

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/service"
)

// trackedPodInformer builds the pod informer as the factory would, on a
// ListerWatcher the tracker observes, so the index knows when its watch is
// down, and that lists in pages, so a list never holds every full pod.
func trackedPodInformer(t *podindex.WatchTracker) func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
	return func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		pods := c.CoreV1().Pods(metav1.NamespaceAll)
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return pods.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return pods.Watch(ctx, o)
			},
		}
		return cache.NewSharedIndexInformerWithOptions(t.Wrap(podindex.ListInPages(lw, 0)), &corev1.Pod{}, cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: "pods",
		})
	}
}

// trackedNamespaceInformer builds the namespace informer as the factory
// would, on a ListerWatcher the tracker observes and that lists
// consistently, so policy decisions know when the namespaces they read may
// be behind (podindex.Namespaces).
func trackedNamespaceInformer(t *podindex.WatchTracker) func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
	return func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		namespaces := c.CoreV1().Namespaces()
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				// Consistent lists, as ListInPages reads pods: the tracker
				// counts a watch that follows a list as current at once,
				// which holds only if the list was. A relist at the
				// reflector's resourceVersion may come from a watch cache
				// still behind etcd after a restart.
				o.ResourceVersion, o.ResourceVersionMatch = "", ""
				return namespaces.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return namespaces.Watch(ctx, o)
			},
		}
		return cache.NewSharedIndexInformerWithOptions(t.Wrap(lw), &corev1.Namespace{}, cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: "namespaces",
		})
	}
}

// registerInformerMetrics exposes how many pods and namespaces the server
// knows, read from the informer stores at scrape time.
func registerInformerMetrics(reg prometheus.Registerer, pods, namespaces cache.SharedIndexInformer) error {
	count := func(inf cache.SharedIndexInformer) func() float64 {
		return func() float64 { return float64(len(inf.GetStore().ListKeys())) }
	}
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podiam_server_pods", Help: "Pods in the server's cache."}, count(pods)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podiam_server_namespaces", Help: "Namespaces in the server's cache."}, count(namespaces)),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register informer metrics: %w", err)
		}
	}
	return nil
}

// indexCredKey indexes live pods by the session their metadata names (role,
// session name, source identity, tags), so the credential cache can ask
// "does any live pod still use this key?".
const indexCredKey = "podiam-credkey"

// indexValue is a key's index value. The External ID is left out: it may
// be the namespace's, which an index function cannot read (a namespace
// change re-indexes no pod), so inUse decides it per pod at query time.
func indexValue(key creds.Key) string {
	key.ExternalID = ""
	return key.String()
}

// credKeyIndexFunc indexes live pods with a valid role under their key.
// Pods still pending without an address count: they are about to ask.
// Static pods never get a role.
func credKeyIndexFunc(keys service.KeyResolver) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) || pod.Mirror {
			return nil, nil
		}
		key, err := keys.Key(pod)
		if err != nil {
			return nil, nil
		}
		return []string{indexValue(key)}, nil
	}
}

// inUse reports whether any live pod uses key as the policy decides it
// now: the credential cache refreshes and keeps only keys in use. Sessions
// assumed with a namespace's previous External ID, or for a role its
// policy no longer permits, are thus no longer in use: they are neither
// refreshed nor kept from eviction, and dropped when due.
//
// A pod that takes its role from its ServiceAccount was indexed with the
// role the account had then, and the account may have changed since
// without the pod changing; so every candidate's key is computed again,
// and the pods of accounts whose role is key's role now are checked too
// (sas, nil without ServiceAccount roles). The second costs a key per pod
// of those accounts, paid only for keys nothing indexed uses: keys of
// deleted pods, once each, as they come due.
func inUse(pods cache.Indexer, keys service.KeyResolver, namespaces service.NamespaceGetter,
	p service.Policy, sas cache.Indexer) func(creds.Key) bool {
	uses := func(obj any, key creds.Key) bool {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) || pod.Mirror {
			return false
		}
		own, err := keys.Key(pod)
		if err != nil {
			return false
		}
		d, err := service.Decide(namespaces, p, pod.Namespace, own)
		return err == nil && d.Key == key
	}
	return func(key creds.Key) bool {
		objs, err := pods.ByIndex(indexCredKey, indexValue(key))
		if err != nil {
			return false
		}
		for _, obj := range objs {
			if uses(obj, key) {
				return true
			}
		}
		if sas == nil {
			return false
		}
		accounts, err := sas.ByIndex(indexSARole, key.RoleARN)
		if err != nil {
			return false
		}
		for _, obj := range accounts {
			sa, ok := obj.(*corev1.ServiceAccount)
			if !ok {
				continue
			}
			inNS, err := pods.ByIndex(cache.NamespaceIndex, sa.Namespace)
			if err != nil {
				continue
			}
			for _, o := range inNS {
				if pod := asPod(o); pod != nil && pod.ServiceAccountName == sa.Name && uses(o, key) {
					return true
				}
			}
		}
		return false
	}
}

// indexSARole indexes ServiceAccounts by the role ARN their
// iam.amazonaws.com/role annotation resolves to.
const indexSARole = "podiam-role"

// saRoleIndexFunc indexes a ServiceAccount under its role's ARN; one
// without a role, or with one that does not resolve, is not indexed.
func saRoleIndexFunc(roles *role.Resolver) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok {
			return nil, nil
		}
		arn, err := roles.Resolve(sa.Annotations[role.AnnotationRole])
		if err != nil {
			return nil, nil
		}
		return []string{arn}, nil
	}
}

// serviceAccountRoles reads ServiceAccounts' role annotations from the
// informer's lister, for session.Keys.
type serviceAccountRoles struct {
	lister corelisters.ServiceAccountLister
}

func (s serviceAccountRoles) Role(namespace, name string) string {
	sa, err := s.lister.ServiceAccounts(namespace).Get(name)
	if err != nil {
		return ""
	}
	return sa.Annotations[role.AnnotationRole]
}

// asPod returns the *podindex.Pod an informer gave, or nil.
func asPod(obj any) *podindex.Pod {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, _ := obj.(*podindex.Pod)
	return pod
}
