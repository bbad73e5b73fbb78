package podindex

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// DefaultPageSize is ListInPages' page size when given 0: kubectl's and
// client-go's pager's.
const DefaultPageSize = 500

// ListInPages returns lw with every pod list read in pages, each page
// converted to *Pod as it arrives, so that a list never holds more than
// one page of full pods.
//
// A reflector lists everything in one response: with ten thousand pods the
// body and the decoded pods (about 10 KB a pod) are live together, some
// 100 MiB, to be slimmed to a few hundred bytes a pod afterwards; that peak
// was most of the server's memory, at start and again at every relist
// after a broken watch. client-go's pager would not help: it keeps every
// page's full pods until the last. Streaming lists (WatchListClient) would,
// but need an etcd that answers watch progress requests.
//
// The reflector's lists name a resourceVersion ("0" for its first, the
// last one it saw for a relist), which the watch cache answers in one
// piece whatever the limit, so pages are read at resourceVersion "": a
// consistent list, from the watch cache where it can serve one, else from
// etcd. That
// is at least as fresh as any resourceVersion the reflector asks for, which
// is all a list promises it. The result is one list of *Pod without a
// continue token, whatever limit the reflector's pager asked for; the
// reflector stores it as it is, since Transform leaves a *Pod alone. A
// continued list passes through unchanged.
func ListInPages(lw cache.ListerWatcher, pageSize int64) cache.ListerWatcher {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	return &pagedListerWatcher{inner: cache.ToListerWatcherWithContext(lw), pageSize: pageSize}
}

type pagedListerWatcher struct {
	inner    cache.ListerWatcherWithContext
	pageSize int64
}

func (p *pagedListerWatcher) List(options metav1.ListOptions) (runtime.Object, error) {
	return p.ListWithContext(context.Background(), options)
}

func (p *pagedListerWatcher) Watch(options metav1.ListOptions) (watch.Interface, error) {
	return p.inner.WatchWithContext(context.Background(), options)
}

func (p *pagedListerWatcher) WatchWithContext(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
	return p.inner.WatchWithContext(ctx, options)
}

func (p *pagedListerWatcher) ListWithContext(ctx context.Context, options metav1.ListOptions) (runtime.Object, error) {
	if options.Continue != "" {
		return p.inner.ListWithContext(ctx, options)
	}
	options.ResourceVersion, options.ResourceVersionMatch = "", ""
	options.Limit = p.pageSize
	out := &metainternalversion.List{Items: []runtime.Object{}}
	for first := true; ; first = false {
		obj, err := p.inner.ListWithContext(ctx, options)
		if err != nil {
			// An expired continue token is an "Expired" error, on which
			// the reflector lists again from the start.
			return nil, err
		}
		page, ok := obj.(*corev1.PodList)
		if !ok {
			return nil, fmt.Errorf("podindex: list returned %T, want *v1.PodList", obj)
		}
		if first {
			// Every page is of the snapshot the first one was read at.
			out.ResourceVersion = page.ResourceVersion
		}
		for i := range page.Items {
			out.Items = append(out.Items, FromAPI(&page.Items[i]))
		}
		if page.Continue == "" {
			return out, nil
		}
		options.Continue = page.Continue
	}
}
