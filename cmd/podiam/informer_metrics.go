package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/tools/cache"
)

// registerInformerMetrics exposes how many pods and namespaces the server
// knows, read from the informer stores at scrape time.
func registerInformerMetrics(reg prometheus.Registerer, pods, namespaces cache.SharedIndexInformer) {
	count := func(inf cache.SharedIndexInformer) func() float64 {
		return func() float64 { return float64(len(inf.GetStore().ListKeys())) }
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podiam_server_pods", Help: "Pods in the server's cache."}, count(pods)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "podiam_server_namespaces", Help: "Namespaces in the server's cache."}, count(namespaces)),
	)
}
