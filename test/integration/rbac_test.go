package integration

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// TestServerWithShippedRBAC runs the server as the ServiceAccount that
// deploy/manifests/rbac.yaml creates, with exactly the permissions it
// grants: the server must sync, serve a permitted pod and record a denial
// as an Event. A permission the server needs but the manifest lacks fails
// here, not on a user's cluster.
func TestServerWithShippedRBAC(t *testing.T) {
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	applyRBAC(t, kube, "../../deploy/manifests/rbac.yaml")
	kubeconfig := kube.ServiceAccountKubeconfig(t, "kube-system", "podiam-server")

	kube.CreateNamespace(t, "apps", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")})
	kube.CreateNamespace(t, "closed", nil)
	sp := startServer(t, kube, moto,
		"--assume-role-arn="+roleARN("podiam-server"), "--role-base-arn-autodetect",
		// ServiceAccounts are watched too, so the manifest's rule for
		// them is proved as well.
		"--service-account-roles",
		"--kubeconfig="+kubeconfig) // the last --kubeconfig wins
	client := credsClient(t, sp)
	get := func(ip string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
		return err
	}

	kube.CreatePod(t, testenv.PodSpec{Namespace: "apps", Name: "web",
		Annotations: map[string]string{"iam.amazonaws.com/role": "app-web"},
		PodIPs:      []string{"10.1.0.1"}, HostIPs: []string{node}})
	if err := get("10.1.0.1"); err != nil {
		t.Fatalf("permitted pod: %v", err)
	}

	// podiam check, run as the server runs (kubectl exec into its pod),
	// reads the pod and its namespace with the same permissions.
	if r := podiamCheck(t, moto.Env(), []string{"--kubeconfig=" + kubeconfig, "--assume-role-arn=" + roleARN("podiam-server"),
		"--role-base-arn-autodetect"}, "--pod=apps/web"); r.Code != 0 || !strings.Contains(r.Stdout, "policy   allowed  pod apps/web") {
		t.Fatalf("podiam check with the server's RBAC: exit %d", r.Code)
	}

	kube.CreatePod(t, testenv.PodSpec{Namespace: "closed", Name: "intruder",
		Annotations: map[string]string{"iam.amazonaws.com/role": "app-web"},
		PodIPs:      []string{"10.1.0.2"}, HostIPs: []string{node}})
	if err := get("10.1.0.2"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("pod in a namespace without permission: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs, err := kube.Client.CoreV1().Events("closed").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Name == "intruder" && ev.Type == corev1.EventTypeWarning {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no denial Event recorded with the shipped RBAC; server logs:\n%s", sp.Tail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// applyRBAC creates the ServiceAccounts, ClusterRoles and bindings of a
// manifest file.
func applyRBAC(t *testing.T, kube *testenv.Kube, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, doc := range bytes.Split(data, []byte("\n---")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var err error
		switch meta.Kind {
		case "":
			continue
		case "ServiceAccount":
			var o corev1.ServiceAccount
			if err = yaml.UnmarshalStrict(doc, &o); err == nil {
				_, err = kube.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRole":
			var o rbacv1.ClusterRole
			if err = yaml.UnmarshalStrict(doc, &o); err == nil {
				_, err = kube.Client.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			if err = yaml.UnmarshalStrict(doc, &o); err == nil {
				_, err = kube.Client.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			}
		default:
			t.Fatalf("%s: unexpected kind %q", path, meta.Kind)
		}
		if err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("%s: %s: %v", path, meta.Kind, err)
		}
	}
}
