// Package tlsconfig builds the mutual-TLS configurations for the gRPC link
// between the podiam agent and server. Certificates are rotated by rewriting
// files (cert-manager, Kubernetes Secret volumes), and restarting every agent
// on every node for each rotation is not acceptable, so both sides re-read the
// certificate, key and CA bundle while they run.
//
// There is no background goroutine: the files are checked when a handshake
// needs them, at most once per Config.CheckInterval. A change that does not
// load (a half-written file, a key that does not match its certificate) is
// logged once and the previous good material stays in use, because a broken
// rotation must not cut agents off from the server.
//
// The agent links this package, so it must not import client-go or the AWS
// SDK.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrInvalidConfig reports a Config that cannot work whatever the files hold.
var ErrInvalidConfig = errors.New("tlsconfig: invalid config")

// Files names the PEM files. They may be symlinks (a Kubernetes Secret volume
// mounts tls.crt -> ..data/tls.crt); every read follows them.
type Files struct {
	// Cert holds the leaf certificate, optionally followed by intermediates.
	Cert string
	// Key holds the private key of the leaf certificate.
	Key string
	// CA holds one or more CA certificates. During a CA rotation it holds
	// the old and the new CA so that peers on either side keep working.
	CA string
}

// Config configures Server and Client.
type Config struct {
	Files Files
	// CheckInterval bounds how often file metadata is re-read; 0 means 1s.
	CheckInterval time.Duration
	// ServerName overrides the name verified on the server certificate (client only); "" = the dial authority host.
	ServerName string
}

const defaultCheckInterval = time.Second

// Server returns a server configuration that requires a client certificate
// signed by a CA in the current CA bundle and presents the current server
// certificate. Both are looked up per handshake via GetConfigForClient,
// because ClientCAs and Certificates on a shared Config cannot be swapped
// safely while handshakes run.
func Server(cfg Config, log *slog.Logger) (*tls.Config, error) {
	src, err := newSource(cfg, log, time.Now)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return serverConfigFor(src.current()), nil
		},
	}, nil
}

func serverConfigFor(m *material) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*m.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.pool,
		// A resumed session skips client certificate verification, so a
		// client whose CA was dropped from the bundle could keep getting in.
		// gRPC connections are long-lived; full handshakes cost little.
		SessionTicketsDisabled: true,
	}
}

// Client returns a client configuration that presents the current client
// certificate and verifies the server against the current CA bundle.
//
// RootCAs cannot be changed per handshake, so the built-in verification is
// switched off (InsecureSkipVerify) and replaced by VerifyConnection, which
// does the full chain, host name and ExtKeyUsageServerAuth check against the
// current bundle. Never copy InsecureSkipVerify out of this config without
// VerifyConnection.
//
// The host name checked is Config.ServerName if set, otherwise the server
// name of the connection (grpc sets it from the dial authority). Go does not
// expose an IP address there (IP addresses are not sent as SNI), so a client
// that dials an IP address must set Config.ServerName, e.g. to that address;
// otherwise every handshake fails rather than skipping the name check.
func Client(cfg Config, log *slog.Logger) (*tls.Config, error) {
	src, err := newSource(cfg, log, time.Now)
	if err != nil {
		return nil, err
	}
	override := cfg.ServerName
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: override,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.current().cert, nil
		},
		InsecureSkipVerify: true, // replaced by VerifyConnection, see above
		VerifyConnection: func(cs tls.ConnectionState) error {
			name := override
			if name == "" {
				name = cs.ServerName
			}
			return verifyServer(src.current().pool, name, cs.PeerCertificates)
		},
	}, nil
}

// verifyServer does what crypto/tls would do with RootCAs set to roots and
// ServerName set to name.
func verifyServer(roots *x509.CertPool, name string, chain []*x509.Certificate) error {
	if name == "" {
		return errors.New("tlsconfig: no server name to verify the server certificate against (dialing an IP address needs Config.ServerName)")
	}
	if len(chain) == 0 || chain[0] == nil {
		return errors.New("tlsconfig: server presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != nil {
			inter.AddCert(c)
		}
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       name,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("tlsconfig: verify server certificate: %w", err)
	}
	return nil
}
