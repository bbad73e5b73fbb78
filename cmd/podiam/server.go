package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/server/credcache"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/prefetch"
	"github.com/podiam/podiam/pkg/server/ratelimit"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/service"
	"github.com/podiam/podiam/pkg/server/sts"
	"github.com/podiam/podiam/pkg/tlsconfig"
)

// serverConfig is everything `podiam server` is told on its command line.
// Flag names and meanings follow KIAM's server so its manifests run as they
// are; the additions are podiam's own.
type serverConfig struct {
	Log  logFlags
	TLS  tlsFlags
	Bind string

	Kubeconfig string
	Sync       time.Duration

	AssumeRoleARN         string
	RoleBaseARN           string
	RoleBaseARNAutodetect bool
	Region                string
	Session               string
	SessionDuration       time.Duration
	SessionRefresh        time.Duration

	DisableStrictNamespaceRegexp bool
	DisableNodeBinding           bool
	PodWait                      time.Duration

	STSRate         float64
	STSBurst        int
	CacheMaxEntries int
	Prefetch        bool

	PrometheusListenAddr   string
	PrometheusSyncInterval time.Duration

	GRPCKeepaliveTime         time.Duration
	GRPCKeepaliveTimeout      time.Duration
	GRPCMaxConnectionIdle     time.Duration
	GRPCMaxConnectionAge      time.Duration
	GRPCMaxConnectionAgeGrace time.Duration
	DrainTime                 time.Duration

	// customSTSEndpoint is set from the environment, not a flag: sessions
	// shorter than STS's 900 s minimum are allowed only against a local STS.
	customSTSEndpoint bool
}

func (c *serverConfig) register(fs *flag.FlagSet) {
	c.Log.register(fs)
	c.TLS.register(fs)
	fs.StringVar(&c.Bind, "bind", "localhost:9610", "gRPC listen address")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster configuration")
	fs.DurationVar(&c.Sync, "sync", time.Minute, "informer resync period (0 disables)")
	fs.StringVar(&c.AssumeRoleARN, "assume-role-arn", "", "base role the server assumes first and chains from")
	fs.StringVar(&c.RoleBaseARN, "role-base-arn", "", "prefix for role names in pod annotations, e.g. arn:aws:iam::123456789012:role/")
	fs.BoolVar(&c.RoleBaseARNAutodetect, "role-base-arn-autodetect", false, "derive the role base ARN from STS GetCallerIdentity")
	fs.StringVar(&c.Region, "region", "", "AWS region for STS; empty means AWS_REGION, else the global endpoint")
	fs.StringVar(&c.Session, "session", "kiam", "session name suffix when a pod has no iam.amazonaws.com/session-name")
	fs.DurationVar(&c.SessionDuration, "session-duration", time.Hour, "lifetime of target role sessions: 900s to 1h for chained roles (shorter only against a local STS endpoint, for tests)")
	fs.DurationVar(&c.SessionRefresh, "session-refresh", 40*time.Minute, "refresh credentials when this much validity or less remains")
	fs.BoolVar(&c.DisableStrictNamespaceRegexp, "disable-strict-namespace-regexp", false, "match iam.amazonaws.com/permitted unanchored, as KIAM did without strict mode")
	fs.BoolVar(&c.DisableNodeBinding, "disable-node-binding", false, "serve a pod's credentials to agents on any node (only for networks that rewrite source addresses)")
	fs.DurationVar(&c.PodWait, "pod-wait", 900*time.Millisecond, "how long a request for an address not yet known waits for the pod to appear")
	fs.Float64Var(&c.STSRate, "sts-rate", 20, "STS calls per second this replica may make; refreshes go first, then requests, then prefetches")
	fs.IntVar(&c.STSBurst, "sts-burst", 40, "STS call burst")
	fs.IntVar(&c.CacheMaxEntries, "cache-max-entries", credcache.DefaultMaxEntries, "most sessions cached (roles in use are never evicted)")
	fs.BoolVar(&c.Prefetch, "prefetch", true, "fetch a role's credentials when a pod with that role gets its address, before it asks (--no-prefetch: only on request)")
	fs.StringVar(&c.PrometheusListenAddr, "prometheus-listen-addr", "localhost:9620", "metrics listen address (empty disables)")
	fs.DurationVar(&c.PrometheusSyncInterval, "prometheus-sync-interval", 5*time.Second, "accepted for KIAM compatibility; metrics are always current")
	fs.DurationVar(&c.GRPCKeepaliveTime, "grpc-keepalive-time-duration", 10*time.Second, "ping idle agents after this long")
	fs.DurationVar(&c.GRPCKeepaliveTimeout, "grpc-keepalive-timeout-duration", 2*time.Second, "close a connection whose ping is unanswered this long")
	fs.DurationVar(&c.GRPCMaxConnectionIdle, "grpc-max-connection-idle-duration", 0, "close idle connections after this long (0: never)")
	fs.DurationVar(&c.GRPCMaxConnectionAge, "grpc-max-connection-age-duration", 0, "close connections after this long so agents rebalance (0: never)")
	fs.DurationVar(&c.GRPCMaxConnectionAgeGrace, "grpc-max-connection-age-grace-duration", 0, "grace for calls on a connection closed for age (0: forever)")
	fs.DurationVar(&c.DrainTime, "drain-time", 5*time.Second, "on SIGTERM, report NOT_SERVING this long before stopping")
}

// Validate refuses configurations that cannot work, with the reason.
func (c *serverConfig) Validate() error {
	var errs []error
	if err := c.Log.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.validate(); err != nil {
		errs = append(errs, err)
	}
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
	if c.Session == "" {
		errs = append(errs, errors.New("--session must not be empty"))
	}
	minSession := 15 * time.Minute
	if c.customSTSEndpoint {
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
		"--sync": c.Sync, "--grpc-keepalive-time-duration": c.GRPCKeepaliveTime,
		"--grpc-keepalive-timeout-duration": c.GRPCKeepaliveTimeout, "--grpc-max-connection-idle-duration": c.GRPCMaxConnectionIdle,
		"--grpc-max-connection-age-duration": c.GRPCMaxConnectionAge, "--grpc-max-connection-age-grace-duration": c.GRPCMaxConnectionAgeGrace,
		"--drain-time": c.DrainTime, "--prometheus-sync-interval": c.PrometheusSyncInterval,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	return errors.Join(errs...)
}

// minServe is how long credentials must still be valid to be handed out
// while their source is failing: STS for the server, every server for the
// agent.
const minServe = 5 * time.Minute

func runServer(ctx context.Context, cfg serverConfig, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	registerProcessMetrics(reg)

	stsClient, err := sts.New(ctx, sts.Config{
		Region:          cfg.Region,
		BaseRoleARN:     cfg.AssumeRoleARN,
		BaseSessionName: role.SessionName("", cfg.Session),
		SessionDuration: cfg.SessionDuration,
		// One attempt per target call: the credential cache retries, with
		// backoff per role and under --sts-rate, so every attempt is metered.
		AssumeMaxAttempts: 1,
	}, reg, log.With("component", "sts"))
	if err != nil {
		return fmt.Errorf("sts client: %w", err)
	}
	baseARN := cfg.RoleBaseARN
	if cfg.RoleBaseARNAutodetect {
		if baseARN, err = detectBaseARN(ctx, stsClient, log); err != nil {
			return err
		}
	}
	resolver, err := role.NewResolver(baseARN)
	if err != nil {
		return fmt.Errorf("role base ARN: %w", err)
	}

	restCfg, err := kubeConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	// Live pod reads, while the pod watch is down, get their own client so
	// they neither wait behind nor starve the informers' client-side limit.
	liveCfg := rest.CopyConfig(restCfg)
	liveCfg.QPS, liveCfg.Burst = livePodQPS, 2*livePodQPS
	liveClient, err := kubernetes.NewForConfig(liveCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	podWatch, err := podindex.NewWatchTracker(podindex.WatchConfig{}, reg, log.With("component", "podwatch"))
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, cfg.Sync, informers.WithTransform(podindex.Transform))
	podInformer := factory.InformerFor(&corev1.Pod{}, trackedPodInformer(podWatch))
	nsInformer := factory.Core().V1().Namespaces().Informer()
	namespaces := factory.Core().V1().Namespaces().Lister()
	registerInformerMetrics(reg, podInformer, nsInformer)

	checker, err := policy.New(policy.Config{DisableStrictRegexp: cfg.DisableStrictNamespaceRegexp})
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	pods, err := podindex.New(podInformer, podindex.Config{
		ExtraIndexers: cache.Indexers{service.IndexCredKey: service.CredKeyIndexFunc(resolver, cfg.Session)},
		Current:       podWatch.Current,
		Live:          podindex.APIPods{Client: liveClient.CoreV1()},
	}, reg, log.With("component", "podindex"))
	if err != nil {
		return err
	}
	limiter, err := ratelimit.New(ratelimit.Config{Rate: cfg.STSRate, Burst: cfg.STSBurst})
	if err != nil {
		return fmt.Errorf("sts rate limit: %w", err)
	}
	credentials, err := credcache.New(credcache.Config{
		Refresh:    cfg.SessionRefresh,
		MinServe:   min(minServe, cfg.SessionRefresh/2),
		MaxEntries: cfg.CacheMaxEntries,
		InUse:      service.InUse(podInformer.GetIndexer()),
		Limiter:    limiter,
	}, stsClient, reg, log.With("component", "cache"))
	if err != nil {
		return fmt.Errorf("credential cache: %w", err)
	}
	watcher, err := service.NewNodeWatcher(podInformer, nsInformer, log.With("component", "watch"))
	if err != nil {
		return err
	}
	var pf *prefetch.Controller
	if cfg.Prefetch {
		pf, err = prefetch.New(prefetch.Config{DefaultSession: cfg.Session}, prefetch.Deps{
			Pods:       podInformer,
			Namespaces: factory.Core().V1().Namespaces(),
			Keys:       resolver,
			Policy:     checker,
			Cache:      credentials,
			Log:        log.With("component", "prefetch"),
		})
		if err != nil {
			return err
		}
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "podiam-server"})

	svc, err := service.New(service.Config{
		DefaultSession: cfg.Session,
		PodWait:        cfg.PodWait,
		NodeBinding:    !cfg.DisableNodeBinding,
	}, service.Deps{
		Pods:        pods,
		Namespaces:  namespaces,
		Keys:        resolver,
		Policy:      checker,
		Credentials: credentials,
		Events:      recorder,
		Watcher:     watcher,
		Synced:      func() bool { return podInformer.HasSynced() && nsInformer.HasSynced() },
	}, reg, log.With("component", "server"))
	if err != nil {
		return err
	}
	tlsCfg, err := tlsconfig.Server(tlsconfig.Config{Files: tlsconfig.Files{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA}}, log.With("component", "tls"))
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	grpcServer, err := service.NewGRPCServer(service.GRPCConfig{
		TLS:                   tlsCfg,
		KeepaliveTime:         cfg.GRPCKeepaliveTime,
		KeepaliveTimeout:      cfg.GRPCKeepaliveTimeout,
		MaxConnectionIdle:     cfg.GRPCMaxConnectionIdle,
		MaxConnectionAge:      cfg.GRPCMaxConnectionAge,
		MaxConnectionAgeGrace: cfg.GRPCMaxConnectionAgeGrace,
		DrainTime:             cfg.DrainTime,
		StopTimeout:           10 * time.Second,
	}, svc, reg, log.With("component", "grpc"))
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Bind, err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	go func() { errc <- grpcServer.Serve(ctx, lis) }()
	go func() { errc <- serveMetrics(ctx, cfg.PrometheusListenAddr, reg, nil, log) }()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	go func() { _ = credentials.Run(ctx) }()
	if pf != nil {
		go func() { _ = pf.Run(ctx) }()
	}
	go readiness(ctx, grpcServer, stsClient, []cache.InformerSynced{podInformer.HasSynced, nsInformer.HasSynced}, log)

	log.Info("podiam server started", "bind", lis.Addr().String(), "role_base_arn", baseARN, "assume_role_arn", cfg.AssumeRoleARN)
	select {
	case <-ctx.Done():
		// Serve drains on ctx cancel; wait for it to finish.
		return <-errc
	case err := <-errc:
		return err
	}
}

// livePodQPS bounds the server's live pod reads. They happen only while the
// pod watch is down, one or two per credential request; beyond this rate
// requests are answered Unavailable rather than from a stale index.
const livePodQPS = 50

// trackedPodInformer builds the pod informer as the factory would, on a
// ListerWatcher the tracker observes, so the index knows when its watch is
// down, and that lists in pages, so a list never holds every full pod.
func trackedPodInformer(t *podindex.WatchTracker) func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
	return func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		pods := c.CoreV1().Pods(metav1.NamespaceAll)
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return pods.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return pods.Watch(ctx, o)
			},
		}
		return cache.NewSharedIndexInformerWithOptions(t.Wrap(podindex.ListInPages(lw, 0)), &corev1.Pod{}, cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: "pods",
		})
	}
}

// readiness reports SERVING once the informers have synced and the base
// credentials can be obtained, and keeps checking the latter so a server
// that lost its AWS credentials stops attracting agents.
func readiness(ctx context.Context, g *service.GRPCServer, stsClient *sts.Assumer, synced []cache.InformerSynced, log *slog.Logger) {
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	log.Info("informers synced")
	serving := false
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := stsClient.CheckBase(cctx)
		cancel()
		if ok := err == nil; ok != serving {
			serving = ok
			g.SetServing(ok)
			if ok {
				log.Info("serving")
			} else {
				log.Warn("base credentials unavailable; reporting not serving", "error", err)
			}
		} else if err != nil {
			log.Warn("base credentials still unavailable", "error", err)
		}
		delay := 30 * time.Second
		if !serving {
			delay = 2 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// detectBaseARN asks STS who the server is, retrying while STS is
// unreachable, because on EKS the server may start before the network.
func detectBaseARN(ctx context.Context, stsClient *sts.Assumer, log *slog.Logger) (string, error) {
	delay := 500 * time.Millisecond
	for {
		arn, err := stsClient.CallerARN(ctx)
		if err == nil {
			base, err := role.BaseARNFromCaller(arn)
			if err != nil {
				return "", fmt.Errorf("--role-base-arn-autodetect: %w", err)
			}
			log.Info("detected role base ARN", "role_base_arn", base)
			return base, nil
		}
		log.Warn("cannot detect role base ARN yet", "error", err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("--role-base-arn-autodetect: %w", err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

func kubeConfig(path string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes configuration: %w", err)
	}
	cfg.UserAgent = "podiam-server"
	return cfg, nil
}

func getenvSTSCustom() bool { return sts.CustomEndpoint(os.Getenv) }
