package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// IndexHostIP indexes live pods by the addresses of their node.
const IndexHostIP = "podiam-hostip"

// subscriberBuffer is how many events a slow agent may fall behind before
// its stream is ended; it then reconnects and resyncs from a snapshot,
// which is always correct, whereas blocking the informer would stall every
// other consumer.
const subscriberBuffer = 1024

// spareQueue is the capacity of an emptied queue a subscriber keeps for
// the next events; a larger one, left by a burst, is dropped.
const spareQueue = 16

// NodeWatcher fans pod changes out to the agents on each node, so an agent
// forgets a pod's credentials as soon as the pod is deleted, replaced or
// loses its permission, not when they expire.
type NodeWatcher struct {
	pods cache.Indexer
	log  *slog.Logger

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	// onChanged, when set (the service pushes credentials), is told of
	// every address a TYPE_CHANGED went out for to an agent that takes
	// pushed credentials. Set before the informers start.
	onChanged func(ip string)
	// changes numbers the TYPE_CHANGED last sent for each such address
	// (from lastChange, never reused), so that a push decided before a
	// later change is never sent after it: the agent would keep
	// credentials the change revoked. TYPE_DELETED removes the address.
	changes    map[string]uint64
	lastChange uint64
}

// subscriber is one stream's queue of events not yet sent. It grows with
// what is pending, not up front: a channel of subscriberBuffer events
// would be 8 KiB per connected agent, most of a stream's memory with
// hundreds of nodes, for bursts that seldom come.
type subscriber struct {
	hostIP string
	// credentials: the agent takes pushed credentials.
	credentials bool
	// wake holds a token while the queue may have events.
	wake chan struct{}

	mu    sync.Mutex
	queue []*pb.PodEvent // pending from head on
	head  int
	// overflowed is set when the subscriber fell too far behind.
	overflowed bool
}

func newSubscriber(hostIP string, credentials bool) *subscriber {
	return &subscriber{hostIP: hostIP, credentials: credentials, wake: make(chan struct{}, 1)}
}

// push queues events, or marks the subscriber overflowed when that would
// leave more than subscriberBuffer pending.
func (s *subscriber) push(events []*pb.PodEvent) {
	s.mu.Lock()
	switch {
	case s.overflowed:
	case len(s.queue)-s.head+len(events) > subscriberBuffer:
		s.overflowed, s.queue, s.head = true, nil, 0
	default:
		if s.head > 0 && len(s.queue)+len(events) > cap(s.queue) {
			// Reuse the sent prefix before append grows the array.
			n := copy(s.queue, s.queue[s.head:])
			clear(s.queue[n:])
			s.queue, s.head = s.queue[:n], 0
		}
		s.queue = append(s.queue, events...)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pop returns the next pending event (nil when there is none) and whether
// the subscriber overflowed. Events are taken one at a time, so that the
// one being sent counts as sent and everything else as pending, as in a
// channel.
func (s *subscriber) pop() (*pb.PodEvent, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.overflowed {
		return nil, true
	}
	if s.head == len(s.queue) {
		return nil, false
	}
	ev := s.queue[s.head]
	s.queue[s.head] = nil
	s.head++
	if s.head == len(s.queue) {
		s.queue, s.head = s.queue[:0], 0
		if cap(s.queue) > spareQueue {
			s.queue = nil
		}
	}
	return ev, false
}

// NewNodeWatcher registers indexes and handlers on informers that have not
// been started yet.
func NewNodeWatcher(pods, namespaces cache.SharedIndexInformer, log *slog.Logger) (*NodeWatcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &NodeWatcher{pods: pods.GetIndexer(), log: log, subs: map[*subscriber]struct{}{}, changes: map[string]uint64{}}
	if err := pods.AddIndexers(cache.Indexers{IndexHostIP: hostIPIndexFunc}); err != nil {
		return nil, fmt.Errorf("add host IP index: %w", err)
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.podChanged(nil, asPod(obj)) },
		UpdateFunc: func(old, obj any) { w.podChanged(asPod(old), asPod(obj)) },
		DeleteFunc: func(obj any) { w.podChanged(asPod(obj), nil) },
	}); err != nil {
		return nil, fmt.Errorf("add pod handler: %w", err)
	}
	if _, err := namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj any) { w.namespaceChanged(asNamespace(old), asNamespace(obj)) },
		DeleteFunc: func(obj any) { w.namespaceChanged(asNamespace(obj), nil) },
	}); err != nil {
		return nil, fmt.Errorf("add namespace handler: %w", err)
	}
	return w, nil
}

// Stream sends a snapshot of the live pods on hostIP's node, a SYNCED
// marker, then changes, until ctx is done or send fails.
func (w *NodeWatcher) Stream(ctx context.Context, hostIP string, send func(*pb.PodEvent) error) error {
	return w.stream(ctx, hostIP, false, send)
}

// StreamWithCredentials is Stream for an agent that also takes the
// credentials the service pushes (TYPE_CREDENTIALS).
func (w *NodeWatcher) StreamWithCredentials(ctx context.Context, hostIP string, send func(*pb.PodEvent) error) error {
	return w.stream(ctx, hostIP, true, send)
}

func (w *NodeWatcher) stream(ctx context.Context, hostIP string, credentials bool, send func(*pb.PodEvent) error) error {
	addr, err := netip.ParseAddr(hostIP)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "invalid host address %q", hostIP)
	}
	sub := newSubscriber(addr.Unmap().String(), credentials)
	// Subscribe before the snapshot so that no change falls between them;
	// an event repeated by both is harmless.
	w.mu.Lock()
	w.subs[sub] = struct{}{}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.subs, sub)
		w.mu.Unlock()
	}()

	objs, err := w.pods.ByIndex(IndexHostIP, sub.hostIP)
	if err != nil {
		return status.Errorf(codes.Internal, "list pods on node: %v", err)
	}
	for _, obj := range objs {
		pod := asPod(obj)
		if pod == nil {
			continue
		}
		for _, ip := range pod.IPs {
			if err := send(&pb.PodEvent{Type: pb.PodEvent_TYPE_PRESENT, Ip: ip, Uid: string(pod.UID)}); err != nil {
				return err
			}
		}
	}
	if err := send(&pb.PodEvent{Type: pb.PodEvent_TYPE_SYNCED}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.wake:
		}
		for {
			ev, overflowed := sub.pop()
			if overflowed {
				return status.Error(codes.ResourceExhausted, "agent fell behind pod events; reconnect to resync")
			}
			if ev == nil {
				break
			}
			if err := send(ev); err != nil {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
		}
	}
}

// podChanged turns an informer change into events. old or cur is nil for
// an add or a delete.
func (w *NodeWatcher) podChanged(old, cur *podindex.Pod) {
	oldIPs, curIPs := liveIPs(old), liveIPs(cur)
	var events []*pb.PodEvent
	var hosts []string
	if old != nil {
		hosts = append(hosts, old.HostIPs...)
		for _, ip := range oldIPs {
			if cur == nil || !contains(curIPs, ip) || cur.UID != old.UID {
				events = append(events, &pb.PodEvent{Type: pb.PodEvent_TYPE_DELETED, Ip: ip, Uid: string(old.UID)})
			}
		}
	}
	if cur != nil {
		hosts = append(hosts, cur.HostIPs...)
		changed := old == nil || relevantChange(old, cur)
		for _, ip := range curIPs {
			if changed || !contains(oldIPs, ip) {
				events = append(events, &pb.PodEvent{Type: pb.PodEvent_TYPE_CHANGED, Ip: ip, Uid: string(cur.UID)})
			}
		}
	}
	w.publish(hosts, events)
}

// NamespaceChanged tells agents about every pod in a namespace whose
// policy changed from old to cur, as a namespace informer update does: for
// changes read from the API server while the namespace watch is behind
// (podindex.Namespaces.Run).
func (w *NodeWatcher) NamespaceChanged(old, cur *corev1.Namespace) { w.namespaceChanged(old, cur) }

// namespaceChanged tells agents about every pod in a namespace whose
// policy changed (permitted expression or External ID), so none keeps
// serving credentials the new policy would refuse, or that were assumed
// with the old External ID.
func (w *NodeWatcher) namespaceChanged(old, cur *corev1.Namespace) {
	if old == nil {
		return
	}
	if cur != nil && !NamespacePolicyChanged(old, cur) {
		return
	}
	objs, err := w.pods.ByIndex(cache.NamespaceIndex, old.Name)
	if err != nil {
		w.log.Error("list pods of changed namespace", "namespace", old.Name, "error", err)
		return
	}
	for _, obj := range objs {
		pod := asPod(obj)
		if pod == nil {
			continue
		}
		var events []*pb.PodEvent
		for _, ip := range liveIPs(pod) {
			events = append(events, &pb.PodEvent{Type: pb.PodEvent_TYPE_CHANGED, Ip: ip, Uid: string(pod.UID)})
		}
		w.publish(pod.HostIPs, events)
	}
}

// WatchServiceAccounts registers a handler on the ServiceAccount informer,
// which must not have been started yet: when an account's role annotation
// changes, agents forget the credentials of every pod that takes its role
// from the account, so the next request gets the new role.
func (w *NodeWatcher) WatchServiceAccounts(sas cache.SharedIndexInformer) error {
	if _, err := sas.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.serviceAccountChanged(nil, asServiceAccount(obj)) },
		UpdateFunc: func(old, obj any) { w.serviceAccountChanged(asServiceAccount(old), asServiceAccount(obj)) },
		DeleteFunc: func(obj any) { w.serviceAccountChanged(asServiceAccount(obj), nil) },
	}); err != nil {
		return fmt.Errorf("add serviceaccount handler: %w", err)
	}
	return nil
}

// serviceAccountChanged tells agents about the pods that run as an account
// whose role annotation changed and have none of their own. old or cur is
// nil for an add or a delete.
func (w *NodeWatcher) serviceAccountChanged(old, cur *corev1.ServiceAccount) {
	var before, after, namespace, name string
	for _, sa := range []*corev1.ServiceAccount{old, cur} {
		if sa != nil {
			namespace, name = sa.Namespace, sa.Name
		}
	}
	if old != nil {
		before = old.Annotations[role.AnnotationRole]
	}
	if cur != nil {
		after = cur.Annotations[role.AnnotationRole]
	}
	if before == after || name == "" {
		return
	}
	objs, err := w.pods.ByIndex(cache.NamespaceIndex, namespace)
	if err != nil {
		w.log.Error("list pods of changed serviceaccount", "namespace", namespace, "service_account", name, "error", err)
		return
	}
	for _, obj := range objs {
		pod := asPod(obj)
		if pod == nil || pod.ServiceAccountName != name {
			continue
		}
		if own, _ := pod.Annotation(role.AnnotationRole); own != "" {
			continue
		}
		var events []*pb.PodEvent
		for _, ip := range liveIPs(pod) {
			events = append(events, &pb.PodEvent{Type: pb.PodEvent_TYPE_CHANGED, Ip: ip, Uid: string(pod.UID)})
		}
		w.publish(pod.HostIPs, events)
	}
}

func (w *NodeWatcher) publish(hosts []string, events []*pb.PodEvent) {
	if len(events) == 0 || len(hosts) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	pushing := false
	for sub := range w.subs {
		if !contains(hosts, sub.hostIP) {
			continue
		}
		pushing = pushing || sub.credentials
		sub.push(events)
	}
	if w.onChanged == nil {
		return
	}
	for _, ev := range events {
		switch {
		case ev.GetType() == pb.PodEvent_TYPE_DELETED:
			delete(w.changes, ev.GetIp())
		case ev.GetType() == pb.PodEvent_TYPE_CHANGED && pushing:
			w.lastChange++
			w.changes[ev.GetIp()] = w.lastChange
			w.onChanged(ev.GetIp())
		case ev.GetType() == pb.PodEvent_TYPE_CHANGED:
			// No agent of this node takes pushes: any push decided
			// before this change must not go out later either.
			delete(w.changes, ev.GetIp())
		}
	}
}

// lastChanged is the number of the last TYPE_CHANGED sent for ip to an
// agent that takes pushes, 0 if none is current.
func (w *NodeWatcher) lastChanged(ip string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes[ip]
}

// pushing reports whether an agent on one of hosts takes pushes.
func (w *NodeWatcher) pushing(hosts []string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for sub := range w.subs {
		if sub.credentials && contains(hosts, sub.hostIP) {
			return true
		}
	}
	return false
}

// publishCredentials sends ev, the credentials of the pod at ip decided
// after the TYPE_CHANGED numbered change, to the agents on hosts that take
// them, unless another change of ip went out since: its own push follows.
// It reports whether any agent got it.
func (w *NodeWatcher) publishCredentials(hosts []string, ip string, change uint64, ev *pb.PodEvent) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if change == 0 || w.changes[ip] != change {
		return false
	}
	sent := false
	for sub := range w.subs {
		if sub.credentials && contains(hosts, sub.hostIP) {
			sub.push([]*pb.PodEvent{ev})
			sent = true
		}
	}
	return sent
}

// NamespacePolicyChanged reports whether a namespace update can change
// what Decide answers for its pods. The prefetch controller asks the same
// question.
func NamespacePolicyChanged(old, cur *corev1.Namespace) bool {
	return policy.NamespaceOf(old.Name, old.Annotations) != policy.NamespaceOf(cur.Name, cur.Annotations)
}

// RelevantChange reports whether an update can change which credentials
// the pod should get. The prefetch controller asks the same question, and
// the two must never disagree.
func RelevantChange(old, cur *podindex.Pod) bool { return relevantChange(old, cur) }

// relevantChange reports whether an update can change which credentials
// the pod should get.
func relevantChange(old, cur *podindex.Pod) bool {
	if old.UID != cur.UID || podindex.Live(old) != podindex.Live(cur) {
		return true
	}
	if (old.DeletionTimestamp == nil) != (cur.DeletionTimestamp == nil) {
		return true
	}
	return !maps.Equal(iamAnnotations(old), iamAnnotations(cur))
}

func iamAnnotations(pod *podindex.Pod) map[string]string {
	out := map[string]string{}
	for _, k := range []string{role.AnnotationRole, role.AnnotationExternalID, role.AnnotationSessionName} {
		if v, ok := pod.Annotation(k); ok {
			out[k] = v
		}
	}
	return out
}

func liveIPs(pod *podindex.Pod) []string {
	if pod == nil || !podindex.Live(pod) {
		return nil
	}
	return pod.IPs
}

// SameNode reports whether addresses a and b belong to one node, as the
// pods on it list its addresses (a dual-stack node has one of each family).
func (w *NodeWatcher) SameNode(a, b string) bool {
	if a == b {
		return true
	}
	objs, err := w.pods.ByIndex(IndexHostIP, a)
	if err != nil {
		return false
	}
	for _, obj := range objs {
		if pod := asPod(obj); pod != nil && slices.Contains(pod.HostIPs, b) {
			return true
		}
	}
	return false
}

func hostIPIndexFunc(obj any) ([]string, error) {
	pod := asPod(obj)
	if pod == nil || !podindex.Live(pod) {
		return nil, nil
	}
	return pod.HostIPs, nil
}

// asPod returns the *podindex.Pod an informer handler was given, or nil.
func asPod(obj any) *podindex.Pod {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, _ := obj.(*podindex.Pod)
	return pod
}

func asNamespace(obj any) *corev1.Namespace {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	ns, _ := obj.(*corev1.Namespace)
	return ns
}

func asServiceAccount(obj any) *corev1.ServiceAccount {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	sa, _ := obj.(*corev1.ServiceAccount)
	return sa
}
