package iptables

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// op is the value of the errors metric's op label: what failed.
type op string

const (
	opCheck   op = "check"
	opInstall op = "install"
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
	for _, o := range []op{opCheck, opInstall} {
		m.errors.WithLabelValues(string(o))
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

// failed counts one failed periodic check or reinstall.
func (m metrics) failed(o op) {
	m.errors.WithLabelValues(string(o)).Inc()
}
