package iptables

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	restores prometheus.Counter
	errors   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		restores: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_agent_iptables_restores_total",
			Help: "Times the metadata interception rule was found missing and installed again.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_iptables_errors_total",
			Help: "Failed periodic checks and reinstalls of the metadata interception rule, by operation.",
		}, []string{"op"}),
	}
	for _, op := range []string{"check", "install"} {
		m.errors.WithLabelValues(op)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.restores, m.errors} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("iptables: registering metrics: %w", err)
		}
	}
	return m, nil
}
