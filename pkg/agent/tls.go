package agent

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"

	"github.com/podiam/podiam/pkg/tlsconfig"
)

// ClientTLS builds the mutual TLS configuration for dialing the podiam
// server at serverAddress (host:port), for Deps.TLS; `podiam health` dials
// a server the same way. Go sends no SNI for an IP address, so for one the
// certificate's IP SAN is verified explicitly; for a name, gRPC's
// authority is used.
func ClientTLS(files tlsconfig.Files, serverAddress string, log *slog.Logger) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(serverAddress)
	name := ""
	if _, err := netip.ParseAddr(host); err == nil {
		name = host
	}
	return tlsconfig.Client(tlsconfig.Config{Files: files, ServerName: name}, log)
}
