package server

import (
	"net/http"
	"net/http/pprof"
)

// profilingHandlers are Go's runtime profiles (heap, goroutines, CPU...)
// for --profiling, registered on the server's own mux: importing
// net/http/pprof for its side effect would put them on
// http.DefaultServeMux for anything else that serves it.
func profilingHandlers() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /debug/pprof/":        http.HandlerFunc(pprof.Index),
		"GET /debug/pprof/cmdline": http.HandlerFunc(pprof.Cmdline),
		"GET /debug/pprof/profile": http.HandlerFunc(pprof.Profile),
		"GET /debug/pprof/symbol":  http.HandlerFunc(pprof.Symbol),
		"GET /debug/pprof/trace":   http.HandlerFunc(pprof.Trace),
	}
}
