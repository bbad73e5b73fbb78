// Package integration runs the real podiam server binary against a real
// kube-apiserver, etcd and moto (as STS), and talks to it over mutual TLS as
// an agent would.
package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/podiam/podiam/pkg/tlsconfig"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

var (
	podiamBin string
	// race: podiam runs with the race detector, except in benchmarks, which
	// measure the binary as shipped.
	race bool
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "podiam-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	podiamBin = filepath.Join(dir, "podiam")
	race = !testenv.Benchmarking()
	if err := testenv.BuildPodiam(context.Background(), podiamBin, race); err != nil {
		fmt.Fprintln(os.Stderr, "build podiam:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// serverProc is a running `podiam server`.
type serverProc struct {
	*testenv.Proc
	Addr        string
	MetricsAddr string
	PKI         *testenv.PKI
}

// startServer runs the podiam server against kube and moto and waits until
// its health service reports SERVING.
func startServer(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, args ...string) *serverProc {
	t.Helper()
	return startServerWith(t, kube, moto, nil, nil, args...)
}

// startServerEnv is startServer with variables added to the server's
// environment (after moto's, so they win).
func startServerEnv(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, env []string, args ...string) *serverProc {
	t.Helper()
	return startServerWith(t, kube, moto, nil, env, args...)
}

// restartServer starts a server as startServer does; with prev, on prev's
// address and with its PKI, as a server pod restarted behind one Service
// would be, so that agents connected to prev reconnect to it.
func restartServer(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, prev *serverProc, args ...string) *serverProc {
	t.Helper()
	return startServerWith(t, kube, moto, prev, nil, args...)
}

// startServerWith spawns a server (spawnServerWith) and waits until its
// health service reports SERVING.
func startServerWith(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, prev *serverProc, env []string, args ...string) *serverProc {
	t.Helper()
	sp := spawnServerWith(t, kube, moto, prev, env, args...)
	conn := dial(t, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, "")
	testenv.Ready(t, 60*time.Second, "server SERVING", func(ctx context.Context) error {
		return wantHealth(ctx, conn, healthpb.HealthCheckResponse_SERVING)
	}, sp.Proc)
	return sp
}

// wantHealth asks the server's gRPC health service, as agents do, and
// fails unless it answers want.
func wantHealth(ctx context.Context, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != want {
		return fmt.Errorf("health: %v, want %v", resp.GetStatus(), want)
	}
	return nil
}

// spawnServer runs the podiam server against kube and moto, and stops it
// when the test ends, without waiting for anything.
func spawnServer(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, args ...string) *serverProc {
	t.Helper()
	return spawnServerWith(t, kube, moto, nil, nil, args...)
}

// spawnServerWith is spawnServer on prev's address and with its PKI when
// prev is set, with env added to the server's environment.
func spawnServerWith(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, prev *serverProc, env []string, args ...string) *serverProc {
	t.Helper()
	dir := t.TempDir()
	sp := &serverProc{}
	if prev != nil {
		sp.Addr, sp.PKI = prev.Addr, prev.PKI
	} else {
		sp.Addr, sp.PKI = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), testenv.NewPKI(t, dir)
	}
	sp.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pki := sp.PKI
	full := append([]string{"server",
		"--json-log", "--level=debug",
		"--bind=" + sp.Addr,
		"--cert=" + pki.ServerCert, "--key=" + pki.ServerKey, "--ca=" + pki.CA,
		"--kubeconfig=" + kube.KubeconfigPath,
		"--prometheus-listen-addr=" + sp.MetricsAddr,
		"--drain-time=0s",
	}, args...)
	p, err := testenv.Spawn(testenv.ProcSpec{Name: "server", Path: podiamBin, Args: full, Env: append(moto.Env(), env...),
		Log: filepath.Join(dir, "server.log")})
	if err != nil {
		t.Fatal(err)
	}
	sp.Proc = p
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			report := t.Logf
			if race {
				report = t.Errorf // a server that found a data race exits with status 66
			}
			report("server stop: %v", err)
		}
		testenv.LogTails(t, p)
	})
	return sp
}

// probe GETs path from the server's plain-HTTP listener (metrics and
// probes), as the kubelet does, and returns the status code and body.
func probe(ctx context.Context, sp *serverProc, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+sp.MetricsAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// dial connects as an agent with the given client certificate, optionally
// from a specific local address (to play an agent on another node).
func dial(t testing.TB, sp *serverProc, cert, key, localIP string) *grpc.ClientConn {
	t.Helper()
	tlsCfg, err := tlsconfig.Client(tlsconfig.Config{
		Files:      tlsconfig.Files{Cert: cert, Key: key, CA: sp.PKI.CA},
		ServerName: "127.0.0.1",
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}
	if localIP != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient("passthrough:///"+sp.Addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func credsClient(t testing.TB, sp *serverProc) pb.CredentialsClient {
	return pb.NewCredentialsClient(dial(t, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, ""))
}

// metric returns the value of a counter or gauge with the given labels
// from the server's /metrics, or 0 when the series does not exist.
func metric(t testing.TB, sp *serverProc, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := testenv.ScrapeMetric(context.Background(), "http://"+sp.MetricsAddr+"/metrics", name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitWatchCurrent waits until the server's pod watch counts as current:
// until then (the watch's first seconds too) lookups go to the API server.
func waitWatchCurrent(t testing.TB, sp *serverProc, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for metric(t, sp, "podiam_server_pod_watch_current", nil) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("pod watch not current after %s", timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
