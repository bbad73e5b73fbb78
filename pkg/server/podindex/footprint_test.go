package podindex

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// BenchmarkCachedPods reports the live heap one cached pod costs the
// server: the object Transform keeps and its entries in the store and in
// the address and namespace indexes, for pods shaped like those of the
// scale benchmark (test/integration) as the API server sends them.
func BenchmarkCachedPods(b *testing.B) {
	const n = 10000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		store := cache.NewIndexer(cache.DeletionHandlingMetaNamespaceKeyFunc, cache.Indexers{
			IndexIP:              IPIndexFunc,
			cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		})
		for i := range n {
			obj, err := Transform(apiPod(i))
			if err != nil {
				b.Fatal(err)
			}
			if err := store.Add(obj); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/pod")
		runtime.KeepAlive(store)
	}
}

// apiPod is the i-th pod of 500 namespaces on 50 nodes with 16 roles, with
// what a real pod carries besides. Every string is its own allocation, as
// when decoded from the API server.
func apiPod(i int) *corev1.Pod {
	s := strings.Clone
	node := i % 50
	ip := fmt.Sprintf("10.%d.%d.%d", 100+i/(250*256), i/250%256, i%250+1)
	hostIP := fmt.Sprintf("127.0.1.%d", node+1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: fmt.Sprintf("scale-%03d", i%500), Name: fmt.Sprintf("pod-%05d", i),
			UID:             types.UID(fmt.Sprintf("3f0c2a3e-8d1b-4c55-9a7e-%012d", i)),
			ResourceVersion: fmt.Sprint(1000 + i),
			Annotations: map[string]string{
				s("iam.amazonaws.com/role"):                           fmt.Sprintf("scale-role-%02d", i%16),
				s("kubectl.kubernetes.io/last-applied-configuration"): s(`{"apiVersion":"v1","kind":"Pod"}`),
			},
			Labels:        map[string]string{s("app"): s("bench")},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: s("kubelet"), Operation: metav1.ManagedFieldsOperationUpdate}},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node-%02d", node), ServiceAccountName: s("default"),
			Containers: []corev1.Container{{Name: s("app"), Image: s("registry.invalid/podiam/bench:latest")}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodPhase(s(string(corev1.PodRunning))),
			PodIP: s(ip), PodIPs: []corev1.PodIP{{IP: ip}},
			HostIP: s(hostIP), HostIPs: []corev1.HostIP{{IP: hostIP}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}
