package imds

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics carry only bounded labels: a fixed set of classes and HTTP status
// codes, never paths, IPs or role names.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// byClass holds each class's children, resolved once: WithLabelValues
	// hashes its labels and takes a lock on every call.
	byClass map[requestClass]*classMetrics
}

type classMetrics struct {
	duration prometheus.Observer
	// codes are the request counters of the statuses the handler answers
	// itself (statusSlot), each resolved on first use, so that a series
	// appears only once it has counted something, as with WithLabelValues.
	codes [localStatuses]atomic.Pointer[counterRef]
}

type counterRef struct{ prometheus.Counter }

// localStatuses is how many statuses statusSlot numbers.
const localStatuses = 10

// statusSlot numbers the statuses the handler answers itself, or returns
// -1: a proxied answer may have any status, counted through
// WithLabelValues.
func statusSlot(status int) int {
	switch status {
	case http.StatusOK:
		return 0
	case http.StatusBadRequest:
		return 1
	case http.StatusUnauthorized:
		return 2
	case http.StatusForbidden:
		return 3
	case http.StatusNotFound:
		return 4
	case http.StatusMethodNotAllowed:
		return 5
	case http.StatusTooManyRequests:
		return 6
	case http.StatusInternalServerError:
		return 7
	case http.StatusBadGateway:
		return 8
	case http.StatusServiceUnavailable:
		return 9
	}
	return -1
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_http_requests_total",
			Help: "Metadata requests answered by the agent, by path class and HTTP status code.",
		}, []string{"class", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "podiam_agent_http_request_duration_seconds",
			Help: "Time to answer a metadata request, by path class.",
			// SDKs give IMDS 0.5-1 s, so the interesting range is below 1 s.
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5},
		}, []string{"class"}),
		byClass: map[requestClass]*classMetrics{},
	}
	for _, c := range allClasses {
		m.byClass[c] = &classMetrics{duration: m.duration.WithLabelValues(string(c))}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("imds: registering metrics: %w", err)
		}
	}
	return m, nil
}

func (m metrics) observe(c requestClass, status int, d time.Duration) {
	cm := m.byClass[c]
	cm.duration.Observe(d.Seconds())
	i := statusSlot(status)
	if i < 0 {
		m.requests.WithLabelValues(string(c), strconv.Itoa(status)).Inc()
		return
	}
	ref := cm.codes[i].Load()
	if ref == nil {
		// Two requests may resolve it at once: they get the same child.
		ref = &counterRef{m.requests.WithLabelValues(string(c), strconv.Itoa(status))}
		cm.codes[i].Store(ref)
	}
	ref.Inc()
}
