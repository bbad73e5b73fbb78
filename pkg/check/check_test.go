package check

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/session"
	"github.com/podiam/podiam/pkg/server/sts"
)

const (
	accountA   = "111111111111"
	accountB   = "222222222222"
	baseRole   = "arn:aws:iam::" + accountA + ":role/podiam-base"
	targetRole = "arn:aws:iam::" + accountB + ":role/tenant-app"
	secret     = "SECRET-never-printed"
	token      = "TOKEN-never-printed"
)

var expiry = time.Date(2030, 1, 2, 4, 0, 0, 0, time.UTC)

// fakeSTS answers from its fields and records the keys it was asked.
type fakeSTS struct {
	sourceErr, baseErr, assumeErr error
	assumed                       []creds.Key
	baseCalls                     int
}

func (f *fakeSTS) SourceIdentity(context.Context) (string, error) {
	if f.sourceErr != nil {
		return "", f.sourceErr
	}
	return "arn:aws:sts::" + accountA + ":assumed-role/node/i-0abc", nil
}

func (f *fakeSTS) CheckBase(context.Context) error { f.baseCalls++; return f.baseErr }

func (f *fakeSTS) CallerARN(context.Context) (string, error) {
	return "arn:aws:sts::" + accountA + ":assumed-role/podiam-base/kiam-kiam", nil
}

func (f *fakeSTS) Assume(_ context.Context, key creds.Key) (creds.Credentials, error) {
	f.assumed = append(f.assumed, key)
	if f.assumeErr != nil {
		return creds.Credentials{}, f.assumeErr
	}
	return creds.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: secret, SessionToken: token, Expiration: expiry}, nil
}

// apiError is an STS error as the SDK returns it.
func apiError(status int, code, msg string) error {
	return sts.Classify(&smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRole", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      &smithy.GenericAPIError{Code: code, Message: msg},
		}}})
}

func namespace(name string, annotations map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
}

func pod(ns, name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
}

func TestRun(t *testing.T) {
	tenant := namespace("tenant", map[string]string{
		role.AnnotationPermitted:  "arn:aws:iam::" + accountB + ":role/tenant-.*",
		role.AnnotationExternalID: "ext-tenant",
	})
	objects := []runtime.Object{
		tenant,
		namespace("closed", nil),
		pod("tenant", "app", map[string]string{role.AnnotationRole: targetRole}),
		pod("tenant", "rogue", map[string]string{role.AnnotationRole: targetRole, role.AnnotationExternalID: "ext-other"}),
		pod("tenant", "plain", nil),
		pod("tenant", "static", map[string]string{role.AnnotationRole: targetRole, corev1.MirrorPodAnnotationKey: "x"}),
	}
	denied := apiError(403, "AccessDenied", "User: arn:aws:sts::"+accountA+":assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:AssumeRole on resource: "+targetRole)
	tests := []struct {
		name      string
		cfg       Config
		sts       fakeSTS
		mode      policy.ExternalIDFrom
		result    string
		hops      string // hop:status,...
		assumed   string // the External ID STS was asked with; "-" not asked
		cause     string
		reason    string // the policy's denial reason
		text      []string
		errorText string
	}{
		{name: "role alone: every hop, no policy", cfg: Config{Role: targetRole},
			result: ResultAssumed, hops: "caller:ok,base:ok,target:ok", assumed: "",
			text: []string{"policy   skipped", "target   ok       " + targetRole + ", session kiam-kiam, no External ID, expires 2030-01-02T04:00:00Z",
				"base     ok       " + baseRole + ", session kiam-kiam, as arn:aws:sts::" + accountA + ":assumed-role/podiam-base/kiam-kiam"}},
		{name: "no base role", cfg: Config{Role: targetRole, BaseRoleARN: "-"},
			result: ResultAssumed, hops: "caller:ok,base:skipped,target:ok", assumed: "", text: []string{"base     skipped  no --assume-role-arn"}},
		{name: "role name resolved against the base role's account", cfg: Config{Role: "tenant-app", RoleBaseARNAutodetect: true},
			result: ResultAssumed, hops: "caller:ok,base:ok,target:ok", assumed: "", text: []string{"arn:aws:iam::" + accountA + ":role/tenant-app"}},
		{name: "--external-id without a namespace is sent", cfg: Config{Role: targetRole, ExternalID: "ext-given"},
			result: ResultAssumed, hops: "caller:ok,base:ok,target:ok", assumed: "ext-given", text: []string{"External ID sent"}},
		{name: "pod in a namespace with an External ID", cfg: Config{Pod: "tenant/app"},
			result: ResultAssumed, hops: "caller:ok,base:ok,target:ok", assumed: "ext-tenant",
			text: []string{"policy   allowed  pod tenant/app, role " + targetRole + " (from pod annotation)",
				`permitted: "arn:aws:iam::` + accountB + `:role/tenant-.*", matched as ^(?:arn:aws:iam::` + accountB + `:role/tenant-.*)$: matches`,
				`external ID (--external-id-from=pod): "ext-tenant", namespace "tenant"'s`}},
		{name: "pod naming another External ID: denied, STS not asked", cfg: Config{Pod: "tenant/rogue"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "external_id_mismatch",
			text: []string{"policy   DENIED", "STS was not called", `the pod's "ext-other" differs`}},
		{name: "--namespace with --external-id explains as for a pod", cfg: Config{Role: targetRole, Namespace: "tenant", ExternalID: "ext-other"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "external_id_mismatch"},
		{name: "namespace mode: the pod may not name one", cfg: Config{Role: targetRole, Namespace: "tenant", ExternalID: "ext-tenant"}, mode: policy.ExternalIDFromNamespace,
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "external_id_from_pod"},
		{name: "role outside the permitted expression", cfg: Config{Role: "arn:aws:iam::" + accountB + ":role/admin", Namespace: "tenant"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "not_permitted", text: []string{"does not match"}},
		{name: "namespace without annotations", cfg: Config{Role: targetRole, Namespace: "closed"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "no_annotation", text: []string{"no iam.amazonaws.com/permitted annotation"}},
		{name: "namespace not found is decided as the server does", cfg: Config{Role: targetRole, Namespace: "gone"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "no_annotation", text: []string{"namespace not found"}},
		{name: "static pod", cfg: Config{Pod: "tenant/static"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", reason: "static_pod"},
		{name: "pod without a role", cfg: Config{Pod: "tenant/plain"},
			result: ResultDenied, hops: "caller:ok,base:ok", assumed: "-", errorText: "no iam.amazonaws.com/role"},
		{name: "pod not found", cfg: Config{Pod: "tenant/nope"},
			result: ResultFailed, hops: "caller:ok,base:ok", assumed: "-", errorText: "read pod tenant/nope"},
		{name: "caller fails: nothing else is tried", cfg: Config{Role: targetRole},
			sts:    fakeSTS{sourceErr: sts.Classify(errors.New("dial tcp: lookup sts.eu-nowhere-1.amazonaws.com: no such host"))},
			result: ResultFailed, hops: "caller:FAILED", assumed: "-", cause: sts.CauseEndpoint},
		{name: "base role refused", cfg: Config{Role: targetRole}, sts: fakeSTS{baseErr: denied},
			result: ResultFailed, hops: "caller:ok,base:FAILED", assumed: "-", cause: sts.CauseTrust},
		{name: "target refused with the namespace's External ID", cfg: Config{Pod: "tenant/app"}, sts: fakeSTS{assumeErr: denied},
			result: ResultFailed, hops: "caller:ok,base:ok,target:FAILED", assumed: "ext-tenant", cause: sts.CauseTrustOrExtID,
			text: []string{"target   FAILED   " + targetRole, "error: ", "is not authorized to perform", "likely cause (trust_policy_or_external_id): ", "External ID sent"}},
		{name: "chained session too long", cfg: Config{Role: targetRole},
			sts:    fakeSTS{assumeErr: apiError(400, "ValidationError", "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.")},
			result: ResultFailed, hops: "caller:ok,base:ok,target:FAILED", assumed: "", cause: sts.CauseDuration},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Session.DefaultSession = "kiam"
			switch cfg.BaseRoleARN {
			case "":
				cfg.BaseRoleARN = baseRole
			case "-":
				cfg.BaseRoleARN = ""
			}
			checker, err := policy.New(policy.Config{ExternalIDFrom: tt.mode})
			if err != nil {
				t.Fatal(err)
			}
			f := tt.sts
			r := Run(context.Background(), cfg, Deps{STS: &f, Policy: checker, Cluster: KubeCluster{Client: fake.NewClientset(objects...)}})

			var hops []string
			for _, h := range r.Hops {
				status := "ok"
				switch {
				case h.Skipped:
					status = "skipped"
				case !h.OK:
					status = "FAILED"
				}
				hops = append(hops, string(h.Hop)+":"+status)
			}
			if r.Result != tt.result || strings.Join(hops, ",") != tt.hops {
				t.Fatalf("result %s, hops %v; want %s, %s\n%+v", r.Result, hops, tt.result, tt.hops, r)
			}
			switch {
			case tt.assumed == "-" && len(f.assumed) != 0:
				t.Fatalf("STS asked for %+v", f.assumed)
			case tt.assumed != "-" && (len(f.assumed) != 1 || f.assumed[0].ExternalID != tt.assumed || f.assumed[0].SessionName != "kiam-kiam"):
				t.Fatalf("STS asked for %+v, want one key with External ID %q", f.assumed, tt.assumed)
			}
			if tt.cause != "" {
				last := r.Hops[len(r.Hops)-1]
				if last.Cause == nil || last.Cause.Code != tt.cause || last.Error == "" {
					t.Fatalf("last hop %+v, want cause %s", last, tt.cause)
				}
			}
			if tt.reason != "" && (r.Policy == nil || r.Policy.Reason != tt.reason || r.Policy.Allowed) {
				t.Fatalf("policy %+v, want denied with %s", r.Policy, tt.reason)
			}
			if tt.errorText != "" && !strings.Contains(r.Error, tt.errorText) {
				t.Fatalf("error %q, want %q", r.Error, tt.errorText)
			}

			var text, js bytes.Buffer
			if err := r.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if err := r.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			for _, want := range append(tt.text, "result   "+tt.result) {
				if !strings.Contains(text.String(), want) {
					t.Errorf("text lacks %q:\n%s", want, text.String())
				}
			}
			for _, out := range []string{text.String(), js.String()} {
				if strings.Contains(out, secret) || strings.Contains(out, token) || strings.Contains(out, "ASIAEXAMPLE") {
					t.Errorf("credentials printed:\n%s", out)
				}
			}
			var back Report
			if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Result != r.Result || len(back.Hops) != len(r.Hops) {
				t.Errorf("JSON %s does not read back: %v", js.String(), err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	kiam := session.Config{DefaultSession: "kiam"}
	ok := Config{Role: targetRole, Session: kiam}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing to check", Config{Session: kiam}, "--role or --pod"},
		{"pod without namespace", Config{Pod: "app", Session: kiam}, "namespace/name"},
		{"pod with two slashes", Config{Pod: "a/b/c", Session: kiam}, "namespace/name"},
		{"pod and another namespace", Config{Pod: "a/b", Namespace: "c", Session: kiam}, "differs"},
		{"invalid external id", Config{Role: targetRole, ExternalID: "x", Session: kiam}, "--external-id"},
		{"no session", Config{Role: targetRole}, "--session"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// An unreadable namespace fails the check rather than deciding on nothing.
func TestRunNamespaceUnreadable(t *testing.T) {
	checker, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSTS{}
	r := Run(context.Background(), Config{Role: targetRole, Namespace: "tenant", Session: session.Config{DefaultSession: "kiam"}},
		Deps{STS: f, Policy: checker, Cluster: brokenCluster{}})
	if r.Result != ResultFailed || !strings.Contains(r.Error, "forbidden") || len(f.assumed) != 0 || r.Policy != nil {
		t.Fatalf("report %+v, STS asked %v", r, f.assumed)
	}
}

type brokenCluster struct{}

func (brokenCluster) Namespace(context.Context, string) (*corev1.Namespace, error) {
	return nil, apierrors.NewForbidden(corev1.Resource("namespaces"), "tenant", fmt.Errorf("rbac"))
}

func (brokenCluster) Pod(context.Context, string, string) (*corev1.Pod, error) {
	return nil, errors.New("unused")
}

func (brokenCluster) ServiceAccount(context.Context, string, string) (*corev1.ServiceAccount, error) {
	return nil, errors.New("unused")
}

// The check sends what the server sends: the session name, SourceIdentity
// and session tags the server's flags make of the pod, and, with
// --service-account-roles, the role of a pod's ServiceAccount.
func TestRunSessions(t *testing.T) {
	tenant := namespace("tenant", map[string]string{role.AnnotationPermitted: "arn:aws:iam::" + accountB + ":role/tenant-.*"})
	ledger := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "ledger",
		Annotations: map[string]string{role.AnnotationRole: targetRole}}}
	runsAs := func(p *corev1.Pod, sa string) *corev1.Pod {
		p.Spec.ServiceAccountName, p.Spec.NodeName, p.UID = sa, "node-1", "0b0e2d8c-5b8e-4a4e-9c52-2d3f6e1a7b10"
		return p
	}
	objects := []runtime.Object{
		tenant, ledger,
		runsAs(pod("tenant", "app", map[string]string{role.AnnotationRole: targetRole}), "default"),
		runsAs(pod("tenant", "ledger-7d9f", nil), "ledger"),
		runsAs(pod("tenant", "own-role", map[string]string{role.AnnotationRole: "arn:aws:iam::" + accountB + ":role/tenant-own"}), "ledger"),
		runsAs(pod("tenant", "orphan", nil), "gone"),
	}
	names := session.Config{NameTemplate: "{{.Namespace}}.{{.ServiceAccount}}", SourceIdentityTemplate: "{{.Namespace}}.{{.PodName}}",
		PodTags: []string{"namespace", "pod"}, StaticTags: []string{"eks-cluster-name=prod"}}
	tagDenied := apiError(403, "AccessDenied", "User: arn:aws:sts::"+accountA+":assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:TagSession on resource: "+targetRole)
	denied := apiError(403, "AccessDenied", "User: arn:aws:sts::"+accountA+":assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:AssumeRole on resource: "+targetRole)
	tests := []struct {
		name       string
		cfg        Config
		cluster    Cluster
		sts        fakeSTS
		result     string
		key        creds.Key // what STS was asked; zero: not asked
		roleFrom   string
		cause      string
		text, json []string
		errorText  string
	}{
		{name: "a pod: name, source identity and tags from its metadata", cfg: Config{Pod: "tenant/app", Session: names, TransitiveSessionTags: true},
			result: ResultAssumed, roleFrom: RoleFromPod,
			key: creds.Key{RoleARN: targetRole, SessionName: "tenant.default", SourceIdentity: "tenant.app",
				Tags: creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "tenant"}, creds.Tag{Key: "kubernetes-pod-name", Value: "app"},
					creds.Tag{Key: "eks-cluster-name", Value: "prod"})},
			text: []string{"target   ok       " + targetRole + ", session tenant.default, source identity tenant.app, no External ID, expires ",
				`                  transitive session tags: eks-cluster-name="prod", kubernetes-namespace="tenant", kubernetes-pod-name="app"` + "\n",
				"(from pod annotation)"},
			json: []string{`"source_identity": "tenant.app"`, `"Key": "kubernetes-pod-name"`, `"transitive_session_tags": true`, `"role_from": "pod annotation"`}},
		{name: "the role of the pod's ServiceAccount", cfg: Config{Pod: "tenant/ledger-7d9f", ServiceAccountRoles: true, Session: session.Config{NameTemplate: "{{.ServiceAccount}}.{{.Role}}"}},
			result: ResultAssumed, roleFrom: "ServiceAccount tenant/ledger",
			key:  creds.Key{RoleARN: targetRole, SessionName: "ledger.tenant-app"},
			text: []string{"policy   allowed  pod tenant/ledger-7d9f, role " + targetRole + " (from ServiceAccount tenant/ledger)", "session ledger.tenant-app"}},
		{name: "without --service-account-roles the account's role does not count", cfg: Config{Pod: "tenant/ledger-7d9f"},
			result: ResultDenied, errorText: "no iam.amazonaws.com/role"},
		{name: "the pod's own annotation wins over its account's", cfg: Config{Pod: "tenant/own-role", ServiceAccountRoles: true},
			cluster: noServiceAccounts{},
			result:  ResultAssumed, roleFrom: RoleFromPod, key: creds.Key{RoleARN: "arn:aws:iam::" + accountB + ":role/tenant-own", SessionName: "kiam-kiam"}},
		{name: "--role wins over the account's, and its account is not read", cfg: Config{Pod: "tenant/ledger-7d9f", Role: "arn:aws:iam::" + accountB + ":role/tenant-own", ServiceAccountRoles: true},
			cluster: noServiceAccounts{},
			result:  ResultAssumed, roleFrom: RoleFromFlag, key: creds.Key{RoleARN: "arn:aws:iam::" + accountB + ":role/tenant-own", SessionName: "kiam-kiam"}},
		{name: "a ServiceAccount that does not exist gives no role", cfg: Config{Pod: "tenant/orphan", ServiceAccountRoles: true},
			result: ResultDenied, errorText: "no iam.amazonaws.com/role"},
		{name: "an unreadable ServiceAccount fails the check", cfg: Config{Pod: "tenant/ledger-7d9f", ServiceAccountRoles: true},
			cluster: noServiceAccounts{}, result: ResultFailed, errorText: "read serviceaccount tenant/ledger: serviceaccounts \"tenant/ledger\" is forbidden"},
		{name: "no pod: the namespace alone, and a note", cfg: Config{Role: targetRole, Namespace: "tenant", Session: names},
			result: ResultAssumed, roleFrom: RoleFromFlag,
			key: creds.Key{RoleARN: targetRole, SessionName: "tenant.", SourceIdentity: "tenant.",
				Tags: creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "tenant"}, creds.Tag{Key: "kubernetes-pod-name", Value: ""},
					creds.Tag{Key: "eks-cluster-name", Value: "prod"})},
			text: []string{`session tags: eks-cluster-name="prod", kubernetes-namespace="tenant", kubernetes-pod-name=""` + "\n",
				`no --pod: the session name, source identity and tags were made from namespace "tenant" and an empty ServiceAccount`}},
		{name: "static tags only: no note", cfg: Config{Role: targetRole, Session: session.Config{StaticTags: []string{"team=ledger"}}},
			result: ResultAssumed, roleFrom: RoleFromFlag,
			key:  creds.Key{RoleARN: targetRole, SessionName: "kiam-kiam", Tags: creds.NewTags(creds.Tag{Key: "team", Value: "ledger"})},
			text: []string{`session tags: team="ledger"` + "\n"}},
		{name: "trust without sts:TagSession, as AWS says it", cfg: Config{Pod: "tenant/app", Session: names}, sts: fakeSTS{assumeErr: tagDenied},
			result: ResultFailed, roleFrom: RoleFromPod, cause: sts.CauseSessionActions,
			text: []string{"likely cause (trust_policy_session_actions): the server sends session tags", "must list sts:TagSession beside sts:AssumeRole"}},
		{name: "a denial that names only sts:AssumeRole lists the session actions", cfg: Config{Pod: "tenant/app", Session: names}, sts: fakeSTS{assumeErr: denied},
			result: ResultFailed, roleFrom: RoleFromPod, cause: sts.CauseTrustOrExtID,
			text: []string{"a SourceIdentity and session tags were sent, so the trust policy's Action must also list sts:SetSourceIdentity and sts:TagSession"}},
		{name: "a template STS cannot take fails the check", cfg: Config{Role: targetRole, Session: session.Config{NameTemplate: "{{.Namespace}}/{{.PodName}}"}},
			result: ResultFailed, errorText: "--session-name-template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.BaseRoleARN = baseRole
			cfg.Session.DefaultSession = "kiam"
			checker, err := policy.New(policy.Config{})
			if err != nil {
				t.Fatal(err)
			}
			cluster := tt.cluster
			if cluster == nil {
				cluster = KubeCluster{Client: fake.NewClientset(objects...)}
			} else {
				cluster = overlay{Cluster: cluster, Kube: KubeCluster{Client: fake.NewClientset(objects...)}}
			}
			f := tt.sts
			r := Run(context.Background(), cfg, Deps{STS: &f, Policy: checker, Cluster: cluster})
			if r.Result != tt.result || r.RoleFrom != tt.roleFrom || !strings.Contains(r.Error, tt.errorText) {
				t.Fatalf("result %s, role from %q, error %q; want %s, %q, %q\n%+v", r.Result, r.RoleFrom, r.Error, tt.result, tt.roleFrom, tt.errorText, r)
			}
			switch {
			case tt.key == (creds.Key{}) && len(f.assumed) != 0 && tt.sts.assumeErr == nil:
				t.Fatalf("STS asked for %+v", f.assumed)
			case tt.key != (creds.Key{}) && (len(f.assumed) != 1 || f.assumed[0] != tt.key):
				t.Fatalf("STS asked for %+v, want %+v", f.assumed, tt.key)
			}
			if tt.cause != "" {
				last := r.Hops[len(r.Hops)-1]
				if last.Cause == nil || last.Cause.Code != tt.cause {
					t.Fatalf("last hop %+v, want cause %s", last, tt.cause)
				}
			}
			var text, js bytes.Buffer
			if err := r.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if err := r.WriteJSON(&js); err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.text {
				if !strings.Contains(text.String(), want) {
					t.Errorf("text lacks %q:\n%s", want, text.String())
				}
			}
			if tt.result == ResultAssumed && tt.cfg.Pod != "" && strings.Contains(text.String(), "no --pod") {
				t.Errorf("a note about a missing pod for a real one:\n%s", text.String())
			}
			for _, want := range tt.json {
				if !strings.Contains(js.String(), want) {
					t.Errorf("JSON lacks %q:\n%s", want, js.String())
				}
			}
		})
	}
}

// noServiceAccounts refuses to read ServiceAccounts, as an API server
// does a check without the RBAC to list them.
type noServiceAccounts struct{ Cluster }

func (noServiceAccounts) ServiceAccount(_ context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return nil, apierrors.NewForbidden(corev1.Resource("serviceaccounts"), namespace+"/"+name, errors.New("rbac"))
}

// overlay reads namespaces and pods from Kube and ServiceAccounts from
// Cluster.
type overlay struct {
	Cluster
	Kube KubeCluster
}

func (o overlay) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return o.Kube.Namespace(ctx, name)
}

func (o overlay) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return o.Kube.Pod(ctx, namespace, name)
}
