package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/server"
	"github.com/podiam/podiam/pkg/server/assumerole"
	"github.com/podiam/podiam/pkg/server/credcache"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/sts"
	"github.com/podiam/podiam/pkg/tlsconfig"
)

// serverConfig is everything `podiam server` is told on its command line:
// the server's Config, bound to flags whose names and meanings follow
// KIAM's server so its manifests run as they are (the additions are
// podiam's own), and what only builds the clients.
type serverConfig struct {
	Log logFlags
	TLS tlsFlags
	server.Config

	Kubeconfig string
	Sync       time.Duration
	Region     string

	// PrometheusSyncInterval is accepted and ignored, for KIAM's
	// manifests.
	PrometheusSyncInterval time.Duration
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
	fs.StringVar(&c.SessionNameTemplate, "session-name-template", "", "session names from pod metadata, e.g. '{{.Namespace}}.{{.ServiceAccount}}' (fields Namespace, ServiceAccount, PodName, PodUID, NodeName, Role); cut with a hash suffix where STS's 64 characters do not suffice; empty: kiam-<iam.amazonaws.com/session-name or --session>")
	fs.DurationVar(&c.SessionDuration, "session-duration", time.Hour, "lifetime of target role sessions: 900s to 1h for chained roles (shorter only against a local STS endpoint, for tests)")
	registerSessionSendFlags(fs, &c.SourceIdentityTemplate, &c.SessionTags, &c.StaticSessionTags)
	fs.BoolVar(&c.ServiceAccountRoles, "service-account-roles", false, "a pod without an iam.amazonaws.com/role annotation of its own takes its ServiceAccount's (the namespace's permitted expression still decides); needs RBAC to list and watch serviceaccounts")
	fs.BoolVar(&c.TransitiveSessionTags, "transitive-session-tags", false, "make the session tags transitive, so they stay on sessions the pod chains into itself")
	fs.DurationVar(&c.SessionRefresh, "session-refresh", 40*time.Minute, "refresh credentials when this much validity or less remains")
	fs.BoolVar(&c.DisableStrictNamespaceRegexp, "disable-strict-namespace-regexp", false, "match iam.amazonaws.com/permitted unanchored, as KIAM did without strict mode")
	fs.StringVar((*string)(&c.ExternalIDFrom), "external-id-from", string(policy.ExternalIDFromPod), "who chooses the External ID of a pod's roles: pod (its iam.amazonaws.com/external-id, as KIAM) or namespace (pods that set one are denied); a namespace's iam.amazonaws.com/external-id applies in both, and a pod naming another is denied")
	fs.BoolVar(&c.DisableNodeBinding, "disable-node-binding", false, "serve a pod's credentials to agents on any node (only for networks that rewrite source addresses)")
	fs.DurationVar(&c.PodWait, "pod-wait", 900*time.Millisecond, "how long a request for an address not yet known waits for the pod to appear")
	fs.Float64Var(&c.STSRate, "sts-rate", 20, "STS calls per second this replica may make; refreshes go first, then requests, then prefetches")
	fs.IntVar(&c.STSBurst, "sts-burst", 40, "STS call burst")
	fs.IntVar(&c.CacheMaxEntries, "cache-max-entries", credcache.DefaultMaxEntries, "most sessions cached (roles in use are never evicted)")
	fs.BoolVar(&c.Prefetch, "prefetch", true, "fetch a role's credentials when a pod with that role gets its address, before it asks (--no-prefetch: only on request)")
	fs.BoolVar(&c.PushCredentials, "push-credentials", true, "send a pod's credentials to its node's agent when the pod gets its address, decided as its request would be, so its first request is answered on the node (agents that do not ask for them get none)")
	fs.StringVar(&c.PrometheusListenAddr, "prometheus-listen-addr", "localhost:9620", "listen address of /metrics and the plain-HTTP probes /readyz (serving) and /healthz (alive); empty disables all three")
	fs.BoolVar(&c.Profiling, "profiling", false, "also serve Go's runtime profiles (/debug/pprof/: heap, goroutines, CPU) on --prometheus-listen-addr, unauthenticated: for diagnosis only")
	fs.DurationVar(&c.PrometheusSyncInterval, "prometheus-sync-interval", 5*time.Second, "accepted for KIAM compatibility; metrics are always current")
	fs.DurationVar(&c.GRPCKeepaliveTime, "grpc-keepalive-time-duration", 10*time.Second, "ping idle agents after this long")
	fs.DurationVar(&c.GRPCKeepaliveTimeout, "grpc-keepalive-timeout-duration", 2*time.Second, "close a connection whose ping is unanswered this long")
	fs.DurationVar(&c.GRPCMaxConnectionIdle, "grpc-max-connection-idle-duration", 0, "close idle connections after this long (0: never)")
	fs.DurationVar(&c.GRPCMaxConnectionAge, "grpc-max-connection-age-duration", 0, "close connections after this long so agents rebalance (0: never)")
	fs.DurationVar(&c.GRPCMaxConnectionAgeGrace, "grpc-max-connection-age-grace-duration", 0, "grace for calls on a connection closed for age (0: forever)")
	fs.DurationVar(&c.DrainTime, "drain-time", 5*time.Second, "on SIGTERM, report NOT_SERVING this long before stopping")
	fs.BoolVar(&c.AssumeRoleSecrets, "assume-role-secrets", false, "run the AWSAssumeRole controller, which keeps Secrets with role credentials (needs the CRD and the RBAC in deploy/manifests/assumerole-rbac.yaml)")
	fs.Func("agent-identity", "accept as agents only client certificates naming this identity (common name, DNS or URI SAN); repeatable; unset: any certificate the CA signed", func(v string) error {
		if strings.TrimSpace(v) == "" {
			return errors.New("must not be empty")
		}
		c.AgentIdentities = append(c.AgentIdentities, v)
		return nil
	})
}

// registerSessionSendFlags registers the server's flags that make it send
// STS more than sts:AssumeRole needs: a SourceIdentity and session tags.
// podiam iam-policy takes them too, with the same names and meanings, so
// that the policies it prints allow what the server sends.
func registerSessionSendFlags(fs *flag.FlagSet, sourceIdentityTemplate *string, podTags, staticTags *[]string) {
	fs.StringVar(sourceIdentityTemplate, "source-identity-template", "", "SourceIdentity set on each pod role's AssumeRole, from the fields of --session-name-template, e.g. '{{.Namespace}}.{{.ServiceAccount}}'; recorded in CloudTrail and kept through further role chaining (the role's trust policy must allow sts:SetSourceIdentity); empty: none")
	fs.Func("session-tags", "pod metadata sent as STS session tags, comma-separated, under the EKS Pod Identity keys: namespace (kubernetes-namespace), serviceaccount (kubernetes-service-account), pod (kubernetes-pod-name), pod-uid (kubernetes-pod-uid); the roles' trust policies must allow sts:TagSession", func(v string) error {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				*podTags = append(*podTags, name)
			}
		}
		return nil
	})
	fs.Func("static-session-tag", "KEY=VALUE session tag on every pod role session, e.g. eks-cluster-name=prod; repeatable", func(v string) error {
		*staticTags = append(*staticTags, v)
		return nil
	})
}

// Validate refuses configurations that cannot work, with the reason.
func (c *serverConfig) Validate() error {
	errs := []error{c.Log.validate(), c.TLS.validate(), c.Config.Validate()}
	for name, d := range map[string]time.Duration{"--sync": c.Sync, "--prometheus-sync-interval": c.PrometheusSyncInterval} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	return errors.Join(errs...)
}

// livePodQPS bounds the server's live pod reads. They happen only while the
// pod watch is down, one or two per credential request; beyond this rate
// requests are answered Unavailable rather than from a stale index.
const livePodQPS = 50

// runServer builds the server's clients, the server, starts the informers
// and runs it.
func runServer(ctx context.Context, cfg serverConfig, log *slog.Logger) error {
	reg := newRegistry()
	stsClient, err := sts.New(ctx, cfg.sts(), reg, log.With("component", "sts"))
	if err != nil {
		return fmt.Errorf("sts client: %w", err)
	}
	restCfg, err := kubeConfig(cfg.Kubeconfig, "podiam-server")
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
	tlsCfg, err := tlsconfig.Server(tlsconfig.Config{Files: tlsconfig.Files{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA}}, log.With("component", "tls"))
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, cfg.Sync)
	var starters []informerFactory
	var assumeRoles *server.AssumeRoleDeps
	if cfg.AssumeRoleSecrets {
		var fs []informerFactory
		assumeRoles, fs, err = assumeRoleDeps(ctx, restCfg, client, cfg.Sync)
		if err != nil {
			return err
		}
		starters = append(starters, fs...)
	}
	srv, err := server.New(ctx, cfg.Config, server.Deps{
		Kubernetes:     client,
		Informers:      factory,
		LivePods:       podindex.APIPods{Client: liveClient.CoreV1()},
		LiveNamespaces: podindex.APINamespaces{Client: liveClient.CoreV1()},
		STS:            stsClient,
		TLS:            tlsCfg,
		Registry:       reg,
		Log:            log,
		AssumeRoles:    assumeRoles,
	})
	if err != nil {
		return err
	}
	// The informers stop with ctx, which must be cancelled before Shutdown
	// can return: Shutdown waits for them.
	ctx, cancel := context.WithCancel(ctx)
	defer factory.Shutdown()
	for _, f := range starters {
		defer f.Shutdown()
	}
	defer cancel()
	factory.Start(ctx.Done())
	for _, f := range starters {
		f.Start(ctx.Done())
	}
	return srv.Run(ctx)
}

// informerFactory is what runServer does with an informer factory.
type informerFactory interface {
	Start(stop <-chan struct{})
	Shutdown()
}

// assumeRoleDeps builds the AWSAssumeRole controller's informers and
// clients: a dynamic informer for the objects (no generated clientset), a
// Secret informer that sees only the Secrets the controller writes (the
// server must not cache every Secret of the cluster), and an ECR client on
// the SDK's standard configuration. The factories are returned to be
// started after server.New and shut down at the end.
func assumeRoleDeps(ctx context.Context, restCfg *rest.Config, client kubernetes.Interface, resync time.Duration) (*server.AssumeRoleDeps, []informerFactory, error) {
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("dynamic client: %w", err)
	}
	objects := dynamicinformer.NewDynamicSharedInformerFactory(dyn, resync)
	secrets := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = assumerole.ManagedSelector }))
	awsCfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("aws config for ecr: %w", err)
	}
	deps := &server.AssumeRoleDeps{
		Objects: objects.ForResource(v1alpha1.GroupVersionResource).Informer(),
		Secrets: secrets.Core().V1().Secrets().Informer(),
		Dynamic: dyn,
		ECR:     assumerole.NewECRClient(awsCfg),
	}
	return deps, []informerFactory{objects, secrets}, nil
}

// sts is the STS client's configuration these flags make; podiam check
// builds the same client, so its hops are the server's.
func (c *serverConfig) sts() sts.Config {
	return sts.Config{
		Region:          c.Region,
		BaseRoleARN:     c.AssumeRoleARN,
		BaseSessionName: role.SessionName("", c.Session),
		SessionDuration: c.SessionDuration,
		TransitiveTags:  c.TransitiveSessionTags,
		// One attempt per target call: the credential cache retries, with
		// backoff per role and under --sts-rate, so every attempt is metered.
		AssumeMaxAttempts: 1,
	}
}

func kubeConfig(path, userAgent string) (*rest.Config, error) {
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
	cfg.UserAgent = userAgent
	// Typed clients read and write protobuf: decoding every pod of a large
	// cluster from JSON at start-up costs the server and the API server
	// several times the CPU. The dynamic client (custom resources, which
	// have no protobuf form) sets JSON on its own copy.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return cfg, nil
}

func getenvSTSCustom() bool { return sts.CustomEndpoint(os.Getenv) }
