package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/supervise"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/syncbuf"
)

// validConfig is the command's defaults with the node's address known.
func validConfig() Config {
	return Config{
		Port:                   8181,
		Host:                   "127.0.0.1",
		HostInterface:          "cali+",
		IPTablesCheckInterval:  10 * time.Second,
		ServerAddress:          "127.0.0.1:1",
		GatewayTimeoutCreation: time.Second,
		GRPCKeepaliveTime:      10 * time.Second,
		GRPCKeepaliveTimeout:   2 * time.Second,
		AllowRouteRegexp:       "^$",
		MetadataEndpoint:       "http://169.254.169.254",
		MaxRequestsPerIP:       32,
		MaxConnectionsPerIP:    128,
		CredentialRefresh:      35 * time.Minute,
		CredentialMinServe:     5 * time.Minute,
		WatchPods:              true,
	}
}

func TestValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string // "" means valid
	}{
		// The pod watch asks the server for the pods of the node at Host:
		// without it the watch would end as soon as it started.
		{"pod watch without host", func(c *Config) { c.Host = "" }, "watching the node's pods needs --host"},
		{"pod watch with a bad host", func(c *Config) { c.Host = "node-1" }, `--host (or HOST_IP) "node-1"`},
		{"no pod watch, no host", func(c *Config) { c.Host, c.WatchPods = "", false }, ""},
		{"pod watch on an IPv6 node", func(c *Config) { c.Host = "fd00::1" }, ""},
		{"iptables without host", func(c *Config) { c.Host, c.IPTables = "", true }, "--iptables needs --host"},
		{"iptables on an IPv6-only node", func(c *Config) { c.Host, c.IPTables = "fd00::1", true }, ""},
		{"status.hostIPs of a dual-stack node", func(c *Config) { c.Host, c.IPTables = "10.0.0.1,fd00::1", true }, ""},
		{"two addresses of one family", func(c *Config) { c.Host = "10.0.0.1,10.0.0.2" }, "more than one address of a family"},
		{"IPv6 host, IPv6 disabled", func(c *Config) { c.Host, c.IPTables, c.NoIPv6 = "fd00::1", true, true }, "IPv6 disabled"},
		{"bad --host-ipv6", func(c *Config) { c.Host6 = "10.0.0.9" }, "--host-ipv6"},
		{"no connections allowed", func(c *Config) { c.MaxConnectionsPerIP = 0 }, "--max-connections-per-ip"},
		{"iptables check interval", func(c *Config) { c.IPTablesCheckInterval = 0 }, "--iptables-check-interval must be positive"},
		{"bad port", func(c *Config) { c.Port = 0 }, "--port"},
		{"bad allow route", func(c *Config) { c.AllowRouteRegexp = "(" }, "--allow-route-regexp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
	// A missing host is reported once, not again for the pod watch.
	c := validConfig()
	c.Host, c.IPTables = "", true
	if err := c.Validate(); strings.Contains(err.Error(), "watching") {
		t.Fatalf("host reported twice: %v", err)
	}
}

func TestHosts(t *testing.T) {
	for _, tc := range []struct{ host, host6, v4, v6 string }{
		{"10.0.0.1", "", "10.0.0.1", "invalid IP"},
		{"fd00::1", "", "invalid IP", "fd00::1"},
		{"10.0.0.1, fd00::1", "", "10.0.0.1", "fd00::1"},
		{"fd00::1,10.0.0.1", "fd00::9", "10.0.0.1", "fd00::9"},
		{"::ffff:10.0.0.1", "", "10.0.0.1", "invalid IP"},
	} {
		v4, v6, err := Config{Host: tc.host, Host6: tc.host6}.hosts()
		if err != nil || v4.String() != tc.v4 || v6.String() != tc.v6 {
			t.Errorf("hosts(%q, %q) = %v, %v, %v; want %s, %s", tc.host, tc.host6, v4, v6, err, tc.v4, tc.v6)
		}
	}
}

func TestNewRefusesInvalidConfig(t *testing.T) {
	c := validConfig()
	c.Host = ""
	_, err := New(context.Background(), c, testDeps(nil))
	if err == nil || !strings.Contains(err.Error(), "--host") {
		t.Fatalf("New = %v, want the configuration refused", err)
	}
	if _, err := New(context.Background(), validConfig(), Deps{}); err == nil {
		t.Fatal("New without dependencies succeeded")
	}
}

func testDeps(logs *syncbuf.Buffer) Deps {
	var log *slog.Logger
	if logs == nil {
		log = slog.New(slog.DiscardHandler)
	} else {
		log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return Deps{TLS: &tls.Config{}, Registry: prometheus.NewRegistry(), Log: log}
}

// fakeRules stands in for the iptables rules and records what was done,
// with what the logs said by then.
type fakeRules struct {
	logs *syncbuf.Buffer

	mu        sync.Mutex
	installed bool
	removed   bool
	logsAtRm  string
}

func (f *fakeRules) Install(context.Context) error {
	f.mu.Lock()
	f.installed = true
	f.mu.Unlock()
	return nil
}
func (f *fakeRules) Check() error { return nil }
func (f *fakeRules) Run(ctx context.Context, _ time.Duration) error {
	<-ctx.Done()
	return nil
}

func (f *fakeRules) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = true
	f.logsAtRm = f.logs.String()
	return nil
}

// newTestAgent builds an agent that listens on a free loopback port and
// talks to no server (its client keeps trying 127.0.0.1:1).
func newTestAgent(t *testing.T, cfg Config, logs *syncbuf.Buffer) (*Agent, <-chan string) {
	t.Helper()
	a, err := New(context.Background(), cfg, testDeps(logs))
	if err != nil {
		t.Fatal(err)
	}
	addrs := make(chan string, 2)
	a.listen = func(ctx context.Context, addr string) (net.Listener, error) {
		if !strings.HasPrefix(addr, ":") {
			return listenReusePort(ctx, addr) // metrics
		}
		l, err := listenReusePort(ctx, "127.0.0.1:0")
		if err == nil {
			addrs <- l.Addr().String()
		}
		return l, err
	}
	return a, addrs
}

func runAsync(ctx context.Context, run func(context.Context) error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	return done
}

func wait(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// Stopped by its context, the agent drains the metadata listener, then
// removes the rule when told to, and returns nil.
func TestRunStopsCleanly(t *testing.T) {
	logs := &syncbuf.Buffer{}
	a, addrs := newTestAgent(t, validConfig(), logs)
	rules := &fakeRules{logs: logs}
	a.rules, a.cfg.IPTablesRemove = rules, true

	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, a.Run)
	addr := <-addrs
	resp, err := http.Get("http://" + addr + "/ping")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := wait(t, done); err != nil {
		t.Fatalf("Run = %v after ctx ended, want nil", err)
	}
	rules.mu.Lock()
	defer rules.mu.Unlock()
	if !rules.installed || !rules.removed {
		t.Fatalf("rule installed %v, removed %v; want both", rules.installed, rules.removed)
	}
	if !strings.Contains(rules.logsAtRm, "metadata listener drained") {
		t.Fatalf("rule removed before the metadata listener drained; logs then:\n%s", rules.logsAtRm)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("metadata listener still open after Run returned")
	}
}

// A part that stops while the agent should be running ends the agent with
// an error, after the same drain; the rule stays unless told otherwise.
func TestRunPartStoppingIsAnError(t *testing.T) {
	logs := &syncbuf.Buffer{}
	a, _ := newTestAgent(t, validConfig(), logs)
	rules := &fakeRules{logs: logs}
	a.rules = rules
	stopped := supervise.Part{Name: "test part", Run: func(context.Context) error { return nil }}

	err := wait(t, runAsync(context.Background(), func(ctx context.Context) error {
		return a.run(ctx, []supervise.Part{stopped})
	}))
	if !errors.Is(err, supervise.ErrStopped) || !strings.Contains(err.Error(), "test part") {
		t.Fatalf("Run = %v, want the test part's unexpected stop", err)
	}
	if !strings.Contains(logs.String(), "metadata listener drained") {
		t.Fatalf("no drain:\n%s", logs)
	}
	if rules.removed {
		t.Fatal("rule removed without --iptables-remove")
	}
}

// A part that fails ends the agent with that part's error.
func TestRunPartFailing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0") // no SO_REUSEPORT: nobody may share it
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := validConfig()
	cfg.PrometheusListenAddr = taken.Addr().String()
	a, _ := newTestAgent(t, cfg, nil)
	err = wait(t, runAsync(context.Background(), a.Run))
	if err == nil || !strings.Contains(err.Error(), "metrics listen "+taken.Addr().String()) {
		t.Fatalf("Run = %v, want the metrics server's listen error", err)
	}
}

// Without a node address there is no pod watch, and the agent says so
// instead of running without it in silence.
func TestRunWithoutPodWatch(t *testing.T) {
	logs := &syncbuf.Buffer{}
	cfg := validConfig()
	cfg.Host, cfg.WatchPods = "", false
	a, addrs := newTestAgent(t, cfg, logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, a.Run)
	<-addrs
	cancel()
	if err := wait(t, done); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "not watching this node's pods") {
		t.Fatalf("no warning about the missing pod watch:\n%s", logs)
	}
}

// fakePodCache records what the pod event sink did to the cache.
type fakePodCache struct {
	retained []map[string]string
	forgot   []string
	synced   []bool
	pushed   []string // ip/uid
}

func (f *fakePodCache) Retain(present map[string]string) { f.retained = append(f.retained, present) }
func (f *fakePodCache) Forget(ip string)                 { f.forgot = append(f.forgot, ip) }
func (f *fakePodCache) PodStreamSynced(s bool)           { f.synced = append(f.synced, s) }
func (f *fakePodCache) Push(ip string, pod creds.PodCredentials) bool {
	f.pushed = append(f.pushed, ip+"/"+pod.PodUID)
	return true
}

func TestPodEventSink(t *testing.T) {
	c := &fakePodCache{}
	s := newPodEventSink(c, slog.New(slog.DiscardHandler))
	for _, ev := range []*pb.PodEvent{
		{Type: pb.PodEvent_TYPE_UNSPECIFIED},
		{Type: pb.PodEvent_TYPE_PRESENT, Ip: "10.1.0.1", Uid: "a"},
		// The stream broke mid-snapshot: what it said so far is dropped.
		{Type: pb.PodEvent_TYPE_UNSPECIFIED},
		{Type: pb.PodEvent_TYPE_PRESENT, Ip: "10.1.0.2", Uid: "b"},
		{Type: pb.PodEvent_TYPE_SYNCED},
		{Type: pb.PodEvent_TYPE_DELETED, Ip: "10.1.0.2", Uid: "b"},
		{Type: pb.PodEvent_TYPE_CHANGED, Ip: "10.1.0.3", Uid: "c"},
		{Type: pb.PodEvent_TYPE_CREDENTIALS, Ip: "10.1.0.3", Uid: "c", Credentials: pushedResponse("c")},
		// Credentials for another pod than the event names, and none at
		// all: ignored.
		{Type: pb.PodEvent_TYPE_CREDENTIALS, Ip: "10.1.0.3", Uid: "c", Credentials: pushedResponse("d")},
		{Type: pb.PodEvent_TYPE_CREDENTIALS, Ip: "10.1.0.3", Uid: "c"},
		// The stream ends.
		{Type: pb.PodEvent_TYPE_UNSPECIFIED},
	} {
		s.handle(ev)
	}
	if fmt.Sprint(c.synced) != "[false false true false]" {
		t.Fatalf("stream synced %v, want down, down, up after the snapshot, down at the end", c.synced)
	}
	if len(c.retained) != 1 || len(c.retained[0]) != 1 || c.retained[0]["10.1.0.2"] != "b" {
		t.Fatalf("retained %v, want only the second snapshot", c.retained)
	}
	if strings.Join(c.forgot, ",") != "10.1.0.2,10.1.0.3" {
		t.Fatalf("forgot %v", c.forgot)
	}
	if strings.Join(c.pushed, ",") != "10.1.0.3/c" {
		t.Fatalf("pushed %v, want only the well-formed push", c.pushed)
	}
}

func pushedResponse(uid string) *pb.GetPodCredentialsResponse {
	return &pb.GetPodCredentialsResponse{
		Pod: &pb.Pod{Namespace: "ns", Name: "p", Uid: uid, RoleArn: "arn:aws:iam::123456789012:role/r"},
		Credentials: &pb.AWSCredentials{AccessKeyId: "AKID", SecretAccessKey: "secret", SessionToken: "token",
			Expiration: timestamppb.New(time.Now().Add(time.Hour))},
	}
}

// countingRules counts Check calls.
type countingRules struct {
	fakeRules
	checks int
}

func (c *countingRules) Check() error { c.checks++; return errors.New("rule missing") }

func TestCachedCheck(t *testing.T) {
	if err := cachedCheck(nil, time.Hour)(); err != nil {
		t.Fatalf("without iptables the agent is ready: %v", err)
	}
	r := &countingRules{}
	check := cachedCheck(r, time.Hour)
	for range 3 {
		if err := check(); err == nil {
			t.Fatal("a missing rule reported ready")
		}
	}
	if r.checks != 1 {
		t.Fatalf("iptables read %d times within one interval, want 1", r.checks)
	}
}
