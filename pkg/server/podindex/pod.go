package podindex

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Pod is what the server keeps of a pod. The informer stores it in place
// of a *corev1.Pod, whose struct alone is 1.1 KB before any of its strings,
// slices and maps; with ten thousand pods the cached pods were most of the
// server's memory. It holds what identity, node binding, role resolution
// and the agents' pod stream read, nothing else.
//
// It implements runtime.Object and metav1.Object so that client-go's
// stores, indexers, key functions and event recorder take it as they take
// a pod. Metadata it does not keep reads as empty and ignores setters.
// Cached pods are shared: never modify one.
type Pod struct {
	unkeptMeta // first: a zero-size field last would pad the struct

	Namespace, Name string
	UID             types.UID
	// ResourceVersion lets the informer tell resyncs from updates.
	ResourceVersion            string
	DeletionTimestamp          *metav1.Time
	DeletionGracePeriodSeconds *int64

	ServiceAccountName string
	NodeName           string
	HostNetwork        bool
	// Mirror marks a static pod's mirror (annotation
	// kubernetes.io/config.mirror). A node's kubelet may create those in
	// any namespace with any annotation, so they never get a role.
	Mirror bool
	Phase  corev1.PodPhase

	// IPs are status.podIPs, or status.podIP when podIPs is empty (older
	// API servers), canonical (netip, IPv4-mapped addresses unmapped),
	// without duplicates or unparsable entries.
	IPs []string
	// HostIPs are status.hostIPs, or status.hostIP, canonical.
	HostIPs []string

	// annotations are the iam.amazonaws.com/ annotations, sorted by key,
	// as one interned string of length-prefixed keys and values
	// (appendAnnotation): a map costs about 330 bytes even for one entry,
	// more than the rest of a pod, and the pods of one workload share one
	// string. Lengths, not separators, because a value may hold any byte.
	annotations string
}

// FromAPI keeps what the server needs of p. Strings that many pods share
// (namespace, node, service account, phase, host addresses, annotation
// keys and values) are interned, so ten thousand pods in a few namespaces
// on a few nodes hold one copy of each.
func FromAPI(p *corev1.Pod) *Pod {
	out := &Pod{
		Namespace:                  intern(p.Namespace),
		Name:                       p.Name,
		UID:                        p.UID,
		ResourceVersion:            p.ResourceVersion,
		DeletionTimestamp:          p.DeletionTimestamp,
		DeletionGracePeriodSeconds: p.DeletionGracePeriodSeconds,
		ServiceAccountName:         intern(p.Spec.ServiceAccountName),
		NodeName:                   intern(p.Spec.NodeName),
		HostNetwork:                p.Spec.HostNetwork,
		Mirror:                     isMirror(p.Annotations),
		Phase:                      corev1.PodPhase(intern(string(p.Status.Phase))),
		annotations:                iamAnnotations(p.Annotations),
	}
	for _, a := range p.Status.PodIPs {
		out.IPs = addCanonical(out.IPs, a.IP, false)
	}
	if len(out.IPs) == 0 && p.Status.PodIP != "" {
		out.IPs = addCanonical(out.IPs, p.Status.PodIP, false)
	}
	for _, h := range p.Status.HostIPs {
		out.HostIPs = addCanonical(out.HostIPs, h.IP, true)
	}
	if len(out.HostIPs) == 0 && p.Status.HostIP != "" {
		out.HostIPs = addCanonical(out.HostIPs, p.Status.HostIP, true)
	}
	return out
}

// AnnotationMirror is set by the kubelet on the API object it creates for
// a static pod (corev1.MirrorPodAnnotationKey).
const AnnotationMirror = corev1.MirrorPodAnnotationKey

func isMirror(annotations map[string]string) bool {
	_, ok := annotations[AnnotationMirror]
	return ok
}

// intern returns the canonical copy of s. unique keeps a value while a
// handle to it lives and the returned string keeps its bytes alive, so a
// string may get a new canonical copy after a GC cycle in which no handle
// existed: a few copies per distinct value rather than one per pod, and
// nothing retained for values no pod holds.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// addCanonical appends s in canonical form unless it does not parse. Pod
// addresses are deduplicated (an address indexed twice would conflict with
// itself); host addresses, shared by a node's pods, are interned.
func addCanonical(list []string, s string, shared bool) []string {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return list
	}
	c := addr.Unmap().String()
	if shared {
		return append(list, intern(c))
	}
	if slices.Contains(list, c) {
		return list
	}
	return append(list, c)
}

// iamAnnotations returns the iam.amazonaws.com/ annotations in the form of
// Pod.annotations, "" when there are none.
func iamAnnotations(in map[string]string) string {
	var keys []string
	for k := range in {
		if strings.HasPrefix(k, annotationPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	slices.Sort(keys)
	var b []byte
	for _, k := range keys {
		b = appendAnnotation(b, k, in[k])
	}
	return intern(string(b))
}

// appendAnnotation appends key and value, each as its length (uvarint)
// and its bytes.
func appendAnnotation(b []byte, key, value string) []byte {
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	b = binary.AppendUvarint(b, uint64(len(value)))
	return append(b, value...)
}

// eachAnnotation calls f with each kept annotation until f returns false.
func (p *Pod) eachAnnotation(f func(key, value string) bool) {
	rest := p.annotations
	next := func() (string, bool) {
		n, w := binary.Uvarint([]byte(rest[:min(len(rest), binary.MaxVarintLen64)]))
		if w <= 0 || n > uint64(len(rest)-w) {
			return "", false // not written by appendAnnotation
		}
		s := rest[w : w+int(n)]
		rest = rest[w+int(n):]
		return s, true
	}
	for rest != "" {
		key, ok := next()
		if !ok {
			return
		}
		value, ok := next()
		if !ok || !f(key, value) {
			return
		}
	}
}

// Annotation returns one of the pod's iam.amazonaws.com/ annotations and
// whether it is set, without the allocation of GetAnnotations.
func (p *Pod) Annotation(key string) (value string, ok bool) {
	p.eachAnnotation(func(k, v string) bool {
		if k == key {
			value, ok = v, true
		}
		return !ok
	})
	return value, ok
}

// GetAnnotations returns the pod's iam.amazonaws.com/ annotations as a new
// map (nil when it has none), the only annotations the server reads.
func (p *Pod) GetAnnotations() map[string]string {
	if p.annotations == "" {
		return nil
	}
	m := map[string]string{}
	p.eachAnnotation(func(k, v string) bool {
		m[k] = v
		return true
	})
	return m
}

// SetAnnotations keeps the iam.amazonaws.com/ annotations of a.
func (p *Pod) SetAnnotations(a map[string]string) { p.annotations = iamAnnotations(a) }

// DeepCopyObject implements runtime.Object.
func (p *Pod) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopy returns a copy that shares nothing mutable with p.
func (p *Pod) DeepCopy() *Pod {
	out := *p
	out.DeletionTimestamp = p.DeletionTimestamp.DeepCopy()
	if p.DeletionGracePeriodSeconds != nil {
		g := *p.DeletionGracePeriodSeconds
		out.DeletionGracePeriodSeconds = &g
	}
	out.IPs = slices.Clone(p.IPs)
	out.HostIPs = slices.Clone(p.HostIPs)
	return &out
}

// GetObjectKind implements runtime.Object: it is a v1 Pod, so that event
// references name the pod as they did for a *corev1.Pod.
func (p *Pod) GetObjectKind() schema.ObjectKind { return podKind{} }

// podKind is the fixed kind of Pod; setting it is ignored.
type podKind struct{}

func (podKind) SetGroupVersionKind(schema.GroupVersionKind) {}
func (podKind) GroupVersionKind() schema.GroupVersionKind {
	return corev1.SchemeGroupVersion.WithKind("Pod")
}

// Metadata the Pod keeps, for metav1.Object.

func (p *Pod) GetNamespace() string                { return p.Namespace }
func (p *Pod) SetNamespace(s string)               { p.Namespace = s }
func (p *Pod) GetName() string                     { return p.Name }
func (p *Pod) SetName(s string)                    { p.Name = s }
func (p *Pod) GetUID() types.UID                   { return p.UID }
func (p *Pod) SetUID(u types.UID)                  { p.UID = u }
func (p *Pod) GetResourceVersion() string          { return p.ResourceVersion }
func (p *Pod) SetResourceVersion(s string)         { p.ResourceVersion = s }
func (p *Pod) GetDeletionTimestamp() *metav1.Time  { return p.DeletionTimestamp }
func (p *Pod) SetDeletionTimestamp(t *metav1.Time) { p.DeletionTimestamp = t }
func (p *Pod) GetDeletionGracePeriodSeconds() *int64 {
	return p.DeletionGracePeriodSeconds
}
func (p *Pod) SetDeletionGracePeriodSeconds(s *int64) { p.DeletionGracePeriodSeconds = s }

// unkeptMeta is the part of metav1.Object that Pod does not keep.
type unkeptMeta struct{}

func (unkeptMeta) GetGenerateName() string                       { return "" }
func (unkeptMeta) SetGenerateName(string)                        {}
func (unkeptMeta) GetGeneration() int64                          { return 0 }
func (unkeptMeta) SetGeneration(int64)                           {}
func (unkeptMeta) GetSelfLink() string                           { return "" }
func (unkeptMeta) SetSelfLink(string)                            {}
func (unkeptMeta) GetCreationTimestamp() metav1.Time             { return metav1.Time{} }
func (unkeptMeta) SetCreationTimestamp(metav1.Time)              {}
func (unkeptMeta) GetLabels() map[string]string                  { return nil }
func (unkeptMeta) SetLabels(map[string]string)                   {}
func (unkeptMeta) GetFinalizers() []string                       { return nil }
func (unkeptMeta) SetFinalizers([]string)                        {}
func (unkeptMeta) GetOwnerReferences() []metav1.OwnerReference   { return nil }
func (unkeptMeta) SetOwnerReferences([]metav1.OwnerReference)    {}
func (unkeptMeta) GetManagedFields() []metav1.ManagedFieldsEntry { return nil }
func (unkeptMeta) SetManagedFields([]metav1.ManagedFieldsEntry)  {}

var (
	_ runtime.Object = (*Pod)(nil)
	_ metav1.Object  = (*Pod)(nil)
)
