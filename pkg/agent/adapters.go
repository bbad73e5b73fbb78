package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/podiam/podiam/pkg/agent/cache"
	"github.com/podiam/podiam/pkg/agent/serverclient"
	"github.com/podiam/podiam/pkg/creds"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// fetcher adapts the server client to the agent cache: a synced server's
// "no live pod there" is what lets the cache drop an entry.
type fetcher struct{ c *serverclient.Client }

func (f fetcher) Fetch(ctx context.Context, ip string) (creds.PodCredentials, error) {
	pc, err := f.c.Fetch(ctx, ip)
	switch {
	case errors.Is(err, serverclient.ErrPodUnknown):
		err = fmt.Errorf("%w: %w", cache.ErrPodUnknownSynced, err)
	case errors.Is(err, serverclient.ErrIPConflict):
		err = fmt.Errorf("%w: %w", cache.ErrAddressConflict, err)
	}
	return pc, err
}

// podCache is what the pod event sink changes in the agent cache.
type podCache interface {
	Retain(present map[string]string)
	Forget(ip string)
	PodStreamSynced(synced bool)
	Push(ip string, pod creds.PodCredentials) bool
}

// podEventSink applies the server's node pod stream to the agent cache.
type podEventSink struct {
	cache   podCache
	log     *slog.Logger
	present map[string]string
}

func newPodEventSink(c podCache, log *slog.Logger) *podEventSink {
	return &podEventSink{cache: c, log: log, present: map[string]string{}}
}

// handle is called in order for each event of each stream. An event of
// TYPE_UNSPECIFIED marks the start or end of a stream, so a snapshot cut
// short never mixes with the next one, and the cache knows that nothing
// reports pods leaving until the next snapshot.
func (s *podEventSink) handle(ev *pb.PodEvent) {
	switch ev.GetType() {
	case pb.PodEvent_TYPE_UNSPECIFIED:
		s.present = map[string]string{}
		s.cache.PodStreamSynced(false)
	case pb.PodEvent_TYPE_PRESENT:
		s.present[ev.GetIp()] = ev.GetUid()
	case pb.PodEvent_TYPE_SYNCED:
		s.cache.Retain(s.present)
		s.cache.PodStreamSynced(true)
		s.log.Debug("pod list synced from server", "pods", len(s.present))
		s.present = map[string]string{}
	case pb.PodEvent_TYPE_CHANGED, pb.PodEvent_TYPE_DELETED:
		s.cache.Forget(ev.GetIp())
	case pb.PodEvent_TYPE_CREDENTIALS:
		// Comes after the TYPE_CHANGED announcing the pod it is for, and
		// a later one revokes it.
		pc, err := serverclient.Pushed(ev)
		if err != nil {
			s.log.Warn("ignoring pushed credentials", "pod_ip", ev.GetIp(), "pod_uid", ev.GetUid(), "error", err)
			return
		}
		s.cache.Push(ev.GetIp(), pc)
	}
}

// cachedCheck reports whether the interception rule is in place, reading
// iptables at most once per interval: a readiness probe must not queue on
// the xtables lock behind kube-proxy.
func cachedCheck(rules interceptor, interval time.Duration) func() error {
	if rules == nil {
		return func() error { return nil }
	}
	var (
		mu      sync.Mutex
		last    error
		checked time.Time
	)
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if checked.IsZero() || time.Since(checked) >= interval {
			last, checked = rules.Check(), time.Now()
		}
		return last
	}
}
