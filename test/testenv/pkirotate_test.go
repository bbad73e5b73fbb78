package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// A rotation in the three steps the e2e test takes: each step's files
// load as key pairs and chain to exactly the CAs the bundle holds.
func TestPKIRotation(t *testing.T) {
	p := NewPKI(t, t.TempDir(), "10.9.8.7")
	oldServer, oldAgent := loadLeaf(t, p.ServerCert), loadLeaf(t, p.AgentCert)
	oldBundle := p.CABundle(t)
	next := NewCA(t, "podiam test ca 2")

	verify := func(leaf *x509.Certificate, usage x509.ExtKeyUsage, name string) error {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: loadPool(t, p.CA), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}

	p.WriteCABundle(t, oldBundle, next.PEM())
	if n := len(loadPool(t, p.CA).Subjects()); n != 2 {
		t.Fatalf("bundle holds %d CAs, want old and new", n)
	}
	server, agent := p.IssueServer(t, next), p.IssueAgent(t, next)
	for _, f := range [][2]string{{p.ServerCert, p.ServerKey}, {p.AgentCert, p.AgentKey}} {
		if _, err := tls.LoadX509KeyPair(f[0], f[1]); err != nil {
			t.Fatalf("re-issued %s does not load with its key: %v", f[0], err)
		}
	}
	if got := loadLeaf(t, p.ServerCert); got.SerialNumber.Cmp(server.SerialNumber) != 0 || got.SerialNumber.Cmp(oldServer.SerialNumber) == 0 {
		t.Fatalf("server certificate on disk is not the re-issued one")
	}
	if err := verify(server, x509.ExtKeyUsageServerAuth, "10.9.8.7"); err != nil {
		t.Errorf("new server certificate with old+new bundle: %v", err)
	}
	if err := verify(oldAgent, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("old agent certificate with old+new bundle: %v", err)
	}

	p.WriteCABundle(t, next.PEM())
	if err := verify(agent, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("new agent certificate with the new CA only: %v", err)
	}
	for _, old := range []*x509.Certificate{oldServer, oldAgent} {
		if err := verify(old, x509.ExtKeyUsageAny, ""); err == nil {
			t.Errorf("old certificate %s still chains after the old CA left the bundle", old.Subject.CommonName)
		}
	}
}
