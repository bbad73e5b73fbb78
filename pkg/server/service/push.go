package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"

	"github.com/podiam/podiam/pkg/creds"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// Pushing credentials. A new pod's first request would cost a round trip
// to the server even when the server holds its credentials already
// (prefetch fetched them when the pod got its address). So whenever the
// node stream tells an agent that the pod at an address changed (it
// appeared, its role or its namespace's policy changed), the service
// decides for that address exactly as a request from the pod would
// (authorize: identity, role, policy), and sends the credentials it holds
// to the agents of the pod's node on the same stream. Node binding holds
// because only those agents' streams get it. The push path never starts an
// STS call a request would not: it takes held credentials or joins the
// fetch under way, and with prefetch on it may start the very prefetch the
// prefetch controller starts for the same pod, which then finds it running.
// A change that comes after the decision voids the push (NodeWatcher
// numbers the changes), so an agent never gets credentials a change it has
// already applied revoked.

// PushSource is what pushing needs of the credential cache.
type PushSource interface {
	// Prefetch starts a fetch for key unless one runs or fresh
	// credentials are held; it never waits.
	Prefetch(key creds.Key)
	// Peek returns held fresh credentials, or waits for the fetch under
	// way; it never starts one.
	Peek(ctx context.Context, key creds.Key) (creds.Credentials, bool)
}

// DefaultPushWorkers is how many addresses are pushed at once when
// Config.PushWorkers is 0. A worker may wait for an STS call that
// prefetch started, so a few keep one slow role from holding up others.
const DefaultPushWorkers = 4

// pushWait bounds how long a push waits for a fetch under way; the
// credential cache bounds the fetch itself, this only frees the worker.
const pushWait = 15 * time.Second

// pushResult is the pushes metric's result label.
type pushResult string

const (
	pushSent        pushResult = "pushed"
	pushRefused     pushResult = "refused"     // the request path would refuse the pod
	pushUnavailable pushResult = "unavailable" // nothing held or being fetched for its session
	pushSuperseded  pushResult = "superseded"  // a later change, or no agent takes it any more
)

// pusher holds the addresses waiting for a push.
type pusher struct {
	queue  workqueue.TypedInterface[string]
	source PushSource
	fetch  bool
	count  *prometheus.CounterVec
}

func newPusher(source PushSource, fetch bool) *pusher {
	return &pusher{
		queue:  workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[string]{Name: "podiam_push"}),
		source: source,
		fetch:  fetch,
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_server_credential_pushes_total",
			Help: "Addresses whose pod changed, on nodes whose agents take pushed credentials, by outcome (pushed, refused, unavailable, superseded).",
		}, []string{"result"}),
	}
}

// RunPushes pushes credentials for changed addresses until ctx is done,
// then returns nil once its workers have stopped. It must run when
// Config.Push is set, and returns at once otherwise.
func (s *Service) RunPushes(ctx context.Context) error {
	if s.push == nil {
		return nil
	}
	var wg sync.WaitGroup
	for range s.cfg.PushWorkers {
		wg.Go(func() {
			for {
				ip, quit := s.push.queue.Get()
				if quit {
					return
				}
				s.pushAddress(ctx, ip)
				s.push.queue.Done(ip)
			}
		})
	}
	<-ctx.Done()
	s.push.queue.ShutDown()
	wg.Wait()
	return nil
}

// pushAddress sends the pod at ip its credentials, if a request from it
// would get them now.
func (s *Service) pushAddress(ctx context.Context, ip string) {
	w := s.deps.Watcher
	// Numbered before anything is read: the state read below is at least
	// as new as the change, and a later change voids what is decided.
	change := w.lastChanged(ip)
	if change == 0 {
		s.push.count.WithLabelValues(string(pushSuperseded)).Inc()
		return
	}
	g, err := s.authorize(ctx, ip, "", true)
	if err != nil {
		s.push.count.WithLabelValues(string(pushRefused)).Inc()
		return
	}
	// A terminating pod keeps what it has but gets nothing ahead, as
	// prefetch warms nothing for it: its address may soon be another's.
	if g.pod.DeletionTimestamp != nil || !w.pushing(g.pod.HostIPs) {
		s.push.count.WithLabelValues(string(pushSuperseded)).Inc()
		return
	}
	if s.push.fetch {
		s.push.source.Prefetch(g.key)
	}
	wctx, cancel := context.WithTimeout(ctx, pushWait)
	c, ok := s.push.source.Peek(wctx, g.key)
	cancel()
	if !ok || c.Remaining(s.cfg.Now()) <= 0 {
		s.push.count.WithLabelValues(string(pushUnavailable)).Inc()
		return
	}
	ev := &pb.PodEvent{Type: pb.PodEvent_TYPE_CREDENTIALS, Ip: ip, Uid: string(g.pod.UID), Credentials: response(g, c)}
	if !w.publishCredentials(g.pod.HostIPs, ip, change, ev) {
		s.push.count.WithLabelValues(string(pushSuperseded)).Inc()
		return
	}
	s.push.count.WithLabelValues(string(pushSent)).Inc()
	s.audit(g, c, deliveryPush)
}

// enablePush wires pushing into the service and its watcher.
func (s *Service) enablePush(source PushSource) error {
	if source == nil {
		return errors.New("server: pushing credentials needs a source")
	}
	if s.cfg.PushWorkers < 0 {
		return fmt.Errorf("server: %d push workers", s.cfg.PushWorkers)
	}
	if s.cfg.PushWorkers == 0 {
		s.cfg.PushWorkers = DefaultPushWorkers
	}
	s.push = newPusher(source, s.cfg.PushPrefetch)
	for _, r := range []pushResult{pushSent, pushRefused, pushUnavailable, pushSuperseded} {
		s.push.count.WithLabelValues(string(r))
	}
	s.deps.Watcher.onChanged = s.push.queue.Add
	return nil
}
