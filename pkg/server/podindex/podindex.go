// Package podindex answers "which pod is calling from this IP?" for the
// server. It is the first step of the credential path and the one that
// decides identity, so it prefers refusing to guessing: terminal and
// hostNetwork pods never match, and two live pods on one address are an
// error, not a coin toss. Lookups for an address not seen yet wait on
// informer events rather than polling, because a new pod's SDK asks for
// credentials within milliseconds of starting.
//
// An informer whose watch is down keeps answering with what it knew, while
// pods may be deleted and their addresses reused. So while the watch is not
// current (WatchTracker), lookups are answered from the API server, and
// refused (ErrStale) when it does not answer.
package podindex

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// IndexIP is the informer index from pod address to pods: its values are
// buckets of addresses (ipBucket), and a lookup keeps the bucket's pods
// that hold the address.
const IndexIP = "podiam-ip"

// ipBuckets is how many index values pod addresses are spread over. The
// informer keeps a set per index value, about 200 bytes even with one
// member: one set per address was a fifth of what the server held per
// pod. A few dozen pods to a bucket at 100,000 pods cost a few bytes
// each, and a lookup checks them all, which is cheap beside the request.
const ipBuckets = 4096

var (
	bucketSeed = maphash.MakeSeed()
	// bucketNames are the index values, made once so that indexing a pod
	// allocates none.
	bucketNames = func() []string {
		names := make([]string, ipBuckets)
		for i := range names {
			names[i] = strconv.Itoa(i)
		}
		return names
	}()
)

// ipBucket is the index value of a canonical address.
func ipBucket(ip string) string { return bucketNames[maphash.String(bucketSeed, ip)%ipBuckets] }

var (
	// ErrNotFound means no live pod holds the address.
	ErrNotFound = errors.New("no live pod has this address")
	// ErrConflict means several live pods claim the address, so the caller's
	// identity is ambiguous.
	ErrConflict = errors.New("several live pods claim this address")
)

// Config tunes an Index.
type Config struct {
	// ExtraIndexers are added to the informer with the IP index, so that
	// other steps (the credential cache's "is this role in use") can share
	// one informer.
	ExtraIndexers cache.Indexers
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Current reports whether the informer is up to date, normally
	// WatchTracker.Current; nil means always. While it reports false,
	// Lookup asks Live.
	Current func() bool
	// Live reads pods from the API server; required with Current.
	Live LivePods
	// LiveTimeout bounds the API server reads of one Lookup; 0 means
	// DefaultLiveTimeout. It is short because agents give a request one
	// second, and a live read that times out answers ErrStale.
	LiveTimeout time.Duration
}

// DefaultLiveTimeout is Config.LiveTimeout's default.
const DefaultLiveTimeout = 500 * time.Millisecond

// Index looks pods up by address.
type Index struct {
	informer    cache.SharedIndexInformer
	now         func() time.Time
	current     func() bool
	live        LivePods
	liveTimeout time.Duration
	liveLookups *prometheus.CounterVec
	log         *slog.Logger

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

// New adds the indexes and an event handler to a pod informer that has not
// been started yet, and registers the index's metrics on reg (nil: none).
// It sets the informer's transform to Transform: the index, and everything
// else reading the informer's store or events, sees *Pod, never a
// *corev1.Pod.
func New(informer cache.SharedIndexInformer, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Index, error) {
	if cfg.Current != nil && cfg.Live == nil {
		return nil, errors.New("podindex: Live is required with Current")
	}
	if cfg.LiveTimeout < 0 {
		return nil, fmt.Errorf("podindex: live timeout %s is negative", cfg.LiveTimeout)
	}
	if cfg.LiveTimeout == 0 {
		cfg.LiveTimeout = DefaultLiveTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	idx := &Index{
		informer:    informer,
		now:         cfg.Now,
		current:     cfg.Current,
		live:        cfg.Live,
		liveTimeout: cfg.LiveTimeout,
		log:         log,
		liveLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_server_pod_lookups_live_total",
			Help: "Pod lookups answered from the API server while the pod watch was not current, by result " +
				"(confirmed, corrected, failed).",
		}, []string{"result"}),
		waiters: map[string]map[chan struct{}]struct{}{},
	}
	if idx.now == nil {
		idx.now = time.Now
	}
	for _, r := range []string{liveConfirmed, liveCorrected, liveFailed} {
		idx.liveLookups.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(idx.liveLookups); err != nil {
			return nil, fmt.Errorf("podindex: register metrics: %w", err)
		}
	}
	if err := informer.SetTransform(Transform); err != nil {
		return nil, fmt.Errorf("set pod transform: %w", err)
	}
	indexers := cache.Indexers{IndexIP: IPIndexFunc}
	for name, fn := range cfg.ExtraIndexers {
		indexers[name] = fn
	}
	if err := informer.AddIndexers(indexers); err != nil {
		return nil, fmt.Errorf("add pod indexers: %w", err)
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { idx.wake(obj) },
		UpdateFunc: func(_, obj any) { idx.wake(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("add pod event handler: %w", err)
	}
	return idx, nil
}

// HasSynced reports whether the informer has delivered its initial list.
func (i *Index) HasSynced() bool { return i.informer.HasSynced() }

// livePoll is how often a lookup waiting for an unknown address asks the
// API server again while the informer is not current: its events, which
// wake a waiting lookup at once, may not be coming.
const livePoll = 200 * time.Millisecond

// Lookup returns the pod that holds ip, waiting for informer events until
// ctx is done if no live pod holds it yet. A conflict is returned at once:
// waiting would not make the answer less ambiguous. While the informer is
// not current the API server answers (asked again on events and every
// livePoll), and ErrStale means it did not.
func (i *Index) Lookup(ctx context.Context, ip string) (*Pod, error) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return nil, fmt.Errorf("parse address %q: %w", ip, err)
	}
	ip = addr.Unmap().String()
	var notFound error // the last answer, if it was "no pod"
	for {
		// Register before looking so that an event arriving between the
		// look and the wait is not missed.
		ch := i.register(ip)
		stale := i.current != nil && !i.current()
		var pod *Pod
		if stale {
			pod, err = i.lookupLive(ctx, ip)
			if errors.Is(err, ErrStale) && ctx.Err() != nil && notFound != nil {
				// The wait ran out during a read; the last answer stands.
				err = notFound
			}
		} else {
			pod, err = i.Resolve(ip)
		}
		if !errors.Is(err, ErrNotFound) {
			i.unregister(ip, ch)
			return pod, err
		}
		notFound = err
		var poll <-chan time.Time
		if stale {
			poll = time.After(livePoll)
		}
		select {
		case <-ch:
		case <-poll:
			i.unregister(ip, ch)
		case <-ctx.Done():
			i.unregister(ip, ch)
			return nil, fmt.Errorf("%w (waited: %w)", ErrNotFound, context.Cause(ctx))
		}
	}
}

// Resolve returns the pod that holds ip now, without waiting.
func (i *Index) Resolve(ip string) (*Pod, error) {
	pods, err := i.indexed(ip)
	if err != nil {
		return nil, err
	}
	return Choose(pods, i.now())
}

// indexed returns the pods the index holds under canonical address ip.
func (i *Index) indexed(ip string) ([]*Pod, error) {
	objs, err := i.informer.GetIndexer().ByIndex(IndexIP, ipBucket(ip))
	if err != nil {
		return nil, fmt.Errorf("index lookup: %w", err)
	}
	var pods []*Pod
	for _, obj := range objs {
		if pod, ok := obj.(*Pod); ok && slices.Contains(pod.IPs, ip) {
			pods = append(pods, pod)
		}
	}
	return pods, nil
}

// Choose picks the pod entitled to an address among those indexed under it.
// A non-terminating pod wins over terminating ones, because a terminating
// pod's address may already be handed to its successor; a terminating pod
// alone keeps the address until its deletion deadline so that its shutdown
// handler can still reach AWS.
func Choose(pods []*Pod, now time.Time) (*Pod, error) {
	var active, terminating []*Pod
	for _, pod := range pods {
		if !Live(pod) {
			continue
		}
		if dt := pod.DeletionTimestamp; dt != nil {
			if now.Before(dt.Time) {
				terminating = append(terminating, pod)
			}
			continue
		}
		active = append(active, pod)
	}
	switch {
	case len(active) == 1:
		return active[0], nil
	case len(active) > 1:
		return nil, ErrConflict
	case len(terminating) == 1:
		return terminating[0], nil
	case len(terminating) > 1:
		return nil, ErrConflict
	}
	return nil, ErrNotFound
}

// Live reports whether a pod can be given credentials by address at all.
// hostNetwork pods share the node's address, so indexing them would hand
// their role to every other hostNetwork process on the node.
func Live(pod *Pod) bool {
	if pod.HostNetwork {
		return false
	}
	switch pod.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return false
	}
	return true
}

// IPIndexFunc indexes live pods under the bucket of each of their
// addresses (IndexedAddrs).
func IPIndexFunc(obj any) ([]string, error) {
	addrs := IndexedAddrs(obj)
	if len(addrs) == 0 {
		return nil, nil
	}
	buckets := make([]string, 0, len(addrs))
	for _, ip := range addrs {
		if b := ipBucket(ip); !slices.Contains(buckets, b) {
			buckets = append(buckets, b)
		}
	}
	return buckets, nil
}

// IndexedAddrs are the addresses a pod can be found by: every address of
// a live pod, none of another.
func IndexedAddrs(obj any) []string {
	pod, ok := obj.(*Pod)
	if !ok || !Live(pod) {
		return nil
	}
	return pod.IPs
}

func (i *Index) register(ip string) chan struct{} {
	ch := make(chan struct{})
	i.mu.Lock()
	defer i.mu.Unlock()
	set := i.waiters[ip]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		i.waiters[ip] = set
	}
	set[ch] = struct{}{}
	return ch
}

func (i *Index) unregister(ip string, ch chan struct{}) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if set, ok := i.waiters[ip]; ok {
		delete(set, ch)
		if len(set) == 0 {
			delete(i.waiters, ip)
		}
	}
}

// wake releases every lookup waiting for one of the pod's addresses. It is
// called from informer handlers, so it only closes channels.
func (i *Index) wake(obj any) {
	pod, ok := obj.(*Pod)
	if !ok {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, ip := range pod.IPs {
		for ch := range i.waiters[ip] {
			close(ch)
		}
		delete(i.waiters, ip)
	}
}
