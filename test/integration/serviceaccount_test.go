package integration

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// TestServiceAccountRoles runs the server with --service-account-roles:
// a pod without a role annotation gets its ServiceAccount's role, a pod's
// own annotation wins, the namespace policy still decides, and changing the
// account's annotation switches its pods' role for the next request and
// tells the node's agent to forget what it holds.
func TestServiceAccountRoles(t *testing.T) {
	t.Parallel()
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	sp := startServer(t, kube, viaProxy,
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		"--service-account-roles",
		"--session-name-template={{.Namespace}}.{{.ServiceAccount}}",
		"--pod-wait=3s")
	client := credsClient(t, sp)
	kube.CreateNamespace(t, "apps", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")})
	kube.CreateNamespace(t, "closed", map[string]string{"iam.amazonaws.com/permitted": roleARN("other-.*")})
	createAccount := func(ns, name, roleName string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Annotations: map[string]string{"iam.amazonaws.com/role": roleName}}}
		if _, err := kube.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	createAccount("apps", "api", "app-api")
	createAccount("closed", "api", "app-api")
	kube.EnsureServiceAccount(t, "apps", "plain")

	pods := map[string]testenv.PodSpec{
		"inherits": {Namespace: "apps", Name: "inherits", ServiceAccount: "api", PodIPs: []string{"10.5.0.1"}},
		"owns": {Namespace: "apps", Name: "owns", ServiceAccount: "api", PodIPs: []string{"10.5.0.2"},
			Annotations: map[string]string{"iam.amazonaws.com/role": "app-own"}},
		"denied":  {Namespace: "closed", Name: "denied", ServiceAccount: "api", PodIPs: []string{"10.5.0.3"}},
		"no-role": {Namespace: "apps", Name: "no-role", ServiceAccount: "plain", PodIPs: []string{"10.5.0.4"}},
	}
	for _, p := range pods {
		p.HostIPs = []string{node}
		kube.CreatePod(t, p)
	}
	get := func(ip string) (*pb.GetPodCredentialsResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
	}
	identity := func(t *testing.T, resp *pb.GetPodCredentialsResponse) string {
		t.Helper()
		c := resp.GetCredentials()
		arn, err := moto.CallerIdentity(context.Background(), creds.Credentials{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()})
		if err != nil {
			t.Fatal(err)
		}
		return arn
	}

	t.Run("a pod without a role annotation gets its account's", func(t *testing.T) {
		resp, err := get("10.5.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetPod().GetRoleArn() != roleARN("app-api") {
			t.Fatalf("role %s, want the account's %s", resp.GetPod().GetRoleArn(), roleARN("app-api"))
		}
		if arn, want := identity(t, resp), "arn:aws:sts::"+account+":assumed-role/app-api/apps.api"; arn != want {
			t.Fatalf("caller identity %q, want %q", arn, want)
		}
		l := auditLines(t, sp.Logs())["apps/inherits"]
		if l["role_from"] != "serviceaccount" || l["service_account"] != "api" {
			t.Fatalf("audit line %v, want role_from serviceaccount", l)
		}
	})

	t.Run("a pod's own annotation wins", func(t *testing.T) {
		resp, err := get("10.5.0.2")
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetPod().GetRoleArn() != roleARN("app-own") {
			t.Fatalf("role %s, want the pod's own", resp.GetPod().GetRoleArn())
		}
		if l := auditLines(t, sp.Logs())["apps/owns"]; l["role_from"] != "pod" {
			t.Fatalf("audit line %v, want role_from pod", l)
		}
	})

	t.Run("the namespace policy still decides", func(t *testing.T) {
		_, err := get("10.5.0.3")
		if status.Code(err) != codes.PermissionDenied || refusal.Reason(err) != pb.Reason_REASON_POLICY_DENIED {
			t.Fatalf("got %v (reason %v), want a policy denial", err, refusal.Reason(err))
		}
		for _, a := range proxy.Attempts() {
			if a.Action == "AssumeRole" && a.Form.Get("RoleSessionName") == "closed.api" {
				t.Fatalf("STS was asked for the denied pod's role: %v", a.Form)
			}
		}
	})

	t.Run("no role on pod or account", func(t *testing.T) {
		_, err := get("10.5.0.4")
		if status.Code(err) != codes.NotFound || refusal.Reason(err) != pb.Reason_REASON_NO_ROLE {
			t.Fatalf("got %v (reason %v), want no role", err, refusal.Reason(err))
		}
	})

	t.Run("changing the account's annotation switches the role and tells the agent", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := client.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: node})
		if err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("node stream: %v", err)
			}
			if ev.GetType() == pb.PodEvent_TYPE_SYNCED {
				break
			}
		}
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			sa, err := kube.Client.CoreV1().ServiceAccounts("apps").Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			sa.Annotations["iam.amazonaws.com/role"] = "app-new"
			_, err = kube.Client.CoreV1().ServiceAccounts("apps").Update(ctx, sa, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		changed := time.Now()

		// The agent hears of the pod that inherits the role, and only it.
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("node stream: %v", err)
		}
		if ev.GetType() != pb.PodEvent_TYPE_CHANGED || ev.GetIp() != "10.5.0.1" {
			t.Fatalf("event %v, want CHANGED for 10.5.0.1", ev)
		}
		if d := time.Since(changed); d > time.Second {
			t.Errorf("the agent heard of the change after %s, want within 1s", d)
		}

		// New requests get the new role at once.
		resp, err := get("10.5.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetPod().GetRoleArn() != roleARN("app-new") {
			t.Fatalf("role %s after the account changed, want %s", resp.GetPod().GetRoleArn(), roleARN("app-new"))
		}
		if d := time.Since(changed); d > time.Second {
			t.Errorf("the new role was served %s after the change, want within 1s", d)
		}
		if arn, want := identity(t, resp), "arn:aws:sts::"+account+":assumed-role/app-new/apps.api"; arn != want {
			t.Fatalf("caller identity %q, want %q", arn, want)
		}
		// The pod with its own annotation keeps its role.
		resp, err = get("10.5.0.2")
		if err != nil || resp.GetPod().GetRoleArn() != roleARN("app-own") {
			t.Fatalf("pod with its own role: %v, %v", resp.GetPod(), err)
		}
	})
}
