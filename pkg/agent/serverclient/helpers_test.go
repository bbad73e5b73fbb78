package serverclient

import (
	"context"
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
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/podiam/podiam/pkg/tlsconfig"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// pki is a CA with one leaf, valid for 127.0.0.1, ::1 and localhost and for
// both server and client auth, written to files as pkg/tlsconfig reads them.
type pki struct {
	files tlsconfig.Files
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey := mustKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "podiam test ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey := mustKey(t)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "podiam"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	f := tlsconfig.Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt")}
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(f.Cert, "CERTIFICATE", leafDER)
	write(f.Key, "EC PRIVATE KEY", keyDER)
	write(f.CA, "CERTIFICATE", caDER)
	return pki{files: f}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeServer is a podiam Credentials service with programmable answers.
type fakeServer struct {
	pb.UnimplementedCredentialsServer

	mu    sync.Mutex
	get   func(ctx context.Context, req *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error)
	watch func(req *pb.WatchNodePodsRequest, stream pb.Credentials_WatchNodePodsServer) error
	calls int
}

func (f *fakeServer) GetPodCredentials(ctx context.Context, req *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
	f.mu.Lock()
	f.calls++
	get := f.get
	f.mu.Unlock()
	return get(ctx, req)
}

func (f *fakeServer) WatchNodePods(req *pb.WatchNodePodsRequest, stream pb.Credentials_WatchNodePodsServer) error {
	f.mu.Lock()
	watch := f.watch
	f.mu.Unlock()
	return watch(req, stream)
}

func (f *fakeServer) setGet(get func(context.Context, *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.get = get
}

func (f *fakeServer) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// testServer is a running gRPC server with mutual TLS.
type testServer struct {
	addr   string
	srv    *grpc.Server
	health *health.Server
}

// startServer serves fs on addr ("127.0.0.1:0" for any port), SERVING.
func startServer(t *testing.T, p pki, addr string, fs *fakeServer) *testServer {
	t.Helper()
	tlsCfg, err := tlsconfig.Server(tlsconfig.Config{Files: p.files}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	// Rebinding the port of a server that just stopped can race with the
	// kernel releasing it.
	for deadline := time.Now().Add(5 * time.Second); ; {
		lis, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	pb.RegisterCredentialsServer(srv, fs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return &testServer{addr: lis.Addr().String(), srv: srv, health: hs}
}

func (s *testServer) setServing(serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
}

// newClient connects to address with the test PKI, verifying the server
// as 127.0.0.1.
func newClient(t *testing.T, p pki, address string, mod func(*Config)) (*Client, *prometheus.Registry) {
	t.Helper()
	tlsCfg, err := tlsconfig.Client(tlsconfig.Config{Files: p.files, ServerName: "127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Address: address, TLS: tlsCfg, HostIP: "10.0.0.1"}
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewPedanticRegistry()
	c, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, reg
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
