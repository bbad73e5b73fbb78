package session

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/role"
)

const base = "arn:aws:iam::123456789012:role/"

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		name, text string
		// err is "" for a valid template, else a part of the error.
		err string
	}{
		{"namespace and account", "{{.Namespace}}.{{.ServiceAccount}}", ""},
		{"every field", "{{.Namespace}}.{{.ServiceAccount}}.{{.PodName}}.{{.PodUID}}.{{.NodeName}}.{{.Role}}", ""},
		{"constant", "podiam", ""},
		{"functions", `{{printf "%.8s" .PodUID}}@{{.Namespace}}`, ""},
		{"empty", "", "empty"},
		{"blank", "  ", "empty"},
		{"parse error", "{{.Namespace", "unclosed"},
		{"unknown field", "{{.Cluster}}", "Cluster"},
		{"renders nothing", `{{if eq .Namespace "never"}}x{{end}}`, "renders nothing"},
		{"slash in the text", "{{.Namespace}}/{{.PodName}}", `'/'`},
		{"colon in the text", "k8s:{{.PodName}}", `':'`},
		{"space in the text", "{{.Namespace}} {{.PodName}}", `' '`},
		{"always too long", strings.Repeat("x", 30) + "{{.PodUID}}", "renders 66 characters"},
		{"fails on short values", "{{slice .PodName 0 3}}", "slice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTemplate(tc.text)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("ParseTemplate(%q): %v", tc.text, err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("ParseTemplate(%q) = %v, want an error mentioning %s", tc.text, err, tc.err)
			}
		})
	}
}

// Errors name the flag, since a person wrote a flag, not a field.
func TestConfigValidateNamesFlags(t *testing.T) {
	err := Config{DefaultSession: "kiam", NameTemplate: "{{.Namespace}}/x"}.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "--session-name-template: ") {
		t.Fatalf("err = %v, want it to start with the flag", err)
	}
	err = Config{DefaultSession: "kiam", SourceIdentityTemplate: strings.Repeat("x", 65)}.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "--source-identity-template: ") {
		t.Fatalf("err = %v, want it to start with the flag", err)
	}
	if err := (Config{DefaultSession: "kiam"}).Validate(); err != nil {
		t.Fatalf("default configuration: %v", err)
	}
}

func TestRender(t *testing.T) {
	f := Fields{Namespace: "payments", ServiceAccount: "ledger", PodName: "ledger-7d9f8c6b5-x2k4p",
		PodUID: "0b4e9a6c-5d1f-4e1a-9a51-0c3f6b2d8e11", NodeName: "ip-10-0-1-17.ec2.internal", Role: "payments-ledger"}
	tests := []struct{ text, want string }{
		{"{{.Namespace}}.{{.ServiceAccount}}", "payments.ledger"},
		{"{{.Role}}@{{.Namespace}}", "payments-ledger@payments"},
		{"{{.PodName}}", "ledger-7d9f8c6b5-x2k4p"},
		// 36 + 1 + 25 = 62: fits.
		{"{{.PodUID}}.{{.NodeName}}", "0b4e9a6c-5d1f-4e1a-9a51-0c3f6b2d8e11.ip-10-0-1-17.ec2.internal"},
		// Over 64: cut, with the hash.
		{"{{.Namespace}}.{{.ServiceAccount}}.{{.PodName}}.{{.NodeName}}.{{.Role}}", "payments.ledger.ledger-7d9f8c6b5-x2k4p.ip-10-0-1-17_"},
	}
	for _, tc := range tests {
		tpl, err := ParseTemplate(tc.text)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tpl.Render(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(tc.want, "_") {
			if !strings.HasPrefix(got, tc.want) || len(got) != MaxNameLen {
				t.Errorf("%s: %q, want %q and a hash, 64 characters", tc.text, got, tc.want)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.text, got, tc.want)
		}
	}
}

// Two pods whose names differ only past the 64th character get different
// session names from a template that must cut them.
func TestRenderCutStaysDistinct(t *testing.T) {
	tpl, err := ParseTemplate("{{.Namespace}}.{{.PodName}}")
	if err != nil {
		t.Fatal(err)
	}
	stem := strings.Repeat("worker-", 12)
	seen := map[string]string{}
	for _, pod := range []string{stem + "a", stem + "b", stem + "aa", stem} {
		got, err := tpl.Render(Fields{Namespace: "batch", PodName: pod})
		if err != nil {
			t.Fatal(err)
		}
		if !Valid(got) {
			t.Fatalf("%q is not a valid session name", got)
		}
		if prev, ok := seen[got]; ok {
			t.Fatalf("pods %q and %q share the session name %q", prev, pod, got)
		}
		seen[got] = pod
	}
}

func testPod(ns, name, sa string, ann map[string]string) *podindex.Pod {
	return podindex.FromAPI(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name), Annotations: ann},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: "node-1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1"},
	})
}

func newKeys(t *testing.T, cfg Config) *Keys {
	t.Helper()
	r, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DefaultSession == "" {
		cfg.DefaultSession = "kiam"
	}
	k, err := New(cfg, Deps{Roles: r})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeysKIAMDefault(t *testing.T) {
	k := newKeys(t, Config{})
	for _, tc := range []struct {
		ann  map[string]string
		want creds.Key
	}{
		{map[string]string{role.AnnotationRole: "app"}, creds.Key{RoleARN: base + "app", SessionName: "kiam-kiam"}},
		{map[string]string{role.AnnotationRole: "app", role.AnnotationSessionName: "batch", role.AnnotationExternalID: "ext-1"},
			creds.Key{RoleARN: base + "app", SessionName: "kiam-batch", ExternalID: "ext-1"}},
	} {
		got, err := k.Key(testPod("ns", "web", "sa", tc.ann))
		if err != nil || got != tc.want {
			t.Errorf("%v: %+v, %v; want %+v", tc.ann, got, err, tc.want)
		}
	}
	if _, err := k.Key(testPod("ns", "web", "sa", nil)); !errors.Is(err, role.ErrNoRole) {
		t.Errorf("no role: %v", err)
	}
	if _, err := k.Key(testPod("ns", "web", "sa", map[string]string{role.AnnotationRole: "a/../b"})); !errors.Is(err, role.ErrInvalidRole) {
		t.Errorf("invalid role: %v", err)
	}
}

// With a template, the name comes from the pod's metadata and the pod's
// session-name annotation no longer chooses it: a pod must not be able to
// pass for another in CloudTrail.
func TestKeysTemplate(t *testing.T) {
	k := newKeys(t, Config{NameTemplate: "{{.Namespace}}.{{.ServiceAccount}}.{{.Role}}"})
	got, err := k.Key(testPod("payments", "ledger-1", "ledger",
		map[string]string{role.AnnotationRole: "team/app", role.AnnotationSessionName: "other.pod"}))
	if err != nil {
		t.Fatal(err)
	}
	want := creds.Key{RoleARN: base + "team/app", SessionName: "payments.ledger.app"}
	if got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
	// Pods of one account share the key; another account's do not.
	a, _ := k.Key(testPod("payments", "ledger-2", "ledger", map[string]string{role.AnnotationRole: "team/app"}))
	b, _ := k.Key(testPod("payments", "report-1", "report", map[string]string{role.AnnotationRole: "team/app"}))
	if a != got || b == got {
		t.Fatalf("same account %+v, other account %+v, first %+v", a, b, got)
	}
}

// The source identity is rendered like the name, independently of it, and
// is part of the key: pods that differ in it never share a session.
func TestKeysSourceIdentity(t *testing.T) {
	k := newKeys(t, Config{SourceIdentityTemplate: "{{.ServiceAccount}}@{{.Namespace}}"})
	a, err := k.Key(testPod("payments", "ledger-1", "ledger", map[string]string{role.AnnotationRole: "app"}))
	if err != nil {
		t.Fatal(err)
	}
	want := creds.Key{RoleARN: base + "app", SessionName: "kiam-kiam", SourceIdentity: "ledger@payments"}
	if a != want {
		t.Fatalf("%+v, want %+v", a, want)
	}
	b, _ := k.Key(testPod("payments", "report-1", "report", map[string]string{role.AnnotationRole: "app"}))
	if b.SourceIdentity != "report@payments" || b == a || b.String() == a.String() {
		t.Fatalf("another account's key %+v is not distinct from %+v", b, a)
	}
	// Over-long values are cut with a hash, as names are.
	long := strings.Repeat("w", 70)
	c, _ := k.Key(testPod("payments", "x", long, map[string]string{role.AnnotationRole: "app"}))
	if !Valid(c.SourceIdentity) || !strings.HasPrefix(c.SourceIdentity, strings.Repeat("w", 51)+"_") {
		t.Fatalf("long source identity %q", c.SourceIdentity)
	}
}

// saRoles is a fixed set of ServiceAccount role annotations.
type saRoles map[string]string

func (s saRoles) Role(namespace, name string) string { return s[namespace+"/"+name] }

// A ServiceAccount's role is the role of its pods that have none of their
// own; a pod's annotation wins; with the feature off nothing changes.
func TestKeysServiceAccountRoles(t *testing.T) {
	r, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	accounts := saRoles{"payments/ledger": "payments-ledger", "payments/broken": "a/../b"}
	k, err := New(Config{DefaultSession: "kiam", NameTemplate: "{{.Namespace}}.{{.ServiceAccount}}.{{.Role}}"},
		Deps{Roles: r, ServiceAccounts: accounts})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		sa      string
		ann     map[string]string
		want    string // role ARN; "" for an error
		wantErr error
		fromSA  bool
	}{
		{"account's role", "ledger", nil, base + "payments-ledger", nil, true},
		{"empty own annotation reads as none", "ledger", map[string]string{role.AnnotationRole: ""}, base + "payments-ledger", nil, true},
		{"own annotation wins", "ledger", map[string]string{role.AnnotationRole: "other"}, base + "other", nil, false},
		{"account without a role", "report", nil, "", role.ErrNoRole, false},
		{"account's role invalid", "broken", nil, "", role.ErrInvalidRole, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod("payments", "pod-1", tc.sa, tc.ann)
			got, err := k.Key(p)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			} else if err != nil || got.RoleARN != tc.want {
				t.Fatalf("key %+v, %v; want role %s", got, err, tc.want)
			}
			if (k.ServiceAccountRole(p) != "") != tc.fromSA {
				t.Fatalf("ServiceAccountRole = %q, want one: %v", k.ServiceAccountRole(p), tc.fromSA)
			}
		})
	}
	// The account's role feeds the templates like a pod's own.
	got, _ := k.Key(testPod("payments", "pod-1", "ledger", nil))
	if got.SessionName != "payments.ledger.payments-ledger" {
		t.Fatalf("session name %q", got.SessionName)
	}

	off := newKeys(t, Config{})
	if _, err := off.Key(testPod("payments", "pod-1", "ledger", nil)); !errors.Is(err, role.ErrNoRole) {
		t.Fatalf("with ServiceAccount roles off: %v, want ErrNoRole", err)
	}
}
