package podindex

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// annotationPrefix selects the only annotations podiam reads.
const annotationPrefix = "iam.amazonaws.com/"

// Transform slims pods, namespaces and ServiceAccounts before the informer
// stores them: a pod becomes a *Pod, a namespace or ServiceAccount keeps its
// identity and iam.amazonaws.com/ annotations. With ten thousand pods a full object costs kilobytes each
// (managed fields, container specs, conditions); what identity and policy
// need is a few strings. It is idempotent and leaves other types
// (tombstones, a *Pod already) untouched, as informer transforms must.
func Transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return FromAPI(o), nil
	case *corev1.Namespace:
		// Namespaces stay *corev1.Namespace for the typed lister; there
		// are few of them.
		return &corev1.Namespace{ObjectMeta: slimMeta(o.ObjectMeta)}, nil
	case *corev1.ServiceAccount:
		// A ServiceAccount's role annotation is all the server reads of
		// it; its secrets and image pull secrets are dropped.
		return &corev1.ServiceAccount{ObjectMeta: slimMeta(o.ObjectMeta)}, nil
	}
	return obj, nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp,
	}
	for k, v := range m.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}
