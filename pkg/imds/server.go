package imds

import (
	"net/http"
	"time"
)

// Limits of the HTTP server. Pods are untrusted clients on the same node:
// slow or oversized requests must not tie up the agent, and every SDK request
// is small and answered well within these times.
const (
	ReadHeaderTimeout = 2 * time.Second
	ReadTimeout       = 5 * time.Second
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 8192
)

// NewServer returns an *http.Server serving h with the limits above. The
// caller sets Addr (or calls Serve with its own listener).
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}
