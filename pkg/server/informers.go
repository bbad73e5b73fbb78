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

// indexCredKey indexes live pods by the session key they would use, so the
// credential cache can ask "does any live pod still use this role?".
const indexCredKey = "podiam-credkey"

// credKeyIndexFunc indexes live pods with a valid role under their key.
// Pods still pending without an address count: they are about to ask.
func credKeyIndexFunc(keys service.KeyResolver) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) {
			return nil, nil
		}
		key, err := keys.Key(pod)
		if err != nil {
			return nil, nil
		}
		return []string{key.String()}, nil
	}
}

// inUse reports whether any live pod in the indexer uses key: the
// credential cache refreshes and keeps only keys in use.
//
// A pod that takes its role from its ServiceAccount was indexed with the
// role the account had then, and the account may have changed since
// without the pod changing, so such a pod counts only if its key now is
// key; and the pods of accounts whose role is key's role now are checked
// too (sas, nil without ServiceAccount roles). Both cost a key per pod,
// paid only for those pods and, for the second, only for keys nothing
// indexed uses: keys of deleted pods, once each, as they come due.
func inUse(pods cache.Indexer, keys service.KeyResolver, sas cache.Indexer) func(creds.Key) bool {
	uses := func(obj any, key creds.Key) bool {
		pod := asPod(obj)
		if pod == nil || !podindex.Live(pod) {
			return false
		}
		k, err := keys.Key(pod)
		return err == nil && k == key
	}
	return func(key creds.Key) bool {
		objs, err := pods.ByIndex(indexCredKey, key.String())
		if err != nil {
			return false
		}
		for _, obj := range objs {
			pod := asPod(obj)
			if pod == nil {
				continue
			}
			// A pod's own annotations and metadata are what it was
			// indexed with, so its index entry is exact.
			if own, _ := pod.Annotation(role.AnnotationRole); sas == nil || own != "" || uses(obj, key) {
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
			for _, p := range inNS {
				if pod := asPod(p); pod != nil && pod.ServiceAccountName == sa.Name && uses(p, key) {
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
