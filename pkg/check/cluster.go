package check

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KubeCluster is Cluster on a clientset: live reads, as a check is run
// once and must see what the API server has now.
type KubeCluster struct {
	Client kubernetes.Interface
}

// Namespace implements Cluster.
func (k KubeCluster) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	ns, err := k.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return ns, nil
}

// Pod implements Cluster.
func (k KubeCluster) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	pod, err := k.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}
