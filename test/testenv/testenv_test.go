package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdlatest "k8s.io/client-go/tools/clientcmd/api/latest"

	"github.com/podiam/podiam/pkg/creds"
)

// assertGroupsGone checks that cleanup killed every process group, so no
// etcd, apiserver or python outlives the test.
func assertGroupsGone(t *testing.T, pgids []int) {
	t.Helper()
	if len(pgids) == 0 {
		t.Fatal("no process groups were recorded")
	}
	for _, pgid := range pgids {
		if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process group %d still alive after cleanup (kill 0: %v)", pgid, err)
		}
	}
}

func TestKube(t *testing.T) {
	var pgids []int
	t.Run("apiserver", func(t *testing.T) {
		k := StartKube(t, KubeOptions{})
		pgids = append(pgids, k.etcd.Pid(), k.apiserver.Pid())
		ctx := t.Context()
		if !strings.HasPrefix(k.URL, "https://127.0.0.1:") {
			t.Errorf("URL = %q, want https://127.0.0.1:port", k.URL)
		}

		k.CreateNamespace(t, "team-a", map[string]string{"iam.amazonaws.com/permitted": "app-.*"})
		ns, err := k.Client.CoreV1().Namespaces().Get(ctx, "team-a", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get namespace: %v", err)
		}
		if got := ns.Annotations["iam.amazonaws.com/permitted"]; got != "app-.*" {
			t.Errorf("permitted annotation = %q", got)
		}
		if _, err := k.Client.CoreV1().ServiceAccounts("team-a").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Errorf("default serviceaccount: %v", err)
		}

		created := k.CreatePod(t, PodSpec{
			Namespace:   "team-a",
			Name:        "web",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-web"},
			NodeName:    "node-1",
			PodIPs:      []string{"10.244.1.5", "fd00::5"},
			HostIPs:     []string{"192.168.10.2"},
		})
		if created.Status.PodIP != "10.244.1.5" {
			t.Errorf("CreatePod returned podIP %q", created.Status.PodIP)
		}
		pod, err := k.Client.CoreV1().Pods("team-a").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get pod: %v", err)
		}
		if pod.Status.Phase != corev1.PodRunning {
			t.Errorf("phase = %q, want Running", pod.Status.Phase)
		}
		var podIPs []string
		for _, ip := range pod.Status.PodIPs {
			podIPs = append(podIPs, ip.IP)
		}
		if pod.Status.PodIP != "10.244.1.5" || !slices.Equal(podIPs, []string{"10.244.1.5", "fd00::5"}) {
			t.Errorf("podIP %q podIPs %v", pod.Status.PodIP, podIPs)
		}
		if pod.Status.HostIP != "192.168.10.2" || len(pod.Status.HostIPs) != 1 {
			t.Errorf("hostIP %q hostIPs %v", pod.Status.HostIP, pod.Status.HostIPs)
		}
		if pod.Spec.ServiceAccountName != "default" || pod.Spec.NodeName != "node-1" {
			t.Errorf("serviceAccountName %q nodeName %q", pod.Spec.ServiceAccountName, pod.Spec.NodeName)
		}
		if got := pod.Annotations["iam.amazonaws.com/role"]; got != "app-web" {
			t.Errorf("role annotation = %q", got)
		}

		// A pod under its own service account and a hostNetwork pod.
		worker := k.CreatePod(t, PodSpec{Namespace: "team-a", Name: "worker", ServiceAccount: "worker", NodeName: "node-1"})
		if worker.Spec.ServiceAccountName != "worker" || worker.Status.PodIP != "" {
			t.Errorf("worker: serviceAccountName %q podIP %q", worker.Spec.ServiceAccountName, worker.Status.PodIP)
		}
		host := k.CreatePod(t, PodSpec{
			Namespace: "team-a", Name: "host", NodeName: "node-1", HostNetwork: true,
			PodIPs: []string{"192.168.10.2"}, HostIPs: []string{"192.168.10.2"},
		})
		if !host.Spec.HostNetwork || host.Status.PodIP != "192.168.10.2" {
			t.Errorf("host pod: hostNetwork %v podIP %q", host.Spec.HostNetwork, host.Status.PodIP)
		}

		k.SetPodStatus(t, "team-a", "worker", corev1.PodSucceeded, []string{"10.244.1.6"}, []string{"192.168.10.2"})
		worker, err = k.Client.CoreV1().Pods("team-a").Get(ctx, "worker", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get worker: %v", err)
		}
		if worker.Status.Phase != corev1.PodSucceeded || worker.Status.PodIP != "10.244.1.6" {
			t.Errorf("worker status: phase %q podIP %q", worker.Status.Phase, worker.Status.PodIP)
		}

		// No kubelet: a bound pod deleted with a grace period stays terminating.
		k.DeletePod(t, "team-a", "web", 30)
		pod, err = k.Client.CoreV1().Pods("team-a").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get terminating pod: %v", err)
		}
		if pod.DeletionTimestamp == nil {
			t.Error("pod deleted with grace period has no deletionTimestamp")
		}
		k.DeletePod(t, "team-a", "web", 0)
		if _, err := k.Client.CoreV1().Pods("team-a").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after delete with grace 0: %v, want NotFound", err)
		}

		// The kubeconfig is what podiam server --kubeconfig gets.
		fromFile, err := kubernetes.NewForConfig(loadKubeconfig(t, k.KubeconfigPath))
		if err != nil {
			t.Fatalf("client from kubeconfig: %v", err)
		}
		list, err := fromFile.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list namespaces through kubeconfig (verifies TLS and token): %v", err)
		}
		if !slices.ContainsFunc(list.Items, func(ns corev1.Namespace) bool { return ns.Name == "team-a" }) {
			t.Error("namespace team-a missing from list through kubeconfig")
		}
	})
	assertGroupsGone(t, pgids)
}

// loadKubeconfig decodes the file as clientcmd.Load does and follows its
// current context (clientcmd itself is not linked, see StartKube).
func loadKubeconfig(t *testing.T, path string) *rest.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read kubeconfig: %v", err)
	}
	obj, _, err := clientcmdlatest.Codec.Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("decode kubeconfig: %v", err)
	}
	cfg, ok := obj.(*clientcmdapi.Config)
	if !ok {
		t.Fatalf("kubeconfig decoded to %T", obj)
	}
	kctx := cfg.Contexts[cfg.CurrentContext]
	if kctx == nil || cfg.Clusters[kctx.Cluster] == nil || cfg.AuthInfos[kctx.AuthInfo] == nil {
		t.Fatalf("kubeconfig current context %q is incomplete", cfg.CurrentContext)
	}
	cluster, user := cfg.Clusters[kctx.Cluster], cfg.AuthInfos[kctx.AuthInfo]
	return &rest.Config{
		Host:            cluster.Server,
		BearerToken:     user.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cluster.CertificateAuthorityData},
	}
}

func TestMoto(t *testing.T) {
	var pgids []int
	var endpoint string
	t.Run("sts", func(t *testing.T) {
		m := StartMoto(t, MotoOptions{})
		pgids = append(pgids, m.proc.Pid())
		endpoint = m.Endpoint
		ctx := t.Context()
		if !slices.Contains(m.Env(), "AWS_ENDPOINT_URL_STS="+m.Endpoint) {
			t.Errorf("Env() = %v lacks the endpoint", m.Env())
		}

		out, err := m.STSClient(m.RootCredentials()).AssumeRole(ctx, &sts.AssumeRoleInput{
			RoleArn:         aws.String("arn:aws:iam::123456789012:role/podiam-test"),
			RoleSessionName: aws.String("testenv-session"),
			DurationSeconds: aws.Int32(900),
		})
		if err != nil {
			t.Fatalf("AssumeRole: %v", err)
		}
		c := out.Credentials
		if c == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SecretAccessKey) == "" || aws.ToString(c.SessionToken) == "" {
			t.Fatalf("AssumeRole returned incomplete credentials: %+v", c)
		}
		if left := time.Until(aws.ToTime(c.Expiration)); left < 10*time.Minute || left > 16*time.Minute {
			t.Errorf("expiration %v is %v away, want about 15m", c.Expiration, left)
		}
		arn, err := m.CallerIdentity(ctx, creds.Credentials{
			AccessKeyID:     aws.ToString(c.AccessKeyId),
			SecretAccessKey: aws.ToString(c.SecretAccessKey),
			SessionToken:    aws.ToString(c.SessionToken),
		})
		if err != nil {
			t.Fatalf("CallerIdentity: %v", err)
		}
		if want := "arn:aws:sts::123456789012:assumed-role/podiam-test/testenv-session"; arn != want {
			t.Errorf("CallerIdentity = %q, want %q", arn, want)
		}
	})
	assertGroupsGone(t, pgids)
	if endpoint != "" {
		// The port must be closed too, not only the process reaped.
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(endpoint, "http://"), time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("moto still listening on %s after cleanup", endpoint)
		}
	}
}

func TestPKIMutualTLS(t *testing.T) {
	p := NewPKI(t, t.TempDir(), "10.9.8.7", "podiam.example")
	server, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
	if err != nil {
		t.Fatalf("server key pair: %v", err)
	}
	caPool := loadPool(t, p.CA)
	leaf, err := x509.ParseCertificate(server.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "podiam-server", "127.0.0.1", "::1", "10.9.8.7", "podiam.example"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("server cert does not cover %s: %v", name, err)
		}
	}

	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientCAs:    caPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if err := conn.(*tls.Conn).Handshake(); err == nil {
					_, _ = conn.Write([]byte("ok"))
				}
			}()
		}
	}()

	dial := func(certFile, keyFile string) error {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
			Certificates: []tls.Certificate{cert},
			RootCAs:      caPool,
			ServerName:   "podiam-server",
			MinVersion:   tls.VersionTLS13,
		})
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		// With TLS 1.3 the server's verdict on the client arrives with the
		// first read.
		got, err := io.ReadAll(conn)
		if err != nil {
			return err
		}
		if string(got) != "ok" {
			return fmt.Errorf("read %q", got)
		}
		return nil
	}
	if err := dial(p.AgentCert, p.AgentKey); err != nil {
		t.Errorf("agent certificate refused: %v", err)
	}
	if err := dial(p.OtherCert, p.OtherKey); err == nil {
		t.Error("certificate from another CA was accepted")
	}
	// As deploy/ issues it: server auth only, refused as a client.
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("server certificate extended key usages %v, want server auth only", leaf.ExtKeyUsage)
	}
	if err := dial(p.ServerCert, p.ServerKey); err == nil {
		t.Error("the server certificate was accepted as a client certificate")
	}
	otherPool := loadPool(t, p.OtherCA)
	otherLeaf := loadLeaf(t, p.OtherCert)
	if _, err := otherLeaf.Verify(x509.VerifyOptions{Roots: otherPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("other cert does not chain to OtherCA: %v", err)
	}
}

func loadPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("no certificates in %s", path)
	}
	return pool
}

func loadLeaf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(path, strings.TrimSuffix(path, ".pem")+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// fatalRecorder captures Fatalf so Need's failure path can be observed
// without ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestNeed(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	Need(rec, "etcd", "kube-apiserver", "moto_server", "ip")
	if rec.msg != "" {
		t.Errorf("Need failed for binaries this machine must have: %s", rec.msg)
	}
	rec = &fatalRecorder{TB: t}
	Need(rec, "etcd", "podiam-no-such-binary")
	if !strings.Contains(rec.msg, "podiam-no-such-binary") || !strings.Contains(rec.msg, "hack/install-deps.sh") || strings.Contains(rec.msg, "etcd (") {
		t.Errorf("Need message = %q, want only the missing binary with an install hint", rec.msg)
	}
}

func TestBinDir(t *testing.T) {
	dir := BinDir()
	if filepath.Base(dir) != "bin" {
		t.Fatalf("BinDir() = %q", dir)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "go.mod")); err != nil {
		t.Errorf("BinDir() = %q is not next to go.mod: %v", dir, err)
	}
}

func TestFreePort(t *testing.T) {
	ports := freePorts(t, 5)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d returned twice in %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("port %d not free: %v", p, err)
			continue
		}
		l.Close()
	}
}
