package podindex

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/podiam/podiam/pkg/server/policy"
)

// ErrNamespaceStale means the namespace cache may be out of date (its
// watch is down) and the API server did not answer either: the namespace's
// policy is unknown for now, which is not the same as "no policy".
var ErrNamespaceStale = errors.New("namespace cache may be stale and the api server did not answer")

// DefaultNamespaceTimeout is NamespacesConfig.Timeout's default, short
// for the reason DefaultLiveTimeout is: a request may already have spent
// one live pod lookup, and agents give it one second.
const DefaultNamespaceTimeout = DefaultLiveTimeout

// NamespaceLister is the informer's namespace lister, or what reads the
// same way.
type NamespaceLister interface {
	Get(name string) (*corev1.Namespace, error)
}

// LiveNamespaces reads a namespace from the API server, bypassing the
// informer. Get returns an error for which apierrors.IsNotFound holds when
// there is no such namespace.
type LiveNamespaces interface {
	Get(ctx context.Context, name string) (*corev1.Namespace, error)
	// List returns every namespace.
	List(ctx context.Context) ([]*corev1.Namespace, error)
}

// APINamespaces is LiveNamespaces on a clientset. Its reads are consistent
// (no resourceVersion), so they see every change the API server
// acknowledged.
type APINamespaces struct {
	Client corev1client.NamespacesGetter
}

// Get implements LiveNamespaces. It lists by name rather than gets: the
// server's RBAC grants list and watch on namespaces, not get.
func (a APINamespaces) Get(ctx context.Context, name string) (*corev1.Namespace, error) {
	list, err := a.Client.Namespaces().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// List implements LiveNamespaces.
func (a APINamespaces) List(ctx context.Context) ([]*corev1.Namespace, error) {
	list, err := a.Client.Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	out := make([]*corev1.Namespace, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out, nil
}

// DefaultRecheckInterval is NamespacesConfig.RecheckInterval's default.
const DefaultRecheckInterval = time.Second

// NamespacesConfig configures Namespaces.
type NamespacesConfig struct {
	// Cached is the namespace informer's lister.
	Cached NamespaceLister
	// Current reports whether the namespace informer's watch is current
	// (WatchTracker.Current on its ListerWatcher).
	Current func() bool
	// Live reads namespaces from the API server while it is not.
	Live LiveNamespaces
	// Timeout bounds a live read; 0 means DefaultNamespaceTimeout.
	Timeout time.Duration
	// Changed is told, by Run, of namespaces whose policy changed while
	// the watch was not current (old is what the store or the previous
	// recheck had): agents must drop what they hold for those pods now,
	// not when the watch is back. nil: Run only waits for ctx.
	Changed func(old, cur *corev1.Namespace)
	// RecheckInterval is how often Run lists namespaces while the watch
	// is not current; 0 means DefaultRecheckInterval.
	RecheckInterval time.Duration
}

// Validate reports a configuration Namespaces cannot work with.
func (c NamespacesConfig) Validate() error {
	if c.Cached == nil || c.Current == nil || c.Live == nil {
		return errors.New("podindex: namespaces need a lister, a watch tracker and a live reader")
	}
	if c.Timeout < 0 || c.RecheckInterval < 0 {
		return fmt.Errorf("podindex: namespace timeout %s or recheck interval %s is negative", c.Timeout, c.RecheckInterval)
	}
	return nil
}

// Namespaces reads namespaces for policy decisions: from the informer
// while its watch is current, from the API server while it is not. After
// an API server restart, or a cut from it, client-go's backoff may keep the
// namespace watch away for tens of seconds after the pod watch is back; a
// policy changed meanwhile must not be decided on the old annotations.
// When the API server does not answer either, Get fails with
// ErrNamespaceStale rather than answer from the cache: stale annotations
// may permit what the namespace no longer does.
type Namespaces struct {
	cfg  NamespacesConfig
	log  *slog.Logger
	live *prometheus.CounterVec
}

// NewNamespaces registers the live reads' metric on reg (nil: none).
func NewNamespaces(cfg NamespacesConfig, reg prometheus.Registerer, log *slog.Logger) (*Namespaces, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultNamespaceTimeout
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Namespaces{cfg: cfg, log: log, live: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podiam_server_namespace_reads_live_total",
		Help: "Namespaces read from the API server because the namespace watch was not current, by result (confirmed, corrected, failed).",
	}, []string{"result"})}
	if reg != nil {
		if err := reg.Register(n.live); err != nil {
			return nil, fmt.Errorf("podindex: register namespace metrics: %w", err)
		}
	}
	return n, nil
}

// Get returns the namespace as the API server has it now, as far as this
// server can tell: apierrors.IsNotFound holds for its error when there is
// no such namespace, and errors.Is(err, ErrNamespaceStale) when its policy
// cannot be known now. It takes no context because the decisions that call
// it (service.Decide) take none; the live read has its own timeout.
func (n *Namespaces) Get(name string) (*corev1.Namespace, error) {
	cached, cachedErr := n.cfg.Cached.Get(name)
	if n.cfg.Current() {
		return cached, cachedErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Timeout)
	defer cancel()
	ns, err := n.cfg.Live.Get(ctx, name)
	if err != nil && !apierrors.IsNotFound(err) {
		n.live.WithLabelValues(liveFailed).Inc()
		return nil, fmt.Errorf("namespace %s: %w: %w", name, ErrNamespaceStale, err)
	}
	if samePolicy(cached, cachedErr, ns, err) {
		n.live.WithLabelValues(liveConfirmed).Inc()
	} else {
		n.live.WithLabelValues(liveCorrected).Inc()
		n.log.Info("namespace cache is behind the api server; decided on the api server's namespace", "namespace", name)
	}
	return ns, err
}

// Run rechecks namespaces until ctx is done, and returns nil then. While
// the watch is not current, every RecheckInterval it lists namespaces from
// the API server and tells Changed of those whose policy differs from what
// agents were last told of (the store's, or the previous recheck's). An
// agent serves a pod from its cache without asking the server until the
// entry is due for refresh, so a denial only requests would see could
// wait for the watch's backoff; this tells agents within about a second of
// the API server answering. The informer's relist tells them again, which
// costs a request per pod.
func (n *Namespaces) Run(ctx context.Context) error {
	if n.cfg.Changed == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(n.cfg.RecheckInterval)
	defer t.Stop()
	var told map[string]*corev1.Namespace // since the watch was last current
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n.cfg.Current() {
			told = nil
			continue
		}
		if told == nil {
			told = map[string]*corev1.Namespace{}
		}
		n.recheck(ctx, told)
	}
}

// recheck is one round of Run while the watch is not current.
func (n *Namespaces) recheck(ctx context.Context, told map[string]*corev1.Namespace) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	live, err := n.cfg.Live.List(ctx)
	if err != nil {
		n.log.Debug("namespace recheck failed", "error", err)
		return
	}
	for _, cur := range live {
		old, ok := told[cur.Name]
		if !ok {
			cached, err := n.cfg.Cached.Get(cur.Name)
			if err != nil {
				// New since the watch went away: no agent holds anything
				// for its pods, which the pod index does not know yet.
				told[cur.Name] = cur
				continue
			}
			old = cached
		}
		told[cur.Name] = cur
		if policy.NamespaceOf(old.Name, old.Annotations) != policy.NamespaceOf(cur.Name, cur.Annotations) {
			n.log.Info("namespace changed while its watch is behind; telling agents", "namespace", cur.Name)
			n.cfg.Changed(old, cur)
		}
	}
}

// samePolicy reports whether two reads of a namespace carry the same
// policy (or both found none), for the metric and the log line.
func samePolicy(a *corev1.Namespace, aErr error, b *corev1.Namespace, bErr error) bool {
	if aErr != nil || bErr != nil {
		return apierrors.IsNotFound(aErr) && apierrors.IsNotFound(bErr)
	}
	return policy.NamespaceOf(a.Name, a.Annotations) == policy.NamespaceOf(b.Name, b.Annotations)
}
