package imds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the HTTP server. Pods are untrusted clients on the same node:
// slow or oversized requests must not tie up the agent, and every SDK request
// is small and answered well within these times.
const (
	ReadHeaderTimeout = 2 * time.Second
	ReadTimeout       = 5 * time.Second
	WriteTimeout      = 10 * time.Second
	// IdleTimeout is short because every idle keep-alive connection holds a
	// goroutine and buffers in the agent; SDKs reconnect cheaply.
	IdleTimeout    = 15 * time.Second
	MaxHeaderBytes = 8192
)

// drainPoll is how often Drain looks whether connections are still busy.
const drainPoll = 10 * time.Millisecond

// Server is the agent's HTTP server: an *http.Server with the limits above
// and Drain, which stops it without dropping a request it accepted.
//
// During a rolling update the old and the new agent listen on the same port
// (SO_REUSEPORT) and the kernel spreads pods' connections over both.
// http.Server.Shutdown is not enough for the old one to leave: it closes
// a connection it accepted whose request it has not read yet without an
// answer (the pod sees an empty reply), and it keeps accepting until it
// closes the listener.
type Server struct {
	*http.Server

	// conns holds each open connection's state (net.Conn -> *connState).
	// net/http reports a change of state twice per request (active, idle):
	// a map under one mutex would make every connection's request queue
	// for it, while a sync.Map is read without a lock and only a
	// connection's arrival and departure write to it.
	conns sync.Map

	mu       sync.Mutex
	serves   []serveCall
	draining bool
}

// connState is one connection's http.ConnState.
type connState struct{ v atomic.Int32 }

// serveCall is one Serve under way. A connection Serve has accepted is
// tracked (StateNew) before Serve accepts again or returns.
type serveCall struct {
	l    net.Listener
	done chan struct{} // closed when Serve returns
}

// NewServer returns a Server for h with the limits above. Serve it with
// Serve and stop it with Drain.
func NewServer(h http.Handler) *Server {
	s := &Server{}
	s.Server = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ConnState:         s.track,
	}
	return s
}

// Serve accepts connections on l until Drain (or Shutdown) closes it. Once
// Drain has begun it closes l and returns http.ErrServerClosed at once.
func (s *Server) Serve(l net.Listener) error {
	done := make(chan struct{})
	defer close(done)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		_ = l.Close()
		return http.ErrServerClosed
	}
	s.serves = append(s.serves, serveCall{l: l, done: done})
	s.mu.Unlock()
	return s.Server.Serve(l)
}

// track is called by net/http from the connection's own goroutine (from
// Serve's for StateNew), so a connection's changes never race each other.
func (s *Server) track(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateClosed, http.StateHijacked:
		s.conns.Delete(c)
	case http.StateNew:
		cs := &connState{}
		cs.v.Store(int32(st))
		s.conns.Store(c, cs)
	default:
		if cs, ok := s.conns.Load(c); ok {
			cs.(*connState).v.Store(int32(st))
		}
	}
}

// busy counts connections that may carry a request not answered yet:
// accepted but not read (new) or being served (active).
func (s *Server) busy() int {
	n := 0
	s.conns.Range(func(_, v any) bool {
		if st := http.ConnState(v.(*connState).v.Load()); st == http.StateNew || st == http.StateActive {
			n++
		}
		return true
	})
	return n
}

// Drain stops the server for a handoff to another process listening on the
// same port, and returns once every request it accepted has been answered
// or ctx is done (then it closes what remains and returns ctx's error).
//
// It turns keep-alives off, so that idle connections close and every
// answer from now on says "Connection: close" and moves its client to a
// new connection; closes the listeners, so that the kernel sends new
// connections to the other SO_REUSEPORT listeners (connections still queued
// on a closed listener are reset unless net.ipv4.tcp_migrate_req is set);
// waits for Serve to return, so that a connection accepted in the same
// instant is tracked; then waits for the connections it accepted to be
// read and answered, and only then shuts down.
func (s *Server) Drain(ctx context.Context) error {
	s.SetKeepAlivesEnabled(false)
	s.mu.Lock()
	s.draining = true
	serves := s.serves
	s.serves = nil
	s.mu.Unlock()
	var errs []error
	for _, sc := range serves {
		if err := sc.l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("close listener: %w", err))
		}
	}
	for _, sc := range serves {
		select {
		case <-sc.done:
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("drain: Serve did not return: %w", ctx.Err()), s.Close())...)
		}
	}
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for s.busy() > 0 {
		select {
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("drain: %d connections still busy: %w", s.busy(), ctx.Err()), s.Close())...)
		case <-t.C:
		}
	}
	// Only idle connections are left, if any: Shutdown closes them and
	// returns.
	if err := s.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
