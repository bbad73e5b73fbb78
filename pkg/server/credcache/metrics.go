package credcache

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// result is the value of the result label of the requests, refreshes and
// prefetches metrics.
type result string

// Values of the requests metric's result label.
const (
	resultHit          result = "hit"           // credentials with more than Refresh left
	resultMiss         result = "miss"          // the caller waited for a fetch: its credentials, denial or error
	resultDeniedCached result = "denied_cached" // a remembered denial
	resultStale        result = "stale"         // held credentials, STS slow or failing
	resultBackoff      result = "backoff"       // nothing servable and the key in backoff
)

// Values of the refreshes and prefetches metrics' result label.
const (
	resultOK      result = "ok"
	resultError   result = "error"
	resultSkipped result = "skipped" // prefetches only
)

// metrics carry only bounded labels: keys (role ARNs) never become labels.
type metrics struct {
	requests     *prometheus.CounterVec
	entries      prometheus.Gauge
	evictions    prometheus.Counter
	overCapacity prometheus.Counter
	refreshes    *prometheus.CounterVec
	prefetches   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_credcache_requests_total",
			Help: "Credential cache lookups by result (hit, miss, denied_cached, stale, backoff).",
		}, []string{"result"}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podiam_credcache_entries",
			Help: "Keys held by the credential cache, remembered denials and failures included.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_credcache_evictions_total",
			Help: "Keys evicted by the size cap.",
		}),
		overCapacity: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_credcache_over_capacity_total",
			Help: "Inserts past the size cap because every held key was in use.",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_credcache_refreshes_total",
			Help: "Refresh-ahead fetches by result (ok, error).",
		}, []string{"result"}),
		prefetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_credcache_prefetches_total",
			Help: "Prefetch attempts by result (ok, error, skipped).",
		}, []string{"result"}),
	}
	// Known label values start at zero so dashboards and alerts see them
	// before the first event.
	for _, r := range []result{resultHit, resultMiss, resultDeniedCached, resultStale, resultBackoff} {
		m.requests.WithLabelValues(string(r))
	}
	for _, r := range []result{resultOK, resultError} {
		m.refreshes.WithLabelValues(string(r))
		m.prefetches.WithLabelValues(string(r))
	}
	m.prefetches.WithLabelValues(string(resultSkipped))
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.entries, m.evictions, m.overCapacity, m.refreshes, m.prefetches} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("credcache: registering metrics: %w", err)
		}
	}
	return m, nil
}
