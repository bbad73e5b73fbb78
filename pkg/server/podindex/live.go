package podindex

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// ErrStale means the index may be out of date (its watch is down) and the
// API server did not answer either: the caller's identity is unknown for
// now, which is not the same as "no pod has this address".
var ErrStale = errors.New("pod index may be stale and the api server did not answer")

// LivePods reads pods from the API server, bypassing the informer.
type LivePods interface {
	// ByIP lists the pods whose status.podIP is ip.
	ByIP(ctx context.Context, ip string) ([]*corev1.Pod, error)
	// Get returns one pod, or an error for which apierrors.IsNotFound holds.
	Get(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// APIPods is LivePods on a clientset. Its reads are consistent (no
// resourceVersion), so they see every change the API server acknowledged.
type APIPods struct {
	Client corev1client.PodsGetter
}

// ByIP implements LivePods.
func (a APIPods) ByIP(ctx context.Context, ip string) ([]*corev1.Pod, error) {
	list, err := a.Client.Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("status.podIP", ip).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods with address %s: %w", ip, err)
	}
	pods := make([]*corev1.Pod, 0, len(list.Items))
	for i := range list.Items {
		pods = append(pods, &list.Items[i])
	}
	return pods, nil
}

// Get implements LivePods.
func (a APIPods) Get(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	pod, err := a.Client.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return pod, nil
}

// Results of a live lookup, for the metric.
const (
	liveConfirmed = "confirmed" // the API server agrees with the index
	liveCorrected = "corrected" // it does not: the index was behind
	liveFailed    = "failed"    // it did not answer: ErrStale
)

// lookupLive answers Lookup from the API server while the index may be
// stale. The field selector only matches a pod's first address, so the pods
// the index holds under ip (a second address, e.g. IPv6) are read one by
// one; those the API server no longer has are dropped.
//
// When the API server does not answer, neither does the index: it cannot
// tell an API server that is down (nothing changes) from one this server
// cannot reach while kubelets can (pods are deleted and their addresses
// reused). Agents keep serving the credentials they hold through an
// Unavailable answer, as long as the address still routes to the same pod.
func (i *Index) lookupLive(ctx context.Context, ip string) (*Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, i.liveTimeout)
	defer cancel()
	listed, err := i.live.ByIP(ctx, ip)
	if err == nil {
		listed, err = i.addIndexed(ctx, ip, listed)
	}
	if err != nil {
		i.liveLookups.WithLabelValues(liveFailed).Inc()
		return nil, fmt.Errorf("%w: %w", ErrStale, err)
	}
	var pods []*Pod
	for _, p := range listed {
		if pod := FromAPI(p); slices.Contains(pod.IPs, ip) {
			pods = append(pods, pod)
		}
	}
	pod, err := Choose(pods, i.now())

	stale, staleErr := i.Resolve(ip)
	if sameAnswer(pod, err, stale, staleErr) {
		i.liveLookups.WithLabelValues(liveConfirmed).Inc()
	} else {
		i.liveLookups.WithLabelValues(liveCorrected).Inc()
		i.log.Info("pod index is behind the api server; answered from the api server",
			"pod_ip", ip, "index_pod", podRef(stale, staleErr), "api_pod", podRef(pod, err))
	}
	if err != nil {
		return nil, fmt.Errorf("%w (checked with the api server)", err)
	}
	return pod, nil
}

// addIndexed adds to listed the pods the index holds under ip that the
// field selector did not return and the API server still has.
func (i *Index) addIndexed(ctx context.Context, ip string, listed []*corev1.Pod) ([]*corev1.Pod, error) {
	pods, err := i.indexed(ip)
	if err != nil {
		return nil, err
	}
	seen := map[types.UID]bool{}
	for _, p := range listed {
		seen[p.UID] = true
	}
	for _, indexed := range pods {
		if seen[indexed.UID] {
			continue
		}
		pod, err := i.live.Get(ctx, indexed.Namespace, indexed.Name)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, err
		}
		if !seen[pod.UID] {
			seen[pod.UID] = true
			listed = append(listed, pod)
		}
	}
	return listed, nil
}

// sameAnswer reports whether two lookups name the same pod (or fail alike).
// A newer version of the same pod is the same answer: the index being a
// little behind on a pod's status is normal and not worth a log line.
func sameAnswer(a *Pod, aErr error, b *Pod, bErr error) bool {
	switch {
	case aErr != nil || bErr != nil:
		return errors.Is(aErr, ErrNotFound) && errors.Is(bErr, ErrNotFound) ||
			errors.Is(aErr, ErrConflict) && errors.Is(bErr, ErrConflict)
	default:
		return a.UID == b.UID
	}
}

// podRef names a lookup's answer for a log line.
func podRef(pod *Pod, err error) string {
	switch {
	case errors.Is(err, ErrConflict):
		return "conflict"
	case err != nil:
		return "none"
	}
	return pod.Namespace + "/" + pod.Name
}
