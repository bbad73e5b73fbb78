package podindex

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// annotationPrefix selects the only annotations podiam reads.
const annotationPrefix = "iam.amazonaws.com/"

// Transform slims pods and namespaces before the informer stores them. With
// ten thousand pods a full object costs kilobytes each (managed fields,
// container specs, conditions); what identity and policy need is a few
// strings. It is idempotent and leaves other types (tombstones) untouched, as
// informer transforms must.
func Transform(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slimPod(o), nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: slimMeta(o.ObjectMeta)}, nil
	}
	return obj, nil
}

func slimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		ObjectMeta: slimMeta(p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{
			Phase:   p.Status.Phase,
			PodIP:   p.Status.PodIP,
			HostIP:  p.Status.HostIP,
			PodIPs:  p.Status.PodIPs,
			HostIPs: p.Status.HostIPs,
		},
	}
	out.DeletionTimestamp = p.DeletionTimestamp
	return out
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
