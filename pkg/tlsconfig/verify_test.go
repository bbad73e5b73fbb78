package tlsconfig

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestVerifyServer(t *testing.T) {
	root := newCA(t, "root")
	other := newCA(t, "other")
	inter := root.intermediate(t, "intermediate")
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)

	leaf := root.issue(t, "server", nil).cert
	chained := inter.issue(t, "chained", nil).cert
	clientOnly := root.issue(t, "client-only", func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}).cert
	expired := root.issue(t, "expired", func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-2 * time.Hour)
		c.NotAfter = time.Now().Add(-time.Hour)
	}).cert
	foreign := other.issue(t, "foreign", nil).cert

	tests := []struct {
		name    string
		host    string
		chain   []*x509.Certificate
		wantErr string // "" = must verify
	}{
		{name: "dns name", host: "localhost", chain: []*x509.Certificate{leaf}},
		{name: "ip address", host: "127.0.0.1", chain: []*x509.Certificate{leaf}},
		{name: "leaf with intermediate", host: "localhost", chain: []*x509.Certificate{chained, inter.cert}},
		{name: "intermediate not sent", host: "localhost", chain: []*x509.Certificate{chained}, wantErr: "unknown authority"},
		{name: "wrong name", host: "evil.example", chain: []*x509.Certificate{leaf}, wantErr: "not evil.example"},
		{name: "wrong ip", host: "10.0.0.1", chain: []*x509.Certificate{leaf}, wantErr: "not 10.0.0.1"},
		{name: "no name", host: "", chain: []*x509.Certificate{leaf}, wantErr: "no server name"},
		{name: "nil chain", host: "localhost", chain: nil, wantErr: "no certificate"},
		{name: "empty chain", host: "localhost", chain: []*x509.Certificate{}, wantErr: "no certificate"},
		{name: "nil leaf", host: "localhost", chain: []*x509.Certificate{nil}, wantErr: "no certificate"},
		{name: "other CA", host: "localhost", chain: []*x509.Certificate{foreign}, wantErr: "unknown authority"},
		// Sending the trusted root as an "intermediate" must not help a
		// foreign leaf.
		{name: "other CA with our root attached", host: "localhost", chain: []*x509.Certificate{foreign, root.cert}, wantErr: "unknown authority"},
		{name: "client-only certificate", host: "localhost", chain: []*x509.Certificate{clientOnly}, wantErr: "incompatible key usage"},
		{name: "expired", host: "localhost", chain: []*x509.Certificate{expired}, wantErr: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyServer(roots, tt.host, tt.chain)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
