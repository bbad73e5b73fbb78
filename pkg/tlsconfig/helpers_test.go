package tlsconfig

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// testCA is a CA (root or intermediate) that issues test certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	// chain is what a leaf issued by this CA appends after itself: nothing
	// for a root, the intermediate itself otherwise.
	chain []byte
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub, priv any) (*x509.Certificate, []byte) {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, certPEM(der)
}

func caTemplate(t testing.TB, cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
}

func newCA(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := caTemplate(t, cn)
	c, p := sign(t, tmpl, tmpl, &key.PublicKey, key)
	return &testCA{cert: c, key: key, pem: p}
}

func (ca *testCA) intermediate(t testing.TB, cn string) *testCA {
	t.Helper()
	key := newKey(t)
	c, p := sign(t, caTemplate(t, cn), ca.cert, &key.PublicKey, ca.key)
	return &testCA{cert: c, key: key, pem: p, chain: append(p, ca.chain...)}
}

// keyPair is an issued leaf: certPEM includes the intermediates.
type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

// issue makes a leaf valid for "localhost" and 127.0.0.1 and for both
// server and client auth; mod may change the template before signing.
func (ca *testCA) issue(t testing.TB, cn string, mod func(*x509.Certificate)) keyPair {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if mod != nil {
		mod(tmpl)
	}
	c, p := sign(t, tmpl, ca.cert, &key.PublicKey, ca.key)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{
		cert:    c,
		certPEM: append(p, ca.chain...),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
	}
}

func bundle(cas ...*testCA) []byte {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.pem...)
	}
	return b
}

// writeAtomic replaces path the way careful tools do: a new file renamed
// over the old one.
func writeAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// writeSet writes tls.crt, tls.key and ca.crt into dir.
func writeSet(t testing.TB, dir string, kp keyPair, ca []byte) Files {
	t.Helper()
	f := Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt")}
	writeAtomic(t, f.Cert, kp.certPEM)
	writeAtomic(t, f.Key, kp.keyPEM)
	writeAtomic(t, f.CA, ca)
	return f
}

// k8sVolume lays out files like the kubelet does for a Secret volume:
//
//	tls.crt -> ..data/tls.crt
//	..data  -> ..2026_11_23_10_00_00.N
//
// and updates them the way its AtomicWriter does, by swapping ..data.
type k8sVolume struct {
	dir string
	gen int
	cur string
}

func newK8sVolume(t testing.TB, kp keyPair, ca []byte) *k8sVolume {
	t.Helper()
	v := &k8sVolume{dir: t.TempDir()}
	v.update(t, kp, ca)
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (v *k8sVolume) files() Files {
	return Files{Cert: filepath.Join(v.dir, "tls.crt"), Key: filepath.Join(v.dir, "tls.key"), CA: filepath.Join(v.dir, "ca.crt")}
}

func (v *k8sVolume) update(t testing.TB, kp keyPair, ca []byte) {
	t.Helper()
	v.gen++
	ts := fmt.Sprintf("..2026_11_23_10_00_00.%d", v.gen)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": kp.certPEM, "tls.key": kp.keyPEM, "ca.crt": ca} {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if v.cur != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, v.cur)); err != nil {
			t.Fatal(err)
		}
	}
	v.cur = ts
}

// recorder is a slog.Handler that keeps records so tests can count warnings.
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}

func (r *recorder) count(level slog.Level) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level {
			n++
		}
	}
	return n
}

func (r *recorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.recs {
		fmt.Fprintf(&b, "%s %s", rec.Level, rec.Message)
		rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
		b.WriteByte('\n')
	}
	return b.String()
}

// testServer is a real gRPC server with the standard health service that
// remembers the client certificate of the last call.
type testServer struct {
	addr       string
	clientLeaf atomic.Pointer[x509.Certificate]
	// hsErrs receives the server's handshake errors: with TLS 1.3 the
	// client may only see a broken pipe when the server refuses it.
	hsErrs chan error
}

// recordingCreds reports server handshake failures to the test.
type recordingCreds struct {
	credentials.TransportCredentials
	errs chan<- error
}

func (c recordingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		select {
		case c.errs <- err:
		default:
		}
	}
	return out, info, err
}

func startServer(t testing.TB, cfg *tls.Config) *testServer {
	t.Helper()
	ts := &testServer{hsErrs: make(chan error, 16)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = lis.Addr().String()
	srv := grpc.NewServer(
		grpc.Creds(recordingCreds{TransportCredentials: credentials.NewTLS(cfg), errs: ts.hsErrs}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := peer.FromContext(ctx); ok {
				if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
					ts.clientLeaf.Store(ti.State.PeerCertificates[0])
				}
			}
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ts
}

// seen is who talked to whom in one successful call.
type seen struct {
	server *x509.Certificate // as seen by the client
	client *x509.Certificate // as seen by the server
}

// check dials a fresh connection, so every call is a new handshake, and
// runs one health check. authority "" keeps the dial address.
func (ts *testServer) check(t testing.TB, cfg *tls.Config, authority string) (seen, error) {
	t.Helper()
	ts.clientLeaf.Store(nil)
	for len(ts.hsErrs) > 0 {
		<-ts.hsErrs
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	conn, err := grpc.NewClient("passthrough:///"+ts.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
	if err != nil {
		return seen{}, err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return seen{}, fmt.Errorf("health status %v", resp.GetStatus())
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return seen{}, errors.New("no TLS peer info on a successful call")
	}
	s := seen{server: ti.State.PeerCertificates[0], client: ts.clientLeaf.Load()}
	if s.client == nil {
		return seen{}, errors.New("server saw no client certificate on a successful call")
	}
	return s, nil
}

// mustTalk asserts a call succeeds with exactly the expected certificates.
func (ts *testServer) mustTalk(t testing.TB, cfg *tls.Config, wantServer, wantClient keyPair) {
	t.Helper()
	s, err := ts.check(t, cfg, "localhost")
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	if !bytes.Equal(s.server.Raw, wantServer.cert.Raw) {
		t.Errorf("client saw server cert %q from %q, want %q from %q",
			s.server.Subject.CommonName, s.server.Issuer.CommonName, wantServer.cert.Subject.CommonName, wantServer.cert.Issuer.CommonName)
	}
	if !bytes.Equal(s.client.Raw, wantClient.cert.Raw) {
		t.Errorf("server saw client cert %q from %q, want %q from %q",
			s.client.Subject.CommonName, s.client.Issuer.CommonName, wantClient.cert.Subject.CommonName, wantClient.cert.Issuer.CommonName)
	}
}

// mustFail asserts a call is refused. clientErr must be in the error the
// call returns, serverErr in a handshake error of the server; "" skips.
func (ts *testServer) mustFail(t testing.TB, cfg *tls.Config, authority, clientErr, serverErr string) {
	t.Helper()
	_, err := ts.check(t, cfg, authority)
	if err == nil {
		t.Fatalf("call succeeded, want a refusal")
	}
	if !strings.Contains(err.Error(), clientErr) {
		t.Fatalf("call error %q does not contain %q", err, clientErr)
	}
	if serverErr == "" {
		return
	}
	timeout := time.After(5 * time.Second)
	var got []string
	for {
		select {
		case e := <-ts.hsErrs:
			if strings.Contains(e.Error(), serverErr) {
				return
			}
			got = append(got, e.Error())
		case <-timeout:
			t.Fatalf("no server handshake error contains %q; got %q (call error %q)", serverErr, got, err)
		}
	}
}

// fakeClock is a settable clock for the rate limit.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
