package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// GRPCConfig holds KIAM's gRPC server flags. Zero durations mean "never",
// as in KIAM.
type GRPCConfig struct {
	TLS                   *tls.Config
	KeepaliveTime         time.Duration
	KeepaliveTimeout      time.Duration
	MaxConnectionIdle     time.Duration
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// DrainTime is how long the server keeps answering after it reports
	// NOT_SERVING on shutdown, so agents move to other replicas first.
	DrainTime time.Duration
	// StopTimeout bounds the graceful stop after draining.
	StopTimeout time.Duration
	// AgentIdentities, when not empty, are the only client identities
	// that may call the Credentials service: the client certificate's
	// subject common name, a DNS SAN or a URI SAN must equal one. Without
	// it any certificate the CA signed for client auth is an agent. The
	// health service stays open to every certificate the CA signed for
	// client auth, so `podiam health` works with any of them (an agent's,
	// an operator's). The server's own certificate is for server auth
	// only: the TLS handshake refuses it as a client, and the kubelet
	// probes /readyz over plain HTTP instead.
	AgentIdentities []string
}

// GRPCServer is the mutually authenticated gRPC endpoint agents talk to.
type GRPCServer struct {
	cfg    GRPCConfig
	srv    *grpc.Server
	health *health.Server
	log    *slog.Logger
}

// NewGRPCServer builds the server. TLS is mandatory: there is no plaintext
// mode to turn on by mistake.
func NewGRPCServer(cfg GRPCConfig, svc pb.CredentialsServer, reg prometheus.Registerer, log *slog.Logger) (*GRPCServer, error) {
	if cfg.TLS == nil {
		return nil, errors.New("grpc server: TLS configuration is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, id := range cfg.AgentIdentities {
		if id == "" {
			return nil, errors.New("grpc server: an agent identity must not be empty")
		}
	}
	m := newGRPCMetrics()
	if err := m.register(reg); err != nil {
		return nil, err
	}
	agents := agentCheck{identities: slices.Clone(cfg.AgentIdentities), log: log}
	infinity := func(d time.Duration) time.Duration {
		if d <= 0 {
			return time.Duration(1<<63 - 1)
		}
		return d
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(cfg.TLS)),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  infinity(cfg.KeepaliveTime),
			Timeout:               infinity(cfg.KeepaliveTimeout),
			MaxConnectionIdle:     infinity(cfg.MaxConnectionIdle),
			MaxConnectionAge:      infinity(cfg.MaxConnectionAge),
			MaxConnectionAgeGrace: infinity(cfg.MaxConnectionAgeGrace),
		}),
		// KIAM agents ping every 10 s; grpc's default minimum of 5 min
		// would make this server close their connections as abusive.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             5 * time.Second,
			PermitWithoutStream: true,
		}),
		// Every agent holds a connection, and grpc's 32 KiB read buffer
		// on each was most of the server's memory with 500 nodes. The
		// connection is TLS, which buffers a whole record already, so
		// frames are read from that buffer directly instead.
		grpc.ReadBufferSize(0),
		grpc.ChainUnaryInterceptor(m.unary, agents.unary),
		grpc.ChainStreamInterceptor(m.stream, agents.stream),
	)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	pb.RegisterCredentialsServer(srv, svc)
	return &GRPCServer{cfg: cfg, srv: srv, health: hs, log: log}, nil
}

// SetServing reports readiness through the standard health service.
func (g *GRPCServer) SetServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	g.health.SetServingStatus("", st)
	g.health.SetServingStatus(pb.Credentials_ServiceDesc.ServiceName, st)
}

// Serve answers on lis until ctx is done, then reports NOT_SERVING, drains
// and stops gracefully within StopTimeout.
func (g *GRPCServer) Serve(ctx context.Context, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- g.srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpc serve: %w", err)
	case <-ctx.Done():
	}
	g.log.Info("shutting down grpc server", "drain", g.cfg.DrainTime)
	g.health.Shutdown()
	time.Sleep(g.cfg.DrainTime)
	stopped := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(g.cfg.StopTimeout):
		g.log.Warn("graceful stop timed out; closing connections")
		g.srv.Stop()
	}
	return nil
}

// grpcMetrics records calls by method and code; both label sets are
// bounded by the service definition.
type grpcMetrics struct {
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newGRPCMetrics() *grpcMetrics {
	return &grpcMetrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_grpc_server_handled_total",
			Help: "gRPC calls completed by the server, by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podiam_grpc_server_handling_seconds",
			Help:    "Time to answer unary gRPC calls.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
	}
}

func (m *grpcMetrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.handled, m.duration} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register grpc metrics: %w", err)
		}
	}
	return nil
}

func (m *grpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.duration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.handled.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

func (m *grpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	m.handled.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}

// agentCheck admits to the Credentials service only callers whose verified
// client certificate names one of the agent identities. It runs after the
// TLS handshake has verified the chain, so the names are the CA's word.
type agentCheck struct {
	identities []string
	log        *slog.Logger
}

var credentialsMethods = "/" + pb.Credentials_ServiceDesc.ServiceName + "/"

func (a agentCheck) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a agentCheck) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (a agentCheck) check(ctx context.Context, method string) error {
	if len(a.identities) == 0 || !strings.HasPrefix(method, credentialsMethods) {
		return nil
	}
	names := clientNames(ctx)
	for _, n := range names {
		if n != "" && slices.Contains(a.identities, n) {
			return nil
		}
	}
	a.log.Warn("client certificate is not an agent's; refusing", "agent_ip", peerAddr(ctx), "certificate_names", names, "method", method, "decision", "deny")
	return status.Errorf(codes.PermissionDenied, "client certificate (names %q) is not an accepted agent identity", names)
}

// clientNames returns the subject common name, DNS SANs and URI SANs of
// the caller's verified client certificate, nil if there is none.
func clientNames(ctx context.Context) []string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	leaf := info.State.VerifiedChains[0][0]
	names := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
	for _, u := range leaf.URIs {
		names = append(names, u.String())
	}
	return names
}
