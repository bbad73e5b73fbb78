package check

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
)

// KubeCluster is Cluster on a clientset: live reads, as a check runs once
// and must see what the API server has now. It lists by name rather than
// gets, because the server's ServiceAccount may list and watch pods,
// namespaces and (with --service-account-roles) ServiceAccounts but not get
// them, and a check runs as the server does.
type KubeCluster struct {
	Client kubernetes.Interface
}

// Namespace implements Cluster.
func (k KubeCluster) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	list, err := k.Client.CoreV1().Namespaces().List(ctx, byName(name))
	if err != nil {
		return nil, fmt.Errorf("list namespace %s: %w", name, err)
	}
	// The name is checked as well as selected: a list that ignored the
	// selector must not answer with another namespace.
	for i := range list.Items {
		if list.Items[i].Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// Pod implements Cluster.
func (k KubeCluster) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	list, err := k.Client.CoreV1().Pods(namespace).List(ctx, byName(name))
	if err != nil {
		return nil, fmt.Errorf("list pod %s/%s: %w", namespace, name, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("pods"), namespace+"/"+name)
}

// ServiceAccount implements Cluster.
func (k KubeCluster) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	list, err := k.Client.CoreV1().ServiceAccounts(namespace).List(ctx, byName(name))
	if err != nil {
		return nil, fmt.Errorf("list serviceaccount %s/%s: %w", namespace, name, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == name {
			return &list.Items[i], nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("serviceaccounts"), namespace+"/"+name)
}

func byName(name string) metav1.ListOptions {
	return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
}
