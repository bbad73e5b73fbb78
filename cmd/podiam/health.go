package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthConfig is `podiam health`, KIAM's probe for the server: it asks the
// server's gRPC health service over mutual TLS, so it needs a client
// certificate from the server's CA, an agent's for instance. The server's
// own certificate is issued for server auth only and is refused; the
// manifests here probe the server's plain-HTTP /readyz instead.
type healthConfig struct {
	TLS                    tlsFlags
	ServerAddress          string
	GatewayTimeoutCreation time.Duration
	Timeout                time.Duration
}

func (c *healthConfig) register(fs *flag.FlagSet) {
	c.TLS.register(fs)
	fs.StringVar(&c.ServerAddress, "server-address", "localhost:9610", "server address host:port")
	fs.DurationVar(&c.GatewayTimeoutCreation, "gateway-timeout-creation", time.Second, "time allowed to connect")
	fs.DurationVar(&c.Timeout, "timeout", time.Second, "time allowed for the whole check")
}

func (c *healthConfig) Validate() error {
	var errs []error
	if err := c.TLS.validate(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		errs = append(errs, fmt.Errorf("--server-address: %w", err))
	}
	if c.GatewayTimeoutCreation <= 0 || c.Timeout <= 0 {
		errs = append(errs, errors.New("--gateway-timeout-creation and --timeout must be positive"))
	}
	return errors.Join(errs...)
}

// runHealth exits 0 only when the server reports SERVING.
func runHealth(ctx context.Context, cfg healthConfig, stdout io.Writer) error {
	tlsCfg, err := cfg.TLS.client(cfg.ServerAddress, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, max(cfg.Timeout, cfg.GatewayTimeoutCreation))
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+cfg.ServerAddress, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return fmt.Errorf("connect %s: %w", cfg.ServerAddress, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("health check %s: %w", cfg.ServerAddress, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("server %s is %s", cfg.ServerAddress, resp.GetStatus())
	}
	fmt.Fprintln(stdout, "healthy")
	return nil
}
