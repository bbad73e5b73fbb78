package serverclient

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// fakeDNS answers lookups from a table that tests change.
type fakeDNS struct {
	mu      sync.Mutex
	addrs   []string
	lookups int
}

func (d *fakeDNS) set(addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs = addrs
}

func (d *fakeDNS) lookup(_ context.Context, host string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups++
	if len(d.addrs) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return append([]string(nil), d.addrs...), nil
}

func (d *fakeDNS) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookups
}

// recordingCC is the part of a gRPC ClientConn a resolver talks to.
type recordingCC struct {
	resolver.ClientConn
	mu     sync.Mutex
	states []resolver.State
	errs   []error
}

func (c *recordingCC) UpdateState(s resolver.State) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states = append(c.states, s)
	return nil
}

func (c *recordingCC) ReportError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, err)
}

func (c *recordingCC) ParseServiceConfig(string) *serviceconfig.ParseResult { return nil }

func (c *recordingCC) last() (resolver.State, int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.states) == 0 {
		return resolver.State{}, 0, len(c.errs)
	}
	return c.states[len(c.states)-1], len(c.states), len(c.errs)
}

func TestPollingResolver(t *testing.T) {
	dns := &fakeDNS{}
	b := &pollingResolver{lookup: dns.lookup, retry: 20 * time.Millisecond, refresh: 200 * time.Millisecond}
	cc := &recordingCC{}
	r, err := b.Build(resolver.Target{URL: *mustURL(t, "podiam-dns:///podiam-server:443")}, cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// Not in DNS yet: errors, retried every retry period, not backed off.
	// Counted by the errors reported, not the lookups made: a lookup is
	// counted before its error reaches the ClientConn.
	waitFor(t, "five failed lookups", func() bool { _, _, errs := cc.last(); return errs >= 5 })
	if _, n, errs := cc.last(); n != 0 || errs < 5 {
		t.Fatalf("%d updates, %d errors before the name exists", n, errs)
	}
	// The first server appears.
	dns.set("10.0.0.2", "10.0.0.1")
	waitFor(t, "the servers' addresses", func() bool {
		s, _, _ := cc.last()
		return len(s.Addresses) == 2 && s.Addresses[0].Addr == "10.0.0.1:443" && s.Addresses[1].Addr == "10.0.0.2:443"
	})
	// Unchanged answers are not pushed again.
	before := dns.count()
	waitFor(t, "two more lookups", func() bool { return dns.count() >= before+2 })
	if _, n, _ := cc.last(); n != 1 {
		t.Errorf("%d updates for one answer, want 1", n)
	}
	// A server moves to a new pod address; a failed connection asks at
	// once (no sooner than the retry period).
	dns.set("10.0.0.3")
	r.ResolveNow(resolver.ResolveNowOptions{})
	waitFor(t, "the new address", func() bool {
		s, _, _ := cc.last()
		return len(s.Addresses) == 1 && s.Addresses[0].Addr == "10.0.0.3:443"
	})
	// Close stops the lookups.
	r.Close()
	n := dns.count()
	time.Sleep(100 * time.Millisecond)
	if dns.count() != n {
		t.Error("lookups after Close")
	}
}

func TestPollingResolverIPLiteral(t *testing.T) {
	dns := &fakeDNS{}
	b := &pollingResolver{lookup: dns.lookup, retry: 20 * time.Millisecond, refresh: time.Hour}
	cc := &recordingCC{}
	r, err := b.Build(resolver.Target{URL: *mustURL(t, "podiam-dns:///[fd00::1]:443")}, cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	waitFor(t, "the literal address", func() bool {
		s, _, _ := cc.last()
		return len(s.Addresses) == 1 && s.Addresses[0].Addr == "[fd00::1]:443"
	})
	if dns.count() != 0 {
		t.Error("an IP literal was looked up")
	}
	if _, err := b.Build(resolver.Target{URL: *mustURL(t, "podiam-dns:///no-port")}, cc, resolver.BuildOptions{}); err == nil {
		t.Error("an address without a port was accepted")
	}
}

// TestServerAppearsInDNS: an agent started before any server is ready
// (a headless Service lists servers only once ready) is served within
// about a second of the server appearing, however long it waited: gRPC's
// own DNS resolver would have backed off for many seconds by then.
func TestServerAppearsInDNS(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, "127.0.0.1:0", &fakeServer{get: answer("web-0")})
	_, port, _ := net.SplitHostPort(srv.addr)
	dns := &fakeDNS{}
	c, _ := newClient(t, p, "podiam-server:"+port, func(c *Config) {
		c.LookupHost = dns.lookup
		c.CallTimeout = 500 * time.Millisecond
	})
	for range 8 {
		if _, err := fetch(t, c, "10.1.2.3"); err == nil {
			t.Fatal("served with no server in DNS")
		}
	}
	dns.set("127.0.0.1")
	start := time.Now()
	var err error
	for time.Since(start) < 5*time.Second {
		if _, err = fetch(t, c, "10.1.2.3"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("not served 5 s after the server appeared in DNS: %v", err)
	}
	took := time.Since(start)
	t.Logf("served %s after the server appeared in DNS", took)
	if took > 2500*time.Millisecond {
		t.Errorf("served %s after the server appeared in DNS, want about a second", took)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
