package imds

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics carry only bounded labels: a fixed set of classes and HTTP status
// codes, never paths, IPs or role names.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
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
	}
	for _, c := range allClasses {
		m.duration.WithLabelValues(string(c))
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
	m.requests.WithLabelValues(string(c), strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(string(c)).Observe(d.Seconds())
}
