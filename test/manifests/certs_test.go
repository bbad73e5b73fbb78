package manifests

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	// The server's probes run `podiam health` with the server's own files.
	if err := handshake(t, files("server"), files("server"), "127.0.0.1"); err != nil {
		t.Errorf("server's health probe to 127.0.0.1: %v", err)
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
	// certificate: a read makes the server's verdict visible.
	go func() { _, _ = c.Write([]byte{0}) }()
	return <-serverErr
}
