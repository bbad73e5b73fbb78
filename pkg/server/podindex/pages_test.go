package podindex

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// pagingLW serves pods as an API server does: pages of options.Limit with
// continue tokens (the index of the next pod), at resourceVersion rv.
type pagingLW struct {
	pods    []*corev1.Pod
	rv      string
	failAt  int // a call number (from 1) that fails with failErr
	failErr error
	watcher *watch.FakeWatcher

	mu    sync.Mutex
	calls []metav1.ListOptions
}

func (l *pagingLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, opts)
	if len(l.calls) == l.failAt {
		return nil, l.failErr
	}
	start := 0
	if opts.Continue != "" {
		start, _ = strconv.Atoi(opts.Continue)
	}
	end := len(l.pods)
	if opts.Limit > 0 && start+int(opts.Limit) < end {
		end = start + int(opts.Limit)
	}
	page := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: l.rv}}
	if end < len(l.pods) {
		page.Continue = strconv.Itoa(end)
	}
	for _, p := range l.pods[start:end] {
		page.Items = append(page.Items, *p)
	}
	return page, nil
}

func (l *pagingLW) Watch(metav1.ListOptions) (watch.Interface, error) {
	if l.watcher == nil {
		return nil, errors.New("no watch")
	}
	return l.watcher, nil
}

func (l *pagingLW) options() []metav1.ListOptions {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]metav1.ListOptions(nil), l.calls...)
}

func fivePods() []*corev1.Pod {
	var pods []*corev1.Pod
	for i := range 5 {
		pods = append(pods, mkPod("p"+strconv.Itoa(i), ips("10.0.0."+strconv.Itoa(i+1)), full))
	}
	return pods
}

func TestListInPages(t *testing.T) {
	tests := []struct {
		name      string
		opts      metav1.ListOptions
		wantCalls []metav1.ListOptions
		paged     bool // the result is a list of *Pod
	}{
		{name: "first list, from the watch cache at 0, is paged at a consistent read",
			opts:      metav1.ListOptions{ResourceVersion: "0"},
			wantCalls: []metav1.ListOptions{{Limit: 2}, {Limit: 2, Continue: "2"}, {Limit: 2, Continue: "4"}},
			paged:     true},
		{name: "consistent list is paged",
			opts:      metav1.ListOptions{},
			wantCalls: []metav1.ListOptions{{Limit: 2}, {Limit: 2, Continue: "2"}, {Limit: 2, Continue: "4"}},
			paged:     true},
		{name: "relist at the last resource version seen is paged at a consistent read",
			opts:      metav1.ListOptions{ResourceVersion: "40", ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan},
			wantCalls: []metav1.ListOptions{{Limit: 2}, {Limit: 2, Continue: "2"}, {Limit: 2, Continue: "4"}},
			paged:     true},
		{name: "the reflector's pager's limit is a page size like ours",
			opts:      metav1.ListOptions{ResourceVersion: "0", Limit: 500},
			wantCalls: []metav1.ListOptions{{Limit: 2}, {Limit: 2, Continue: "2"}, {Limit: 2, Continue: "4"}},
			paged:     true},
		{name: "continued list passes through",
			opts:      metav1.ListOptions{Limit: 3, Continue: "1"},
			wantCalls: []metav1.ListOptions{{Limit: 3, Continue: "1"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lw := &pagingLW{pods: fivePods(), rv: "42"}
			obj, err := ListInPages(lw, 2).List(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			calls := lw.options()
			if len(calls) != len(tc.wantCalls) {
				t.Fatalf("calls = %+v, want %+v", calls, tc.wantCalls)
			}
			for i := range calls {
				if calls[i] != tc.wantCalls[i] {
					t.Fatalf("call %d = %+v, want %+v", i, calls[i], tc.wantCalls[i])
				}
			}
			if !tc.paged {
				if _, ok := obj.(*corev1.PodList); !ok {
					t.Fatalf("pass-through returned %T", obj)
				}
				return
			}
			list := obj.(*metainternalversion.List)
			if list.ResourceVersion != "42" || len(list.Items) != 5 {
				t.Fatalf("list rv %q with %d items, want 42 and 5", list.ResourceVersion, len(list.Items))
			}
			for i, item := range list.Items {
				pod, ok := item.(*Pod)
				if !ok || pod.Name != "p"+strconv.Itoa(i) || len(pod.IPs) != 1 {
					t.Fatalf("item %d = %#v, want pod p%d converted", i, item, i)
				}
			}
		})
	}
}

func TestListInPagesErrors(t *testing.T) {
	expired := apierrors.NewResourceExpired("continue token expired")
	lw := &pagingLW{pods: fivePods(), rv: "42", failAt: 2, failErr: expired}
	if _, err := ListInPages(lw, 2).List(metav1.ListOptions{ResourceVersion: "0"}); !apierrors.IsResourceExpired(err) {
		t.Fatalf("err = %v, want the expired error as it came (the reflector lists again on it)", err)
	}
	empty := &pagingLW{rv: "7"}
	obj, err := ListInPages(empty, 0).List(metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if list := obj.(*metainternalversion.List); list.ResourceVersion != "7" || list.Items == nil || len(list.Items) != 0 {
		t.Fatalf("empty list = %+v", list)
	}
	if calls := empty.options(); calls[0].Limit != DefaultPageSize {
		t.Fatalf("page size %d, want the default %d", calls[0].Limit, DefaultPageSize)
	}
}

// TestListInPagesInformer runs an informer on a paged list: the reflector
// takes the list of *Pod, and watch events are converted by the transform.
func TestListInPagesInformer(t *testing.T) {
	lw := &pagingLW{pods: fivePods(), rv: "42", watcher: watch.NewFake()}
	inf := cache.NewSharedIndexInformer(ListInPages(lw, 2), &corev1.Pod{}, 0, cache.Indexers{})
	idx, err := New(inf, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("not synced")
	}
	if pod, err := idx.Resolve("10.0.0.3"); err != nil || pod.Name != "p2" {
		t.Fatalf("listed pod: %v %v", pod, err)
	}
	if n := len(lw.options()); n != 3 {
		t.Fatalf("%d list calls, want 3 pages", n)
	}
	lw.watcher.Add(mkPod("late", ips("10.0.0.9"), withRV("43")))
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if pod, err := idx.Lookup(wctx, "10.0.0.9"); err != nil || pod.Name != "late" {
		t.Fatalf("watched pod: %v %v", pod, err)
	}
	for _, obj := range inf.GetStore().List() {
		if _, ok := obj.(*Pod); !ok {
			t.Fatalf("store holds %T", obj)
		}
	}
}
