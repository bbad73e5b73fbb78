// Package integration runs the real podiam server binary against a real
// kube-apiserver, etcd and moto (as STS), and talks to it over mutual TLS as
// an agent would.
package integration

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/podiam/podiam/pkg/tlsconfig"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"

	"github.com/podiam/podiam/test/syncbuf"
)

var podiamBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "podiam-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	podiamBin = filepath.Join(dir, "podiam")
	// Benchmarks measure the binary as shipped, without the race detector.
	race := "-race"
	if testenv.Benchmarking() {
		race = "-race=false"
	}
	build := exec.Command("go", "build", race, "-o", podiamBin, "../../cmd/podiam")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build podiam:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// serverProc is a running `podiam server`.
type serverProc struct {
	Addr        string
	MetricsAddr string
	PKI         *testenv.PKI
	Pid         int
	logs        *syncbuf.Buffer
}

// Logs returns what the server has logged so far.
func (s *serverProc) Logs() string { return s.logs.String() }

// startServer runs the podiam server against kube and moto and waits until
// its health service reports SERVING.
func startServer(t testing.TB, kube *testenv.Kube, moto *testenv.Moto, args ...string) *serverProc {
	t.Helper()
	pki := testenv.NewPKI(t, t.TempDir())
	port, mport := testenv.FreePort(t), testenv.FreePort(t)
	sp := &serverProc{
		Addr:        fmt.Sprintf("127.0.0.1:%d", port),
		MetricsAddr: fmt.Sprintf("127.0.0.1:%d", mport),
		PKI:         pki,
		logs:        &syncbuf.Buffer{},
	}
	full := append([]string{"server",
		"--json-log", "--level=debug",
		"--bind=" + sp.Addr,
		"--cert=" + pki.ServerCert, "--key=" + pki.ServerKey, "--ca=" + pki.CA,
		"--kubeconfig=" + kube.KubeconfigPath,
		"--prometheus-listen-addr=" + sp.MetricsAddr,
		"--drain-time=0s",
	}, args...)
	cmd := exec.Command(podiamBin, full...)
	cmd.Env = append(os.Environ(), moto.Env()...)
	cmd.Stdout, cmd.Stderr = sp.logs, sp.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp.Pid = cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("server logs:\n%s", tail(sp.Logs(), 60))
		}
	})

	conn := dial(t, sp, pki.AgentCert, pki.AgentKey, "")
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("server exited early:\n%s", sp.Logs())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return sp
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not serving after 60s (last: %v %v):\n%s", resp, err, tail(sp.Logs(), 60))
		}
		time.Sleep(100 * time.Millisecond)
	}
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

func tail(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
