package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"time"

	"github.com/podiam/podiam/pkg/agent"
	"github.com/podiam/podiam/pkg/agent/imds"
)

// agentConfig is `podiam agent`: the agent's Config, bound to flags whose
// names and meanings follow KIAM's agent (the additions are podiam's own),
// and what only the command uses.
type agentConfig struct {
	Log logFlags
	TLS tlsFlags
	agent.Config

	// PrometheusSyncInterval is accepted and ignored, for KIAM's
	// manifests.
	PrometheusSyncInterval time.Duration
}

// agentMinServe is the agent's --credential-min-serve default: how long
// credentials must still be valid to be handed out while no server
// answers. The server keeps the same margin against STS.
const agentMinServe = 5 * time.Minute

func (c *agentConfig) register(fs *flag.FlagSet) {
	c.Log.register(fs)
	c.TLS.register(fs)
	fs.IntVar(&c.Port, "port", 8181, "port the metadata handler listens on (all addresses, SO_REUSEPORT so old and new agents overlap in a rolling update) and the DNAT rule targets")
	fs.StringVar(&c.Host, "host", os.Getenv("HOST_IP"), "this node's address, the DNAT target, or one address of each family comma separated as the downward API's status.hostIPs gives them (env HOST_IP)")
	fs.StringVar(&c.Host6, "host-ipv6", os.Getenv("HOST_IPV6"), "this node's IPv6 address, where fd00:ec2::254 is redirected; without one (here or in --host) that address is refused, never left open (env HOST_IPV6)")
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
	fs.IntVar(&c.MaxConnectionsPerIP, "max-connections-per-ip", imds.DefaultMaxConnsPerIP, "open connections allowed from one pod address; more are closed at once, so one pod cannot exhaust the agent")
	fs.DurationVar(&c.CredentialRefresh, "credential-refresh", 35*time.Minute, "refresh cached credentials when this much validity or less remains (below the server's --session-refresh)")
	fs.DurationVar(&c.CredentialMinServe, "credential-min-serve", agentMinServe, "while no server answers, serve cached credentials until this much validity remains (below --credential-refresh)")
	fs.BoolVar(&c.TCPMigrateReq, "tcp-migrate-req", true, "set net.ipv4.tcp_migrate_req=1 in the node's network namespace, so that connections queued on a stopping agent's listener go to its successor instead of being reset")
	fs.StringVar(&c.PrometheusListenAddr, "prometheus-listen-addr", "localhost:9620", "metrics listen address (empty disables); SO_REUSEPORT, like --port, so old and new agents overlap in a rolling update")
	fs.DurationVar(&c.PrometheusSyncInterval, "prometheus-sync-interval", 5*time.Second, "accepted for KIAM compatibility; metrics are always current")
}

// agent is the agent's Config as the command runs it: the node's pods are
// watched whenever the node's address is known, as they always were.
func (c *agentConfig) agent() agent.Config {
	cfg := c.Config
	cfg.WatchPods = cfg.Host != "" || cfg.Host6 != ""
	// A kernel booted without IPv6 has no IPv6 to intercept, and no
	// ip6tables tables to put a rule in.
	_, err := os.Stat("/proc/net/if_inet6")
	cfg.NoIPv6 = errors.Is(err, os.ErrNotExist)
	return cfg
}

// Validate refuses configurations that cannot work, with the reason.
func (c *agentConfig) Validate() error {
	return errors.Join(c.Log.validate(), c.TLS.validate(), c.agent().Validate())
}

func runAgent(ctx context.Context, cfg agentConfig, log *slog.Logger) error {
	reg := newRegistry()
	tlsCfg, err := cfg.TLS.client(cfg.ServerAddress, log.With("component", "tls"))
	if err != nil {
		return err
	}
	a, err := agent.New(ctx, cfg.agent(), agent.Deps{TLS: tlsCfg, Registry: reg, Log: log})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
