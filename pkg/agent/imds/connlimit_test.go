package imds

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func limited(t *testing.T, max int) (*limitListener, string) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := LimitListener(inner, ConnLimitConfig{MaxPerIP: max}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l.(*limitListener), inner.Addr().String()
}

// dialFrom connects to addr from the loopback address src, so one test can
// play several pods.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// closedByPeer reports whether the other side closed c (EOF or reset)
// within the wait.
func closedByPeer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestLimitListenerCapsPerSource(t *testing.T) {
	l, addr := limited(t, 2)
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	a1, a2 := dialFrom(t, "127.0.0.1", addr), dialFrom(t, "127.0.0.1", addr)
	s1, s2 := <-accepted, <-accepted
	over := dialFrom(t, "127.0.0.1", addr)
	if !closedByPeer(over, 2*time.Second) {
		t.Fatal("a third connection from one address was kept open")
	}
	if got := testutil.ToFloat64(l.refused); got != 1 {
		t.Errorf("refused = %v, want 1", got)
	}
	// Another pod is not affected by the first one's connections.
	other := dialFrom(t, "127.0.0.2", addr)
	select {
	case c := <-accepted:
		if c.RemoteAddr().(*net.TCPAddr).IP.String() != "127.0.0.2" {
			t.Fatalf("accepted %v, want the other source", c.RemoteAddr())
		}
	case <-time.After(2 * time.Second):
		t.Fatal("another address's connection was not accepted")
	}
	_ = other
	// Closing a connection frees its slot, once however often it closes.
	_ = s1.Close()
	_ = s1.Close()
	again := dialFrom(t, "127.0.0.1", addr)
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("a freed slot was not reused")
	}
	if closedByPeer(again, 200*time.Millisecond) {
		t.Fatal("a connection within the cap was closed")
	}
	if n := l.held.count(netip.MustParseAddr("127.0.0.1")); n != 2 {
		t.Errorf("open from 127.0.0.1 = %d, want 2", n)
	}
	_, _, _ = a1, a2, s2
}

// TestFloodDoesNotStarveOthers: one pod holding many idle connections
// gets at most its cap, and another pod is still answered.
func TestFloodDoesNotStarveOthers(t *testing.T) {
	const capPerIP, flood = 16, 400
	l, addr := limited(t, capPerIP)
	srv := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Drain(ctx)
	})
	for range flood {
		dialFrom(t, "127.0.0.1", addr)
	}
	// Every connection over the cap is closed, however busy the machine.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(l.refused) < flood-capPerIP && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if refused := testutil.ToFloat64(l.refused); refused != flood-capPerIP {
		t.Fatalf("one address: %v of %d connections refused, want all but the cap of %d", refused, flood, capPerIP)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := client.Get("http://" + addr + "/latest/meta-data/")
	if err != nil {
		t.Fatalf("another pod during the flood: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("another pod during the flood: %d", resp.StatusCode)
	}
	if got := testutil.ToFloat64(l.refused); got < flood-capPerIP {
		t.Errorf("refused = %v, want at least %d", got, flood-capPerIP)
	}
}

func TestLimitListenerConfig(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	if _, err := LimitListener(inner, ConnLimitConfig{MaxPerIP: -1}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative cap: %v", err)
	}
	l, err := LimitListener(inner, ConnLimitConfig{}, nil)
	if err != nil || l.(*limitListener).held.max != DefaultMaxConnsPerIP {
		t.Fatalf("default cap: %v %v", l, err)
	}
}
