package testenv

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

// CA is a certificate authority for rotating a PKI's certificates while
// podiam runs: a new CA goes into the bundle next to the old one, then the
// server's and the agent's certificates are re-issued from it, then the
// old CA leaves the bundle.
type CA struct {
	ca *testCA
}

// NewCA creates a CA; it writes nothing until a bundle or a certificate
// uses it.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	return &CA{ca: newCA(t, name)}
}

// PEM is the CA certificate.
func (c *CA) PEM() []byte { return bytes.Clone(c.ca.certPEM) }

// Cert is the parsed CA certificate.
func (c *CA) Cert() *x509.Certificate { return c.ca.cert }

// CABundle returns the current content of p.CA.
func (p *PKI) CABundle(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(p.CA)
	if err != nil {
		t.Fatalf("testenv: read CA bundle: %v", err)
	}
	return b
}

// WriteCABundle replaces p.CA, at once, with the concatenated PEM
// certificates, e.g. the old bundle and a new CA during a rotation.
func (p *PKI) WriteCABundle(t testing.TB, pems ...[]byte) {
	t.Helper()
	var b bytes.Buffer
	for _, pem := range pems {
		b.Write(pem)
		if len(pem) > 0 && pem[len(pem)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	replaceFile(t, p.CA, b.Bytes(), 0o644)
}

// IssueServer replaces the server certificate and key with new ones from
// ca, with the names NewPKI gave the first, and returns the certificate.
func (p *PKI) IssueServer(t testing.TB, ca *CA) *x509.Certificate {
	t.Helper()
	return ca.ca.issue(t, serverTemplate(p.serverSANs), p.ServerCert, p.ServerKey)
}

// IssueAgent replaces the agent's client certificate and key with new
// ones from ca and returns the certificate.
func (p *PKI) IssueAgent(t testing.TB, ca *CA) *x509.Certificate {
	t.Helper()
	return ca.ca.issue(t, agentTemplate(), p.AgentCert, p.AgentKey)
}

// replaceFile writes data next to path and renames it over path, so that
// a process reading path sees the old or the new content, never a part.
func replaceFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		t.Fatalf("testenv: replace %s: %v", path, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), mode)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		t.Fatalf("testenv: replace %s: %v", path, err)
	}
}
