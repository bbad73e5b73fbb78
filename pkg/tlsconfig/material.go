package tlsconfig

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// material is one consistent load of the three files. It is never modified
// after parseMaterial returns, so handshakes may share it.
type material struct {
	cert    *tls.Certificate // Leaf is always set
	pool    *x509.CertPool
	caCount int
}

// parseMaterial checks everything that can be checked without a peer, so
// that a bad rotation is rejected at load time instead of breaking
// handshakes. It is stricter than the standard library about truncation:
// tls.X509KeyPair and CertPool.AppendCertsFromPEM silently drop a block cut
// off half-way, which would turn a half-written CA bundle into a bundle that
// lacks the new CA.
func parseMaterial(certPEM, keyPEM, caPEM []byte) (*material, error) {
	certs, err := parseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate file: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	if pair.Leaf == nil {
		pair.Leaf = certs[0]
	}
	cas, err := parseCertificates(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	return &material{cert: &pair, pool: pool, caCount: len(cas)}, nil
}

const pemBegin = "-----BEGIN"

// parseCertificates returns every certificate in data, which must hold at
// least one and nothing else but text outside PEM blocks.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(out)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if bytes.Contains(rest, []byte(pemBegin)) {
		return nil, fmt.Errorf("PEM block %d is truncated or malformed", len(out)+1)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}
