package imds

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startServer serves h on a loopback listener and returns the server and
// its address.
func startServer(t *testing.T, h http.Handler) (*Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(h)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { _ = s.Close() })
	waitServing(t, s)
	return s, l.Addr().String()
}

// waitServing waits until Serve has registered its listener.
func waitServing(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.serves)
		s.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Serve did not start")
		}
		time.Sleep(time.Millisecond)
	}
}

func waitBusy(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.busy() != n {
		if time.Now().After(deadline) {
			t.Fatalf("busy connections: %d, want %d", s.busy(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func drainAsync(s *Server, timeout time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done <- s.Drain(ctx)
	}()
	return done
}

// waitRefused waits until addr refuses connections: the listener is closed.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts after Drain started")
		}
		time.Sleep(time.Millisecond)
	}
}

// A pod whose connection was accepted just before the drain, and whose
// request arrives after it began, gets its answer. http.Server.Shutdown
// closes such a connection without one: the pod sees an empty reply.
func TestDrainAnswersAcceptedConnection(t *testing.T) {
	s, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "pong")
	}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitBusy(t, s, 1) // accepted, nothing read yet

	done := drainAsync(s, 10*time.Second)
	waitRefused(t, addr)
	if _, err := io.WriteString(conn, "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted before the drain: %v, want an answer", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "pong" || !resp.Close {
		t.Errorf("answer during drain: %d %q close=%v, want 200 pong with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if err := <-done; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// A request being served when the drain starts finishes; Drain waits for
// it, and an idle keep-alive connection is closed at once.
func TestDrainWaitsForActiveAndClosesIdle(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	s, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			entered <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}))
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idleR := bufio.NewReader(idle)
	if _, err := io.WriteString(idle, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(idleR, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()

	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/slow")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "done" {
				err = errors.New("body " + string(b))
			}
		}
		slow <- err
	}()
	<-entered
	done := drainAsync(s, 10*time.Second)

	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleR.ReadByte(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("idle keep-alive connection during drain: read %v, want it closed", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Drain returned (%v) while a request was being served", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-slow; err != nil {
		t.Errorf("request under way during the drain: %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// Drain gives up when ctx ends, closes what remains and says so.
func TestDrainDeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	entered := make(chan struct{}, 1)
	s, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-block
	}))
	go func() {
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	err := <-drainAsync(s, 50*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a stuck request: %v, want the deadline", err)
	}
}

// Without any connection Drain returns at once, and a second Drain (or
// the Server's own close of the listener) is harmless.
func TestDrainIdle(t *testing.T) {
	s, addr := startServer(t, http.NotFoundHandler())
	if err := <-drainAsync(s, 5*time.Second); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("listener still open after Drain")
	}
	if err := <-drainAsync(s, 5*time.Second); err != nil {
		t.Fatalf("second Drain: %v", err)
	}
}

// gatedListener hands out each accepted connection only once its gate is
// opened, holding Serve between accepting a connection and tracking it.
type gatedListener struct {
	net.Listener
	accepted chan struct{}
	gate     chan struct{}
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted <- struct{}{}
	<-l.gate
	return c, nil
}

// A connection the kernel handed to Serve in the instant the drain began,
// not yet tracked as new, is answered too: Drain waits for Serve to return
// before it counts busy connections.
func TestDrainAnswersConnectionAcceptedAsItStarts(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &gatedListener{Listener: inner, accepted: make(chan struct{}, 1), gate: make(chan struct{})}
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "pong")
	}))
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { _ = s.Close() })
	waitServing(t, s)

	conn, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	<-l.accepted // Serve holds the connection, untracked
	done := drainAsync(s, 10*time.Second)
	waitRefused(t, inner.Addr().String())
	close(l.gate)

	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted as the drain began: %v, want an answer", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200", resp.StatusCode)
	}
	if err := <-done; err != nil {
		t.Errorf("Drain: %v", err)
	}
}

// A Serve that starts after the drain began (SIGTERM during start-up)
// closes its listener and returns.
func TestServeAfterDrain(t *testing.T) {
	s := NewServer(http.NotFoundHandler())
	if err := <-drainAsync(s, 5*time.Second); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve after Drain: %v, want http.ErrServerClosed", err)
	}
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Fatal("listener still open after Serve returned")
	}
}
