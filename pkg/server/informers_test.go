package server

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/server/podindex"
)

// The namespace informer lists consistently (the tracker counts a watch
// that follows a list as current at once), stores namespaces, and its
// tracker is current once it has listed and watches.
func TestTrackedNamespaceInformer(t *testing.T) {
	client := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}})
	var mu sync.Mutex
	var versions []string
	client.PrependReactor("list", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		versions = append(versions, a.(k8stesting.ListActionImpl).ListOptions.ResourceVersion)
		mu.Unlock()
		return false, nil, nil
	})
	tracker, err := podindex.NewWatchTracker(podindex.WatchConfig{Resource: "namespace", Settle: time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inf := trackedNamespaceInformer(tracker)(client, 0)
	go inf.Run(t.Context().Done())
	if !cache.WaitForCacheSync(t.Context().Done(), inf.HasSynced) {
		t.Fatal("not synced")
	}
	if _, ok, _ := inf.GetStore().GetByKey("app"); !ok {
		t.Fatal("namespace not in the store")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !tracker.Current() {
		if time.Now().After(deadline) {
			t.Fatal("tracker not current after a list and a watch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(versions) == 0 {
		t.Fatal("no list")
	}
	for _, v := range versions {
		if v != "" {
			t.Errorf("listed at resourceVersion %q, want a consistent list", v)
		}
	}
}
