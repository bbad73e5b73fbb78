package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/podiam/podiam/pkg/agent/cache"
	"github.com/podiam/podiam/pkg/agent/imds"
	"github.com/podiam/podiam/pkg/agent/iptables"
	"github.com/podiam/podiam/pkg/agent/sandbox"
	"github.com/podiam/podiam/pkg/agent/serverclient"
	"github.com/podiam/podiam/pkg/creds"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// agentConfig is `podiam agent`. Flag names and meanings follow KIAM's
// agent; the additions are podiam's own.
type agentConfig struct {
	Log logFlags
	TLS tlsFlags

	Port          int
	Host          string
	Host6         string
	HostInterface string

	IPTables              bool
	IPTablesRemove        bool
	IPTablesCheckInterval time.Duration

	ServerAddress          string
	GatewayTimeoutCreation time.Duration
	GRPCKeepaliveTime      time.Duration
	GRPCKeepaliveTimeout   time.Duration

	AllowRouteRegexp   string
	MetadataEndpoint   string
	RequireIMDSv2      bool
	MaxRequestsPerIP   int
	CredentialRefresh  time.Duration
	CredentialMinServe time.Duration
	TCPMigrateReq      bool

	PrometheusListenAddr   string
	PrometheusSyncInterval time.Duration

	allowRoute *regexp.Regexp
}

func (c *agentConfig) register(fs *flag.FlagSet) {
	c.Log.register(fs)
	c.TLS.register(fs)
	fs.IntVar(&c.Port, "port", 8181, "port the metadata handler listens on (all addresses, SO_REUSEPORT so old and new agents overlap in a rolling update) and the DNAT rule targets")
	fs.StringVar(&c.Host, "host", os.Getenv("HOST_IP"), "this node's address, the DNAT target (env HOST_IP)")
	fs.StringVar(&c.Host6, "host-ipv6", os.Getenv("HOST_IPV6"), "this node's IPv6 address; when set, fd00:ec2::254 is intercepted too (env HOST_IPV6)")
	fs.StringVar(&c.HostInterface, "host-interface", "cali+", "pod-facing interfaces, as iptables -i: wildcards (cali+), negation (!eth0), comma list")
	fs.BoolVar(&c.IPTables, "iptables", false, "install the DNAT rule for 169.254.169.254")
	fs.BoolVar(&c.IPTablesRemove, "iptables-remove", false, "remove the rule on exit; KIAM's default is true, podiam keeps the rule so that pods get connection refused, never the node's own role, while the agent restarts")
	fs.DurationVar(&c.IPTablesCheckInterval, "iptables-check-interval", 10*time.Second, "how often the rule is checked and restored")
	fs.StringVar(&c.ServerAddress, "server-address", "localhost:9610", "server address; a DNS name resolving to several servers is balanced round robin with client-side health checks")
	fs.DurationVar(&c.GatewayTimeoutCreation, "gateway-timeout-creation", time.Second, "how long one request to a server may take")
	fs.DurationVar(&c.GRPCKeepaliveTime, "grpc-keepalive-time-duration", 10*time.Second, "ping the server after this long idle")
	fs.DurationVar(&c.GRPCKeepaliveTimeout, "grpc-keepalive-timeout-duration", 2*time.Second, "close a connection whose ping is unanswered this long")
	fs.StringVar(&c.AllowRouteRegexp, "allow-route-regexp", "^$", "metadata paths (canonical) proxied to the real metadata service; credentials and identity paths never are")
	fs.StringVar(&c.MetadataEndpoint, "metadata-endpoint", "http://169.254.169.254", "the real metadata service, for allowed routes")
	fs.BoolVar(&c.RequireIMDSv2, "require-imdsv2", false, "refuse metadata requests without an IMDSv2 token")
	fs.IntVar(&c.MaxRequestsPerIP, "max-requests-per-ip", 32, "concurrent requests allowed from one pod address")
	fs.DurationVar(&c.CredentialRefresh, "credential-refresh", 35*time.Minute, "refresh cached credentials when this much validity or less remains (below the server's --session-refresh)")
	fs.DurationVar(&c.CredentialMinServe, "credential-min-serve", minServe, "while no server answers, serve cached credentials until this much validity remains (below --credential-refresh)")
	fs.BoolVar(&c.TCPMigrateReq, "tcp-migrate-req", true, "set net.ipv4.tcp_migrate_req=1 in the node's network namespace, so that connections queued on a stopping agent's listener go to its successor instead of being reset")
	fs.StringVar(&c.PrometheusListenAddr, "prometheus-listen-addr", "localhost:9620", "metrics listen address (empty disables); SO_REUSEPORT, like --port, so old and new agents overlap in a rolling update")
	fs.DurationVar(&c.PrometheusSyncInterval, "prometheus-sync-interval", 5*time.Second, "accepted for KIAM compatibility; metrics are always current")
}

// Validate refuses configurations that cannot work, with the reason.
func (c *agentConfig) Validate() error {
	var errs []error
	if err := c.Log.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.TLS.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", c.Port))
	}
	if c.IPTables {
		if a, err := netip.ParseAddr(c.Host); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("--iptables needs --host (or HOST_IP) to be this node's IPv4 address, got %q", c.Host))
		}
		if strings.TrimSpace(c.HostInterface) == "" {
			errs = append(errs, errors.New("--iptables needs --host-interface"))
		}
	}
	if c.Host6 != "" {
		if a, err := netip.ParseAddr(c.Host6); err != nil || !a.Is6() || a.Is4In6() {
			errs = append(errs, fmt.Errorf("--host-ipv6 %q is not an IPv6 address", c.Host6))
		}
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		errs = append(errs, fmt.Errorf("--server-address: %w", err))
	}
	re, err := regexp.Compile(c.AllowRouteRegexp)
	if err != nil {
		errs = append(errs, fmt.Errorf("--allow-route-regexp: %w", err))
	}
	c.allowRoute = re
	if u, err := url.Parse(c.MetadataEndpoint); err != nil || u.Scheme != "http" || u.Host == "" {
		errs = append(errs, fmt.Errorf("--metadata-endpoint %q must be an http URL", c.MetadataEndpoint))
	}
	if c.MaxRequestsPerIP < 1 {
		errs = append(errs, errors.New("--max-requests-per-ip must be at least 1"))
	}
	switch {
	case c.CredentialMinServe <= 0:
		errs = append(errs, errors.New("--credential-min-serve must be positive"))
	case c.CredentialRefresh <= c.CredentialMinServe:
		errs = append(errs, fmt.Errorf("--credential-refresh %s must be above --credential-min-serve %s", c.CredentialRefresh, c.CredentialMinServe))
	}
	for name, d := range map[string]time.Duration{
		"--gateway-timeout-creation": c.GatewayTimeoutCreation, "--iptables-check-interval": c.IPTablesCheckInterval,
		"--grpc-keepalive-time-duration": c.GRPCKeepaliveTime, "--grpc-keepalive-timeout-duration": c.GRPCKeepaliveTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	return errors.Join(errs...)
}

func runAgent(ctx context.Context, cfg agentConfig, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	registerProcessMetrics(reg)

	tlsCfg, err := cfg.TLS.client(cfg.ServerAddress, log.With("component", "tls"))
	if err != nil {
		return err
	}
	client, err := serverclient.New(serverclient.Config{
		Address:          cfg.ServerAddress,
		TLS:              tlsCfg,
		HostIP:           cfg.Host,
		KeepaliveTime:    cfg.GRPCKeepaliveTime,
		KeepaliveTimeout: cfg.GRPCKeepaliveTimeout,
		CallTimeout:      cfg.GatewayTimeoutCreation,
	}, reg, log.With("component", "client"))
	if err != nil {
		return fmt.Errorf("server client: %w", err)
	}
	defer client.Close()

	credCache, err := cache.New(cache.Config{
		Refresh:   cfg.CredentialRefresh,
		MinServe:  cfg.CredentialMinServe,
		Sandbox:   sandbox.Identify,
	}, fetcher{client}, reg, log.With("component", "cache"))
	if err != nil {
		return fmt.Errorf("agent cache: %w", err)
	}

	var rules *iptables.Rules
	if cfg.IPTables {
		rules, err = iptables.New(iptables.Config{
			HostInterfaces: strings.Split(cfg.HostInterface, ","),
			Host:           cfg.Host,
			Host6:          cfg.Host6,
			Port:           cfg.Port,
		}, reg, log.With("component", "iptables"))
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		if err := rules.Install(ctx); err != nil {
			return fmt.Errorf("install iptables rule: %w", err)
		}
		log.Info("metadata traffic intercepted", "interfaces", cfg.HostInterface, "target", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	}

	handler, err := imds.New(imds.Config{
		RequireIMDSv2: cfg.RequireIMDSv2,
		AllowRoute:    cfg.allowRoute,
		Upstream:      cfg.MetadataEndpoint,
		MaxPerIP:      cfg.MaxRequestsPerIP,
		Ready:         cachedCheck(rules, 5*time.Second),
		DeepCheck:     client.Check,
	}, credCache, reg, log.With("component", "imds"))
	if err != nil {
		return fmt.Errorf("metadata handler: %w", err)
	}
	if cfg.TCPMigrateReq {
		enableTCPMigrateReq(tcpMigrateReqPath, log)
	}
	lis, err := listenReusePort(ctx, net.JoinHostPort("", strconv.Itoa(cfg.Port)))
	if err != nil {
		return err
	}
	srv := imds.NewServer(handler)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(lis) }()
	// The metrics port is shared with the next agent too: during a rolling
	// update both run, and a new agent that cannot bind would exit.
	go func() { errc <- serveMetricsOn(ctx, listenReusePort, cfg.PrometheusListenAddr, reg, nil, log) }()
	go func() { _ = credCache.Run(ctx) }()
	go func() { errc <- sandbox.Watch(ctx, credCache.SandboxChanged) }()
	go func() { _ = client.Watch(ctx, newPodEventSink(credCache, log).handle) }()
	if rules != nil {
		go func() { _ = rules.Run(ctx, cfg.IPTablesCheckInterval) }()
	}
	log.Info("podiam agent started", "addr", lis.Addr().String(), "server_address", cfg.ServerAddress)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	// Drain, not Shutdown: a successor agent may listen on the same port,
	// and every pod request this one accepted must still be answered.
	sctx, scancel := context.WithTimeout(context.Background(), agentDrainTimeout)
	defer scancel()
	if err := srv.Drain(sctx); err != nil {
		log.Warn("metadata listener did not drain", "error", err)
	} else {
		log.Info("metadata listener drained")
	}
	if rules != nil && cfg.IPTablesRemove {
		if err := rules.Remove(); err != nil {
			log.Error("remove iptables rule", "error", err)
		} else {
			log.Info("iptables rule removed")
		}
	}
	return runErr
}

// fetcher adapts the server client to the agent cache: a synced server's
// "no live pod there" is what lets the cache drop an entry.
type fetcher struct{ c *serverclient.Client }

func (f fetcher) Fetch(ctx context.Context, ip string) (creds.PodCredentials, error) {
	pc, err := f.c.Fetch(ctx, ip)
	switch {
	case errors.Is(err, serverclient.ErrPodUnknown):
		err = fmt.Errorf("%w: %w", cache.ErrPodUnknownSynced, err)
	case errors.Is(err, serverclient.ErrIPConflict):
		err = fmt.Errorf("%w: %w", cache.ErrAddressConflict, err)
	}
	return pc, err
}

// podEventSink applies the server's node pod stream to the agent cache.
type podEventSink struct {
	cache   *cache.Cache
	log     *slog.Logger
	present map[string]string
}

func newPodEventSink(c *cache.Cache, log *slog.Logger) *podEventSink {
	return &podEventSink{cache: c, log: log, present: map[string]string{}}
}

// handle is called in order for each event of each stream. A nil event
// marks the start of a new stream, so a snapshot cut short never mixes with
// the next one.
func (s *podEventSink) handle(ev *pb.PodEvent) {
	switch ev.GetType() {
	case pb.PodEvent_TYPE_UNSPECIFIED:
		s.present = map[string]string{}
		s.cache.PodStreamSynced(false)
	case pb.PodEvent_TYPE_PRESENT:
		s.present[ev.GetIp()] = ev.GetUid()
	case pb.PodEvent_TYPE_SYNCED:
		s.cache.Retain(s.present)
		s.cache.PodStreamSynced(true)
		s.log.Debug("pod list synced from server", "pods", len(s.present))
		s.present = map[string]string{}
	case pb.PodEvent_TYPE_CHANGED, pb.PodEvent_TYPE_DELETED:
		s.cache.Forget(ev.GetIp())
	}
}

// listenReusePort opens the metadata listener with SO_REUSEPORT, so a new
// agent can start listening before the old one stops during a rolling
// update and pods never meet a refused connection.
func listenReusePort(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return lis, nil
}

// tcpMigrateReqPath is the sysctl (Linux 5.14) that makes the kernel move
// connections queued on a closing SO_REUSEPORT listener to another listener
// of the same port instead of resetting them. Without it, a pod whose
// connection the kernel had queued for the old agent in the instant it
// closed its listener sees "connection reset" during a rolling update.
const tcpMigrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// agentDrainTimeout bounds the drain on exit: a request takes at most
// imds.ReadHeaderTimeout to arrive and is then bounded by the cache's
// fetch timeout, both well within it and within Kubernetes' default
// termination grace period of 30 s.
const agentDrainTimeout = 15 * time.Second

// enableTCPMigrateReq sets the sysctl at path to 1 if it is not, and logs
// what happened; failing (old kernel, read-only /proc/sys) is not fatal,
// only rolling updates lose their last few connections.
func enableTCPMigrateReq(path string, log *slog.Logger) {
	changed, err := setSysctl(path, "1")
	switch {
	case err != nil:
		log.Warn("cannot enable net.ipv4.tcp_migrate_req; a rolling update may reset a few pod connections (set it to 1 on the node, or use --no-tcp-migrate-req to silence this)", "error", err)
	case changed:
		log.Info("enabled net.ipv4.tcp_migrate_req so that a successor agent takes over queued connections")
	}
}

// setSysctl writes want to the sysctl file at path unless it already holds
// it, and reports whether it wrote.
func setSysctl(path, want string) (bool, error) {
	cur, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if strings.TrimSpace(string(cur)) == want {
		return false, nil
	}
	if err := os.WriteFile(path, []byte(want+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

// cachedCheck reports whether the interception rule is in place, reading
// iptables at most once per interval: a readiness probe must not queue on
// the xtables lock behind kube-proxy.
func cachedCheck(rules *iptables.Rules, interval time.Duration) func() error {
	if rules == nil {
		return func() error { return nil }
	}
	var (
		mu      sync.Mutex
		last    error
		checked time.Time
	)
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if checked.IsZero() || time.Since(checked) >= interval {
			last, checked = rules.Check(), time.Now()
		}
		return last
	}
}
