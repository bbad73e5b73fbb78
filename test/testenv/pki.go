package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a set of PEM files for podiam's mutual TLS: a CA, a server
// certificate and an agent client certificate it signed, and a client
// certificate from another CA that the server must refuse.
type PKI struct {
	Dir                   string
	CA                    string // CA certificate
	ServerCert, ServerKey string
	AgentCert, AgentKey   string
	// StrangerCert is a client certificate from the same CA with another
	// name: a server that checks agent identities must refuse it.
	StrangerCert, StrangerKey string
	OtherCA                   string // an unrelated CA's certificate
	OtherCert, OtherKey       string // a client certificate signed by OtherCA

	serverSANs []string // NewPKI's, for re-issuing the server certificate
}

// pkiValidity is long enough for any test run and short enough that nobody
// mistakes these files for real ones.
const pkiValidity = 24 * time.Hour

// NewPKI writes the PKI as ECDSA P-256 PEM files in dir. The server
// certificate's SANs are localhost, podiam-server, 127.0.0.1 and ::1 plus
// serverSANs (IP addresses or DNS names), e.g. a node IP in e2e tests.
func NewPKI(t testing.TB, dir string, serverSANs ...string) *PKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("testenv: create pki dir: %v", err)
	}
	p := &PKI{
		Dir:          dir,
		CA:           filepath.Join(dir, "ca.pem"),
		ServerCert:   filepath.Join(dir, "server.pem"),
		ServerKey:    filepath.Join(dir, "server-key.pem"),
		AgentCert:    filepath.Join(dir, "agent.pem"),
		AgentKey:     filepath.Join(dir, "agent-key.pem"),
		StrangerCert: filepath.Join(dir, "stranger.pem"),
		StrangerKey:  filepath.Join(dir, "stranger-key.pem"),
		OtherCA:      filepath.Join(dir, "other-ca.pem"),
		OtherCert:    filepath.Join(dir, "other.pem"),
		OtherKey:     filepath.Join(dir, "other-key.pem"),
		serverSANs:   serverSANs,
	}

	ca := newCA(t, "podiam test ca")
	writeFile(t, p.CA, ca.certPEM, 0o644)

	ca.issue(t, serverTemplate(serverSANs), p.ServerCert, p.ServerKey)
	ca.issue(t, agentTemplate(), p.AgentCert, p.AgentKey)
	stranger := agentTemplate()
	stranger.Subject = pkix.Name{CommonName: "some-workload"}
	ca.issue(t, stranger, p.StrangerCert, p.StrangerKey)

	other := newCA(t, "unrelated test ca")
	writeFile(t, p.OtherCA, other.certPEM, 0o644)
	// Same name as the real agent: only the signature may tell them apart.
	other.issue(t, agentTemplate(), p.OtherCert, p.OtherKey)
	return p
}

// serverTemplate is the server certificate: localhost, podiam-server,
// 127.0.0.1 and ::1 plus sans. Server auth only, as deploy/ and
// hack/gen-certs.sh issue it, so that tests see the server's certificate
// refused as a client.
func serverTemplate(sans []string) *x509.Certificate {
	dnsNames := []string{"localhost", "podiam-server"}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	for _, san := range sans {
		if ip := net.ParseIP(san); ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, san)
		}
	}
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "podiam-server"},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// agentTemplate is the agent's client certificate.
func agentTemplate() *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "podiam-agent"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

type testCA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

func newCA(t testing.TB, name string) *testCA {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(pkiValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testenv: create CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testenv: parse CA %s: %v", name, err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs tmpl with the CA, writes certificate and key (each replaced
// at once by a rename, as a rotation on a live process needs) and returns
// the certificate.
func (ca *testCA) issue(t testing.TB, tmpl *x509.Certificate, certPath, keyPath string) *x509.Certificate {
	t.Helper()
	key := newKey(t)
	now := time.Now()
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(pkiValidity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("testenv: issue %s: %v", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: marshal key: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testenv: parse %s: %v", tmpl.Subject.CommonName, err)
	}
	replaceFile(t, keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	replaceFile(t, certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return cert
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("testenv: serial: %v", err)
	}
	return n
}
