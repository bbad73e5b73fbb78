//go:build privileged

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/test/testenv"
)

// Short sessions so that refreshes happen within the test: the Secret is
// rewritten when 15 s are left, every 15 s.
const (
	arSession = 30 * time.Second
	arRefresh = 15 * time.Second
)

// arEnv is the cluster, moto and server the AWSAssumeRole tests share.
type arEnv struct {
	kube *testenv.Kube
	moto *testenv.Moto
	sp   *serverProc
	dyn  dynamic.Interface
}

// TestAssumeRoleSecrets runs the AWSAssumeRole controller in a real server
// against kube-apiserver and moto (STS and ECR), with the CRD installed
// from deploy/.
func TestAssumeRoleSecrets(t *testing.T) {
	t.Parallel()
	env := startAREnv(t)
	ctx := context.Background()
	kube, moto, sp := env.kube, env.moto, env.sp
	kube.CreateNamespace(t, "apps", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")})

	t.Run("each secret type produces its secret", func(t *testing.T) {
		env.create(t, "apps", "map", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-map", SecretName: "map-creds", SecretType: "Map"})
		env.create(t, "apps", "file", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-file", SecretName: "file-creds", SecretType: "File"})
		ecrURL := "https://" + account + ".dkr.ecr.us-east-1.amazonaws.com/v2/my-repo"
		env.create(t, "apps", "ecr", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-ecr", SecretName: "ecr-pull",
			SecretType: "EcrDockerConfigJson", EcrRepositoryUrl: ecrURL})

		m := env.waitSecret(t, "apps", "map-creds")
		c := creds.Credentials{AccessKeyID: string(m.Data["awsAccessKeyId"]), SecretAccessKey: string(m.Data["awsSecretAccessKey"]),
			SessionToken: string(m.Data["awsSessionToken"])}
		arn, err := moto.CallerIdentity(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if want := "arn:aws:sts::" + account + ":assumed-role/app-map/kiam-kiam"; arn != want || m.Type != corev1.SecretTypeOpaque || len(m.Data) != 3 {
			t.Fatalf("map secret: type %s, %d keys, caller %q (want %q)", m.Type, len(m.Data), arn, want)
		}
		if ref := metav1.GetControllerOf(m); ref == nil || ref.Kind != "AWSAssumeRole" || ref.Name != "map" {
			t.Fatalf("map secret owner = %+v", ref)
		}

		// The File layout is a shared-credentials file the AWS CLI reads.
		f := env.waitSecret(t, "apps", "file-creds")
		path := filepath.Join(t.TempDir(), "credentials")
		if err := os.WriteFile(path, f.Data["credentials"], 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(testenv.Bin(t, "aws"), "sts", "get-caller-identity", "--query", "Arn", "--output", "text")
		cmd.Env = append(testenv.PodEnv(t, moto.Endpoint), "AWS_SHARED_CREDENTIALS_FILE="+path, "AWS_EC2_METADATA_DISABLED=true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("aws sts get-caller-identity: %v: %s", err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "arn:aws:sts::"+account+":assumed-role/app-file/kiam-kiam"; got != want {
			t.Fatalf("aws cli with the File secret: %q, want %q", got, want)
		}

		// The ECR layout: a dockerconfigjson with the token moto issued
		// (moto's token for a registry is "<registry id>-auth-token").
		e := env.waitSecret(t, "apps", "ecr-pull")
		var dc struct {
			Auths map[string]struct{ Username, Password, Auth string }
		}
		if err := json.Unmarshal(e.Data[".dockerconfigjson"], &dc); err != nil {
			t.Fatal(err)
		}
		entry, ok := dc.Auths[ecrURL]
		if e.Type != corev1.SecretTypeDockerConfigJson || !ok || entry.Username != "AWS" || entry.Password != account+"-auth-token" {
			t.Fatalf("ecr secret: type %s, auths %+v", e.Type, dc.Auths)
		}

		for _, name := range []string{"map", "file", "ecr"} {
			o := env.waitReady(t, "apps", name, "True", v1alpha1.ReasonSecretWritten)
			if o.Status.Expiration == nil || o.Status.LastRefreshTime == nil || o.Status.ObservedGeneration != o.Generation || o.Status.RoleArn != roleARN("app-"+name) {
				t.Fatalf("%s status = %+v", name, o.Status)
			}
		}
		logs := sp.Logs()
		for _, secret := range []string{c.SecretAccessKey, c.SessionToken} {
			if strings.Contains(logs, secret) {
				t.Fatal("secret material in the server log")
			}
		}
	})

	t.Run("short sessions: the secret always holds credentials with time left", func(t *testing.T) {
		env.create(t, "apps", "sampled", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-sampled", SecretName: "sampled", SecretType: "Map"})
		env.waitSecret(t, "apps", "sampled")
		keys := map[string]bool{}
		end := time.Now().Add(3*arRefresh + 5*time.Second)
		for time.Now().Before(end) {
			s, err := kube.Client.CoreV1().Secrets("apps").Get(ctx, "sampled", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			exp, err := time.Parse(time.RFC3339, s.Annotations["iam.podiam.io/expiration"])
			if err != nil {
				t.Fatal(err)
			}
			if left := time.Until(exp); left < 2*time.Second {
				t.Fatalf("secret holds credentials with %s left", left)
			}
			id := string(s.Data["awsAccessKeyId"])
			if !keys[id] {
				keys[id] = true
				c := creds.Credentials{AccessKeyID: id, SecretAccessKey: string(s.Data["awsSecretAccessKey"]), SessionToken: string(s.Data["awsSessionToken"])}
				if _, err := moto.CallerIdentity(ctx, c); err != nil {
					t.Fatalf("credentials in the secret do not work: %v", err)
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		if len(keys) < 3 {
			t.Fatalf("%d distinct credentials over three refresh periods, want at least 3", len(keys))
		}
	})

	t.Run("denied namespace gets no secret, Ready=False and an Event", func(t *testing.T) {
		kube.CreateNamespace(t, "closed", nil)
		env.create(t, "closed", "intruder", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-map", SecretName: "stolen", SecretType: "Map"})
		env.waitReady(t, "closed", "intruder", "False", v1alpha1.ReasonNotPermitted)
		env.waitEvent(t, "closed", "intruder", v1alpha1.ReasonNotPermitted)
		if _, err := kube.Client.CoreV1().Secrets("closed").Get(ctx, "stolen", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("secret in a denied namespace: %v", err)
		}
	})

	t.Run("the namespace's External ID is used for its objects", func(t *testing.T) {
		kube.CreateNamespace(t, "tenant", map[string]string{
			"iam.amazonaws.com/permitted":   roleARN("app-tenant"),
			"iam.amazonaws.com/external-id": "tenant-7f3c",
		})
		env.create(t, "tenant", "tenant", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-tenant", SecretName: "tenant", SecretType: "Map"})
		env.waitSecret(t, "tenant", "tenant")
		// The server's STS audit line says whether an External ID went
		// with the call (never the ID itself).
		var lines []string
		for _, l := range strings.Split(sp.Logs(), "\n") {
			if strings.Contains(l, `"msg":"sts assume role"`) && strings.Contains(l, roleARN("app-tenant")) {
				lines = append(lines, l)
			}
		}
		if len(lines) == 0 {
			t.Fatal("no STS call for app-tenant in the server log")
		}
		for _, l := range lines {
			if !strings.Contains(l, `"external_id_set":true`) || strings.Contains(l, "tenant-7f3c") {
				t.Errorf("STS call for the tenant's object: %s, want the namespace's External ID set and not logged", l)
			}
		}
	})

	t.Run("a policy change that denies the role removes the credentials", func(t *testing.T) {
		kube.CreateNamespace(t, "flip", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-flip")})
		env.create(t, "flip", "flip", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-flip", SecretName: "flip", SecretType: "File"})
		env.waitSecret(t, "flip", "flip")
		ns, err := kube.Client.CoreV1().Namespaces().Get(ctx, "flip", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ns.Annotations["iam.amazonaws.com/permitted"] = roleARN("something-else")
		if _, err := kube.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		env.waitGone(t, "flip", "flip", 5*time.Second)
		t.Logf("credentials removed %s after the policy change", time.Since(start))
		env.waitReady(t, "flip", "flip", "False", v1alpha1.ReasonNotPermitted)
	})

	t.Run("a secret edited or deleted by hand is restored", func(t *testing.T) {
		s := env.waitSecret(t, "apps", "map-creds")
		want := string(s.Data["awsSecretAccessKey"])
		s.Data["awsSecretAccessKey"] = []byte("tampered")
		delete(s.Data, "awsSessionToken")
		if _, err := kube.Client.CoreV1().Secrets("apps").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 10*time.Second, "edited secret restored", func() error {
			s, err := kube.Client.CoreV1().Secrets("apps").Get(ctx, "map-creds", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := string(s.Data["awsSecretAccessKey"]); got == "tampered" || len(s.Data) != 3 {
				return fmt.Errorf("secret still edited (%d keys)", len(s.Data))
			} else if got != want {
				t.Logf("restored with refreshed credentials")
			}
			return nil
		})
		if err := kube.Client.CoreV1().Secrets("apps").Delete(ctx, "map-creds", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		env.waitSecret(t, "apps", "map-creds")
	})

	t.Run("a foreign secret with the name is left alone", func(t *testing.T) {
		foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "foreign", Namespace: "apps"}, Data: map[string][]byte{"mine": []byte("keep")}}
		if _, err := kube.Client.CoreV1().Secrets("apps").Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		env.create(t, "apps", "grabber", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-map", SecretName: "foreign", SecretType: "Map"})
		env.waitReady(t, "apps", "grabber", "False", v1alpha1.ReasonSecretConflict)
		env.waitEvent(t, "apps", "grabber", v1alpha1.ReasonSecretConflict)
		s, err := kube.Client.CoreV1().Secrets("apps").Get(ctx, "foreign", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Data) != 1 || string(s.Data["mine"]) != "keep" || len(s.OwnerReferences) != 0 {
			t.Fatalf("foreign secret changed: %v %v", s.Data, s.OwnerReferences)
		}
	})

	t.Run("deleting the object deletes its secret", func(t *testing.T) {
		if err := env.objects("apps").Delete(ctx, "file", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		env.waitGone(t, "apps", "file-creds", 10*time.Second)
	})

	t.Run("the seed's examples apply with only apiVersion changed", func(t *testing.T) {
		data, err := os.ReadFile("../../deploy/examples/awsassumerole-seed.yaml")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, doc := range bytes.Split(data, []byte("\n---")) {
			var u unstructured.Unstructured
			if err := yaml.Unmarshal(doc, &u.Object); err != nil {
				t.Fatal(err)
			}
			if _, err := env.objects(u.GetNamespace()).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("seed example %s: %v", u.GetName(), err)
			}
			n++
		}
		if n != 3 {
			t.Fatalf("%d seed examples, want 3", n)
		}
		// "default" permits nothing: the controller answers, and writes
		// nothing.
		env.waitReady(t, "default", "aws-assume-my-role", "False", v1alpha1.ReasonNotPermitted)
	})

	t.Run("the CRD refuses an ECR object without a repository URL", func(t *testing.T) {
		u := toUnstructured(t, "apps", "no-url", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-x", SecretName: "x", SecretType: "EcrDockerConfigJson"})
		if _, err := env.objects("apps").Create(ctx, u, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
			t.Fatalf("create = %v, want Invalid", err)
		}
	})
}

// TestAssumeRoleEconomy: 100 objects naming 5 roles cost 5 AssumeRole
// calls when created and 5 per refresh period after, because they share
// the server's credential cache.
func TestAssumeRoleEconomy(t *testing.T) {
	t.Parallel()
	env := startAREnv(t)
	env.kube.CreateNamespace(t, "eco", map[string]string{"iam.amazonaws.com/permitted": roleARN("eco-.*")})
	calls := func() float64 {
		return metric(t, env.sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role", "result": "ok"})
	}
	before, begin := calls(), time.Now()
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			env.create(t, "eco", fmt.Sprintf("o%03d", i), v1alpha1.AWSAssumeRoleSpec{
				RoleName: fmt.Sprintf("eco-%d", i%5), SecretName: fmt.Sprintf("s%03d", i), SecretType: "Map"})
		})
	}
	wg.Wait()
	testenv.Eventually(t, 60*time.Second, "100 secrets", func() error {
		l, err := env.kube.Client.CoreV1().Secrets("eco").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(l.Items) != 100 {
			return fmt.Errorf("%d secrets", len(l.Items))
		}
		return nil
	})
	first := calls() - before
	// The base role's own AssumeRole counts under the same label; it
	// happens once at start-up, before "before" was read.
	// On a loaded machine creating 100 objects may outlast a refresh
	// period; each period may add one call per role, no more.
	took := time.Since(begin)
	if bound := float64(5 * (1 + int(took/arRefresh))); first < 5 || first > bound {
		t.Fatalf("%v AssumeRole calls for 100 objects on 5 roles in %s, want 5 (at most %v)", first, took, bound)
	}
	t.Logf("first round: %v AssumeRole calls", first)

	start, startCalls := time.Now(), calls()
	time.Sleep(3 * arRefresh)
	periods := time.Since(start) / arRefresh
	got := calls() - startCalls
	// Each role is refreshed once per period; a period boundary at either
	// end of the window may add one round.
	if max := float64(5 * (int(periods) + 1)); got > max || got < float64(5*int(periods-1)) {
		t.Fatalf("%v AssumeRole calls over %d refresh periods for 5 roles, want about %d", got, periods, 5*periods)
	}
	t.Logf("%v AssumeRole calls over %d refresh periods", got, periods)
}

// startAREnv starts kube-apiserver, moto and a server with the controller,
// and installs the CRD from deploy/.
func startAREnv(t *testing.T) *arEnv {
	t.Helper()
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	dyn, err := dynamic.NewForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	installCRD(t, dyn, "../../deploy/crds/iam.podiam.io_awsassumeroles.yaml")
	sp := startServerEnv(t, kube, moto, []string{"AWS_ENDPOINT_URL_ECR=" + moto.Endpoint},
		"--assume-role-secrets",
		"--assume-role-arn="+roleARN("podiam-server"), "--role-base-arn-autodetect",
		"--session-duration="+arSession.String(), "--session-refresh="+arRefresh.String(),
		"--sync=10s")
	return &arEnv{kube: kube, moto: moto, sp: sp, dyn: dyn}
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRD creates the CRD from its file and waits until it is served.
func installCRD(t *testing.T, dyn dynamic.Interface, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var u unstructured.Unstructured
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := dyn.Resource(crdGVR).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "CRD established", func() error {
		if _, err := dyn.Resource(v1alpha1.GroupVersionResource).Namespace("default").List(ctx, metav1.ListOptions{}); err != nil {
			return err
		}
		return nil
	})
}

func (e *arEnv) objects(namespace string) dynamic.ResourceInterface {
	return e.dyn.Resource(v1alpha1.GroupVersionResource).Namespace(namespace)
}

func toUnstructured(t testing.TB, namespace, name string, spec v1alpha1.AWSAssumeRoleSpec) *unstructured.Unstructured {
	obj := &v1alpha1.AWSAssumeRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: v1alpha1.Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       spec,
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	delete(m, "status")
	return &unstructured.Unstructured{Object: m}
}

func (e *arEnv) create(t testing.TB, namespace, name string, spec v1alpha1.AWSAssumeRoleSpec) {
	t.Helper()
	if _, err := e.objects(namespace).Create(context.Background(), toUnstructured(t, namespace, name, spec), metav1.CreateOptions{}); err != nil {
		t.Errorf("create %s/%s: %v", namespace, name, err)
	}
}

func (e *arEnv) get(t testing.TB, namespace, name string) (*v1alpha1.AWSAssumeRole, error) {
	u, err := e.objects(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var o v1alpha1.AWSAssumeRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err != nil {
		t.Fatal(err)
	}
	return &o, nil
}

// waitReady waits for the Ready condition's status and reason.
func (e *arEnv) waitReady(t testing.TB, namespace, name, status, reason string) *v1alpha1.AWSAssumeRole {
	t.Helper()
	var o *v1alpha1.AWSAssumeRole
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("%s/%s Ready=%s %s", namespace, name, status, reason), func() error {
		var err error
		if o, err = e.get(t, namespace, name); err != nil {
			return err
		}
		for _, c := range o.Status.Conditions {
			if c.Type == "Ready" && string(c.Status) == status && c.Reason == reason {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", o.Status.Conditions)
	})
	return o
}

func (e *arEnv) waitSecret(t testing.TB, namespace, name string) *corev1.Secret {
	t.Helper()
	var s *corev1.Secret
	testenv.Eventually(t, 20*time.Second, "secret "+namespace+"/"+name, func() error {
		var err error
		s, err = e.kube.Client.CoreV1().Secrets(namespace).Get(context.Background(), name, metav1.GetOptions{})
		return err
	})
	return s
}

func (e *arEnv) waitGone(t testing.TB, namespace, name string, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, "secret "+namespace+"/"+name+" deleted", func() error {
		_, err := e.kube.Client.CoreV1().Secrets(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

func (e *arEnv) waitEvent(t testing.TB, namespace, name, reason string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, "event "+reason+" on "+namespace+"/"+name, func() error {
		evs, err := e.kube.Client.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Kind == "AWSAssumeRole" && ev.InvolvedObject.Name == name && ev.Reason == reason && ev.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("%d events, none matching", len(evs.Items))
	})
}

// TestAssumeRoleWithShippedRBAC runs the controller as the server's
// ServiceAccount with exactly rbac.yaml and assumerole-rbac.yaml: it must
// write a Secret, update status and record a denial Event. rbac.yaml alone
// must not grant any access to Secrets.
func TestAssumeRoleWithShippedRBAC(t *testing.T) {
	t.Parallel()
	base, err := os.ReadFile("../../deploy/manifests/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(base, []byte("secrets")) {
		t.Fatal("deploy/manifests/rbac.yaml grants access to secrets; the default install must not")
	}
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	dyn, err := dynamic.NewForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	installCRD(t, dyn, "../../deploy/crds/iam.podiam.io_awsassumeroles.yaml")
	applyRBAC(t, kube, "../../deploy/manifests/rbac.yaml")
	applyRBAC(t, kube, "../../deploy/manifests/assumerole-rbac.yaml")
	kubeconfig := kube.ServiceAccountKubeconfig(t, "kube-system", "podiam-server")
	kube.CreateNamespace(t, "apps", map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")})
	kube.CreateNamespace(t, "closed", nil)
	sp := startServerEnv(t, kube, moto, []string{"AWS_ENDPOINT_URL_ECR=" + moto.Endpoint},
		"--assume-role-secrets", "--assume-role-arn="+roleARN("podiam-server"), "--role-base-arn-autodetect",
		"--kubeconfig="+kubeconfig)
	env := &arEnv{kube: kube, moto: moto, sp: sp, dyn: dyn}
	env.create(t, "apps", "web", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-web", SecretName: "web", SecretType: "Map"})
	env.create(t, "apps", "pull", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-web", SecretName: "pull", SecretType: "EcrDockerConfigJson",
		EcrRepositoryUrl: account + ".dkr.ecr.us-east-1.amazonaws.com"})
	env.create(t, "closed", "intruder", v1alpha1.AWSAssumeRoleSpec{RoleName: "app-web", SecretName: "stolen", SecretType: "Map"})
	env.waitSecret(t, "apps", "web")
	env.waitSecret(t, "apps", "pull")
	env.waitReady(t, "apps", "web", "True", v1alpha1.ReasonSecretWritten)
	env.waitReady(t, "closed", "intruder", "False", v1alpha1.ReasonNotPermitted)
	env.waitEvent(t, "closed", "intruder", v1alpha1.ReasonNotPermitted)
	if strings.Contains(sp.Logs(), "forbidden") {
		t.Fatalf("forbidden requests with the shipped RBAC:\n%s", sp.Tail(40))
	}
}
