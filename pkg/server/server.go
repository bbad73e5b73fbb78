// Package server is `podiam server`, the control plane agents ask for
// credentials over mutual TLS. A request goes pod identity (podindex), role
// (role), namespace policy (policy), credential cache (credcache) and STS
// (sts); service answers it over gRPC and streams each node's pods to its
// agent; prefetch warms the cache before pods ask. With
// --assume-role-secrets, assumerole keeps Secrets with the credentials of
// AWSAssumeRole objects, through the same policy and cache.
//
// New wires those parts from a Config and the clients the command builds
// (Kubernetes clientset and informer factory, STS, TLS, metrics registry,
// logger), in the style of kubernetes/sample-controller: the command
// creates the informers, New registers what it needs on them, the command
// starts them, and Run waits for them to sync. Run runs every part under
// one supervisor, so that a part that fails or stops ends the server
// instead of leaving it half alive.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/metricsserver"
	"github.com/podiam/podiam/pkg/server/assumerole"
	"github.com/podiam/podiam/pkg/server/credcache"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/prefetch"
	"github.com/podiam/podiam/pkg/server/ratelimit"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/service"
	"github.com/podiam/podiam/pkg/server/session"
	"github.com/podiam/podiam/pkg/supervise"
)

// Config is what `podiam server` is told on its command line, less what
// only builds its clients (kubeconfig, resync period, region). Its fields
// are the flags of the same names, and Validate's messages name the flags,
// because a person reading them wrote flags, not fields.
type Config struct {
	// Bind is --bind, the gRPC listen address.
	Bind string

	// AssumeRoleARN is --assume-role-arn, the base role the STS client
	// chains from. The command gives it to the STS client; it is here to
	// be validated and logged.
	AssumeRoleARN string
	// RoleBaseARN (--role-base-arn) prefixes role names in annotations;
	// RoleBaseARNAutodetect (--role-base-arn-autodetect) asks STS instead.
	RoleBaseARN           string
	RoleBaseARNAutodetect bool
	// Session is --session, the session name suffix for pods without an
	// iam.amazonaws.com/session-name annotation.
	Session string
	// SessionNameTemplate is --session-name-template: session names from
	// pod metadata instead of KIAM's (session.Config).
	SessionNameTemplate string
	// SourceIdentityTemplate is --source-identity-template: the
	// SourceIdentity set on every target AssumeRole.
	SourceIdentityTemplate string
	// SessionTags (--session-tags) names the pod metadata sent as session
	// tags under EKS Pod Identity's keys; StaticSessionTags
	// (--static-session-tag) are KEY=VALUE tags for every session, and
	// TransitiveSessionTags (--transitive-session-tags) makes them all
	// transitive, which the command gives the STS client.
	SessionTags           []string
	StaticSessionTags     []string
	TransitiveSessionTags bool
	// ServiceAccountRoles is --service-account-roles: a pod without a role
	// annotation of its own takes its ServiceAccount's.
	ServiceAccountRoles bool
	// SessionDuration (--session-duration) is the lifetime of target role
	// sessions, which the STS client requests; SessionRefresh
	// (--session-refresh) is how much of it may be left before the cache
	// renews them.
	SessionDuration time.Duration
	SessionRefresh  time.Duration
	// CustomSTSEndpoint comes from the environment, not a flag: sessions
	// shorter than STS's 900 s minimum are allowed only against a local
	// STS.
	CustomSTSEndpoint bool

	// DisableStrictNamespaceRegexp is --disable-strict-namespace-regexp.
	DisableStrictNamespaceRegexp bool
	// ExternalIDFrom is --external-id-from: who chooses the External ID
	// of the roles a pod assumes ("" means policy.ExternalIDFromPod). A
	// namespace's iam.amazonaws.com/external-id applies in either mode.
	ExternalIDFrom policy.ExternalIDFrom
	// DisableNodeBinding is --disable-node-binding.
	DisableNodeBinding bool
	// PodWait is --pod-wait: how long a request for an unknown address
	// waits for its pod.
	PodWait time.Duration

	// STSRate and STSBurst (--sts-rate, --sts-burst) meter STS calls.
	STSRate  float64
	STSBurst int
	// CacheMaxEntries is --cache-max-entries.
	CacheMaxEntries int
	// Prefetch is --prefetch.
	Prefetch bool
	// PushCredentials is --push-credentials: a pod's credentials go to
	// its node's agent before the pod asks.
	PushCredentials bool

	// PrometheusListenAddr (--prometheus-listen-addr) serves metrics and
	// the plain-HTTP probes /readyz and /healthz; empty disables them all.
	PrometheusListenAddr string
	// Profiling (--profiling) adds Go's /debug/pprof/ handlers to that
	// listener. They are unauthenticated and a heap profile names what
	// the server holds, so they are off unless someone diagnosing asks.
	Profiling bool

	// The gRPC server's --grpc-* flags, and --drain-time.
	GRPCKeepaliveTime         time.Duration
	GRPCKeepaliveTimeout      time.Duration
	GRPCMaxConnectionIdle     time.Duration
	GRPCMaxConnectionAge      time.Duration
	GRPCMaxConnectionAgeGrace time.Duration
	DrainTime                 time.Duration
	// AgentIdentities (--agent-identity, repeatable): when set, only client
	// certificates naming one of them (common name, DNS or URI SAN) may
	// call the Credentials service.
	AgentIdentities []string

	// AssumeRoleSecrets is --assume-role-secrets: run the AWSAssumeRole
	// controller, which writes credentials into Secrets. Off by default
	// because it needs the AWSAssumeRole CRD and write access to Secrets,
	// which a server that only serves pods should not have.
	AssumeRoleSecrets bool
}

// Validate refuses configurations that cannot work, with the reason.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Bind); err != nil {
		errs = append(errs, fmt.Errorf("--bind: %w", err))
	}
	if c.RoleBaseARN != "" && c.RoleBaseARNAutodetect {
		errs = append(errs, errors.New("--role-base-arn and --role-base-arn-autodetect are exclusive"))
	}
	if c.RoleBaseARN != "" {
		if _, err := role.NewResolver(c.RoleBaseARN); err != nil {
			errs = append(errs, fmt.Errorf("--role-base-arn: %w", err))
		}
	}
	if c.AssumeRoleARN != "" {
		if _, err := (&role.Resolver{}).Resolve(c.AssumeRoleARN); err != nil || !strings.HasPrefix(c.AssumeRoleARN, "arn:") {
			errs = append(errs, fmt.Errorf("--assume-role-arn must be a full role ARN: %q", c.AssumeRoleARN))
		}
	}
	if c.ExternalIDFrom != "" {
		if _, err := policy.ParseExternalIDFrom(string(c.ExternalIDFrom)); err != nil {
			errs = append(errs, fmt.Errorf("--external-id-from: %w", err))
		}
	}
	if c.Profiling && c.PrometheusListenAddr == "" {
		errs = append(errs, errors.New("--profiling needs --prometheus-listen-addr, whose listener it shares"))
	}
	if c.Session == "" {
		errs = append(errs, errors.New("--session must not be empty"))
	}
	if err := c.SessionConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.TransitiveSessionTags && len(c.SessionTags)+len(c.StaticSessionTags) == 0 {
		errs = append(errs, errors.New("--transitive-session-tags needs --session-tags or --static-session-tag"))
	}
	minSession := 15 * time.Minute
	if c.CustomSTSEndpoint {
		minSession = 10 * time.Second
	}
	switch {
	case c.SessionDuration < minSession:
		errs = append(errs, fmt.Errorf("--session-duration %s is below STS's minimum of %s", c.SessionDuration, minSession))
	case c.SessionDuration > 12*time.Hour:
		errs = append(errs, fmt.Errorf("--session-duration %s is above STS's maximum of 12h", c.SessionDuration))
	}
	if c.SessionRefresh <= 0 || c.SessionRefresh >= c.SessionDuration {
		errs = append(errs, fmt.Errorf("--session-refresh %s must be positive and shorter than --session-duration %s", c.SessionRefresh, c.SessionDuration))
	}
	if c.PodWait <= 0 || c.PodWait > 30*time.Second {
		errs = append(errs, fmt.Errorf("--pod-wait %s must be between 0 and 30s", c.PodWait))
	}
	if c.STSRate <= 0 || c.STSBurst < 1 {
		errs = append(errs, errors.New("--sts-rate must be positive and --sts-burst at least 1"))
	}
	if c.CacheMaxEntries < 1 {
		errs = append(errs, errors.New("--cache-max-entries must be at least 1"))
	}
	for name, d := range map[string]time.Duration{
		"--grpc-keepalive-time-duration": c.GRPCKeepaliveTime, "--grpc-keepalive-timeout-duration": c.GRPCKeepaliveTimeout,
		"--grpc-max-connection-idle-duration": c.GRPCMaxConnectionIdle, "--grpc-max-connection-age-duration": c.GRPCMaxConnectionAge,
		"--grpc-max-connection-age-grace-duration": c.GRPCMaxConnectionAgeGrace, "--drain-time": c.DrainTime,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	return errors.Join(errs...)
}

// Policy is the namespace policy's configuration these flags make. podiam
// check builds its policy from it too, so that it decides as the server.
func (c Config) Policy() policy.Config {
	return policy.Config{DisableStrictRegexp: c.DisableStrictNamespaceRegexp, ExternalIDFrom: c.ExternalIDFrom}
}

// SessionConfig is what the flags say about the STS session parameters.
// podiam check builds its session keys from it too, so that it sends STS
// what the server sends.
func (c Config) SessionConfig() session.Config {
	return session.Config{
		DefaultSession:         c.Session,
		NameTemplate:           c.SessionNameTemplate,
		SourceIdentityTemplate: c.SourceIdentityTemplate,
		PodTags:                c.SessionTags,
		StaticTags:             c.StaticSessionTags,
	}
}

// STS is what the server needs of its STS client (*sts.Assumer): target
// roles for the credential cache, the caller's identity for
// --role-base-arn-autodetect, and a check of the base credentials for
// readiness.
type STS interface {
	credcache.Assumer
	CallerARN(ctx context.Context) (string, error)
	CheckBase(ctx context.Context) error
}

// Deps are the clients the command builds for the server.
type Deps struct {
	// Kubernetes is the clientset Events are written with.
	Kubernetes kubernetes.Interface
	// Informers is the factory the pod and namespace informers are taken
	// from. New registers them; the caller starts the factory after New
	// and shuts it down after Run.
	Informers informers.SharedInformerFactory
	// LivePods reads pods from the API server while the pod watch is
	// down (podindex.APIPods), on a client of its own so that those reads
	// neither wait behind nor starve the informers' client-side limit.
	LivePods podindex.LivePods
	// LiveNamespaces reads namespaces from the API server while the
	// namespace watch is down (podindex.APINamespaces), on the same
	// client as LivePods.
	LiveNamespaces podindex.LiveNamespaces
	// STS assumes the target roles.
	STS STS
	// TLS is the mutual TLS server configuration (pkg/tlsconfig.Server).
	TLS *tls.Config
	// Registry receives every metric of the server and is what its
	// metrics endpoint serves.
	Registry *prometheus.Registry
	Log      *slog.Logger
	// AssumeRoles is required with --assume-role-secrets and unused
	// otherwise.
	AssumeRoles *AssumeRoleDeps
}

// AssumeRoleDeps are what the command builds for the AWSAssumeRole
// controller: informers it starts after New (objects from a dynamic
// informer, Secrets selected by assumerole.ManagedSelector), the dynamic
// client for status, and the ECR client.
type AssumeRoleDeps struct {
	Objects cache.SharedIndexInformer
	Secrets cache.SharedIndexInformer
	Dynamic dynamic.Interface
	ECR     assumerole.ECRTokens
}

// minServe is how long credentials must still be valid to be handed out
// while STS is failing.
const minServe = 5 * time.Minute

// stopTimeout bounds the gRPC server's graceful stop after draining.
const stopTimeout = 10 * time.Second

// Server is a wired server; Run runs it.
type Server struct {
	cfg         Config
	log         *slog.Logger
	reg         *prometheus.Registry
	kube        kubernetes.Interface
	sts         STS
	baseARN     string
	grpc        *service.GRPCServer
	svc         *service.Service
	credentials *credcache.Cache
	namespaces  *podindex.Namespaces
	prefetch    *prefetch.Controller   // nil with --no-prefetch
	assumeRoles *assumerole.Controller // nil without --assume-role-secrets
	broadcaster record.EventBroadcaster
	synced      []cache.InformerSynced
	ready       readinessTiming
	// state is the readiness decision, served by the gRPC health service
	// and /readyz.
	state *readyState
}

// New checks cfg and builds the server: it finds the role base ARN (asking
// STS, and waiting for it, with --role-base-arn-autodetect), registers the
// pod and namespace informers on deps.Informers with their indexes and
// handlers, and builds the credential cache, the prefetch controller, the
// gRPC service and server. It starts nothing; Run does. Run must be called
// once, as it releases what New built.
func New(ctx context.Context, cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server configuration: %w", err)
	}
	if deps.Kubernetes == nil || deps.Informers == nil || deps.LivePods == nil || deps.LiveNamespaces == nil || deps.STS == nil ||
		deps.TLS == nil || deps.Registry == nil || deps.Log == nil {
		return nil, errors.New("server: every dependency is required")
	}
	if cfg.AssumeRoleSecrets && (deps.AssumeRoles == nil || deps.AssumeRoles.Objects == nil ||
		deps.AssumeRoles.Secrets == nil || deps.AssumeRoles.Dynamic == nil) {
		return nil, errors.New("server: --assume-role-secrets needs the AWSAssumeRole informers and clients")
	}
	log, reg := deps.Log, deps.Registry
	s := &Server{cfg: cfg, log: log, reg: reg, kube: deps.Kubernetes, sts: deps.STS, ready: readinessTiming{serving: readyServingPeriod, failing: readyFailingPeriod, timeout: readyCheckTimeout}}

	s.baseARN = cfg.RoleBaseARN
	if cfg.RoleBaseARNAutodetect {
		var err error
		if s.baseARN, err = detectBaseARN(ctx, deps.STS, log); err != nil {
			return nil, err
		}
	}
	resolver, err := role.NewResolver(s.baseARN)
	if err != nil {
		return nil, fmt.Errorf("role base ARN: %w", err)
	}

	podWatch, err := podindex.NewWatchTracker(podindex.WatchConfig{}, reg, log.With("component", "podwatch"))
	if err != nil {
		return nil, err
	}
	podInformer := deps.Informers.InformerFor(&corev1.Pod{}, trackedPodInformer(podWatch))
	// The namespace watch is tracked too: after an API server restart or
	// a cut, client-go's backoff may keep it away for tens of seconds
	// after the pod watch is back, and a policy changed meanwhile must
	// not be decided on the old annotations. Registered before the typed
	// informer is asked for, which then is this one.
	nsWatch, err := podindex.NewWatchTracker(podindex.WatchConfig{Resource: "namespace"}, reg, log.With("component", "namespacewatch"))
	if err != nil {
		return nil, err
	}
	nsInformer := deps.Informers.InformerFor(&corev1.Namespace{}, trackedNamespaceInformer(nsWatch))
	namespaces := deps.Informers.Core().V1().Namespaces()
	if namespaces.Informer() != nsInformer {
		return nil, errors.New("server: the informer factory already had a namespace informer")
	}
	// Namespaces are slimmed as pods are (podindex.New sets the pod
	// informer's), whatever transform the factory was built with.
	if err := nsInformer.SetTransform(podindex.Transform); err != nil {
		return nil, fmt.Errorf("set namespace transform: %w", err)
	}
	s.synced = []cache.InformerSynced{podInformer.HasSynced, nsInformer.HasSynced}
	if err := registerInformerMetrics(reg, podInformer, nsInformer); err != nil {
		return nil, err
	}
	// ServiceAccounts are watched only when their roles count: the
	// permission to list them is one KIAM's RBAC never granted.
	var saInformer cache.SharedIndexInformer
	sessionDeps := session.Deps{Roles: resolver}
	if cfg.ServiceAccountRoles {
		sas := deps.Informers.Core().V1().ServiceAccounts()
		saInformer = sas.Informer()
		if err := saInformer.SetTransform(podindex.Transform); err != nil {
			return nil, fmt.Errorf("set serviceaccount transform: %w", err)
		}
		if err := saInformer.AddIndexers(cache.Indexers{indexSARole: saRoleIndexFunc(resolver)}); err != nil {
			return nil, fmt.Errorf("add serviceaccount indexers: %w", err)
		}
		s.synced = append(s.synced, saInformer.HasSynced)
		sessionDeps.ServiceAccounts = serviceAccountRoles{lister: sas.Lister()}
	}
	keys, err := session.New(cfg.SessionConfig(), sessionDeps)
	if err != nil {
		return nil, err
	}

	checker, err := policy.New(cfg.Policy())
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	pods, err := podindex.New(podInformer, podindex.Config{
		ExtraIndexers: cache.Indexers{indexCredKey: credKeyIndexFunc(keys)},
		Current:       podWatch.Current,
		Live:          deps.LivePods,
	}, reg, log.With("component", "podindex"))
	if err != nil {
		return nil, err
	}
	limiter, err := ratelimit.New(ratelimit.Config{Rate: cfg.STSRate, Burst: cfg.STSBurst})
	if err != nil {
		return nil, fmt.Errorf("sts rate limit: %w", err)
	}
	// Keys AWSAssumeRole objects use count as in use like pods' keys, so
	// the cache refreshes them ahead of expiry whether or not a pod does.
	objectKeys := assumerole.NewInUse()
	podsUse := inUse(podInformer.GetIndexer(), keys, namespaces.Lister(), checker, saIndexer(saInformer))
	s.credentials, err = credcache.New(credcache.Config{
		Refresh:    cfg.SessionRefresh,
		MinServe:   min(minServe, cfg.SessionRefresh/2),
		MaxEntries: cfg.CacheMaxEntries,
		InUse:      func(k creds.Key) bool { return podsUse(k) || objectKeys.Has(k) },
		Limiter:    limiter,
	}, deps.STS, reg, log.With("component", "cache"))
	if err != nil {
		return nil, fmt.Errorf("credential cache: %w", err)
	}
	watcher, err := service.NewNodeWatcher(podInformer, nsInformer, log.With("component", "watch"))
	if err != nil {
		return nil, err
	}
	if saInformer != nil {
		if err := watcher.WatchServiceAccounts(saInformer); err != nil {
			return nil, err
		}
	}
	// Decisions that hand out credentials read namespaces through this;
	// the credential cache's "in use" keeps the lister, as an API server
	// outage must not make every key look unused. While the namespace
	// watch is behind, its Run tells agents of policy changes it reads
	// from the API server.
	currentNamespaces, err := podindex.NewNamespaces(podindex.NamespacesConfig{
		Cached:  namespaces.Lister(),
		Current: nsWatch.Current,
		Live:    deps.LiveNamespaces,
		Changed: watcher.NamespaceChanged,
	}, reg, log.With("component", "namespaces"))
	if err != nil {
		return nil, err
	}
	s.namespaces = currentNamespaces
	if cfg.Prefetch {
		s.prefetch, err = prefetch.New(prefetch.Config{ServiceAccountRoles: cfg.ServiceAccountRoles}, prefetch.Deps{
			Pods:       podInformer,
			Namespaces: namespaces,
			Current:    currentNamespaces,
			Keys:       keys,
			Policy:     checker,
			Cache:      s.credentials,
			Log:        log.With("component", "prefetch"),
		})
		if err != nil {
			return nil, err
		}
	}

	s.broadcaster = record.NewBroadcaster(record.WithContext(ctx))
	ok := false
	defer func() {
		if !ok {
			s.broadcaster.Shutdown()
		}
	}()
	events := s.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "podiam-server"})
	if cfg.AssumeRoleSecrets {
		s.assumeRoles, err = assumerole.New(assumerole.Config{
			DefaultSession: cfg.Session,
			Refresh:        cfg.SessionRefresh,
		}, assumerole.Deps{
			Objects:    deps.AssumeRoles.Objects,
			Secrets:    deps.AssumeRoles.Secrets,
			Namespaces: namespaces,
			Current:    currentNamespaces,
			SecretAPI:  deps.Kubernetes.CoreV1(),
			Status:     assumerole.DynamicStatus{Client: deps.AssumeRoles.Dynamic},
			Roles:      resolver,
			Policy:     checker,
			Cache:      s.credentials,
			ECR:        deps.AssumeRoles.ECR,
			InUse:      objectKeys,
			Events:     events,
			Registry:   reg,
			Log:        log.With("component", "assumerole"),
		})
		if err != nil {
			return nil, err
		}
	}
	svc, err := service.New(service.Config{
		PodWait:      cfg.PodWait,
		NodeBinding:  !cfg.DisableNodeBinding,
		Push:         cfg.PushCredentials,
		PushPrefetch: cfg.Prefetch,
	}, service.Deps{
		Pods:        pods,
		Namespaces:  currentNamespaces,
		Keys:        keys,
		Policy:      checker,
		Credentials: s.credentials,
		Events:      events,
		Watcher:     watcher,
		Push:        s.credentials,
		Synced:      allSynced(s.synced),
	}, reg, log.With("component", "server"))
	if err != nil {
		return nil, err
	}
	s.svc = svc
	s.grpc, err = service.NewGRPCServer(service.GRPCConfig{
		TLS:                   deps.TLS,
		KeepaliveTime:         cfg.GRPCKeepaliveTime,
		KeepaliveTimeout:      cfg.GRPCKeepaliveTimeout,
		MaxConnectionIdle:     cfg.GRPCMaxConnectionIdle,
		MaxConnectionAge:      cfg.GRPCMaxConnectionAge,
		MaxConnectionAgeGrace: cfg.GRPCMaxConnectionAgeGrace,
		DrainTime:             cfg.DrainTime,
		StopTimeout:           stopTimeout,
		AgentIdentities:       cfg.AgentIdentities,
	}, svc, reg, log.With("component", "grpc"))
	if err != nil {
		return nil, err
	}
	s.state = newReadyState(s.grpc.SetServing)
	ok = true
	return s, nil
}

// Run listens on Bind and runs every part of the server until ctx is done
// or one of them fails or stops: the gRPC server (which, when ctx ends,
// reports NOT_SERVING, drains for DrainTime and stops gracefully), the
// metrics server (which also answers /readyz and /healthz), the
// credential cache's refresh loop, the prefetch controller and the
// readiness loop. It returns the first failure, or nil when ctx ended,
// once every part has returned. The informers must have been started; Run
// waits for them to sync before it reports SERVING.
func (s *Server) Run(ctx context.Context) error {
	return s.run(ctx, nil)
}

// run is Run with extra parts, which tests add.
func (s *Server) run(ctx context.Context, extra []supervise.Part) error {
	defer s.broadcaster.Shutdown()
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", s.cfg.Bind)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Bind, err)
	}
	s.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.kube.CoreV1().Events("")})

	parts := []supervise.Part{
		{Name: "grpc server", Run: func(ctx context.Context) error { return s.grpc.Serve(ctx, lis) }},
		{Name: "credential cache", Run: s.credentials.Run},
		{Name: "namespace recheck", Run: s.namespaces.Run},
		{Name: "readiness", Run: func(ctx context.Context) error {
			return readiness(ctx, s.ready, s.state.set, s.sts.CheckBase, s.synced, s.log)
		}},
	}
	if s.cfg.PrometheusListenAddr != "" {
		// The probes share the metrics listener: plain HTTP, so the
		// kubelet needs no client certificate and the server's own
		// certificate can be for server auth only.
		probes := map[string]http.Handler{
			"GET /readyz":  s.state,
			"GET /healthz": http.HandlerFunc(healthz),
		}
		if s.cfg.Profiling {
			maps.Copy(probes, profilingHandlers())
		}
		parts = append(parts, supervise.Part{Name: "metrics server", Run: func(ctx context.Context) error {
			return metricsserver.Serve(ctx, metricsserver.ListenTCP, s.cfg.PrometheusListenAddr, s.reg, probes, s.log)
		}})
	}
	if s.prefetch != nil {
		parts = append(parts, supervise.Part{Name: "prefetch", Run: s.prefetch.Run})
	}
	if s.cfg.PushCredentials {
		parts = append(parts, supervise.Part{Name: "credential push", Run: s.svc.RunPushes})
	}
	if s.assumeRoles != nil {
		parts = append(parts, supervise.Part{Name: "awsassumerole controller", Run: s.assumeRoles.Run})
	}
	parts = append(parts, extra...)
	s.log.Info("podiam server started", "bind", lis.Addr().String(), "role_base_arn", s.baseARN, "assume_role_arn", s.cfg.AssumeRoleARN,
		"external_id_from", string(s.cfg.ExternalIDFrom))
	return supervise.Run(ctx, parts...)
}

// allSynced reports whether every informer has synced.
func allSynced(synced []cache.InformerSynced) func() bool {
	return func() bool {
		for _, f := range synced {
			if !f() {
				return false
			}
		}
		return true
	}
}

// saIndexer is the ServiceAccount informer's indexer, nil without one.
func saIndexer(inf cache.SharedIndexInformer) cache.Indexer {
	if inf == nil {
		return nil
	}
	return inf.GetIndexer()
}
