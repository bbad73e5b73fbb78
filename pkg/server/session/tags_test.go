package session

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/role"
)

func TestTagConfig(t *testing.T) {
	many := make([]string, 0, 48)
	for i := range 48 {
		many = append(many, fmt.Sprintf("t%d=v", i))
	}
	tests := []struct {
		name   string
		pod    []string
		static []string
		err    string // "" valid
	}{
		{"every pod tag", []string{"namespace", "serviceaccount", "pod", "pod-uid"}, nil, ""},
		{"pod and cluster tags", []string{"namespace"}, []string{"eks-cluster-name=prod", "eks-cluster-arn=arn:aws:eks:us-east-1:111122223333:cluster/prod"}, ""},
		{"empty value", nil, []string{"team="}, ""},
		{"spaces and unicode", nil, []string{"cost center=Zürich 1"}, ""},
		{"unknown pod tag", []string{"node"}, nil, `unknown tag "node"`},
		{"pod tag twice", []string{"pod", "pod"}, nil, "named twice"},
		{"not KEY=VALUE", nil, []string{"eks-cluster-name"}, "not KEY=VALUE"},
		{"empty key", nil, []string{"=prod"}, "length 0"},
		{"aws: prefix", nil, []string{"AWS:foo=bar"}, "reserved"},
		{"comma in value", nil, []string{"team=a,b"}, "only letters"},
		{"long key", nil, []string{strings.Repeat("k", 129) + "=v"}, "outside 1..128"},
		{"long value", nil, []string{"k=" + strings.Repeat("v", 257)}, "longer than 256"},
		{"static key clashes with a pod tag", []string{"namespace"}, []string{"Kubernetes-Namespace=x"}, "set twice"},
		{"static key twice", nil, []string{"a=1", "A=2"}, "set twice"},
		{"too many", []string{"namespace", "pod", "pod-uid"}, many, "at most 50"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Config{DefaultSession: "kiam", PodTags: tc.pod, StaticTags: tc.static}.Validate()
			switch {
			case tc.err == "" && err != nil:
				t.Fatal(err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("err = %v, want one mentioning %s", err, tc.err)
			case tc.err != "" && !strings.Contains(err.Error(), "--session-tags") && !strings.Contains(err.Error(), "--static-session-tag"):
				t.Fatalf("err = %v does not name the flag", err)
			}
		})
	}
}

// The tags are EKS Pod Identity's keys with the pod's values, plus the
// static ones; they are in the key, so per-pod tags mean per-pod sessions.
func TestKeysTags(t *testing.T) {
	k := newKeys(t, Config{PodTags: []string{"pod", "namespace", "serviceaccount", "pod-uid"},
		StaticTags: []string{"eks-cluster-name=prod"}})
	p := testPod("payments", "ledger-1", "ledger", map[string]string{role.AnnotationRole: "app"})
	key, err := k.Key(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []creds.Tag{
		{Key: "eks-cluster-name", Value: "prod"},
		{Key: "kubernetes-namespace", Value: "payments"},
		{Key: "kubernetes-pod-name", Value: "ledger-1"},
		{Key: "kubernetes-pod-uid", Value: string(p.UID)},
		{Key: "kubernetes-service-account", Value: "ledger"},
	}
	if got := key.Tags.All(); !slices.Equal(got, want) {
		t.Fatalf("tags %v, want %v", got, want)
	}
	other, _ := k.Key(testPod("payments", "ledger-2", "ledger", map[string]string{role.AnnotationRole: "app"}))
	if other == key {
		t.Fatal("two pods share a key although their pod tags differ")
	}

	// Namespace tags only: pods of one namespace share.
	k = newKeys(t, Config{PodTags: []string{"namespace"}})
	a, _ := k.Key(testPod("payments", "ledger-1", "ledger", map[string]string{role.AnnotationRole: "app"}))
	b, _ := k.Key(testPod("payments", "report-1", "report", map[string]string{role.AnnotationRole: "app"}))
	c, _ := k.Key(testPod("billing", "report-1", "report", map[string]string{role.AnnotationRole: "app"}))
	if a != b || a == c {
		t.Fatalf("same namespace %+v / %+v, other namespace %+v", a, b, c)
	}
}
