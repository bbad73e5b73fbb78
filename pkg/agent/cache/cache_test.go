package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/agent/metadoc"
	"github.com/podiam/podiam/pkg/agent/sandbox"
	"github.com/podiam/podiam/pkg/creds"

	testingclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeFetcher answers from a programmable function and records every call.
type fakeFetcher struct {
	mu      sync.Mutex
	calls   map[string]int
	ctxs    []context.Context
	gate    chan struct{} // when set, Fetch blocks until it is closed
	started chan string   // when set, receives ip as each Fetch starts
	answer  func(ip string) (creds.PodCredentials, error)
}

func (f *fakeFetcher) Fetch(ctx context.Context, ip string) (creds.PodCredentials, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[ip]++
	f.ctxs = append(f.ctxs, ctx)
	gate, started, answer := f.gate, f.started, f.answer
	f.mu.Unlock()
	if started != nil {
		started <- ip
	}
	if gate != nil {
		<-gate
	}
	return answer(ip)
}

func (f *fakeFetcher) count(ip string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[ip]
}

func (f *fakeFetcher) set(answer func(ip string) (creds.PodCredentials, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer = answer
}

func podCreds(uid, key string, exp time.Time) creds.PodCredentials {
	return creds.PodCredentials{
		PodUID: uid, Namespace: "ns", Name: "pod-" + uid, RoleARN: "arn:aws:iam::123456789012:role/r",
		Credentials: creds.Credentials{AccessKeyID: key, SecretAccessKey: "secret", SessionToken: "token", Expiration: exp, LastUpdated: exp.Add(-time.Hour)},
	}
}

// issuing answers every address with credentials valid for an hour from
// the clock's current time, uid "uid-"+ip and a fresh access key per call.
func issuing(clk *testingclock.FakeClock) func(string) (creds.PodCredentials, error) {
	var mu sync.Mutex
	n := 0
	return func(ip string) (creds.PodCredentials, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		return podCreds("uid-"+ip, fmt.Sprintf("AKIA%d", n), clk.Now().Add(time.Hour)), nil
	}
}

func failing(status int, err error) func(string) (creds.PodCredentials, error) {
	return func(string) (creds.PodCredentials, error) {
		return creds.PodCredentials{}, httperr.New(status, err)
	}
}

var errNoServer = errors.New("no server reachable")

type fixture struct {
	c   *Cache
	f   *fakeFetcher
	clk *testingclock.FakeClock
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	clk := testingclock.NewFakeClock(t0)
	f := &fakeFetcher{answer: issuing(clk)}
	cfg := Config{Now: clk.Now}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg, f, prometheus.NewPedanticRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{c: c, f: f, clk: clk}
}

func (fx *fixture) get(t *testing.T, ip string) (creds.PodCredentials, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return fx.c.Credentials(ctx, ip)
}

func (fx *fixture) mustGet(t *testing.T, ip string) creds.PodCredentials {
	t.Helper()
	pc, err := fx.get(t, ip)
	if err != nil {
		t.Fatalf("Credentials(%s): %v", ip, err)
	}
	return pc
}

func (fx *fixture) mustFail(t *testing.T, ip string, status int) error {
	t.Helper()
	pc, err := fx.get(t, ip)
	if err == nil {
		t.Fatalf("Credentials(%s) = %s, want an error", ip, pc.Credentials.AccessKeyID)
	}
	if got := httperr.Status(err, 0); got != status {
		t.Fatalf("Credentials(%s) status %d (%v), want %d", ip, got, err, status)
	}
	return err
}

func (fx *fixture) requests(result string) int {
	return int(testutil.ToFloat64(fx.c.requests.WithLabelValues(result)))
}

func (fx *fixture) refreshes(result string) int {
	return int(testutil.ToFloat64(fx.c.refreshes.WithLabelValues(result)))
}

func TestHitAndMiss(t *testing.T) {
	fx := newFixture(t, nil)
	first := fx.mustGet(t, "10.0.0.1")
	if first.PodUID != "uid-10.0.0.1" || first.Credentials.AccessKeyID != "AKIA1" {
		t.Fatalf("first answer %+v", first)
	}
	fx.clk.Step(10 * time.Minute)
	if again := fx.mustGet(t, "10.0.0.1"); again.Credentials.AccessKeyID != "AKIA1" {
		t.Errorf("second answer has key %s, want the cached AKIA1", again.Credentials.AccessKeyID)
	}
	if other := fx.mustGet(t, "10.0.0.2"); other.PodUID != "uid-10.0.0.2" {
		t.Errorf("other address got %+v", other)
	}
	if n := fx.f.count("10.0.0.1"); n != 1 {
		t.Errorf("%d fetches for 10.0.0.1, want 1", n)
	}
	if hit, miss := fx.requests("hit"), fx.requests("miss"); hit != 1 || miss != 2 {
		t.Errorf("hit %d miss %d, want 1 and 2", hit, miss)
	}
	if fx.c.Len() != 2 {
		t.Errorf("Len %d, want 2", fx.c.Len())
	}
}

// TestDocumentsBuiltOnReceipt: the documents a request writes are built
// once per answer, when it is received (LastUpdated defaults to that
// time), and every hit, stale answer and waiter gets the same ones.
func TestDocumentsBuiltOnReceipt(t *testing.T) {
	fx := newFixture(t, nil)
	fx.f.set(func(ip string) (creds.PodCredentials, error) {
		pc := podCreds("uid-"+ip, "AKIA1", fx.clk.Now().Add(time.Hour))
		pc.Credentials.LastUpdated = time.Time{}
		return pc, nil
	})
	received := fx.clk.Now()
	d1, err := fx.c.Documents(t.Context(), "10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	fx.clk.Step(10 * time.Minute)
	d2, err := fx.c.Documents(t.Context(), "10.0.0.1")
	if err != nil || d2 != d1 {
		t.Fatalf("hit: %p %v, want the documents of the miss %p", d2, err, d1)
	}
	doc, ok := d1.Credentials(fx.clk.Now())
	want := `"LastUpdated":"` + received.UTC().Format(metadoc.TimeLayout) + `"`
	if !ok || !strings.Contains(string(doc), want) || !strings.Contains(string(doc), `"AccessKeyId":"AKIA1"`) {
		t.Errorf("document %s, want %s", doc, want)
	}
	if pc := fx.mustGet(t, "10.0.0.1"); pc != *d1.Pod() {
		t.Errorf("Credentials %+v, documents built from %+v", pc, *d1.Pod())
	}
	if n := fx.f.count("10.0.0.1"); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}

func TestSingleFlight(t *testing.T) {
	fx := newFixture(t, nil)
	fx.f.gate = make(chan struct{})
	const n = 100
	var wg sync.WaitGroup
	keys := make(chan string, n)
	for range n {
		wg.Go(func() {
			pc, err := fx.get(t, "10.0.0.1")
			if err != nil {
				t.Error(err)
				return
			}
			keys <- pc.Credentials.AccessKeyID
		})
	}
	waitFor(t, "100 waiting callers", func() bool { return fx.waiters("10.0.0.1") == n })
	close(fx.f.gate)
	wg.Wait()
	close(keys)
	for k := range keys {
		if k != "AKIA1" {
			t.Errorf("a caller got key %s, want AKIA1", k)
		}
	}
	if c := fx.f.count("10.0.0.1"); c != 1 {
		t.Errorf("%d fetches for %d concurrent callers, want 1", c, n)
	}
}

func (fx *fixture) waiters(ip string) int {
	fx.c.mu.Lock()
	defer fx.c.mu.Unlock()
	if fl := fx.c.flights[ip]; fl != nil {
		return fl.waiters
	}
	return -1
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCallerCancelDoesNotCancelSharedFetch(t *testing.T) {
	fx := newFixture(t, nil)
	fx.f.gate = make(chan struct{})
	fx.f.started = make(chan string, 1)

	ctx, cancel := context.WithCancel(t.Context())
	firstErr := make(chan error, 1)
	go func() {
		_, err := fx.c.Credentials(ctx, "10.0.0.1")
		firstErr <- err
	}()
	<-fx.f.started
	second := make(chan creds.PodCredentials, 1)
	go func() { second <- fx.mustGet(t, "10.0.0.1") }()
	waitFor(t, "two waiting callers", func() bool { return fx.waiters("10.0.0.1") == 2 })

	cancel()
	select {
	case err := <-firstErr:
		if httperr.Status(err, 0) != http.StatusServiceUnavailable || !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller got %v, want 503 wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled caller did not return while the fetch was blocked")
	}
	fx.f.mu.Lock()
	fetchCtx := fx.f.ctxs[0]
	fx.f.mu.Unlock()
	if err := fetchCtx.Err(); err != nil {
		t.Fatalf("shared fetch context ended with the first caller: %v", err)
	}
	if _, ok := fetchCtx.Deadline(); !ok {
		t.Error("shared fetch has no deadline")
	}
	close(fx.f.gate)
	if pc := <-second; pc.Credentials.AccessKeyID != "AKIA1" {
		t.Errorf("second caller got %s", pc.Credentials.AccessKeyID)
	}
	if fx.c.Len() != 1 || fx.f.count("10.0.0.1") != 1 {
		t.Errorf("Len %d fetches %d, want 1 and 1", fx.c.Len(), fx.f.count("10.0.0.1"))
	}
}

func TestRefreshAt35Minutes(t *testing.T) {
	fx := newFixture(t, nil)
	fx.mustGet(t, "10.0.0.1") // valid until t0+60m
	fx.clk.Step(25*time.Minute - time.Second)
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.AccessKeyID != "AKIA1" {
		t.Fatalf("with 35m1s left got %s, want the cached AKIA1", pc.Credentials.AccessKeyID)
	}
	fx.clk.Step(time.Second)
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.AccessKeyID != "AKIA2" {
		t.Fatalf("with 35m left got %s, want a fresh AKIA2", pc.Credentials.AccessKeyID)
	}
	if n := fx.f.count("10.0.0.1"); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// A server that hands out credentials with less than Refresh left is asked
// once per RefreshInterval, not on every request.
func TestShortLivedAnswerNotRefetchedPerRequest(t *testing.T) {
	fx := newFixture(t, func(c *Config) { c.RefreshInterval = 30 * time.Second })
	fx.f.set(func(ip string) (creds.PodCredentials, error) {
		return podCreds("u", "AKIA-short", fx.clk.Now().Add(20*time.Minute)), nil
	})
	for range 5 {
		fx.mustGet(t, "10.0.0.1")
		fx.clk.Step(5 * time.Second)
	}
	if n := fx.f.count("10.0.0.1"); n != 1 {
		t.Fatalf("%d fetches within the refresh interval, want 1", n)
	}
	fx.clk.Step(10 * time.Second)
	fx.mustGet(t, "10.0.0.1")
	if n := fx.f.count("10.0.0.1"); n != 2 {
		t.Fatalf("%d fetches after the refresh interval, want 2", n)
	}
}

func TestOutageServesStaleUntilMinServe(t *testing.T) {
	fx := newFixture(t, nil)
	fx.mustGet(t, "10.0.0.1") // valid until t0+60m
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))

	fx.clk.Step(30 * time.Minute) // due, 30m left
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.AccessKeyID != "AKIA1" {
		t.Fatalf("stale answer has key %s", pc.Credentials.AccessKeyID)
	}
	if n := fx.requests("stale"); n != 1 {
		t.Errorf("stale metric %d, want 1", n)
	}
	fx.clk.Step(25*time.Minute - time.Second) // 5m1s left
	fx.mustGet(t, "10.0.0.1")
	fx.clk.Step(time.Second) // 5m left
	err := fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
	if !errors.Is(err, errNoServer) {
		t.Errorf("error %v does not wrap the fetch error", err)
	}
	if fx.requests("error") != 1 || fx.requests("stale") != 2 {
		t.Errorf("error %d stale %d, want 1 and 2", fx.requests("error"), fx.requests("stale"))
	}
	// The server is back: fresh credentials.
	fx.f.set(issuing(fx.clk))
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.Expiration != fx.clk.Now().Add(time.Hour) {
		t.Errorf("after recovery got credentials expiring %s", pc.Credentials.Expiration)
	}
}

func TestOutageNothingCached(t *testing.T) {
	fx := newFixture(t, nil)
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
	// An error without a status is a transient failure too.
	fx.f.set(func(string) (creds.PodCredentials, error) { return creds.PodCredentials{}, errNoServer })
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
}

// During an outage a stale answer stands for a second: neither the server
// nor the route is asked again on every request.
func TestStaleAnswerReusedBriefly(t *testing.T) {
	ifaces := &interfaces{m: map[string]sandbox.ID{"10.0.0.1": cali1}}
	fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
	fx.mustGet(t, "10.0.0.1")
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.clk.Step(30 * time.Minute)
	for range 10 {
		fx.mustGet(t, "10.0.0.1")
	}
	// One lookup before each fetch, one for the stale check.
	if n, l := fx.f.count("10.0.0.1"), ifaces.count(); n != 2 || l != 3 {
		t.Errorf("%d fetches and %d route lookups for 10 stale requests in one second, want 2 and 3", n, l)
	}
	fx.clk.Step(time.Second)
	fx.mustGet(t, "10.0.0.1")
	if n := fx.f.count("10.0.0.1"); n != 3 {
		t.Errorf("%d fetches after a second, want 3", n)
	}
}

// interfaces is a fake sandbox source: address -> sandbox, none = no route.
var (
	cali1   = sandbox.ID{LinkIndex: 10, MAC: "0a:00:00:00:00:01"}
	bridgeA = sandbox.ID{LinkIndex: 3, MAC: "0a:58:0a:f4:00:05"}
	bridgeB = sandbox.ID{LinkIndex: 3, MAC: "0a:58:0a:f4:00:77"}
)

type interfaces struct {
	mu    sync.Mutex
	m     map[string]sandbox.ID
	calls int
}

func (i *interfaces) lookup(ip netip.Addr) (sandbox.ID, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.calls++
	v, ok := i.m[ip.String()]
	if !ok {
		return sandbox.ID{}, errors.New("no route")
	}
	return v, nil
}

func (i *interfaces) set(ip string, v sandbox.ID) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if v == (sandbox.ID{}) {
		delete(i.m, ip)
		return
	}
	i.m[ip] = v
}

func (i *interfaces) count() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.calls
}

func TestOutageInterfaceCheck(t *testing.T) {
	tests := []struct {
		name      string
		atFetch   sandbox.ID // sandbox when the credentials were fetched; zero = lookup failed
		atOutage  sandbox.ID
		wantStale bool
	}{
		{name: "same veth", atFetch: cali1, atOutage: cali1, wantStale: true},
		{name: "new veth", atFetch: cali1, atOutage: sandbox.ID{LinkIndex: 11, MAC: cali1.MAC}},
		{name: "route gone", atFetch: cali1},
		{name: "unknown at fetch", atOutage: cali1},
		{name: "bridge, same MAC", atFetch: bridgeA, atOutage: bridgeA, wantStale: true},
		{name: "bridge, new MAC", atFetch: bridgeA, atOutage: bridgeB},
		{name: "no MAC known at fetch, same veth", atFetch: sandbox.ID{LinkIndex: 10}, atOutage: cali1, wantStale: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ifaces := &interfaces{m: map[string]sandbox.ID{}}
			ifaces.set("10.0.0.1", tt.atFetch)
			fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
			fx.mustGet(t, "10.0.0.1")
			fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
			ifaces.set("10.0.0.1", tt.atOutage)
			fx.clk.Step(30 * time.Minute)
			if tt.wantStale {
				fx.mustGet(t, "10.0.0.1")
				return
			}
			fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
			if fx.requests("stale") != 0 {
				t.Error("stale metric counted")
			}
		})
	}
}

// The interface is recorded before the server is asked, so a successor
// pod appearing during the fetch is never matched with its predecessor's
// credentials.
func TestInterfaceRecordedBeforeFetch(t *testing.T) {
	ifaces := &interfaces{m: map[string]sandbox.ID{"10.0.0.1": cali1}}
	fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
	fx.f.set(func(ip string) (creds.PodCredentials, error) {
		ifaces.set(ip, sandbox.ID{LinkIndex: 99, MAC: "0a:00:00:00:00:99"}) // the successor's veth appears while the server answers
		return podCreds("old", "AKIA-old", fx.clk.Now().Add(time.Hour)), nil
	})
	fx.mustGet(t, "10.0.0.1")
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.clk.Step(30 * time.Minute)
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
}

func TestRefusalsDrop(t *testing.T) {
	tests := []struct {
		name   string
		status int
		err    error
		drop   bool
	}{
		{name: "no role", status: http.StatusNotFound, err: errors.New("no role"), drop: true},
		{name: "policy denied", status: http.StatusForbidden, err: errors.New("denied"), drop: true},
		{name: "pod unknown to a synced server", status: http.StatusServiceUnavailable, err: fmt.Errorf("%w: gone", ErrPodUnknownSynced), drop: true},
		{name: "address claimed by two pods", status: http.StatusServiceUnavailable, err: fmt.Errorf("%w: two pods", ErrAddressConflict), drop: true},
		{name: "no server", status: http.StatusServiceUnavailable, err: errNoServer},
		{name: "sts unavailable", status: http.StatusServiceUnavailable, err: errors.New("throttled")},
		{name: "bad gateway", status: http.StatusBadGateway, err: errors.New("odd")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t, nil)
			fx.mustGet(t, "10.0.0.1")
			fx.f.set(failing(tt.status, tt.err))
			fx.clk.Step(30 * time.Minute)
			if !tt.drop {
				fx.mustGet(t, "10.0.0.1") // stale
				if fx.c.Len() != 1 {
					t.Errorf("entry dropped on a transient failure")
				}
				return
			}
			err := fx.mustFail(t, "10.0.0.1", tt.status)
			if !errors.Is(err, tt.err) {
				t.Errorf("error %v does not wrap %v", err, tt.err)
			}
			if fx.c.Len() != 0 {
				t.Errorf("entry kept after %s", tt.name)
			}
			// Even a server outage right after cannot bring it back.
			fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
			fx.clk.Step(refusalTTL) // past a remembered refusal
			fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
		})
	}
}

func TestNewPodOnAddressReplacesEntry(t *testing.T) {
	fx := newFixture(t, nil)
	fx.mustGet(t, "10.0.0.1")
	fx.clk.Step(30 * time.Minute)
	fx.f.set(func(string) (creds.PodCredentials, error) {
		return podCreds("new-uid", "AKIA-new", fx.clk.Now().Add(time.Hour)), nil
	})
	if pc := fx.mustGet(t, "10.0.0.1"); pc.PodUID != "new-uid" {
		t.Fatalf("got pod %s, want new-uid", pc.PodUID)
	}
	if pc := fx.mustGet(t, "10.0.0.1"); pc.PodUID != "new-uid" || fx.f.count("10.0.0.1") != 2 {
		t.Fatalf("cached entry is for %s after %d fetches", pc.PodUID, fx.f.count("10.0.0.1"))
	}
	// Retain now holds the address to the new UID.
	fx.c.Retain(map[string]string{"10.0.0.1": "uid-10.0.0.1"})
	if fx.c.Len() != 0 {
		t.Error("Retain kept an entry whose UID differs")
	}
}

func TestForget(t *testing.T) {
	fx := newFixture(t, nil)
	fx.mustGet(t, "10.0.0.1")
	fx.mustGet(t, "10.0.0.2")
	fx.c.Forget("10.0.0.1")
	if fx.c.Len() != 1 {
		t.Fatalf("Len %d after Forget, want 1", fx.c.Len())
	}
	// A forgotten entry cannot be served stale.
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
	fx.mustGet(t, "10.0.0.2")
}

// An answer that was under way when the pod left reaches the callers that
// asked before, but is not kept for the pod that comes next.
func TestForgetDuringFetch(t *testing.T) {
	for _, tt := range []struct {
		name   string
		forget func(c *Cache)
	}{
		{name: "Forget", forget: func(c *Cache) { c.Forget("10.0.0.1") }},
		{name: "Retain without the address", forget: func(c *Cache) { c.Retain(map[string]string{"10.0.0.9": "x"}) }},
		{name: "Retain with another UID", forget: func(c *Cache) { c.Retain(map[string]string{"10.0.0.1": "successor"}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t, nil)
			fx.f.gate = make(chan struct{})
			fx.f.started = make(chan string, 1)
			got := make(chan creds.PodCredentials, 1)
			go func() { got <- fx.mustGet(t, "10.0.0.1") }()
			<-fx.f.started
			tt.forget(fx.c)
			close(fx.f.gate)
			if pc := <-got; pc.PodUID != "uid-10.0.0.1" {
				t.Errorf("waiting caller got %+v", pc)
			}
			if fx.c.Len() != 0 {
				t.Fatal("the answer was cached although the pod left during the fetch")
			}
		})
	}
}

func TestRetainDuringFetchSameUID(t *testing.T) {
	fx := newFixture(t, nil)
	fx.f.gate = make(chan struct{})
	fx.f.started = make(chan string, 1)
	done := make(chan struct{})
	go func() { fx.mustGet(t, "10.0.0.1"); close(done) }()
	<-fx.f.started
	fx.c.Retain(map[string]string{"10.0.0.1": "uid-10.0.0.1"})
	close(fx.f.gate)
	<-done
	if fx.c.Len() != 1 {
		t.Fatal("an answer for the listed UID was not cached")
	}
}

func TestRetain(t *testing.T) {
	fx := newFixture(t, nil)
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"} {
		fx.mustGet(t, ip)
	}
	fx.c.Retain(map[string]string{
		"10.0.0.1": "uid-10.0.0.1", // same pod: kept
		"10.0.0.2": "another-pod",  // address reused: dropped
		"10.0.0.4": "uid-10.0.0.4", // never asked: nothing to keep
		// 10.0.0.3 gone: dropped
	})
	if fx.c.Len() != 1 {
		t.Fatalf("Len %d after Retain, want 1", fx.c.Len())
	}
	// A retained entry is checked with a server once: the events missed
	// before the resync may have changed what the pod gets.
	if pc := fx.mustGet(t, "10.0.0.1"); fx.f.count("10.0.0.1") != 2 || pc.Credentials.AccessKeyID != "AKIA4" {
		t.Errorf("retained entry: %d fetches, key %s; want it fetched again, with the answer served", fx.f.count("10.0.0.1"), pc.Credentials.AccessKeyID)
	}
	fx.mustGet(t, "10.0.0.1")
	if fx.f.count("10.0.0.1") != 2 {
		t.Error("the entry the recheck stored was fetched again")
	}
	fx.mustGet(t, "10.0.0.2")
	if fx.f.count("10.0.0.2") != 2 {
		t.Error("dropped entry was served from the cache")
	}
}

// A retained entry whose recheck the server refuses (its namespace's
// External ID or policy changed while the stream was down) is dropped,
// not served; one whose recheck finds no server is still served, as
// through any outage.
func TestRetainRecheck(t *testing.T) {
	fx := newFixture(t, nil)
	held := fx.mustGet(t, "10.0.0.1")
	fx.mustGet(t, "10.0.0.2")
	fx.c.Retain(map[string]string{"10.0.0.1": "uid-10.0.0.1", "10.0.0.2": "uid-10.0.0.2"})

	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.AccessKeyID != held.Credentials.AccessKeyID {
		t.Fatalf("no server: served %s, want the held %s", pc.Credentials.AccessKeyID, held.Credentials.AccessKeyID)
	}
	fx.f.set(failing(http.StatusForbidden, errors.New("external id differs")))
	fx.mustFail(t, "10.0.0.2", http.StatusForbidden)
	if fx.c.Len() != 1 {
		t.Fatalf("Len %d, want the refused entry dropped", fx.c.Len())
	}
}

func TestBackgroundRefresh(t *testing.T) {
	fx := newFixture(t, nil)
	fx.mustGet(t, "10.0.0.1") // expires t0+60m
	fx.clk.Step(10 * time.Minute)
	fx.mustGet(t, "10.0.0.2") // expires t0+70m
	fx.clk.Step(16 * time.Minute)
	fx.mustGet(t, "10.0.0.3") // expires t0+86m

	// t0+26m: only 10.0.0.1 (34m left) is due.
	fx.c.refresh(t.Context())
	if fx.f.count("10.0.0.1") != 2 || fx.f.count("10.0.0.2") != 1 || fx.f.count("10.0.0.3") != 1 {
		t.Fatalf("fetches after the first scan: %v", fx.f.calls)
	}
	if fx.refreshes("ok") != 1 {
		t.Errorf("refresh ok %d, want 1", fx.refreshes("ok"))
	}
	// The refreshed entry is a hit.
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.Expiration != fx.clk.Now().Add(time.Hour) {
		t.Errorf("refreshed entry expires %s", pc.Credentials.Expiration)
	}

	// t0+40m: 10.0.0.2 (30m left) is due; the server now refuses it.
	fx.clk.Step(14 * time.Minute)
	fx.f.set(failing(http.StatusForbidden, errors.New("namespace policy changed")))
	fx.c.refresh(t.Context())
	if fx.c.Len() != 2 || fx.refreshes("error") != 1 {
		t.Fatalf("after a refused refresh: Len %d errors %d, want 2 and 1", fx.c.Len(), fx.refreshes("error"))
	}

	// t0+60m: 10.0.0.3 (26m left) is due; no server answers: kept.
	fx.clk.Step(20 * time.Minute)
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.c.refresh(t.Context())
	if fx.c.Len() != 2 {
		t.Fatalf("Len %d after a transient refresh failure, want 2", fx.c.Len())
	}

	// t0+90m: everything has expired and is dropped.
	fx.clk.Step(30 * time.Minute)
	fx.c.refresh(t.Context())
	if fx.c.Len() != 0 {
		t.Fatalf("Len %d after expiry, want 0", fx.c.Len())
	}
}

func TestRunRefreshes(t *testing.T) {
	fx := newFixture(t, func(c *Config) { c.RefreshInterval = 5 * time.Millisecond })
	fx.mustGet(t, "10.0.0.1")
	fx.clk.Step(30 * time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- fx.c.Run(ctx) }()
	waitFor(t, "a background refresh", func() bool { return fx.f.count("10.0.0.1") >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v", err)
	}
	if pc := fx.mustGet(t, "10.0.0.1"); pc.Credentials.Remaining(fx.clk.Now()) != time.Hour {
		t.Errorf("entry not refreshed: %s left", pc.Credentials.Remaining(fx.clk.Now()))
	}
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Refresh: 5 * time.Minute, MinServe: 5 * time.Minute},
		{MinServe: -time.Second},
		{RefreshInterval: -time.Second},
	} {
		if _, err := New(cfg, &fakeFetcher{}, prometheus.NewRegistry(), nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New(Config{}, nil, prometheus.NewRegistry(), nil); err == nil {
		t.Error("New without a fetcher accepted")
	}
	c, err := New(Config{}, &fakeFetcher{}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.Refresh != 35*time.Minute || c.cfg.MinServe != 5*time.Minute || c.cfg.RefreshInterval != 30*time.Second {
		t.Errorf("defaults: %+v", c.cfg)
	}
	reg := prometheus.NewPedanticRegistry()
	if _, err := New(Config{}, &fakeFetcher{}, reg, nil); err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(reg, "podiam_agent_cache_requests_total", "podiam_agent_cache_entries", "podiam_agent_cache_refreshes_total")
	if err != nil || n != 9 {
		t.Errorf("gathered %d series (%v), want 9", n, err)
	}
}

// TestSandboxChangeDropsEntry: a fresh entry is dropped the moment its
// sandbox ends (its veth is deleted, or on a bridge its address answers
// from another MAC), so a successor pod on the address never gets it, even
// while no server answers.
func TestSandboxChangeDropsEntry(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name string
		at   sandbox.ID
		ch   sandbox.Change
		drop bool
	}{
		{"veth deleted", cali1, sandbox.Change{LinkGone: cali1.LinkIndex}, true},
		{"another veth deleted", cali1, sandbox.Change{LinkGone: 42}, false},
		{"bridge: new MAC", bridgeA, sandbox.Change{Neighbour: ip, LinkIndex: bridgeA.LinkIndex, MAC: bridgeB.MAC}, true},
		{"bridge: same MAC confirmed", bridgeA, sandbox.Change{Neighbour: ip, LinkIndex: bridgeA.LinkIndex, MAC: bridgeA.MAC}, false},
		{"bridge: another address's MAC", bridgeA, sandbox.Change{Neighbour: netip.MustParseAddr("10.0.0.2"), LinkIndex: bridgeA.LinkIndex, MAC: bridgeB.MAC}, false},
		{"MAC on another interface", bridgeA, sandbox.Change{Neighbour: ip, LinkIndex: 77, MAC: bridgeB.MAC}, false},
		{"no MAC known at fetch, one appears", sandbox.ID{LinkIndex: 10}, sandbox.Change{Neighbour: ip, LinkIndex: 10, MAC: cali1.MAC}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ifaces := &interfaces{m: map[string]sandbox.ID{ip.String(): tc.at}}
			fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
			fx.mustGet(t, ip.String())
			fx.c.SandboxChanged(tc.ch)
			if got := fx.c.Len() == 0; got != tc.drop {
				t.Fatalf("dropped = %v, want %v", got, tc.drop)
			}
			fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
			if tc.drop {
				// The successor finds nothing to inherit, fresh or stale.
				fx.mustFail(t, ip.String(), http.StatusServiceUnavailable)
				return
			}
			fx.mustGet(t, ip.String())
			if n := fx.f.count(ip.String()); n != 1 {
				t.Errorf("%d fetches, want 1 (a fresh hit)", n)
			}
		})
	}
}

// TestStreamDownUnconfirmedNotServed: an entry whose sandbox could not be
// told is served from cache only while the pod stream would report the pod
// leaving; while it is down, such an entry is neither a hit nor served
// stale.
func TestStreamDownUnconfirmedNotServed(t *testing.T) {
	ifaces := &interfaces{m: map[string]sandbox.ID{}} // every lookup fails
	fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
	fx.c.PodStreamSynced(true)
	fx.mustGet(t, "10.0.0.1")
	fx.mustGet(t, "10.0.0.1")
	if n := fx.f.count("10.0.0.1"); n != 1 {
		t.Fatalf("%d fetches with the stream up, want 1", n)
	}
	fx.c.PodStreamSynced(false)
	fx.mustGet(t, "10.0.0.1") // asks the server, which answers
	if n := fx.f.count("10.0.0.1"); n != 2 {
		t.Fatalf("%d fetches with the stream down, want 2", n)
	}
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)

	// A known sandbox is vouched for by the netlink watch instead.
	ifaces.set("10.0.0.2", cali1)
	fx.f.set(issuing(fx.clk))
	fx.mustGet(t, "10.0.0.2")
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustGet(t, "10.0.0.2")
	if n := fx.f.count("10.0.0.2"); n != 1 {
		t.Fatalf("%d fetches for a known sandbox with the stream down, want 1", n)
	}
}

// TestRefusalRemembered: a denied pod asking in a tight loop reaches a
// server at most once per refusalTTL; a pod event drops the refusal at
// once, so a pod that gains its role is not kept waiting.
func TestRefusalRemembered(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusNotFound} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			fx := newFixture(t, nil)
			fx.f.set(failing(status, errors.New("refused")))
			for range 1000 {
				fx.mustFail(t, "10.0.0.1", status)
			}
			if n := fx.f.count("10.0.0.1"); n != 1 {
				t.Fatalf("%d server calls for 1000 requests within the TTL, want 1", n)
			}
			if got := fx.requests("refused"); got != 999 {
				t.Errorf("requests{result=refused} = %v, want 999", got)
			}
			fx.clk.Step(refusalTTL)
			fx.mustFail(t, "10.0.0.1", status)
			if n := fx.f.count("10.0.0.1"); n != 2 {
				t.Fatalf("%d server calls after the TTL, want 2", n)
			}
			// The pod changed (its role annotation was fixed): asked again.
			fx.f.set(issuing(fx.clk))
			fx.c.Forget("10.0.0.1")
			fx.mustGet(t, "10.0.0.1")
		})
	}
	t.Run("transient failures are not remembered", func(t *testing.T) {
		fx := newFixture(t, nil)
		fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
		for range 3 {
			fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
		}
		if n := fx.f.count("10.0.0.1"); n != 3 {
			t.Fatalf("%d server calls, want 3", n)
		}
	})
}

// A nil registry and a nil logger are accepted, as in every New of the
// agent: the metrics are kept but not registered, the logs discarded.
func TestNewWithoutRegistryOrLogger(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	c, err := New(Config{Now: clk.Now}, &fakeFetcher{answer: issuing(clk)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Credentials(t.Context(), "10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c.requests.WithLabelValues(string(resultMiss))); got != 1 {
		t.Fatalf("requests{result=miss} = %v, want 1", got)
	}
	// The same Config and a registry still register once only.
	reg := prometheus.NewPedanticRegistry()
	if _, err := New(Config{Now: clk.Now}, &fakeFetcher{answer: issuing(clk)}, reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Now: clk.Now}, &fakeFetcher{answer: issuing(clk)}, reg, nil); err == nil {
		t.Fatal("second New on one registry: want a registration error")
	}
}

// queuedChanges is a ChangeSource holding changes the kernel reported
// that no goroutine has read yet.
type queuedChanges struct {
	mu      sync.Mutex
	pending []sandbox.Change
	err     error
	drains  int
}

func (q *queuedChanges) Drain(apply func(sandbox.Change)) error {
	q.mu.Lock()
	q.drains++
	pending, err := q.pending, q.err
	q.pending = nil
	q.mu.Unlock()
	for _, ch := range pending {
		apply(ch)
	}
	return err
}

func (q *queuedChanges) queue(ch sandbox.Change) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, ch)
}

// TestChangeQueuedBeforeRequestApplied: a new pod behind a bridge changes
// the neighbour entry (its ARP) before its first request; the request
// drains that change before it looks at the cache, so it never gets the
// predecessor's fresh credentials, whichever goroutine was to read it.
func TestChangeQueuedBeforeRequestApplied(t *testing.T) {
	ip := "10.0.0.1"
	ifaces := &interfaces{m: map[string]sandbox.ID{ip: bridgeA}}
	changes := &queuedChanges{}
	fx := newFixture(t, func(c *Config) { c.Sandbox, c.Changes = ifaces.lookup, changes })
	held := fx.mustGet(t, ip)
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	// A state change of the same sandbox ends nothing: a fresh hit.
	changes.queue(sandbox.Change{Neighbour: netip.MustParseAddr(ip), LinkIndex: bridgeA.LinkIndex, MAC: bridgeA.MAC})
	if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID != held.Credentials.AccessKeyID {
		t.Fatalf("same sandbox got %s, want the cached %s", pc.Credentials.AccessKeyID, held.Credentials.AccessKeyID)
	}
	// The successor's ARP, not yet read by anyone, then its request.
	ifaces.set(ip, bridgeB)
	changes.queue(sandbox.Change{Neighbour: netip.MustParseAddr(ip), LinkIndex: bridgeB.LinkIndex, MAC: bridgeB.MAC})
	fx.mustFail(t, ip, http.StatusServiceUnavailable)
	if fx.c.Len() != 0 {
		t.Error("the predecessor's entry is still cached")
	}

	// Changes that cannot be read: nothing is answered from the cache.
	fx.f.set(issuing(fx.clk))
	fx.mustGet(t, "10.0.0.2")
	changes.mu.Lock()
	changes.err = errors.New("netlink socket closed")
	changes.mu.Unlock()
	fx.mustFail(t, "10.0.0.2", http.StatusServiceUnavailable)
}

// TestNeighbourChangeDuringFetch: a neighbour update that keeps the
// sandbox a fetch recorded (entries go reachable, stale, probe all the
// time) leaves the fetch's answer to be cached; one that names another MAC
// keeps it out of the cache.
func TestNeighbourChangeDuringFetch(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name  string
		mac   string
		store bool
	}{
		{"same MAC", bridgeA.MAC, true},
		{"another MAC", bridgeB.MAC, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ifaces := &interfaces{m: map[string]sandbox.ID{ip.String(): bridgeA}}
			fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
			fx.f.gate = make(chan struct{})
			fx.f.started = make(chan string, 1)
			done := make(chan struct{})
			go func() { fx.mustGet(t, ip.String()); close(done) }()
			<-fx.f.started
			fx.c.SandboxChanged(sandbox.Change{Neighbour: ip, LinkIndex: bridgeA.LinkIndex, MAC: tc.mac})
			close(fx.f.gate)
			<-done
			if got := fx.c.Len() == 1; got != tc.store {
				t.Fatalf("answer cached = %v, want %v", got, tc.store)
			}
		})
	}
}

// TestRefusalKeptForSameSandbox: a denied pod whose neighbour entry merely
// changes state keeps its refusal; a new MAC on the address (another pod)
// is asked about afresh.
func TestRefusalKeptForSameSandbox(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	ifaces := &interfaces{m: map[string]sandbox.ID{ip.String(): bridgeA}}
	fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
	fx.f.set(failing(http.StatusForbidden, errors.New("refused")))
	fx.mustFail(t, ip.String(), http.StatusForbidden)
	fx.c.SandboxChanged(sandbox.Change{Neighbour: ip, LinkIndex: bridgeA.LinkIndex, MAC: bridgeA.MAC})
	fx.mustFail(t, ip.String(), http.StatusForbidden)
	if n := fx.f.count(ip.String()); n != 1 {
		t.Fatalf("%d server calls, want 1 (the refusal stands for the same sandbox)", n)
	}
	fx.f.set(issuing(fx.clk))
	fx.c.SandboxChanged(sandbox.Change{Neighbour: ip, LinkIndex: bridgeA.LinkIndex, MAC: bridgeB.MAC})
	fx.mustGet(t, ip.String())
}

// TestLostChangesRecheckEverything: when the kernel dropped changes, every
// cached address is looked up again and those whose sandbox differs now
// are dropped.
func TestLostChangesRecheckEverything(t *testing.T) {
	ifaces := &interfaces{m: map[string]sandbox.ID{"10.0.0.1": bridgeA, "10.0.0.2": cali1}}
	fx := newFixture(t, func(c *Config) { c.Sandbox = ifaces.lookup })
	fx.mustGet(t, "10.0.0.1")
	fx.mustGet(t, "10.0.0.2")
	ifaces.set("10.0.0.1", bridgeB) // replaced while the changes were lost
	fx.c.SandboxChanged(sandbox.Change{Lost: true})
	if fx.c.Len() != 1 {
		t.Fatalf("Len %d after the recheck, want 1", fx.c.Len())
	}
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustFail(t, "10.0.0.1", http.StatusServiceUnavailable)
	fx.mustGet(t, "10.0.0.2")
}

// TestDrainOncePerConnection: the requests of one connection drain the
// pending changes before the first answer from the cache only; a new
// connection (a new handshake, perhaps from a new sandbox) drains again,
// and so does every request that carries no connection.
func TestDrainOncePerConnection(t *testing.T) {
	ip := "10.0.0.1"
	ifaces := &interfaces{m: map[string]sandbox.ID{ip: bridgeA}}
	changes := &queuedChanges{}
	fx := newFixture(t, func(c *Config) { c.Sandbox, c.Changes = ifaces.lookup, changes })
	fx.mustGet(t, ip)
	drains := func() int {
		changes.mu.Lock()
		defer changes.mu.Unlock()
		return changes.drains
	}
	conn := WithConnection(t.Context())
	before := drains()
	for range 5 {
		if _, err := fx.c.Credentials(conn, ip); err != nil {
			t.Fatal(err)
		}
	}
	if n := drains() - before; n != 1 {
		t.Fatalf("5 requests on one connection drained %d times, want 1", n)
	}
	// The successor's ARP, then its first request on its own connection.
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	ifaces.set(ip, bridgeB)
	changes.queue(sandbox.Change{Neighbour: netip.MustParseAddr(ip), LinkIndex: bridgeB.LinkIndex, MAC: bridgeB.MAC})
	if _, err := fx.c.Credentials(WithConnection(t.Context()), ip); err == nil {
		t.Fatal("a new connection after the change got the predecessor's credentials")
	}
	before = drains()
	fx.get(t, ip)
	fx.get(t, ip)
	if n := drains() - before; n != 2 {
		t.Errorf("2 requests without a connection drained %d times, want 2", n)
	}
}
