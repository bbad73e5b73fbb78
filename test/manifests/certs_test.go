package manifests

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podiam/podiam/pkg/tlsconfig"
	"github.com/podiam/podiam/test/testenv"
)

// genCerts runs hack/gen-certs.sh as the README tells users to.
func genCerts(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	testenv.Need(t, "openssl")
	cmd := exec.Command(filepath.Join(repoRoot(t), "hack", "gen-certs.sh"), append([]string{"-o", dir}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestGenCerts checks that the files hack/gen-certs.sh writes are what
// podiam's mutual TLS accepts, in the roles the manifests give them, and
// nothing more.
func TestGenCerts(t *testing.T) {
	dir := t.TempDir()
	out, err := genCerts(t, dir, "-n", "kube-system")
	if err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, out)
	}
	for _, want := range []string{"create secret generic podiam-server-tls", "create secret generic podiam-agent-tls", "-n kube-system"} {
		if !strings.Contains(out, want) {
			t.Errorf("gen-certs.sh does not print %q:\n%s", want, out)
		}
	}
	for _, key := range []string{"ca/ca.key", "server/tls.key", "agent/tls.key"} {
		fi, err := os.Stat(filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is readable by others: %v", key, fi.Mode())
		}
	}

	files := func(who string) tlsconfig.Files {
		return tlsconfig.Files{
			Cert: filepath.Join(dir, who, "tls.crt"),
			Key:  filepath.Join(dir, who, "tls.key"),
			CA:   filepath.Join(dir, who, "ca.crt"),
		}
	}
	svc := "podiam-server.kube-system.svc"
	if err := handshake(t, files("server"), files("agent"), svc); err != nil {
		t.Errorf("agent to server at %s: %v", svc, err)
	}
	// The server's certificate is for server auth only: presented as a
	// client, to the server itself, the handshake refuses it, so it can
	// never act as an agent. (Its readiness probe is plain HTTP.)
	if got := extKeyUsages(t, files("server").Cert); !slices.Equal(got, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("server certificate extended key usages %v, want server auth only", got)
	}
	if got := extKeyUsages(t, files("agent").Cert); !slices.Equal(got, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("agent certificate extended key usages %v, want client auth only", got)
	}
	if err := handshake(t, files("server"), files("server"), "127.0.0.1"); err == nil {
		t.Error("the server certificate was accepted as a client certificate")
	}
	if err := handshake(t, files("server"), files("agent"), "podiam-server.other-namespace.svc"); err == nil {
		t.Error("the server certificate is valid for a namespace it was not made for")
	}
	if err := handshake(t, files("agent"), files("server"), "podiam-agent"); err == nil {
		t.Error("the agent certificate works as a server certificate")
	}

	// A second run refuses to replace the CA, which would cut every
	// running agent off its servers; -f does it, and the old CA's
	// certificates are then refused.
	if out, err := genCerts(t, dir); err == nil || !strings.Contains(out, "-f") {
		t.Errorf("second run without -f: err=%v\n%s", err, out)
	}
	other := t.TempDir()
	if out, err := genCerts(t, other, "-n", "kube-system"); err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, out)
	}
	foreign := tlsconfig.Files{Cert: filepath.Join(other, "agent/tls.crt"), Key: filepath.Join(other, "agent/tls.key"), CA: filepath.Join(other, "agent/ca.crt")}
	if err := handshake(t, files("server"), foreign, svc); err == nil {
		t.Error("an agent certificate from another CA was accepted")
	}
}

// TestGenCertsKIAM: -k is for KIAM's own manifests, whose probes run
// `health` with the server's files against 127.0.0.1; only then does the
// server certificate carry client auth.
func TestGenCertsKIAM(t *testing.T) {
	dir := t.TempDir()
	if out, err := genCerts(t, dir, "-n", "kube-system", "-p", "kiam", "-k"); err != nil {
		t.Fatalf("gen-certs.sh -k: %v\n%s", err, out)
	}
	server := tlsconfig.Files{Cert: filepath.Join(dir, "server/tls.crt"), Key: filepath.Join(dir, "server/tls.key"), CA: filepath.Join(dir, "server/ca.crt")}
	if got := extKeyUsages(t, server.Cert); !slices.Equal(got, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("server certificate with -k: extended key usages %v, want server and client auth", got)
	}
	if err := handshake(t, server, server, "127.0.0.1"); err != nil {
		t.Errorf("KIAM's server probe (its own files, to 127.0.0.1): %v", err)
	}
	if err := handshake(t, server, server, "kiam-server.kube-system.svc"); err != nil {
		t.Errorf("server certificate for kiam-server.kube-system.svc: %v", err)
	}
}

// extKeyUsages returns the extended key usages of the PEM certificate at
// path.
func extKeyUsages(t *testing.T, path string) []x509.ExtKeyUsage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c.ExtKeyUsage
}

// handshake runs one TLS handshake between podiam's server and client
// configurations over an in-memory connection.
func handshake(t *testing.T, server, client tlsconfig.Files, serverName string) error {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sc, err := tlsconfig.Server(tlsconfig.Config{Files: server}, log)
	if err != nil {
		t.Fatalf("server config: %v", err)
	}
	cc, err := tlsconfig.Client(tlsconfig.Config{Files: client, ServerName: serverName}, log)
	if err != nil {
		t.Fatalf("client config: %v", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	serverErr := make(chan error, 1)
	go func() {
		s := tls.Server(a, sc)
		err := s.Handshake()
		if err != nil {
			a.Close() // unblock the client
		}
		serverErr <- err
	}()
	c := tls.Client(b, cc)
	if err := c.Handshake(); err != nil {
		b.Close()
		<-serverErr
		return err
	}
	// TLS 1.3 clients finish before the server has checked their
	// certificate: a read takes the server's verdict, an alert when it
	// refuses the certificate (the pipe is synchronous, so without a
	// reader that alert could never be sent), and the deferred Close
	// ends it when the server accepts.
	go func() { _, _ = c.Read(make([]byte, 1)) }()
	return <-serverErr
}
