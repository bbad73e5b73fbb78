package podindex

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// DefaultSettle is WatchConfig.Settle's default.
const DefaultSettle = 2 * time.Second

// WatchConfig tunes a WatchTracker.
type WatchConfig struct {
	// Resource names what the informer watches, in singular ("pod",
	// "namespace"), for the metric names, podiam_server_<resource>_watch_*,
	// and log lines: a server tracks several watches on one registry. ""
	// means "pod".
	Resource string
	// Settle is how long a watch must have been open before the informer
	// counts as current again. A watch resumed after an outage first
	// replays what it missed, or fails at once as too old and makes the
	// informer list again; either takes a moment. 0 means DefaultSettle.
	Settle time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// WatchTracker knows whether an informer's watch is open, by wrapping the
// ListerWatcher the informer runs on. client-go gives no such signal: when
// the API server goes away, a reflector retries its watch with a backoff
// that grows to 30 s (so it may come back long after the API server did),
// calls no error handler while connections are refused, and its store keeps
// answering with the state from before. Behind a load balancer that accepts
// and drops connections it is worse: a watch call that meets EOF returns an
// empty watch and no error. For the pod index that state is dangerous: a
// pod deleted meanwhile still holds its address, which may already belong
// to a pod with another role.
type WatchTracker struct {
	resource string
	settle   time.Duration
	now      func() time.Time
	log      *slog.Logger
	errors   prometheus.Counter

	mu       sync.Mutex
	open     int       // watches open now; 0 or 1 for one informer
	openedAt time.Time // when the newest open watch opened
	closedAt time.Time // when the last watch closed, leaving none open
	listedAt time.Time // when the last list call succeeded
	// failing is set by a failed call, a watch that ends at once, or no
	// watch open for settle, and cleared by a watch that proves itself:
	// delivers an event or stays open for settle. failingSince and
	// failures describe the streak.
	failing      bool
	failingSince time.Time
	failures     int
}

// resourceName is what WatchConfig.Resource may be: part of metric names.
var resourceName = regexp.MustCompile(`^[a-z][a-z_]*$`)

// errShortWatch is a watch that ended within the settle time without an
// event: what client-go hands out when a watch call met EOF.
var errShortWatch = errors.New("watch ended at once without events")

// NewWatchTracker registers the tracker's metrics on reg (nil: none).
func NewWatchTracker(cfg WatchConfig, reg prometheus.Registerer, log *slog.Logger) (*WatchTracker, error) {
	if cfg.Settle < 0 {
		return nil, fmt.Errorf("podindex: watch settle %s is negative", cfg.Settle)
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultSettle
	}
	if cfg.Resource == "" {
		cfg.Resource = "pod"
	}
	if !resourceName.MatchString(cfg.Resource) {
		return nil, fmt.Errorf("podindex: watch resource %q is not a lowercase word", cfg.Resource)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &WatchTracker{
		resource: cfg.Resource,
		settle:   cfg.Settle,
		now:      cfg.Now,
		log:      log,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_server_" + cfg.Resource + "_watch_errors_total",
			Help: "Failed " + cfg.Resource + " list or watch calls and watch error events.",
		}),
	}
	if reg != nil {
		current := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "podiam_server_" + cfg.Resource + "_watch_current",
			Help: "1 while the " + cfg.Resource + " watch is open and settled; 0 while " + cfg.Resource + " reads go to the API server.",
		}, func() float64 {
			if w.Current() {
				return 1
			}
			return 0
		})
		for _, c := range []prometheus.Collector{w.errors, current} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("podindex: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Current reports whether a watch is open and has been for Settle, or
// opened within Settle of a successful list, so the informer's store is as
// current as a watch makes it. A watch that continues from a fresh list
// has nothing to replay: lists read at resourceVersion "" (ListInPages),
// so without this every server start would send each request to the API
// server for Settle, and at scale those lookups time out.
//
// It also notices what no call reports: no watch open for Settle (a watch
// call may hang in client-go's own retries for ten seconds), or one that has
// now been open long enough. Callers ask on every lookup and metrics scrape,
// which is soon enough for the log line and the metric.
func (w *WatchTracker) Current() bool {
	w.mu.Lock()
	now := w.now()
	fresh := !w.listedAt.IsZero() && !w.openedAt.Before(w.listedAt) && w.openedAt.Sub(w.listedAt) < w.settle
	current := w.open > 0 && (now.Sub(w.openedAt) >= w.settle || fresh)
	gap := w.open == 0 && !w.closedAt.IsZero() && now.Sub(w.closedAt) >= w.settle && !w.failing
	closedAt := w.closedAt
	w.mu.Unlock()
	switch {
	case current:
		w.proven()
	case gap:
		w.failed("watch", errNoWatch, closedAt)
	}
	return current
}

// errNoWatch is a gap of Settle or more with no watch open.
var errNoWatch = errors.New("no watch open")

// Wrap returns lw with every list and watch call observed. Give the result
// to the informer in place of lw; it also implements
// cache.ListerWatcherWithContext, which the reflector prefers.
func (w *WatchTracker) Wrap(lw cache.ListerWatcher) cache.ListerWatcher {
	return &trackedListerWatcher{inner: cache.ToListerWatcherWithContext(lw), w: w}
}

// failed records a failure that began at since.
func (w *WatchTracker) failed(call string, err error, since time.Time) {
	w.errors.Inc()
	w.mu.Lock()
	first := !w.failing
	if first {
		w.failing, w.failingSince, w.failures = true, since, 0
	}
	w.failures++
	w.mu.Unlock()
	if first {
		w.log.Warn(w.resource+" watch failing; "+w.resource+" reads go to the api server until it is back", "call", call, "error", err)
	} else {
		w.log.Debug(w.resource+" watch still failing", "call", call, "error", err)
	}
}

// listed notes a list call that succeeded: the store is about to hold
// what the API server has now.
func (w *WatchTracker) listed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listedAt = w.now()
}

// opened notes a watch call that returned a watch, which proves nothing
// yet: it may be an empty one, or fail at once as too old.
func (w *WatchTracker) opened() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open++
	w.openedAt = w.now()
	return w.openedAt
}

// proven ends a failure streak: a watch delivered an event or stayed open.
func (w *WatchTracker) proven() {
	w.mu.Lock()
	wasFailing, since, failures := w.failing, w.failingSince, w.failures
	w.failing = false
	w.mu.Unlock()
	if wasFailing {
		w.log.Info(w.resource+" watch restored", "failing_for", w.now().Sub(since).Round(time.Millisecond).String(), "failed_calls", failures)
	}
}

// closed notes the end of a watch opened at openedAt; expected tells
// whether it passed on an event or its consumer stopped it.
func (w *WatchTracker) closed(openedAt time.Time, expected bool) {
	w.mu.Lock()
	w.open--
	now := w.now()
	if w.open == 0 {
		w.closedAt = now
	}
	short := !expected && now.Sub(openedAt) < w.settle
	w.mu.Unlock()
	if short {
		w.failed("watch", errShortWatch, openedAt)
	}
}

// eventError notes an error event on an open watch. An expired resource
// version is routine (the informer lists again) and not worth a warning.
func (w *WatchTracker) eventError(obj runtime.Object) {
	err := apierrors.FromObject(obj)
	if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		w.errors.Inc()
		w.log.Debug(w.resource+" watch expired; relisting", "error", err)
		return
	}
	w.failed("watch event", err, w.now())
}

type trackedListerWatcher struct {
	inner cache.ListerWatcherWithContext
	w     *WatchTracker
}

func (l *trackedListerWatcher) List(options metav1.ListOptions) (runtime.Object, error) {
	return l.ListWithContext(context.Background(), options)
}

func (l *trackedListerWatcher) Watch(options metav1.ListOptions) (watch.Interface, error) {
	return l.WatchWithContext(context.Background(), options)
}

func (l *trackedListerWatcher) ListWithContext(ctx context.Context, options metav1.ListOptions) (runtime.Object, error) {
	obj, err := l.inner.ListWithContext(ctx, options)
	switch {
	case err == nil:
		l.w.listed()
	case !errors.Is(err, context.Canceled):
		l.w.failed("list", err, l.w.now())
	}
	return obj, err
}

func (l *trackedListerWatcher) WatchWithContext(ctx context.Context, options metav1.ListOptions) (watch.Interface, error) {
	inner, err := l.inner.WatchWithContext(ctx, options)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			l.w.failed("watch", err, l.w.now())
		}
		return nil, err
	}
	tw := &trackedWatch{inner: inner, out: make(chan watch.Event), stop: make(chan struct{})}
	go tw.forward(l.w, l.w.opened())
	return tw, nil
}

// trackedWatch passes a watch's events through and tells the tracker when
// it ends, whichever side ends it.
type trackedWatch struct {
	inner watch.Interface
	out   chan watch.Event
	stop  chan struct{}
	once  sync.Once
}

func (t *trackedWatch) forward(w *WatchTracker, openedAt time.Time) {
	defer close(t.out)
	delivered, stopped := false, false
	// A watch its consumer stopped ended for the consumer's reasons, not
	// the API server's: no failure however short it was.
	defer func() { w.closed(openedAt, delivered || stopped) }()
	in := t.inner.ResultChan()
	for {
		select {
		case ev, ok := <-in:
			if !ok {
				// Stop closes stop before the inner watch, so this tells
				// who ended it.
				select {
				case <-t.stop:
					stopped = true
				default:
				}
				return
			}
			if ev.Type == watch.Error {
				w.eventError(ev.Object)
			} else if !delivered {
				delivered = true
				w.proven()
			}
			select {
			case t.out <- ev:
			case <-t.stop:
				stopped = true
				return
			}
		case <-t.stop:
			stopped = true
			return
		}
	}
}

func (t *trackedWatch) ResultChan() <-chan watch.Event { return t.out }

func (t *trackedWatch) Stop() {
	t.once.Do(func() {
		close(t.stop)
		t.inner.Stop()
	})
}
