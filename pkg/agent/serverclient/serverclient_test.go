package serverclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

var (
	expiration  = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	lastUpdated = time.Date(2030, 5, 6, 6, 8, 9, 0, time.UTC)
)

func answer(name string) func(context.Context, *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
	return func(_ context.Context, req *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
		return &pb.GetPodCredentialsResponse{
			Pod: &pb.Pod{Namespace: "team-a", Name: name, Uid: "uid-" + req.GetIp(), ServiceAccount: "sa", RoleArn: "arn:aws:iam::123456789012:role/app"},
			Credentials: &pb.AWSCredentials{
				AccessKeyId: "ASIAEXAMPLE", SecretAccessKey: "secret", SessionToken: "token",
				Expiration: timestamppb.New(expiration), LastUpdated: timestamppb.New(lastUpdated),
			},
		}, nil
	}
}

func fetch(t *testing.T, c *Client, ip string) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Fetch(ctx, ip)
	return time.Since(start), err
}

func TestFetchSuccess(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, "127.0.0.1:0", &fakeServer{get: answer("web-0")})
	// The default: host:port resolved through DNS (an IP literal here).
	c, reg := newClient(t, p, srv.addr, nil)
	pc, err := c.Fetch(t.Context(), "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if pc.PodUID != "uid-10.1.2.3" || pc.Namespace != "team-a" || pc.Name != "web-0" || pc.RoleARN != "arn:aws:iam::123456789012:role/app" {
		t.Errorf("pod fields: %+v", pc)
	}
	cr := pc.Credentials
	if cr.AccessKeyID != "ASIAEXAMPLE" || cr.SecretAccessKey != "secret" || cr.SessionToken != "token" {
		t.Errorf("credential fields: %+v", cr)
	}
	if !cr.Expiration.Equal(expiration) || cr.Expiration.Location() != time.UTC || !cr.LastUpdated.Equal(lastUpdated) {
		t.Errorf("timestamps: expiration %s last updated %s", cr.Expiration, cr.LastUpdated)
	}
	if n := testutil.ToFloat64(c.requests.WithLabelValues(pb.Credentials_GetPodCredentials_FullMethodName, "OK")); n != 1 {
		t.Errorf("requests{code=OK} = %v, want 1", n)
	}
	if _, err := testutil.GatherAndCount(reg); err != nil {
		t.Errorf("metrics do not gather: %v", err)
	}
}

func TestFetchPassthroughAddress(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, "127.0.0.1:0", &fakeServer{get: answer("web-0")})
	c, _ := newClient(t, p, "passthrough:///"+srv.addr, nil)
	if _, err := fetch(t, c, "10.1.2.3"); err != nil {
		t.Fatal(err)
	}
}

func TestFetchMalformedAnswer(t *testing.T) {
	p := newPKI(t)
	fs := &fakeServer{}
	srv := startServer(t, p, "127.0.0.1:0", fs)
	c, _ := newClient(t, p, srv.addr, nil)
	for name, resp := range map[string]*pb.GetPodCredentialsResponse{
		"no pod":         {Credentials: &pb.AWSCredentials{AccessKeyId: "A", SecretAccessKey: "S", Expiration: timestamppb.New(expiration)}},
		"no credentials": {Pod: &pb.Pod{Uid: "u"}},
		"no expiration":  {Pod: &pb.Pod{Uid: "u"}, Credentials: &pb.AWSCredentials{AccessKeyId: "A", SecretAccessKey: "S"}},
	} {
		fs.setGet(func(context.Context, *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
			return resp, nil
		})
		_, err := fetch(t, c, "10.1.2.3")
		if !errors.Is(err, ErrMalformedAnswer) || httperr.Status(err, 0) != http.StatusServiceUnavailable {
			t.Errorf("%s: error %v, want 503 wrapping ErrMalformedAnswer", name, err)
		}
	}
}

func TestFetchErrorMapping(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		want       int
		podUnknown bool
	}{
		{"no role", refusal.Error(codes.NotFound, pb.Reason_REASON_NO_ROLE, "no role"), 404, false},
		{"policy denied", refusal.Error(codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED, "denied"), 403, false},
		{"invalid annotation", refusal.Error(codes.PermissionDenied, pb.Reason_REASON_INVALID_ANNOTATION, "bad"), 403, false},
		{"wrong node", refusal.Error(codes.PermissionDenied, pb.Reason_REASON_WRONG_NODE, "elsewhere"), 403, false},
		{"sts denied", refusal.Error(codes.PermissionDenied, pb.Reason_REASON_STS_DENIED, "AccessDenied"), 403, false},
		{"pod unknown", refusal.Error(codes.NotFound, pb.Reason_REASON_POD_UNKNOWN, "who?"), 503, true},
		{"ip conflict", refusal.Error(codes.FailedPrecondition, pb.Reason_REASON_IP_CONFLICT, "two pods"), 503, false},
		{"sts unavailable", refusal.Error(codes.Unavailable, pb.Reason_REASON_STS_UNAVAILABLE, "throttled"), 503, false},
		{"server not synced", refusal.Error(codes.Unavailable, pb.Reason_REASON_UNSPECIFIED, "not synced"), 503, false},
		{"permission denied without reason", status.Error(codes.PermissionDenied, "no"), 403, false},
		{"not found without reason", status.Error(codes.NotFound, "ambiguous"), 503, false},
		{"internal", status.Error(codes.Internal, "boom"), 503, false},
		{"invalid argument", refusal.Error(codes.InvalidArgument, pb.Reason_REASON_UNSPECIFIED, "bad ip"), 503, false},
	}
	p := newPKI(t)
	fs := &fakeServer{}
	srv := startServer(t, p, "127.0.0.1:0", fs)
	c, _ := newClient(t, p, srv.addr, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs.setGet(func(context.Context, *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
				return nil, tt.err
			})
			_, err := fetch(t, c, "10.1.2.3")
			if err == nil {
				t.Fatal("Fetch succeeded")
			}
			if got := httperr.Status(err, 0); got != tt.want {
				t.Errorf("status %d, want %d (%v)", got, tt.want, err)
			}
			if got, want := errors.Is(err, ErrIPConflict), tt.name == "ip conflict"; got != want {
				t.Errorf("errors.Is(ErrIPConflict) = %v, want %v", got, want)
			}
			if got := errors.Is(err, ErrPodUnknown); got != tt.podUnknown {
				t.Errorf("errors.Is(ErrPodUnknown) = %v, want %v", got, tt.podUnknown)
			}
			// The gRPC status stays reachable for logs and callers.
			if st, ok := status.FromError(err); !ok || st.Code() != status.Code(tt.err) {
				t.Errorf("status.FromError = %v %v, want code %v", st, ok, status.Code(tt.err))
			}
		})
	}
	if n := testutil.ToFloat64(c.requests.WithLabelValues(pb.Credentials_GetPodCredentials_FullMethodName, "PermissionDenied")); n != 5 {
		t.Errorf("requests{code=PermissionDenied} = %v, want 5", n)
	}
}

// An unknown reason from a newer server falls back to the code.
func TestHTTPStatusUnknownReason(t *testing.T) {
	if got := httpStatus(codes.PermissionDenied, pb.Reason(99)); got != http.StatusForbidden {
		t.Errorf("PermissionDenied with unknown reason -> %d", got)
	}
	if got := httpStatus(codes.NotFound, pb.Reason(99)); got != http.StatusServiceUnavailable {
		t.Errorf("NotFound with unknown reason -> %d", got)
	}
}

// With no server reachable a request waits for one only within its call
// timeout (the agent's --gateway-timeout-creation, 1s by default), then
// fails with 503 so the agent can answer from its cache.
func TestFetchNoServerFailsWithinCallTimeout(t *testing.T) {
	p := newPKI(t)
	c, _ := newClient(t, p, freeAddr(t), func(c *Config) { c.CallTimeout = time.Second })
	for i := range 3 {
		took, err := fetch(t, c, "10.1.2.3")
		if httperr.Status(err, 0) != http.StatusServiceUnavailable || errors.Is(err, ErrPodUnknown) {
			t.Fatalf("attempt %d: error %v, want 503", i, err)
		}
		if took > 2*time.Second {
			t.Fatalf("attempt %d took %s, want < 2s", i, took)
		}
	}
	if n := testutil.ToFloat64(c.requests.WithLabelValues(pb.Credentials_GetPodCredentials_FullMethodName, "DeadlineExceeded")); n != 3 {
		t.Errorf("requests{code=DeadlineExceeded} = %v, want 3", n)
	}
	if err := c.Check(t.Context()); err == nil {
		t.Error("Check succeeded with no server")
	}
}

func TestFetchCallTimeout(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, p, "127.0.0.1:0", &fakeServer{get: func(ctx context.Context, _ *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	c, _ := newClient(t, p, srv.addr, func(c *Config) { c.CallTimeout = 300 * time.Millisecond })
	took, err := fetch(t, c, "10.1.2.3")
	if httperr.Status(err, 0) != http.StatusServiceUnavailable || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("error %v, want 503 with DeadlineExceeded", err)
	}
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("took %s, want about the 300ms call timeout", took)
	}
}

// A server whose health service says NOT_SERVING (starting, not synced,
// draining) gets no requests, and Check reports it.
func TestHealthChecking(t *testing.T) {
	p := newPKI(t)
	fs := &fakeServer{get: answer("web-0")}
	srv := startServer(t, p, "127.0.0.1:0", fs)
	srv.setServing(false)
	c, _ := newClient(t, p, srv.addr, func(c *Config) { c.CallTimeout = time.Second })
	took, err := fetch(t, c, "10.1.2.3")
	if httperr.Status(err, 0) != http.StatusServiceUnavailable || took > 2*time.Second {
		t.Fatalf("Fetch from a NOT_SERVING server: %v after %s, want a fast 503", err, took)
	}
	if fs.callCount() != 0 {
		t.Fatalf("a NOT_SERVING server got %d requests", fs.callCount())
	}
	if err := c.Check(t.Context()); err == nil {
		t.Fatal("Check passed against a NOT_SERVING server")
	}
	srv.setServing(true)
	waitFor(t, "the server to be picked", func() bool {
		_, err := fetch(t, c, "10.1.2.3")
		return err == nil
	})
	if err := c.Check(t.Context()); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// Two servers behind one name share the requests; one that stops serving
// is left out, and one that dies is routed around.
func TestRoundRobinOverResolvedServers(t *testing.T) {
	p := newPKI(t)
	a := startServer(t, p, "127.0.0.1:0", &fakeServer{get: answer("from-a")})
	b := startServer(t, p, "127.0.0.1:0", &fakeServer{get: answer("from-b")})
	// The resolver stands in for DNS returning both replicas.
	r := manual.NewBuilderWithScheme(fmt.Sprintf("podiamtest%d", time.Now().UnixNano()))
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a.addr}, {Addr: b.addr}}})
	resolver.Register(r)
	c, _ := newClient(t, p, r.Scheme()+":///podiam-server:443", nil)

	seen := func(n int) map[string]int {
		out := map[string]int{}
		for range n {
			pc, err := c.Fetch(t.Context(), "10.1.2.3")
			if err != nil {
				out["error"]++
				continue
			}
			out[pc.Name]++
		}
		return out
	}
	waitFor(t, "both servers to be used", func() bool {
		s := seen(10)
		return s["from-a"] > 0 && s["from-b"] > 0 && s["error"] == 0
	})

	b.setServing(false)
	waitFor(t, "requests to leave the NOT_SERVING server", func() bool { return seen(10)["from-a"] == 10 })

	b.setServing(true)
	a.srv.Stop()
	waitFor(t, "requests to move to the remaining server", func() bool { return seen(10)["from-b"] == 10 })
}

func TestWatchSnapshotChangesAndReconnect(t *testing.T) {
	p := newPKI(t)
	change := make(chan *pb.PodEvent)
	var mu sync.Mutex
	var hostIPs []string
	stream := func(snapshot []*pb.PodEvent) func(*pb.WatchNodePodsRequest, pb.Credentials_WatchNodePodsServer) error {
		return func(req *pb.WatchNodePodsRequest, s pb.Credentials_WatchNodePodsServer) error {
			mu.Lock()
			hostIPs = append(hostIPs, req.GetHostIp())
			mu.Unlock()
			for _, ev := range snapshot {
				if err := s.Send(ev); err != nil {
					return err
				}
			}
			if err := s.Send(&pb.PodEvent{Type: pb.PodEvent_TYPE_SYNCED}); err != nil {
				return err
			}
			for {
				select {
				case <-s.Context().Done():
					return nil
				case ev := <-change:
					if err := s.Send(ev); err != nil {
						return err
					}
				}
			}
		}
	}
	present := func(ip, uid string) *pb.PodEvent {
		return &pb.PodEvent{Type: pb.PodEvent_TYPE_PRESENT, Ip: ip, Uid: uid}
	}
	first := startServer(t, p, "127.0.0.1:0", &fakeServer{watch: stream([]*pb.PodEvent{present("10.1.0.1", "u1"), present("10.1.0.2", "u2")})})
	c, _ := newClient(t, p, first.addr, func(c *Config) { c.HostIP = "192.0.2.10" })

	events := make(chan string, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, func(ev *pb.PodEvent) {
			events <- fmt.Sprintf("%s %s %s", strings.TrimPrefix(ev.GetType().String(), "TYPE_"), ev.GetIp(), ev.GetUid())
		})
	}()
	const start = "UNSPECIFIED  " // marks each new stream
	recv := func(w string) string {
		t.Helper()
		select {
		case got := <-events:
			return got
		case <-time.After(15 * time.Second):
			t.Fatalf("no event, want %q", w)
			return ""
		}
	}
	// expect checks that a new stream starts (attempts that failed before a
	// server answered each mark a start of their own) and then sends want.
	expect := func(want ...string) {
		t.Helper()
		got := recv(start)
		if got != start {
			t.Fatalf("event %q, want a stream start", got)
		}
		for got == start {
			got = recv(want[0])
		}
		for i, w := range want {
			if i > 0 {
				got = recv(w)
			}
			if got != w {
				t.Fatalf("event %q, want %q", got, w)
			}
		}
	}
	expect("PRESENT 10.1.0.1 u1", "PRESENT 10.1.0.2 u2", "SYNCED  ")
	change <- &pb.PodEvent{Type: pb.PodEvent_TYPE_DELETED, Ip: "10.1.0.2", Uid: "u2"}
	change <- &pb.PodEvent{Type: pb.PodEvent_TYPE_CHANGED, Ip: "10.1.0.3", Uid: "u3"}
	for _, w := range []string{"DELETED 10.1.0.2 u2", "CHANGED 10.1.0.3 u3"} {
		if got := recv(w); got != w {
			t.Fatalf("event %q, want %q", got, w)
		}
	}

	// The server goes away: the end of the stream is marked at once, so
	// the agent knows nothing reports pods leaving until the next snapshot.
	first.srv.Stop()
	if got := recv(start); got != start {
		t.Fatalf("event %q after the stream ended, want the end marked", got)
	}
	// The server restarts on the same port with another view.
	startServer(t, p, first.addr, &fakeServer{watch: stream([]*pb.PodEvent{present("10.1.0.3", "u3")})})
	expect("PRESENT 10.1.0.3 u3", "SYNCED  ")
	if n := testutil.ToFloat64(c.reconnects); n < 1 {
		t.Errorf("reconnects = %v, want at least 1", n)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range hostIPs {
		if h != "192.0.2.10" {
			t.Errorf("server got host_ip %q", h)
		}
	}
}

// A server that refuses the watch (not synced yet) is retried with backoff.
func TestWatchRetriesRefusedStream(t *testing.T) {
	p := newPKI(t)
	var mu sync.Mutex
	attempts := 0
	srv := startServer(t, p, "127.0.0.1:0", &fakeServer{watch: func(_ *pb.WatchNodePodsRequest, s pb.Credentials_WatchNodePodsServer) error {
		mu.Lock()
		attempts++
		n := attempts
		mu.Unlock()
		if n < 3 {
			return status.Error(codes.Unavailable, "server has not synced yet")
		}
		if err := s.Send(&pb.PodEvent{Type: pb.PodEvent_TYPE_SYNCED}); err != nil {
			return err
		}
		<-s.Context().Done()
		return nil
	}})
	c, _ := newClient(t, p, srv.addr, nil)
	synced := make(chan struct{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		_ = c.Watch(ctx, func(ev *pb.PodEvent) {
			if ev.GetType() == pb.PodEvent_TYPE_SYNCED {
				close(synced)
			}
		})
	}()
	select {
	case <-synced:
	case <-time.After(15 * time.Second):
		t.Fatal("watch never synced")
	}
	if n := testutil.ToFloat64(c.reconnects); n != 2 {
		t.Errorf("reconnects = %v, want 2", n)
	}
	if n := testutil.ToFloat64(c.requests.WithLabelValues(pb.Credentials_WatchNodePods_FullMethodName, "Unavailable")); n != 2 {
		t.Errorf("requests{WatchNodePods,Unavailable} = %v, want 2", n)
	}
}

func TestNewValidates(t *testing.T) {
	p := newPKI(t)
	good, _ := newClient(t, p, "127.0.0.1:1", nil)
	tlsCfg := good.cfg.TLS
	for name, cfg := range map[string]Config{
		"no TLS":         {Address: "127.0.0.1:1"},
		"no address":     {TLS: tlsCfg},
		"no port":        {TLS: tlsCfg, Address: "kiam-server"},
		"bad host ip":    {TLS: tlsCfg, Address: "kiam-server:443", HostIP: "node-1"},
		"negative delay": {TLS: tlsCfg, Address: "kiam-server:443", CallTimeout: -time.Second},
	} {
		if _, err := New(cfg, nil, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if good.cfg.KeepaliveTime != 10*time.Second || good.cfg.KeepaliveTimeout != 2*time.Second || good.cfg.CallTimeout != 5*time.Second {
		t.Errorf("defaults: %+v", good.cfg)
	}
	if target, err := dialTarget("kiam-server:443"); err != nil || target != "podiam-dns:///kiam-server:443" {
		t.Errorf("dialTarget = %q, %v", target, err)
	}
	noHost, _ := newClient(t, p, "127.0.0.1:1", func(c *Config) { c.HostIP = "" })
	if err := noHost.Watch(t.Context(), func(*pb.PodEvent) {}); err == nil {
		t.Error("Watch without HostIP started")
	}
}

// TestServerRestartServedAtOnce: after the only server was down long enough
// for reconnect backoff to grow, the first request after it is back and
// SERVING succeeds: backoff is capped near a second and the request waits
// for the connection within its call timeout instead of failing fast.
func TestServerRestartServedAtOnce(t *testing.T) {
	p := newPKI(t)
	addr := freeAddr(t)
	c, _ := newClient(t, p, addr, func(c *Config) { c.CallTimeout = 2 * time.Second })
	// Let reconnect attempts fail for a while, so an uncapped backoff
	// would be several seconds by now.
	for range 3 {
		if _, err := fetch(t, c, "10.1.2.3"); httperr.Status(err, 0) != http.StatusServiceUnavailable {
			t.Fatalf("no server: %v, want 503", err)
		}
	}
	time.Sleep(2 * time.Second)
	startServer(t, p, addr, &fakeServer{get: answer("web-0")})
	took, err := fetch(t, c, "10.1.2.3")
	if err != nil {
		t.Fatalf("first request after the server came back: %v after %s", err, took)
	}
	t.Logf("first request after restart served in %s", took)
}
