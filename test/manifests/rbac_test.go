package manifests

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// checkRBAC creates deploy/manifests/rbac.yaml for real and asks the API
// server's authorizer what each ServiceAccount may do: exactly what the
// server needs (pods, namespaces and ServiceAccounts list/watch, events create/patch in both
// groups), nothing for the agent.
func checkRBAC(t *testing.T, cfg *rest.Config, dyn dynamic.Interface, mapper meta.RESTMapper, root string) {
	for _, o := range readYAMLFiles(t, filepath.Join(root, "deploy/manifests/rbac.yaml")) {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatal(err)
		}
		ri := dynamic.ResourceInterface(dyn.Resource(m.Resource))
		if ns := o.GetNamespace(); ns != "" {
			ri = dyn.Resource(m.Resource).Namespace(ns)
		}
		if _, err := ri.Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s/%s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const server, agent = "system:serviceaccount:kube-system:podiam-server", "system:serviceaccount:kube-system:podiam-agent"
	cases := []struct {
		user, verb, group, resource string
		allowed                     bool
	}{
		{server, "list", "", "pods", true},
		{server, "watch", "", "pods", true},
		{server, "list", "", "namespaces", true},
		{server, "watch", "", "namespaces", true},
		{server, "list", "", "serviceaccounts", true},
		{server, "watch", "", "serviceaccounts", true},
		{server, "get", "", "serviceaccounts", false},
		{server, "create", "", "events", true},
		{server, "patch", "", "events", true},
		{server, "create", "events.k8s.io", "events", true},
		{server, "patch", "events.k8s.io", "events", true},
		{server, "get", "", "secrets", false},
		{server, "list", "", "secrets", false},
		{server, "update", "", "pods", false},
		{server, "delete", "", "pods", false},
		{server, "create", "", "serviceaccounts/token", false},
		{agent, "list", "", "pods", false},
		{agent, "get", "", "secrets", false},
		{agent, "create", "", "events", false},
	}
	review := func(c struct {
		user, verb, group, resource string
		allowed                     bool
	}) (*authzv1.SubjectAccessReview, error) {
		return client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:               c.user,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
			ResourceAttributes: resourceAttributes(c.verb, c.group, c.resource),
		}}, metav1.CreateOptions{})
	}
	// The authorizer learns of the bindings just applied through its own
	// informers: wait until the first grant is seen before judging.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := review(cases[0])
		if err == nil && got.Status.Allowed {
			break
		}
		if time.Now().After(deadline) {
			break // the loop below reports it
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range cases {
		got, err := review(c)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != c.allowed {
			t.Errorf("%s %s %s.%s: allowed=%v, want %v (%s)", c.user, c.verb, c.resource, c.group, got.Status.Allowed, c.allowed, got.Status.Reason)
		}
	}
}

// resourceAttributes splits "serviceaccounts/token" into resource and
// subresource, as the authorizer sees them.
func resourceAttributes(verb, group, resource string) *authzv1.ResourceAttributes {
	res, sub, _ := strings.Cut(resource, "/")
	return &authzv1.ResourceAttributes{Namespace: "payments", Verb: verb, Group: group, Resource: res, Subresource: sub}
}
