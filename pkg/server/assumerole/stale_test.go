package assumerole

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
)

// staleNamespaces fails as podindex.Namespaces does while the namespace
// watch is behind and the API server does not answer.
type staleNamespaces struct{}

func (staleNamespaces) Get(name string) (*corev1.Namespace, error) {
	return nil, fmt.Errorf("namespace %s: %w: connection refused", name, podindex.ErrNamespaceStale)
}

type credsFunc func(context.Context, creds.Key) (creds.Credentials, error)

func (f credsFunc) Get(ctx context.Context, k creds.Key) (creds.Credentials, error) { return f(ctx, k) }

// idle is a ListerWatcher for informers that are never started.
func idle() cache.ListerWatcher {
	return &cache.ListWatch{
		ListFunc:  func(metav1.ListOptions) (runtime.Object, error) { return &unstructured.UnstructuredList{}, nil },
		WatchFunc: func(metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil },
	}
}

// An object whose namespace's policy cannot be known now is retried: no
// credentials fetched on a namespace that may be old, its Secret neither
// written nor deleted, and its status left as it was.
func TestStaleNamespaceRetriesWithoutChange(t *testing.T) {
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	objects := cache.NewSharedIndexInformer(idle(), &unstructured.Unstructured{}, 0, cache.Indexers{})
	secrets := cache.NewSharedIndexInformer(idle(), &corev1.Secret{}, 0, cache.Indexers{})
	resolver, err := role.NewResolver("arn:aws:iam::123456789012:role/")
	if err != nil {
		t.Fatal(err)
	}
	checker, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	statuses, fetches := 0, 0
	c, err := New(Config{DefaultSession: "kiam", Refresh: 1}, Deps{
		Objects:    objects,
		Secrets:    secrets,
		Namespaces: factory.Core().V1().Namespaces(),
		Current:    staleNamespaces{},
		SecretAPI:  client.CoreV1(),
		Status:     statusFunc(func(*v1alpha1.AWSAssumeRole) { statuses++ }),
		Roles:      resolver,
		Policy:     checker,
		Cache: credsFunc(func(context.Context, creds.Key) (creds.Credentials, error) {
			fetches++
			return creds.Credentials{}, errors.New("unused")
		}),
		InUse:  NewInUse(),
		Events: recorderFunc(func(string) {}),
		Log:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "iam.amazonaws.com/v1alpha1", "kind": "AWSAssumeRole",
		"metadata": map[string]any{"namespace": "app", "name": "creds", "uid": "u1"},
		"spec":     map[string]any{"roleName": "app", "secretName": "aws", "secretType": string(v1alpha1.SecretTypeMap)},
	}}
	if err := objects.GetIndexer().Add(obj); err != nil {
		t.Fatal(err)
	}
	_, err = c.reconcile(t.Context(), "app/creds")
	if !errors.Is(err, podindex.ErrNamespaceStale) {
		t.Fatalf("reconcile = %v, want an error wrapping ErrNamespaceStale to retry", err)
	}
	if statuses != 0 || fetches != 0 || len(client.Actions()) != 0 {
		t.Fatalf("%d status writes, %d fetches, API actions %v; want none", statuses, fetches, client.Actions())
	}
}
