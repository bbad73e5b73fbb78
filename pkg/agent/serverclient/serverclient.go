// Package serverclient is the agent's gRPC client for the podiam servers.
// It turns the servers' answers into what the agent needs at its HTTP edge:
// credentials, or an error that already carries the HTTP status to give the
// pod (httperr), decided here because only this package knows what each
// gRPC refusal means.
//
// Several server replicas sit behind one DNS name (a headless Service, as
// KIAM deploys them): the client resolves all their addresses, balances
// round robin over those that pass the standard gRPC health check, and
// lets a request wait for a ready one only within its call timeout, so the
// agent can fall back to what it has cached within the SDKs' budget.
//
// It must not import client-go or the AWS SDK: the agent links it.
package serverclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/health" // registers client-side health checking, used by serviceConfig
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// ErrPodUnknown means a server found no live pod at the address after
// waiting for it. Servers answer so only once their pod informer has synced
// (before, they answer Unavailable), so the agent may take it as proof that
// whatever it cached for the address is stale.
var ErrPodUnknown = errors.New("server knows no live pod at this address")

// ErrIPConflict means a server found several live pods claiming the
// address. It is definitive for whatever the agent cached: whichever
// sandbox asks may be either pod.
var ErrIPConflict = errors.New("several live pods claim this address")

// ErrMalformedAnswer means a server's answer lacked something the agent
// needs; it is treated like an unreachable server.
var ErrMalformedAnswer = errors.New("malformed answer from server")

// serviceConfig balances over every resolved server and only picks those
// whose health service reports SERVING, so a replica that is starting (not
// synced yet) or draining gets no requests.
const serviceConfig = `{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`

// Config configures the client. Zero durations take the defaults noted.
type Config struct {
	// Address is KIAM's --server-address, host:port, e.g.
	// "kiam-server:443"; it is looked up every few seconds (every second
	// while it yields nothing) and every address it yields is used. An
	// address with a scheme ("passthrough:///...") is used as it is.
	Address string
	// LookupHost resolves the host of Address; nil means the system's
	// resolver (net.DefaultResolver.LookupHost).
	LookupHost func(ctx context.Context, host string) ([]string, error)
	// TLS is the mutual TLS configuration (pkg/tlsconfig.Client); required.
	TLS *tls.Config
	// HostIP is this node's address (--host), sent in WatchNodePods.
	HostIP string
	// KeepaliveTime and KeepaliveTimeout are KIAM's
	// --grpc-keepalive-time-duration (10s) and
	// --grpc-keepalive-timeout-duration (2s): a dead server is noticed and
	// left within their sum even when no request is under way.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// CallTimeout bounds one Fetch or Check (5s); callers' contexts apply
	// as well.
	CallTimeout time.Duration
	// ConnectTimeout bounds one connection attempt, TLS handshake
	// included (5s). While a first attempt is pending requests wait for
	// it, so this is also how long a black-holed server can hold them.
	ConnectTimeout time.Duration
}

const (
	defaultKeepaliveTime    = 10 * time.Second
	defaultKeepaliveTimeout = 2 * time.Second
	defaultCallTimeout      = 5 * time.Second
	defaultConnectTimeout   = 5 * time.Second

	// Reconnection backoff for connections and the watch stream. The cap
	// is short so that a server that comes back is used within about a
	// second: an agent reconnects to a handful of servers, never enough
	// to burden them.
	backoffBase   = 100 * time.Millisecond
	backoffMax    = time.Second
	backoffJitter = 0.2
)

// Client talks to the podiam servers. It is safe for concurrent use.
type Client struct {
	cfg    Config
	conn   *grpc.ClientConn
	api    pb.CredentialsClient
	health healthpb.HealthClient
	log    *slog.Logger

	requests   *prometheus.CounterVec
	reconnects prometheus.Counter
}

// New checks cfg, registers the client's metrics and starts connecting in
// the background.
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Client, error) {
	if cfg.TLS == nil {
		return nil, errors.New("serverclient: a TLS configuration is required")
	}
	target, err := dialTarget(cfg.Address)
	if err != nil {
		return nil, err
	}
	if cfg.HostIP != "" {
		if _, err := netip.ParseAddr(cfg.HostIP); err != nil {
			return nil, fmt.Errorf("serverclient: host address: %w", err)
		}
	}
	for _, d := range []*time.Duration{&cfg.KeepaliveTime, &cfg.KeepaliveTimeout, &cfg.CallTimeout, &cfg.ConnectTimeout} {
		if *d < 0 {
			return nil, fmt.Errorf("serverclient: negative duration %s", *d)
		}
	}
	cfg.KeepaliveTime = orDefault(cfg.KeepaliveTime, defaultKeepaliveTime)
	cfg.KeepaliveTimeout = orDefault(cfg.KeepaliveTimeout, defaultKeepaliveTimeout)
	cfg.CallTimeout = orDefault(cfg.CallTimeout, defaultCallTimeout)
	cfg.ConnectTimeout = orDefault(cfg.ConnectTimeout, defaultConnectTimeout)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	c := &Client{
		cfg: cfg,
		log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_server_requests_total",
			Help: "Calls from the agent to podiam servers, by method and gRPC status code.",
		}, []string{"method", "code"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_agent_watch_reconnects_total",
			Help: "Times the agent's watch of its node's pods ended and was started again.",
		}),
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{c.requests, c.reconnects} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("serverclient: register metrics: %w", err)
			}
		}
	}

	lookup := cfg.LookupHost
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	conn, err := grpc.NewClient(target,
		grpc.WithResolvers(&pollingResolver{lookup: lookup, retry: resolveRetry, refresh: resolveRefresh}),
		grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS)),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                cfg.KeepaliveTime,
			Timeout:             cfg.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  backoffBase,
				Multiplier: 1.6,
				Jitter:     backoffJitter,
				MaxDelay:   backoffMax,
			},
			MinConnectTimeout: cfg.ConnectTimeout,
		}),
		grpc.WithUnaryInterceptor(c.countUnary),
	)
	if err != nil {
		return nil, fmt.Errorf("serverclient: %s: %w", cfg.Address, err)
	}
	// Connect now, so that the first pod to ask does not wait for the
	// handshake.
	conn.Connect()
	c.conn = conn
	c.api = pb.NewCredentialsClient(conn)
	c.health = healthpb.NewHealthClient(conn)
	return c, nil
}

// dialTarget turns KIAM's host:port into a gRPC target that resolves every
// address of host with the polling resolver.
func dialTarget(address string) (string, error) {
	if address == "" {
		return "", errors.New("serverclient: a server address is required")
	}
	if strings.Contains(address, "://") {
		return address, nil
	}
	if _, _, err := net.SplitHostPort(address); err != nil {
		return "", fmt.Errorf("serverclient: server address %q: %w", address, err)
	}
	return resolverScheme + ":///" + address, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Close ends every connection; Fetch, Watch and Check fail afterwards.
func (c *Client) Close() error {
	return c.conn.Close()
}

func (c *Client) countUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	c.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	return err
}

// Fetch asks a server for the pod at ip and its credentials. Errors carry
// the HTTP status for the pod (httperr), as httpStatus maps them and the
// README's table of answers lists them; ErrPodUnknown is wrapped when a
// server knows no pod there.
func (c *Client) Fetch(ctx context.Context, ip string) (creds.PodCredentials, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	// Wait for a ready (connected, SERVING) server within the call's own
	// deadline rather than failing at once: a connection in reconnect
	// backoff, or a server that just restarted, would otherwise turn
	// every request into a 503 until the next attempt. With several
	// servers, any ready one takes the call. The deadline (KIAM's
	// --gateway-timeout-creation, 1s) still bounds how long the pod waits
	// before the agent falls back to its cache.
	resp, err := c.api.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip}, grpc.WaitForReady(true))
	if err != nil {
		return creds.PodCredentials{}, fromRPCError(err)
	}
	pc, err := fromResponse(resp)
	if err != nil {
		return creds.PodCredentials{}, httperr.New(http.StatusServiceUnavailable, fmt.Errorf("credentials for %s: %w", ip, err))
	}
	return pc, nil
}

// httpStatus maps a refusal to the status the pod sees. A code without a
// podiam reason comes from something other than the service's decision
// (no server reachable, a deadline, a server not synced yet); only
// PermissionDenied is definitive whatever sent it.
func httpStatus(code codes.Code, reason pb.Reason) int {
	switch reason {
	case pb.Reason_REASON_NO_ROLE:
		return http.StatusNotFound
	case pb.Reason_REASON_POLICY_DENIED, pb.Reason_REASON_INVALID_ANNOTATION,
		pb.Reason_REASON_WRONG_NODE, pb.Reason_REASON_STS_DENIED, pb.Reason_REASON_STATIC_POD:
		return http.StatusForbidden
	case pb.Reason_REASON_POD_UNKNOWN, pb.Reason_REASON_IP_CONFLICT, pb.Reason_REASON_STS_UNAVAILABLE:
		return http.StatusServiceUnavailable
	}
	if code == codes.PermissionDenied {
		return http.StatusForbidden
	}
	return http.StatusServiceUnavailable
}

func fromRPCError(err error) error {
	code, reason := status.Code(err), refusal.Reason(err)
	wrapped := fmt.Errorf("podiam server: %w", err)
	switch reason {
	case pb.Reason_REASON_POD_UNKNOWN:
		wrapped = fmt.Errorf("%w: %w", ErrPodUnknown, err)
	case pb.Reason_REASON_IP_CONFLICT:
		wrapped = fmt.Errorf("%w: %w", ErrIPConflict, err)
	}
	return httperr.New(httpStatus(code, reason), wrapped)
}

func fromResponse(resp *pb.GetPodCredentialsResponse) (creds.PodCredentials, error) {
	pod, c := resp.GetPod(), resp.GetCredentials()
	switch {
	case pod.GetUid() == "":
		return creds.PodCredentials{}, fmt.Errorf("%w: no pod UID", ErrMalformedAnswer)
	case c.GetAccessKeyId() == "" || c.GetSecretAccessKey() == "":
		return creds.PodCredentials{}, fmt.Errorf("%w: no credentials", ErrMalformedAnswer)
	case !c.GetExpiration().IsValid():
		return creds.PodCredentials{}, fmt.Errorf("%w: no valid expiration", ErrMalformedAnswer)
	}
	var lastUpdated time.Time
	if c.GetLastUpdated().IsValid() {
		lastUpdated = c.GetLastUpdated().AsTime().UTC()
	}
	return creds.PodCredentials{
		PodUID:    pod.GetUid(),
		Namespace: pod.GetNamespace(),
		Name:      pod.GetName(),
		RoleARN:   pod.GetRoleArn(),
		Credentials: creds.Credentials{
			AccessKeyID:     c.GetAccessKeyId(),
			SecretAccessKey: c.GetSecretAccessKey(),
			SessionToken:    c.GetSessionToken(),
			Expiration:      c.GetExpiration().AsTime().UTC(),
			LastUpdated:     lastUpdated,
		},
	}, nil
}

// Pushed returns the credentials of a TYPE_CREDENTIALS event, checked as
// Fetch checks an answer, and for the pod the event names.
func Pushed(ev *pb.PodEvent) (creds.PodCredentials, error) {
	if ev.GetType() != pb.PodEvent_TYPE_CREDENTIALS || ev.GetCredentials() == nil {
		return creds.PodCredentials{}, fmt.Errorf("%w: not a credentials event", ErrMalformedAnswer)
	}
	pc, err := fromResponse(ev.GetCredentials())
	if err != nil {
		return creds.PodCredentials{}, err
	}
	if pc.PodUID != ev.GetUid() {
		return creds.PodCredentials{}, fmt.Errorf("%w: credentials for pod %s in an event for pod %s", ErrMalformedAnswer, pc.PodUID, ev.GetUid())
	}
	return pc, nil
}

// Check asks a server's health service whether it is ready (synced and
// serving); it fails when none is reachable.
func (c *Client) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	resp, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return fmt.Errorf("podiam server health: %w", err)
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("podiam server health: %s", s)
	}
	return nil
}

// Watch follows WatchNodePods for HostIP until ctx is done, then returns
// nil. onEvent is called, from Watch's goroutine, for every event of each
// stream in order: an event of TYPE_UNSPECIFIED marking the start of a new
// stream (so a snapshot cut short is never mixed with the next one), a
// snapshot of TYPE_PRESENT events, TYPE_SYNCED, changes (and credentials
// pushed before pods ask, TYPE_CREDENTIALS, see Pushed), and another
// TYPE_UNSPECIFIED when the stream ends (until the next snapshot nothing
// reports pods leaving). Whenever a stream ends, Watch starts another
// after a backoff; the new stream begins with a new snapshot, and only its
// TYPE_SYNCED makes the picture whole again.
func (c *Client) Watch(ctx context.Context, onEvent func(*pb.PodEvent)) error {
	if c.cfg.HostIP == "" {
		return errors.New("serverclient: watch needs the node's address (HostIP)")
	}
	delay := backoffBase
	failing := false
	for {
		synced, err := c.watchOnce(ctx, onEvent)
		if ctx.Err() != nil {
			return nil
		}
		c.reconnects.Inc()
		if synced {
			delay = backoffBase
			failing = false
		}
		if failing {
			c.log.Debug("watch of node pods failed again", "error", err)
		} else {
			c.log.Warn("watch of node pods ended; reconnecting", "error", err)
			failing = true
		}
		t := time.NewTimer(jitter(delay))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(time.Duration(float64(delay)*1.6), backoffMax)
	}
}

// watchOnce follows one stream until it ends and reports whether it got as
// far as TYPE_SYNCED.
func (c *Client) watchOnce(ctx context.Context, onEvent func(*pb.PodEvent)) (synced bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		code := status.Code(err)
		if errors.Is(err, io.EOF) {
			code = codes.OK
		}
		c.requests.WithLabelValues(pb.Credentials_WatchNodePods_FullMethodName, code.String()).Inc()
	}()
	// Wait for ready: a watch has no pod waiting on it, and this way it
	// starts as soon as a server is reachable instead of polling.
	// Pushed credentials are asked for always: a server that does not
	// push ignores the field, and onEvent ignores what it does not know.
	stream, err := c.api.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: c.cfg.HostIP, AcceptCredentials: true}, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	onEvent(&pb.PodEvent{Type: pb.PodEvent_TYPE_UNSPECIFIED})
	// And again when the stream ends: until the next snapshot, nothing
	// reports pods leaving, and the agent must know.
	defer onEvent(&pb.PodEvent{Type: pb.PodEvent_TYPE_UNSPECIFIED})
	for {
		ev, err := stream.Recv()
		if err != nil {
			return synced, err
		}
		if ev.GetType() == pb.PodEvent_TYPE_SYNCED && !synced {
			synced = true
			c.log.Info("watching node pods", "host_ip", c.cfg.HostIP)
		}
		onEvent(ev)
	}
}

// jitter spreads reconnections of the agents on every node, which all lose
// a server at once, by ±backoffJitter.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 + backoffJitter*(2*rand.Float64()-1)))
}
