package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/test/testenv"
)

// checkRun is one `podiam check` run.
type checkRun struct {
	Code           int
	Stdout, Stderr string
}

// podiamCheck runs `podiam check` with the server's command line plus
// args, in env.
func podiamCheck(t *testing.T, env []string, serverArgs []string, args ...string) checkRun {
	t.Helper()
	cmd := exec.Command(podiamBin, append(append([]string{"check"}, serverArgs...), args...)...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := checkRun{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.Code = exit.ExitCode()
	case err != nil:
		t.Fatalf("podiam check: %v", err)
	}
	t.Logf("podiam check %s: exit %d\n%s%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	return r
}

// TestCheck runs `podiam check` with a server's command line against a
// real kube-apiserver and moto behind the STS proxy, which plays the
// target roles' trust policies: every hop, the policy explained, a denied
// role never sent to STS, the likely cause of each kind of failure, and
// the session name, SourceIdentity, tags and ServiceAccount role the
// server's session flags make of a pod.
func TestCheck(t *testing.T) {
	t.Parallel()
	const extID = "ext-tenant-1"
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	env := viaProxy.Env()

	proxy.RequireExternalID(roleARN("tenant-app"), extID)
	proxy.DenyRole(roleARN("tenant-untrusting"))
	proxy.AnswerRole(roleARN("tenant-long"), http.StatusBadRequest, "ValidationError",
		"The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.")
	proxy.AnswerRole(roleARN("tenant-skewed"), http.StatusForbidden, "SignatureDoesNotMatch",
		"Signature expired: 20240101T000000Z is now earlier than 20240101T000500Z (20240101T001000Z - 5 min.)")
	proxy.TrustLacks(roleARN("tenant-untagged"), "sts:TagSession", "sts:SetSourceIdentity")
	kube.CreateNamespace(t, "tenant", map[string]string{
		"iam.amazonaws.com/permitted":   roleARN("tenant-.*"),
		"iam.amazonaws.com/external-id": extID,
	})
	kube.CreatePod(t, testenv.PodSpec{Namespace: "tenant", Name: "app",
		Annotations: map[string]string{"iam.amazonaws.com/role": "tenant-app"}})
	kube.CreatePod(t, testenv.PodSpec{Namespace: "tenant", Name: "rogue",
		Annotations: map[string]string{"iam.amazonaws.com/role": "tenant-app", "iam.amazonaws.com/external-id": "ext-other"}})
	// A pod without a role of its own whose ServiceAccount names one.
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "ledger",
			Annotations: map[string]string{"iam.amazonaws.com/role": "tenant-app"}}}
		if _, err := kube.Client.CoreV1().ServiceAccounts("tenant").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}()
	kube.CreatePod(t, testenv.PodSpec{Namespace: "tenant", Name: "ledger-7d9f", ServiceAccount: "ledger"})

	// A server's command line as the chart writes it; TLS files and the
	// listening address are accepted and unused.
	server := []string{
		"--json-log", "--level=info",
		"--bind=0.0.0.0:9610",
		"--cert=/etc/podiam/tls/tls.crt", "--key=/etc/podiam/tls/tls.key", "--ca=/etc/podiam/tls/ca.crt",
		"--kubeconfig=" + kube.KubeconfigPath,
		"--assume-role-arn=" + roleARN("podiam-server"),
		"--role-base-arn-autodetect",
		"--session-duration=15m", "--session-refresh=5m",
	}
	assumes := func(role string) []testenv.STSAttempt { return proxyAssumes(proxy, roleARN(role)) }
	noSecrets := func(t *testing.T, out string) {
		t.Helper()
		// moto's access keys start ASIA and its session tokens FQoGZXIvYXdzE.
		if strings.Contains(out, "ASIA") || strings.Contains(out, "FQoGZXIvYXdzE") || strings.Contains(strings.ToLower(out), "secret") {
			t.Errorf("the report holds credentials:\n%s", out)
		}
	}
	lines := func(t *testing.T, out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("report lacks %q", w)
			}
		}
	}
	serverSession := "arn:aws:sts::" + account + ":assumed-role/podiam-server/kiam-kiam"

	t.Run("every hop, without a namespace", func(t *testing.T) {
		r := podiamCheck(t, env, server, "--role=tenant-app", "--external-id="+extID)
		if r.Code != 0 {
			t.Fatalf("exit %d", r.Code)
		}
		lines(t, r.Stdout,
			"caller   ok       arn:aws:sts::"+account+":user/moto, ",
			"base     ok       "+roleARN("podiam-server")+", session kiam-kiam, as "+serverSession+", ",
			"policy   skipped  no --namespace or --pod",
			"target   ok       "+roleARN("tenant-app")+", session kiam-kiam, External ID sent, expires ",
			"result   assumed")
		noSecrets(t, r.Stdout+r.Stderr)
		if a := assumes("tenant-app"); len(a) != 1 || a[0].ExternalID != extID || a[0].Fault != 0 {
			t.Fatalf("STS saw %+v", a)
		}
	})

	t.Run("a pod: the namespace's External ID applies", func(t *testing.T) {
		r := podiamCheck(t, env, server, "--pod=tenant/app", "-o", "json")
		if r.Code != 0 {
			t.Fatalf("exit %d", r.Code)
		}
		var rep struct {
			Result string
			Hops   []struct {
				Hop         string
				SessionName string `json:"session_name"`
				OK          bool
			}
			Policy struct {
				RoleARN        string `json:"role_arn"`
				Expression     string
				Match, Allowed bool
				ExternalID     string `json:"external_id"`
				ExternalIDWhy  string `json:"external_id_why"`
			}
		}
		if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
			t.Fatalf("report is not JSON: %v", err)
		}
		if rep.Result != "assumed" || len(rep.Hops) != 3 || rep.Hops[2].Hop != "target" || rep.Hops[2].SessionName != "kiam-kiam" || !rep.Policy.Allowed || !rep.Policy.Match ||
			rep.Policy.ExternalID != extID || rep.Policy.RoleARN != roleARN("tenant-app") ||
			rep.Policy.Expression != "^(?:"+roleARN("tenant-.*")+")$" || !strings.Contains(rep.Policy.ExternalIDWhy, `namespace "tenant"`) {
			t.Fatalf("report %+v", rep)
		}
		noSecrets(t, r.Stdout+r.Stderr)
		if a := assumes("tenant-app"); len(a) != 2 || a[1].ExternalID != extID || a[1].Fault != 0 {
			t.Fatalf("STS saw %+v", a)
		}
	})

	t.Run("a pod naming another External ID: denied, STS not called", func(t *testing.T) {
		before := len(assumes("tenant-app"))
		r := podiamCheck(t, env, server, "--pod=tenant/rogue")
		if r.Code != 1 {
			t.Fatalf("exit %d, want 1", r.Code)
		}
		lines(t, r.Stdout, "policy   DENIED   pod tenant/rogue", `the pod's "ext-other" differs from namespace "tenant"'s "`+extID+`"`,
			"denied (external_id_mismatch)", "STS was not called", "result   denied")
		if strings.Contains(r.Stdout, "target ") {
			t.Error("a target hop was reported for a denied role")
		}
		if n := len(assumes("tenant-app")); n != before {
			t.Fatalf("STS was asked for the denied role (%d calls, had %d)", n, before)
		}
	})

	t.Run("a role the namespace does not permit", func(t *testing.T) {
		r := podiamCheck(t, env, server, "--role=admin", "--namespace=tenant")
		if r.Code != 1 {
			t.Fatalf("exit %d, want 1", r.Code)
		}
		lines(t, r.Stdout, "matched as ^(?:"+roleARN("tenant-.*")+")$: does not match", "denied (not_permitted)")
		if n := len(assumes("admin")); n != 0 {
			t.Fatalf("STS was asked for a denied role")
		}
	})

	for _, tc := range []struct {
		name, role string
		args       []string
		cause      string
		words      []string
	}{
		{"the External ID the role requires is missing", "tenant-app", nil, "trust_policy_or_external_id",
			[]string{"AccessDenied", "is not authorized to perform: sts:AssumeRole on resource: " + roleARN("tenant-app"), "an External ID is required"}},
		{"the External ID differs", "tenant-app", []string{"--external-id=ext-wrong"}, "trust_policy_or_external_id",
			[]string{"AccessDenied", "must equal the External ID sent"}},
		{"the trust policy does not name the base role", "tenant-untrusting", []string{"--namespace=tenant"}, "trust_policy_or_external_id",
			[]string{"policy   allowed", "AccessDenied", "User: " + serverSession + " is not authorized", "name the base role as Principal"}},
		{"a chained session longer than an hour", "tenant-long", nil, "session_duration", []string{"ValidationError", "at most 1h"}},
		{"clock skew", "tenant-skewed", nil, "clock_skew", []string{"Signature expired", "clock"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := podiamCheck(t, env, server, append([]string{"--role=" + tc.role}, tc.args...)...)
			if r.Code != 1 {
				t.Fatalf("exit %d, want 1", r.Code)
			}
			lines(t, r.Stdout, append(tc.words, "target   FAILED   "+roleARN(tc.role), "likely cause ("+tc.cause+"): ", "result   failed")...)
		})
	}

	// The server's session flags: what check sends is what the server
	// would, so a trust policy that takes sts:AssumeRole alone fails here
	// as it would fail the server.
	sessions := append(append([]string{}, server...),
		"--service-account-roles",
		"--session-name-template={{.Namespace}}.{{.ServiceAccount}}",
		"--source-identity-template={{.Namespace}}.{{.PodName}}",
		"--session-tags=namespace,serviceaccount",
		"--static-session-tag=eks-cluster-name=test",
		"--transitive-session-tags")

	t.Run("a pod's ServiceAccount role, session name, source identity and tags", func(t *testing.T) {
		r := podiamCheck(t, env, sessions, "--pod=tenant/ledger-7d9f")
		if r.Code != 0 {
			t.Fatalf("exit %d", r.Code)
		}
		lines(t, r.Stdout,
			"policy   allowed  pod tenant/ledger-7d9f, role "+roleARN("tenant-app")+" (from ServiceAccount tenant/ledger)",
			"target   ok       "+roleARN("tenant-app")+", session tenant.ledger, source identity tenant.ledger-7d9f, External ID sent, expires ",
			`transitive session tags: eks-cluster-name="test", kubernetes-namespace="tenant", kubernetes-service-account="ledger"`+"\n",
			"result   assumed")
		noSecrets(t, r.Stdout+r.Stderr)
		a := assumes("tenant-app")
		last := a[len(a)-1].Form
		tags := map[string]string{}
		for i := 1; last.Get(fmt.Sprintf("Tags.member.%d.Key", i)) != ""; i++ {
			tags[last.Get(fmt.Sprintf("Tags.member.%d.Key", i))] = last.Get(fmt.Sprintf("Tags.member.%d.Value", i))
		}
		if last.Get("RoleSessionName") != "tenant.ledger" || last.Get("SourceIdentity") != "tenant.ledger-7d9f" || last.Get("ExternalId") != extID ||
			len(tags) != 3 || tags["kubernetes-service-account"] != "ledger" || last.Get("TransitiveTagKeys.member.3") == "" {
			t.Fatalf("STS was asked %v", last)
		}
	})

	t.Run("without --service-account-roles the pod has no role", func(t *testing.T) {
		r := podiamCheck(t, env, server, "--pod=tenant/ledger-7d9f")
		if r.Code != 1 {
			t.Fatalf("exit %d, want 1", r.Code)
		}
		lines(t, r.Stdout, "no iam.amazonaws.com/role", "result   denied")
	})

	t.Run("a trust policy without sts:TagSession and sts:SetSourceIdentity", func(t *testing.T) {
		// It takes sts:AssumeRole alone: the check passed before it sent
		// what the server sends, and the server failed.
		if r := podiamCheck(t, env, server, "--role=tenant-untagged", "--namespace=tenant"); r.Code != 0 {
			t.Fatalf("without session flags: exit %d, want 0", r.Code)
		}
		r := podiamCheck(t, env, sessions, "--role=tenant-untagged", "--namespace=tenant")
		if r.Code != 1 {
			t.Fatalf("exit %d, want 1", r.Code)
		}
		lines(t, r.Stdout,
			"target   FAILED   "+roleARN("tenant-untagged")+", session tenant., source identity tenant., External ID sent, ",
			`no --pod: the session name, source identity and tags were made from namespace "tenant"`,
			"is not authorized to perform: sts:SetSourceIdentity on resource: "+roleARN("tenant-untagged"),
			"likely cause (trust_policy_session_actions): the server sets a SourceIdentity (--source-identity-template)",
			"its Action must list sts:SetSourceIdentity beside sts:AssumeRole",
			"result   failed")
	})

	t.Run("a wrong endpoint fails the first hop", func(t *testing.T) {
		bad := append([]string{}, env...)
		bad = append(bad, fmt.Sprintf("AWS_ENDPOINT_URL_STS=http://127.0.0.1:%d", testenv.FreePort(t)))
		r := podiamCheck(t, bad, server, "--role=tenant-app")
		if r.Code != 1 {
			t.Fatalf("exit %d, want 1", r.Code)
		}
		lines(t, r.Stdout, "caller   FAILED", "likely cause (region_or_endpoint): ", "result   failed")
		if strings.Contains(r.Stdout, "base ") {
			t.Error("a later hop was tried after the first failed")
		}
	})

	t.Run("bad usage exits 2", func(t *testing.T) {
		for _, args := range [][]string{{"--pod=tenant"}, {"--role=tenant-app", "-o", "xml"}, {}} {
			if r := podiamCheck(t, env, server, args...); r.Code != 2 {
				t.Errorf("%v: exit %d, want 2", args, r.Code)
			}
		}
	})
}
