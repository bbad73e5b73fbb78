package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	"github.com/podiam/podiam/pkg/tlsconfig"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

const (
	account = "123456789012"
	node    = "127.0.0.1"
)

func roleARN(name string) string { return "arn:aws:iam::" + account + ":role/" + name }

// TestServer exercises the request path end to end against real parts:
// identity from the API server, policy, node binding, STS through moto.
func TestServer(t *testing.T) {
	t.Parallel() // its own kube-apiserver, moto and server, like the fault tests
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	sp := startServer(t, kube, moto,
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn-autodetect",
		"--session-duration=15m", "--session-refresh=5m",
		"--agent-identity=podiam-agent",
		// Above the 900 ms default: in CI this test shares two cores with
		// the e2e suite and the demo, and a status update can take longer
		// than that to reach the server's watch.
		"--pod-wait=3s")
	client := credsClient(t, sp)

	// The expression is matched against the resolved ARN.
	kube.CreateNamespace(t, "allowed", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*") + "|" + roleARN("other")})
	// KIAM anchored this as ^web|db$, which also allowed web-admin.
	kube.CreateNamespace(t, "pair", map[string]string{"iam.amazonaws.com/permitted": roleARN("web") + "|" + roleARN("db")})
	kube.CreateNamespace(t, "closed", nil)
	kube.CreateNamespace(t, "broken", map[string]string{"iam.amazonaws.com/permitted": "app-(["})

	get := func(t *testing.T, ip string) (*pb.GetPodCredentialsResponse, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
	}
	wantRefusal := func(t *testing.T, err error, code codes.Code, reason pb.Reason) {
		t.Helper()
		if status.Code(err) != code || refusal.Reason(err) != reason {
			t.Fatalf("got %v (reason %v), want %v %v", err, refusal.Reason(err), code, reason)
		}
	}

	t.Run("permitted pod gets its role through the chained base role", func(t *testing.T) {
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "web",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-web"},
			NodeName:    "n1", PodIPs: []string{"10.0.0.10"}, HostIPs: []string{node}})
		resp, err := get(t, "10.0.0.10")
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetPod().GetName() != "web" || resp.GetPod().GetRoleArn() != roleARN("app-web") || resp.GetPod().GetUid() == "" {
			t.Fatalf("pod = %v", resp.GetPod())
		}
		c := resp.GetCredentials()
		left := time.Until(c.GetExpiration().AsTime())
		if left < 9*time.Minute || left > 16*time.Minute {
			t.Fatalf("expiration %v is %v away, want about the 15m session", c.GetExpiration().AsTime(), left)
		}
		arn, err := moto.CallerIdentity(context.Background(), creds.Credentials{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()})
		if err != nil {
			t.Fatal(err)
		}
		want := "arn:aws:sts::" + account + ":assumed-role/app-web/kiam-kiam"
		if arn != want {
			t.Fatalf("caller identity %q, want %q", arn, want)
		}
		logs := sp.Logs()
		if !strings.Contains(logs, `"msg":"credentials issued"`) || !strings.Contains(logs, c.GetAccessKeyId()) {
			t.Fatalf("no audit line with the access key id")
		}
		if strings.Contains(logs, c.GetSecretAccessKey()) || strings.Contains(logs, c.GetSessionToken()) {
			t.Fatal("secret material in the server log")
		}
	})

	t.Run("full ARN, session name and external id annotations", func(t *testing.T) {
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "other",
			Annotations: map[string]string{
				"iam.amazonaws.com/role":         roleARN("other"),
				"iam.amazonaws.com/session-name": "batch",
				"iam.amazonaws.com/external-id":  "ext-123",
			},
			PodIPs: []string{"10.0.0.11"}, HostIPs: []string{node}})
		resp, err := get(t, "10.0.0.11")
		if err != nil {
			t.Fatal(err)
		}
		c := resp.GetCredentials()
		arn, err := moto.CallerIdentity(context.Background(), creds.Credentials{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()})
		if err != nil || arn != "arn:aws:sts::"+account+":assumed-role/other/kiam-batch" {
			t.Fatalf("caller identity %q %v", arn, err)
		}
	})

	t.Run("denials", func(t *testing.T) {
		cases := []struct {
			name, ns, ip string
			ann          map[string]string
			code         codes.Code
			reason       pb.Reason
		}{
			{"role outside the permitted expression", "allowed", "10.0.1.1",
				map[string]string{"iam.amazonaws.com/role": "admin"}, codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED},
			{"a|b is anchored as a group", "pair", "10.0.1.2",
				map[string]string{"iam.amazonaws.com/role": "web-admin"}, codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED},
			{"namespace without annotation", "closed", "10.0.1.3",
				map[string]string{"iam.amazonaws.com/role": "app-web"}, codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED},
			{"invalid expression", "broken", "10.0.1.4",
				map[string]string{"iam.amazonaws.com/role": "app-web"}, codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED},
			{"invalid role annotation", "allowed", "10.0.1.5",
				map[string]string{"iam.amazonaws.com/role": "app-../../x"}, codes.PermissionDenied, pb.Reason_REASON_INVALID_ANNOTATION},
			{"invalid external id", "allowed", "10.0.1.6",
				map[string]string{"iam.amazonaws.com/role": "app-web", "iam.amazonaws.com/external-id": "x"}, codes.PermissionDenied, pb.Reason_REASON_INVALID_ANNOTATION},
			{"no role annotation", "allowed", "10.0.1.7", nil, codes.NotFound, pb.Reason_REASON_NO_ROLE},
			{"role in another partition's ARN is still policy checked", "allowed", "10.0.1.8",
				map[string]string{"iam.amazonaws.com/role": "arn:aws-cn:iam::" + account + ":role/admin"}, codes.PermissionDenied, pb.Reason_REASON_POLICY_DENIED},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				name := fmt.Sprintf("denied-%d", i)
				kube.CreatePod(t, testenv.PodSpec{Namespace: tc.ns, Name: name, Annotations: tc.ann,
					PodIPs: []string{tc.ip}, HostIPs: []string{node}})
				_, err := get(t, tc.ip)
				wantRefusal(t, err, tc.code, tc.reason)
			})
		}
		t.Run("unknown address after the wait", func(t *testing.T) {
			start := time.Now()
			_, err := get(t, "10.0.9.9")
			wantRefusal(t, err, codes.NotFound, pb.Reason_REASON_POD_UNKNOWN)
			if d := time.Since(start); d < 2900*time.Millisecond || d > 8*time.Second {
				t.Fatalf("unknown pod answered after %v, want about the 3s --pod-wait", d)
			}
		})
		t.Run("invalid expression leaves an event on the pod", func(t *testing.T) {
			deadline := time.Now().Add(10 * time.Second)
			for {
				evs, err := kube.Client.CoreV1().Events("broken").List(context.Background(), metav1.ListOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for _, ev := range evs.Items {
					if ev.InvolvedObject.Name == "denied-3" && ev.Type == corev1.EventTypeWarning &&
						strings.Contains(ev.Message, "invalid") {
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no warning event on the denied pod: %+v", evs.Items)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	})

	t.Run("request before the pod has its address succeeds once it is set", func(t *testing.T) {
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "starting",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-start"}})
		errc := make(chan error, 1)
		go func() {
			resp, err := get(t, "10.0.2.1")
			if err == nil && resp.GetPod().GetName() != "starting" {
				err = fmt.Errorf("got pod %v", resp.GetPod())
			}
			errc <- err
		}()
		time.Sleep(200 * time.Millisecond)
		kube.SetPodStatus(t, "allowed", "starting", corev1.PodRunning, []string{"10.0.2.1"}, []string{node})
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("IP reuse never returns the old pod's role", func(t *testing.T) {
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "first",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-first"},
			PodIPs:      []string{"10.0.3.1"}, HostIPs: []string{node}})
		if resp, err := get(t, "10.0.3.1"); err != nil || resp.GetPod().GetRoleArn() != roleARN("app-first") {
			t.Fatalf("first pod: %v %v", resp, err)
		}
		// The first pod finishes; a new pod gets its address.
		kube.SetPodStatus(t, "allowed", "first", corev1.PodSucceeded, []string{"10.0.3.1"}, []string{node})
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "second",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-second"},
			PodIPs:      []string{"10.0.3.1"}, HostIPs: []string{node}})
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := get(t, "10.0.3.1")
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetPod().GetRoleArn(); got == roleARN("app-second") {
				break
			} else if got != roleARN("app-first") || time.Now().After(deadline) {
				t.Fatalf("got role %s", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// A third live pod claiming the same address makes it ambiguous.
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "third",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-third"},
			PodIPs:      []string{"10.0.3.1"}, HostIPs: []string{node}})
		deadline = time.Now().Add(5 * time.Second)
		for {
			_, err := get(t, "10.0.3.1")
			if status.Code(err) == codes.FailedPrecondition {
				wantRefusal(t, err, codes.FailedPrecondition, pb.Reason_REASON_IP_CONFLICT)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("two live pods on one address: got %v, want conflict", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("deleted pod stops getting credentials after its grace period", func(t *testing.T) {
		// Only a pod bound to a node waits out its grace period.
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "leaving", NodeName: "n1",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-leaving"},
			PodIPs:      []string{"10.0.4.1"}, HostIPs: []string{node}})
		if _, err := get(t, "10.0.4.1"); err != nil {
			t.Fatal(err)
		}
		// Without a kubelet the object stays until its grace ends; during
		// the grace period its shutdown handler still gets credentials.
		kube.DeletePod(t, "allowed", "leaving", 3)
		time.Sleep(300 * time.Millisecond)
		if _, err := get(t, "10.0.4.1"); err != nil {
			t.Fatalf("terminating pod within grace: %v", err)
		}
		time.Sleep(3 * time.Second)
		_, err := get(t, "10.0.4.1")
		wantRefusal(t, err, codes.NotFound, pb.Reason_REASON_POD_UNKNOWN)
	})

	t.Run("agent on another node is refused", func(t *testing.T) {
		other := pb.NewCredentialsClient(dial(t, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, "127.0.0.2"))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := other.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.0.0.10"})
		wantRefusal(t, err, codes.PermissionDenied, pb.Reason_REASON_WRONG_NODE)
	})

	t.Run("agent watching another node's pods is refused", func(t *testing.T) {
		other := pb.NewCredentialsClient(dial(t, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, "127.0.0.2"))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stream, err := other.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: node})
		if err == nil {
			_, err = stream.Recv()
		}
		wantRefusal(t, err, codes.PermissionDenied, pb.Reason_REASON_WRONG_NODE)
		// Its own node's stream is served.
		own, err := other.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: "127.0.0.2"})
		if err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := own.Recv()
			if err != nil {
				t.Fatalf("own node's stream: %v", err)
			}
			if ev.GetType() == pb.PodEvent_TYPE_SYNCED {
				break
			}
		}
	})

	t.Run("a certificate from the CA that names no agent identity is refused", func(t *testing.T) {
		stranger := pb.NewCredentialsClient(dial(t, sp, sp.PKI.StrangerCert, sp.PKI.StrangerKey, ""))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := stranger.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.0.0.10"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("GetPodCredentials with a stranger's certificate: %v, want PermissionDenied", err)
		}
		stream, err := stranger.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: node})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("WatchNodePods with a stranger's certificate: %v, want PermissionDenied", err)
		}
		if !strings.Contains(sp.Logs(), "some-workload") {
			t.Error("the refusal is not logged with the certificate's name")
		}
	})

	// The server's certificate is issued for server auth only (testenv's
	// PKI as deploy/ and hack/gen-certs.sh issue it), so whoever holds the
	// server's key still cannot be an agent, or any client: the TLS
	// handshake refuses it before a single RPC, the health service too.
	t.Run("the server's own certificate cannot act as an agent", func(t *testing.T) {
		tlsCfg, err := tlsconfig.Client(tlsconfig.Config{
			Files:      tlsconfig.Files{Cert: sp.PKI.ServerCert, Key: sp.PKI.ServerKey, CA: sp.PKI.CA},
			ServerName: "127.0.0.1",
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tlsCfg.NextProtos = []string{"h2"} // as a gRPC client offers
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sp.Addr, tlsCfg)
		if err == nil {
			// TLS 1.3: the client finishes first; the server's verdict on
			// its certificate is what the first read returns.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("TLS handshake with the server's certificate as the client's: %v, want the server's bad certificate alert", err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		asServer := dial(t, sp, sp.PKI.ServerCert, sp.PKI.ServerKey, "")
		_, err = pb.NewCredentialsClient(asServer).GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.0.0.10"})
		// Unavailable: the connection never carries a call. Which error
		// text comes with it depends on timing (with TLS 1.3 the client
		// may write before it reads the server's alert, and see a broken
		// pipe); the raw handshake above checks the alert itself.
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("GetPodCredentials with the server's certificate: %v, want Unavailable from the refused handshake", err)
		}
		stream, err := pb.NewCredentialsClient(asServer).WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: node})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("WatchNodePods with the server's certificate: %v, want Unavailable", err)
		}
		if err := wantHealth(ctx, asServer, healthpb.HealthCheckResponse_SERVING); status.Code(err) != codes.Unavailable {
			t.Fatalf("health check with the server's certificate: %v, want Unavailable", err)
		}
		// Refused at the handshake, the calls never reach the service:
		// the access log shows no decision for them.
		if strings.Contains(sp.Logs(), `"certificate_names":["podiam-server"`) {
			t.Error("a call with the server's certificate got past the handshake")
		}
	})

	t.Run("a static (mirror) pod gets no role, with an Event", func(t *testing.T) {
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "static-web-n1",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-web", corev1.MirrorPodAnnotationKey: "d41d8cd98f00b204e9800998ecf8427e"},
			NodeName:    "n1", PodIPs: []string{"10.0.6.1"}, HostIPs: []string{node}})
		before := metric(t, sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role"})
		_, err := get(t, "10.0.6.1")
		wantRefusal(t, err, codes.PermissionDenied, pb.Reason_REASON_STATIC_POD)
		if after := metric(t, sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role"}); after != before {
			t.Errorf("STS was called for a static pod (%v AssumeRole calls)", after-before)
		}
		if n := metric(t, sp, "podiam_server_denials_total", map[string]string{"reason": "static_pod"}); n < 1 {
			t.Errorf("denials{reason=static_pod} = %v", n)
		}
		testenv.Eventually(t, 10*time.Second, "an Event on the static pod", func() error {
			evs, err := kube.Client.CoreV1().Events("allowed").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=static-web-n1"})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.Reason == "IAMRoleDenied" && strings.Contains(ev.Message, "static") {
					return nil
				}
			}
			return fmt.Errorf("events %v", evs.Items)
		})
	})

	t.Run("200 concurrent first requests cause one AssumeRole", func(t *testing.T) {
		before := metric(t, sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role"})
		kube.CreatePod(t, testenv.PodSpec{Namespace: "allowed", Name: "popular",
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-popular"}})
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		keys := make(chan string, 200)
		for range 200 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := get(t, "10.0.5.1")
				if err != nil {
					errs <- err
					return
				}
				keys <- resp.GetCredentials().GetAccessKeyId()
			}()
		}
		time.Sleep(100 * time.Millisecond)
		kube.SetPodStatus(t, "allowed", "popular", corev1.PodRunning, []string{"10.0.5.1"}, []string{node})
		wg.Wait()
		close(errs)
		close(keys)
		for err := range errs {
			t.Fatal(err)
		}
		distinct := map[string]bool{}
		for k := range keys {
			distinct[k] = true
		}
		after := metric(t, sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role"})
		if after-before != 1 || len(distinct) != 1 {
			t.Fatalf("AssumeRole calls: %v, distinct keys: %d; want 1 and 1", after-before, len(distinct))
		}
	})

	t.Run("mutual TLS refuses clients without a certificate or from another CA", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		other := pb.NewCredentialsClient(dial(t, sp, sp.PKI.OtherCert, sp.PKI.OtherKey, ""))
		if _, err := other.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.0.0.10"}); status.Code(err) != codes.Unavailable {
			t.Fatalf("client from another CA: %v", err)
		}
		caPEM, err := os.ReadFile(sp.PKI.CA)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		conn, err := grpc.NewClient("passthrough:///"+sp.Addr, grpc.WithTransportCredentials(
			credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := pb.NewCredentialsClient(conn).GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.0.0.10"}); status.Code(err) != codes.Unavailable {
			t.Fatalf("client without certificate: %v", err)
		}
	})

	t.Run("podiam health checks the server over mutual TLS", func(t *testing.T) {
		health := func(cert, key string) (string, error) {
			out, err := exec.Command(podiamBin, "health", "--cert="+cert, "--key="+key, "--ca="+sp.PKI.CA,
				"--server-address="+sp.Addr, "--gateway-timeout-creation=1s", "--timeout=3s").CombinedOutput()
			return string(out), err
		}
		if out, err := health(sp.PKI.AgentCert, sp.PKI.AgentKey); err != nil || !strings.Contains(out, "healthy") {
			t.Fatalf("health: %v %s", err, out)
		}
		// The health service stays open to every client certificate the
		// CA signed, agent or not.
		if out, err := health(sp.PKI.StrangerCert, sp.PKI.StrangerKey); err != nil || !strings.Contains(out, "healthy") {
			t.Fatalf("health with a non-agent certificate from the CA: %v %s", err, out)
		}
		if out, err := health(sp.PKI.OtherCert, sp.PKI.OtherKey); err == nil {
			t.Fatalf("health with a certificate from another CA succeeded: %s", out)
		}
		// The server's own certificate is no client certificate: KIAM's
		// way of probing (health with the server's files) needs one
		// issued for client auth too; podiam's manifests probe /readyz.
		if out, err := health(sp.PKI.ServerCert, sp.PKI.ServerKey); err == nil {
			t.Fatalf("health with the server's own certificate succeeded: %s", out)
		}
	})

	t.Run("metrics have bounded labels", func(t *testing.T) {
		if n := metric(t, sp, "podiam_server_pods", nil); n < 5 {
			t.Fatalf("podiam_server_pods = %v", n)
		}
		if n := metric(t, sp, "podiam_server_denials_total", map[string]string{"reason": "not_permitted"}); n < 1 {
			t.Fatalf("not_permitted denials = %v", n)
		}
	})
}

// TestServerReadyz checks the server's readiness probe, plain HTTP on the
// metrics listener so that the kubelet needs no client certificate: 503
// while the server is not SERVING (here its base role cannot be assumed,
// so it never becomes ready until STS recovers), 200 once it is, in step
// with the gRPC health service agents use. Nothing of the STS error is in
// the body.
func TestServerReadyz(t *testing.T) {
	t.Parallel()
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	proxy.SetFaulting(true) // every AssumeRole fails, the base role's too
	sp := spawnServer(t, kube, viaProxy,
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		"--agent-identity=podiam-agent")
	conn := dial(t, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, "")

	var seen []string
	testenv.Ready(t, 60*time.Second, "/readyz 503 for the base credentials", func(ctx context.Context) error {
		code, body, err := probe(ctx, sp, "/readyz")
		if err != nil {
			return err
		}
		if len(seen) == 0 || seen[len(seen)-1] != body {
			seen = append(seen, body)
		}
		if code != http.StatusServiceUnavailable || body != "not ready: base credentials unavailable\n" {
			return fmt.Errorf("/readyz: %d %q", code, body)
		}
		return nil
	}, sp.Proc)
	for _, b := range seen {
		if b != "not ready: informers not synced\n" && b != "not ready: base credentials unavailable\n" {
			t.Errorf("/readyz said %q before the server was SERVING", b)
		}
	}
	ctx := context.Background()
	if err := wantHealth(ctx, conn, healthpb.HealthCheckResponse_NOT_SERVING); err != nil {
		t.Errorf("gRPC health while /readyz is 503: %v", err)
	}
	if code, body, err := probe(ctx, sp, "/healthz"); err != nil || code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz while not ready: %d %q %v, want 200: the process is alive", code, body, err)
	}
	// The reason's details (the STS error, or the timeout its retries
	// ran into) are in the log instead.
	if !strings.Contains(sp.Logs(), `"msg":"base credentials unavailable; reporting not serving","error":"base credentials: `) {
		t.Error("the error behind the 503 is not in the server's log")
	}
	if n := len(proxy.Attempts()); n == 0 {
		t.Fatal("the server never asked STS for its base role")
	}

	proxy.SetFaulting(false)
	testenv.Ready(t, 60*time.Second, "/readyz 200 once SERVING", func(ctx context.Context) error {
		code, body, err := probe(ctx, sp, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != "ok\n" {
			return fmt.Errorf("/readyz: %d %q", code, body)
		}
		return nil
	}, sp.Proc)
	if err := wantHealth(ctx, conn, healthpb.HealthCheckResponse_SERVING); err != nil {
		t.Errorf("gRPC health while /readyz is 200: %v", err)
	}
}
