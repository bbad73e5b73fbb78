// Package agent is `podiam agent`, the part that runs on every node: it
// answers pods' metadata requests (imds) from a cache of credentials
// (cache) filled by the podiam servers (serverclient), keeps the iptables
// rule that sends pod traffic for 169.254.169.254 to it (iptables), and
// follows the server's stream of the node's pods so that it forgets a
// deleted pod's credentials at once.
//
// New wires those parts from a Config and the dependencies the command
// builds (TLS, metrics registry, logger); Run runs them under one
// supervisor, so that a part that fails or stops ends the agent instead of
// leaving it half alive.
//
// The agent runs on every node with the node's privileges, so this package
// and everything it imports must not link client-go or the AWS SDK (make
// check-agent-deps).
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/agent/cache"
	"github.com/podiam/podiam/pkg/agent/imds"
	"github.com/podiam/podiam/pkg/agent/iptables"
	"github.com/podiam/podiam/pkg/agent/sandbox"
	"github.com/podiam/podiam/pkg/agent/serverclient"
	"github.com/podiam/podiam/pkg/metricsserver"
	"github.com/podiam/podiam/pkg/supervise"
)

// Config is what `podiam agent` is told on its command line. Its fields
// are the flags of the same names, and Validate's messages name the flags,
// because a person reading them wrote flags, not fields.
type Config struct {
	// Port is --port: the metadata listener (all addresses, SO_REUSEPORT)
	// and the DNAT target.
	Port int
	// Host is --host: this node's address, the IPv4 DNAT target and the
	// node whose pods the agent watches. It may be IPv6 (an IPv6-primary
	// node), or a comma list of one address of each family, as the
	// downward API's status.hostIPs gives it.
	Host string
	// Host6 is --host-ipv6: this node's IPv6 address, where fd00:ec2::254
	// is redirected. Without one (from here or Host) that address is
	// refused, never left open.
	Host6 string
	// NoIPv6 says the kernel has IPv6 disabled: no IPv6 rule can or need
	// be installed.
	NoIPv6 bool
	// HostInterface is --host-interface, as iptables -i, comma separated.
	HostInterface string

	// IPTables (--iptables) installs and keeps the DNAT rule.
	IPTables bool
	// IPTablesRemove (--iptables-remove) removes it on exit.
	IPTablesRemove bool
	// IPTablesCheckInterval (--iptables-check-interval) is how often the
	// rule is checked and restored.
	IPTablesCheckInterval time.Duration

	// ServerAddress is --server-address, host:port of the podiam servers.
	ServerAddress string
	// GatewayTimeoutCreation (--gateway-timeout-creation) bounds one
	// request to a server.
	GatewayTimeoutCreation time.Duration
	// GRPCKeepaliveTime and GRPCKeepaliveTimeout are
	// --grpc-keepalive-time-duration and --grpc-keepalive-timeout-duration.
	GRPCKeepaliveTime    time.Duration
	GRPCKeepaliveTimeout time.Duration

	// AllowRouteRegexp (--allow-route-regexp) selects the canonical
	// metadata paths proxied to MetadataEndpoint (--metadata-endpoint).
	AllowRouteRegexp string
	MetadataEndpoint string
	// RequireIMDSv2 (--require-imdsv2) refuses requests without a token.
	RequireIMDSv2 bool
	// MaxRequestsPerIP (--max-requests-per-ip) caps concurrent requests
	// from one pod address.
	MaxRequestsPerIP int
	// MaxConnectionsPerIP (--max-connections-per-ip) caps the connections
	// one pod address may hold open; more are closed at once.
	MaxConnectionsPerIP int
	// CredentialRefresh and CredentialMinServe (--credential-refresh,
	// --credential-min-serve) are the cache's refresh and outage windows.
	CredentialRefresh  time.Duration
	CredentialMinServe time.Duration
	// TCPMigrateReq (--tcp-migrate-req) sets net.ipv4.tcp_migrate_req=1.
	TCPMigrateReq bool

	// PrometheusListenAddr (--prometheus-listen-addr) serves metrics;
	// empty disables them.
	PrometheusListenAddr string

	// WatchPods follows the server's stream of this node's pods, so that
	// the cache forgets a pod's credentials when the pod goes or changes
	// instead of when they expire. The stream is asked for by node
	// address, so it needs Host; `podiam agent` turns it on whenever it
	// knows Host.
	WatchPods bool
}

// Validate refuses configurations that cannot work, or that would make a
// part of the agent stop as soon as it starts, with the reason.
func (c Config) Validate() error {
	var errs []error
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d is not a TCP port", c.Port))
	}
	v4, v6, herr := c.hosts()
	if herr != nil {
		errs = append(errs, herr)
	}
	noHost := herr == nil && !v4.IsValid() && !v6.IsValid()
	if c.IPTables {
		if noHost {
			errs = append(errs, fmt.Errorf("--iptables needs --host (or HOST_IP) to be this node's address, got %q", c.Host))
			noHost = false // reported
		}
		if v6.IsValid() && c.NoIPv6 {
			errs = append(errs, fmt.Errorf("an IPv6 node address %s, but the kernel has IPv6 disabled", v6))
		}
		if strings.TrimSpace(c.HostInterface) == "" {
			errs = append(errs, errors.New("--iptables needs --host-interface"))
		}
	}
	if c.WatchPods && noHost {
		// Without it the watch would end at once, and with it the
		// agent's only way to drop a deleted pod's credentials early.
		errs = append(errs, fmt.Errorf("watching the node's pods needs --host (or HOST_IP) to be this node's address, got %q", c.Host))
	}
	if c.MaxConnectionsPerIP < 1 {
		errs = append(errs, errors.New("--max-connections-per-ip must be at least 1"))
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		errs = append(errs, fmt.Errorf("--server-address: %w", err))
	}
	if _, err := regexp.Compile(c.AllowRouteRegexp); err != nil {
		errs = append(errs, fmt.Errorf("--allow-route-regexp: %w", err))
	}
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

// hosts returns the node's IPv4 and IPv6 addresses from Host (one address
// or a comma list, as status.hostIPs) and Host6; either may be the zero
// Addr. Host6 wins over an IPv6 address in Host.
func (c Config) hosts() (v4, v6 netip.Addr, err error) {
	for _, s := range strings.Split(c.Host, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		a, perr := netip.ParseAddr(s)
		if perr != nil || a.Zone() != "" {
			return v4, v6, fmt.Errorf("--host (or HOST_IP) %q: %q is not an IP address", c.Host, s)
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && !v6.IsValid():
			v6 = a
		default:
			return v4, v6, fmt.Errorf("--host (or HOST_IP) %q: more than one address of a family", c.Host)
		}
	}
	if c.Host6 != "" {
		a, perr := netip.ParseAddr(c.Host6)
		if perr != nil || !a.Is6() || a.Is4In6() {
			return v4, v6, fmt.Errorf("--host-ipv6 %q is not an IPv6 address", c.Host6)
		}
		v6 = a
	}
	return v4, v6, nil
}

// nodeAddr is the address the agent names its node by: IPv4 if it has
// one, as the server sees agents connect over it by default.
func nodeAddr(v4, v6 netip.Addr) string {
	if v4.IsValid() {
		return v4.String()
	}
	if v6.IsValid() {
		return v6.String()
	}
	return ""
}

// Deps are what the command builds for the agent.
type Deps struct {
	// TLS is the mutual TLS client configuration for the servers
	// (pkg/tlsconfig.Client); required.
	TLS *tls.Config
	// Registry receives every metric of the agent and is what its metrics
	// endpoint serves; required.
	Registry *prometheus.Registry
	// Log is the agent's logger; required.
	Log *slog.Logger
}

// interceptor is what the agent needs of the iptables rules; *iptables.Rules
// implements it, and tests put a fake in its place.
type interceptor interface {
	Install(ctx context.Context) error
	Check() error
	Run(ctx context.Context, interval time.Duration) error
	Remove() error
}

// drainTimeout bounds the drain on exit: a request takes at most
// imds.ReadHeaderTimeout to arrive and is then bounded by the cache's
// fetch timeout, both well within it and within Kubernetes' default
// termination grace period of 30 s.
const drainTimeout = 15 * time.Second

// readyCheckInterval is how often the readiness probe may read iptables.
const readyCheckInterval = 5 * time.Second

// Agent is a wired agent; Run runs it.
type Agent struct {
	cfg    Config
	reg    *prometheus.Registry
	log    *slog.Logger
	client *serverclient.Client
	cache  *cache.Cache
	// sandboxes follows the node's link and neighbour changes for the
	// cache; subscribed in New, before anything can be cached.
	sandboxes *sandbox.Watcher
	rules     interceptor // nil without --iptables
	srv       *imds.Server
	// host is the node address the agent names its node by.
	host string
	// listen opens the metadata and metrics listeners; listenReusePort
	// outside tests.
	listen metricsserver.ListenFunc
	// tcpMigrateReq is the sysctl file TCPMigrateReq writes.
	tcpMigrateReq string
}

// New checks cfg and builds the agent's parts: the server client (which
// starts connecting in the background), the credential cache, the
// iptables rules (without touching them yet) and the metadata handler. It
// changes nothing on the node; Run does. Run must be called once, as it
// releases what New built.
func New(ctx context.Context, cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	if deps.TLS == nil || deps.Registry == nil || deps.Log == nil {
		return nil, errors.New("agent: TLS, Registry and Log are required")
	}
	log, reg := deps.Log, deps.Registry
	a := &Agent{cfg: cfg, reg: reg, log: log, listen: listenReusePort, tcpMigrateReq: tcpMigrateReqPath}
	v4, v6, _ := cfg.hosts() // checked by Validate
	a.host = nodeAddr(v4, v6)

	client, err := serverclient.New(serverclient.Config{
		Address:          cfg.ServerAddress,
		TLS:              deps.TLS,
		HostIP:           a.host,
		KeepaliveTime:    cfg.GRPCKeepaliveTime,
		KeepaliveTimeout: cfg.GRPCKeepaliveTimeout,
		CallTimeout:      cfg.GatewayTimeoutCreation,
	}, reg, log.With("component", "client"))
	if err != nil {
		return nil, fmt.Errorf("server client: %w", err)
	}
	a.client = client
	ok := false
	defer func() {
		if !ok {
			_ = client.Close()
		}
	}()

	a.sandboxes, err = sandbox.NewWatcher()
	if err != nil {
		return nil, err
	}
	defer func() {
		if !ok {
			_ = a.sandboxes.Close()
		}
	}()
	a.cache, err = cache.New(cache.Config{
		Refresh:  cfg.CredentialRefresh,
		MinServe: cfg.CredentialMinServe,
		Sandbox:  sandbox.Identify,
		Changes:  a.sandboxes,
	}, fetcher{client}, reg, log.With("component", "cache"))
	if err != nil {
		return nil, fmt.Errorf("agent cache: %w", err)
	}

	if cfg.IPTables {
		var host4, host6 string
		if v4.IsValid() {
			host4 = v4.String()
		}
		if v6.IsValid() {
			host6 = v6.String()
		}
		rules, err := iptables.New(iptables.Config{
			HostInterfaces: strings.Split(cfg.HostInterface, ","),
			Host:           host4,
			Host6:          host6,
			NoIPv6:         cfg.NoIPv6,
			Port:           cfg.Port,
		}, reg, log.With("component", "iptables"))
		if err != nil {
			return nil, fmt.Errorf("iptables: %w", err)
		}
		a.rules = rules
	}

	handler, err := imds.New(imds.Config{
		RequireIMDSv2: cfg.RequireIMDSv2,
		AllowRoute:    regexp.MustCompile(cfg.AllowRouteRegexp), // checked by Validate
		Upstream:      cfg.MetadataEndpoint,
		MaxPerIP:      cfg.MaxRequestsPerIP,
		Ready:         cachedCheck(a.rules, readyCheckInterval),
		DeepCheck:     client.Check,
	}, a.cache, reg, log.With("component", "imds"))
	if err != nil {
		return nil, fmt.Errorf("metadata handler: %w", err)
	}
	a.srv = imds.NewServer(handler)
	// Sandbox changes are drained before a connection's first request,
	// not before each of its requests (cache.WithConnection says why).
	a.srv.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return cache.WithConnection(ctx) }
	ok = true
	return a, nil
}

// Run installs the interception rule, opens the metadata listener and runs
// every part of the agent until ctx is done or one of them fails or stops:
// the metadata server, the metrics server, the cache's refresh loop, the
// watch of the node's pods and the rule's check loop. Then it drains the
// metadata listener, removes the rule if so configured, closes the server
// connection and returns the first failure, or nil when ctx ended.
func (a *Agent) Run(ctx context.Context) error {
	return a.run(ctx, nil)
}

// run is Run with extra parts, which tests add.
func (a *Agent) run(ctx context.Context, extra []supervise.Part) error {
	defer a.client.Close()
	// Closed last: the metadata server drains its requests after ctx
	// ends, and each of them reads the pending sandbox changes.
	defer a.sandboxes.Close()
	if a.rules != nil {
		if err := a.rules.Install(ctx); err != nil {
			return fmt.Errorf("install iptables rule: %w", err)
		}
		a.log.Info("metadata traffic intercepted", "interfaces", a.cfg.HostInterface, "host", a.cfg.Host, "host_ipv6", a.cfg.Host6, "port", a.cfg.Port)
	}
	if a.cfg.TCPMigrateReq {
		enableTCPMigrateReq(a.tcpMigrateReq, a.log)
	}
	lis, err := a.listen(ctx, net.JoinHostPort("", strconv.Itoa(a.cfg.Port)))
	if err != nil {
		return err
	}
	limited, err := imds.LimitListener(lis, imds.ConnLimitConfig{MaxPerIP: a.cfg.MaxConnectionsPerIP}, a.reg)
	if err != nil {
		_ = lis.Close()
		return fmt.Errorf("metadata listener: %w", err)
	}
	lis = limited
	if !a.cfg.WatchPods {
		a.log.Warn("no node address (--host, HOST_IP): not watching this node's pods, so credentials of a deleted pod stay cached until a server refuses them or they expire")
	}
	a.log.Info("podiam agent started", "addr", lis.Addr().String(), "server_address", a.cfg.ServerAddress)
	err = supervise.Run(ctx, append(a.parts(lis), extra...)...)
	if a.rules != nil && a.cfg.IPTablesRemove {
		if err := a.rules.Remove(); err != nil {
			a.log.Error("remove iptables rule", "error", err)
		} else {
			a.log.Info("iptables rule removed")
		}
	}
	return err
}

// parts are the agent's long-running parts, serving on lis.
func (a *Agent) parts(lis net.Listener) []supervise.Part {
	parts := []supervise.Part{
		{Name: "metadata server", Run: func(ctx context.Context) error { return a.serveMetadata(ctx, lis) }},
		{Name: "credential cache", Run: a.cache.Run},
		// Without it a new pod sandbox on an old address could inherit
		// its predecessor's cached credentials: stopping is the only
		// safe answer to losing it.
		{Name: "sandbox watch", Run: func(ctx context.Context) error { return a.sandboxes.Run(ctx, a.cache.SandboxChanged) }},
	}
	if a.cfg.PrometheusListenAddr != "" {
		// The metrics port is shared with the next agent too: during a
		// rolling update both run, and a new agent that cannot bind
		// would exit.
		parts = append(parts, supervise.Part{Name: "metrics server", Run: func(ctx context.Context) error {
			return metricsserver.Serve(ctx, a.listen, a.cfg.PrometheusListenAddr, a.reg, nil, a.log)
		}})
	}
	if a.cfg.WatchPods {
		parts = append(parts, supervise.Part{Name: "node pod watch", Run: func(ctx context.Context) error {
			return a.client.Watch(ctx, newPodEventSink(a.cache, a.log).handle)
		}})
	}
	if a.rules != nil {
		parts = append(parts, supervise.Part{Name: "iptables check", Run: func(ctx context.Context) error {
			return a.rules.Run(ctx, a.cfg.IPTablesCheckInterval)
		}})
	}
	return parts
}

// serveMetadata serves pods on lis until ctx is done, then drains: Drain,
// not Shutdown, because a successor agent may listen on the same port and
// every pod request this one accepted must still be answered. The drain
// runs whether ctx ended or serving failed, so that a request already
// accepted is answered either way.
func (a *Agent) serveMetadata(ctx context.Context, lis net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- a.srv.Serve(lis) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		served = nil
		err = fmt.Errorf("serve metadata: %w", err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if derr := a.srv.Drain(dctx); derr != nil {
		a.log.Warn("metadata listener did not drain", "error", derr)
	} else {
		a.log.Info("metadata listener drained")
	}
	if served != nil {
		// Drain closed the listener (or, past its deadline, the server),
		// so Serve returns.
		<-served
	}
	return err
}
