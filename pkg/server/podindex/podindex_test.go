package podindex

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/reference"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

type podOpt func(*corev1.Pod)

func mkPod(name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name)},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func ips(addrs ...string) podOpt {
	return func(p *corev1.Pod) {
		for _, a := range addrs {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a})
		}
		if len(addrs) > 0 {
			p.Status.PodIP = addrs[0]
		}
	}
}

// slim converts pods as the informer's transform does.
func slim(pods []*corev1.Pod) []*Pod {
	out := make([]*Pod, len(pods))
	for i, p := range pods {
		out[i] = FromAPI(p)
	}
	return out
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func hostNet(p *corev1.Pod)           { p.Spec.HostNetwork = true }
func deleting(at time.Time) podOpt {
	return func(p *corev1.Pod) { ts := metav1.NewTime(at); p.DeletionTimestamp = &ts }
}

func TestChoose(t *testing.T) {
	tests := []struct {
		name    string
		pods    []*corev1.Pod
		want    string
		wantErr error
	}{
		{"none", nil, "", ErrNotFound},
		{"one running", []*corev1.Pod{mkPod("a")}, "a", nil},
		{"pending with ip is live", []*corev1.Pod{mkPod("a", phase(corev1.PodPending))}, "a", nil},
		{"succeeded skipped", []*corev1.Pod{mkPod("a", phase(corev1.PodSucceeded))}, "", ErrNotFound},
		{"failed skipped", []*corev1.Pod{mkPod("a", phase(corev1.PodFailed))}, "", ErrNotFound},
		{"hostNetwork skipped", []*corev1.Pod{mkPod("a", hostNet)}, "", ErrNotFound},
		{"ip reuse: finished old pod, new pod wins",
			[]*corev1.Pod{mkPod("old", phase(corev1.PodSucceeded)), mkPod("new")}, "new", nil},
		{"two live pods conflict", []*corev1.Pod{mkPod("a"), mkPod("b")}, "", ErrConflict},
		{"terminating within grace keeps credentials",
			[]*corev1.Pod{mkPod("a", deleting(t0.Add(time.Second)))}, "a", nil},
		{"terminating past deadline refused",
			[]*corev1.Pod{mkPod("a", deleting(t0.Add(-time.Second)))}, "", ErrNotFound},
		{"terminating exactly at deadline refused",
			[]*corev1.Pod{mkPod("a", deleting(t0))}, "", ErrNotFound},
		{"non-terminating pod wins over terminating one",
			[]*corev1.Pod{mkPod("old", deleting(t0.Add(time.Minute))), mkPod("new")}, "new", nil},
		{"order does not matter",
			[]*corev1.Pod{mkPod("new"), mkPod("old", deleting(t0.Add(time.Minute)))}, "new", nil},
		{"two terminating pods conflict",
			[]*corev1.Pod{mkPod("a", deleting(t0.Add(time.Minute))), mkPod("b", deleting(t0.Add(time.Minute)))}, "", ErrConflict},
		{"two live pods conflict even with a terminating one",
			[]*corev1.Pod{mkPod("a"), mkPod("b"), mkPod("c", deleting(t0.Add(time.Minute)))}, "", ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(slim(tc.pods), t0)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && got.Name != tc.want {
				t.Fatalf("got %s, want %s", got.Name, tc.want)
			}
		})
	}
}

func TestIPIndexFunc(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"dual stack indexes every address", mkPod("a", ips("10.0.0.1", "fd00::1")), []string{"10.0.0.1", "fd00::1"}},
		{"podIP only (older API)", func() *corev1.Pod { p := mkPod("a"); p.Status.PodIP = "10.0.0.2"; return p }(), []string{"10.0.0.2"}},
		{"IPv4-mapped IPv6 canonicalised", mkPod("a", ips("::ffff:10.0.0.3")), []string{"10.0.0.3"}},
		{"IPv6 canonicalised", mkPod("a", ips("FD00:0::01")), []string{"fd00::1"}},
		{"garbage ignored", mkPod("a", ips("not-an-ip", "10.0.0.4")), []string{"10.0.0.4"}},
		{"hostNetwork never indexed", mkPod("a", ips("10.0.0.5"), hostNet), nil},
		{"terminal never indexed", mkPod("a", ips("10.0.0.6"), phase(corev1.PodFailed)), nil},
		{"no address", mkPod("a"), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := FromAPI(tc.pod)
			got := IndexedAddrs(pod)
			buckets, err := IPIndexFunc(pod)
			if err != nil {
				t.Fatal(err)
			}
			for _, ip := range tc.want {
				if !slices.Contains(buckets, ipBucket(ip)) {
					t.Fatalf("indexed under %v, not under %s's bucket", buckets, ip)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestTransform(t *testing.T) {
	del := metav1.NewTime(t0)
	grace := int64(30)
	in := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "ns", UID: "u", ResourceVersion: "7",
			DeletionTimestamp: &del, DeletionGracePeriodSeconds: &grace,
			Labels: map[string]string{"app": "x"},
			Annotations: map[string]string{"iam.amazonaws.com/role": "r", "iam.amazonaws.com/external-id": "",
				"other/big": "zzz"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "n1", HostNetwork: true, ServiceAccountName: "sa",
			Containers: []corev1.Container{{Name: "c", Image: "img"}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.1", HostIP: "192.168.0.1",
			PodIPs:     []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "FD00::1"}, {IP: "::ffff:10.0.0.1"}, {IP: "junk"}},
			HostIPs:    []corev1.HostIP{{IP: "192.168.0.1"}, {IP: "fd01::1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}},
		},
	}
	out, err := Transform(in)
	if err != nil {
		t.Fatal(err)
	}
	p := out.(*Pod)
	if p.Name != "p" || p.Namespace != "ns" || p.UID != "u" || p.ResourceVersion != "7" ||
		!p.DeletionTimestamp.Equal(&del) || p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != 30 {
		t.Errorf("identity lost: %+v", p)
	}
	if p.NodeName != "n1" || !p.HostNetwork || p.ServiceAccountName != "sa" || p.Phase != corev1.PodRunning {
		t.Errorf("spec or phase lost: %+v", p)
	}
	// Canonical, deduplicated (the mapped address is the first one), junk dropped.
	if !slices.Equal(p.IPs, []string{"10.0.0.1", "fd00::1"}) || !slices.Equal(p.HostIPs, []string{"192.168.0.1", "fd01::1"}) {
		t.Errorf("addresses = %v, host %v", p.IPs, p.HostIPs)
	}
	want := map[string]string{"iam.amazonaws.com/role": "r", "iam.amazonaws.com/external-id": ""}
	if got := p.GetAnnotations(); !maps.Equal(got, want) {
		t.Errorf("annotations = %v, want only iam.amazonaws.com/* %v", got, want)
	}
	if v, ok := p.Annotation("iam.amazonaws.com/external-id"); !ok || v != "" {
		t.Errorf("an empty annotation is set: %q %v", v, ok)
	}
	if _, ok := p.Annotation("iam.amazonaws.com/session-name"); ok {
		t.Error("absent annotation reported set")
	}
	if _, ok := p.Annotation("other/big"); ok {
		t.Error("foreign annotation kept")
	}
	again, _ := Transform(p)
	if again != any(p) {
		t.Error("transform is not idempotent")
	}

	// Older API servers: podIP and hostIP only.
	old := FromAPI(&corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.2", HostIP: "192.168.0.2"}})
	if !slices.Equal(old.IPs, []string{"10.0.0.2"}) || !slices.Equal(old.HostIPs, []string{"192.168.0.2"}) {
		t.Errorf("singular fields: %v %v", old.IPs, old.HostIPs)
	}
	if old.GetAnnotations() != nil || old.IPs == nil {
		t.Errorf("no annotations must read as nil: %v", old.GetAnnotations())
	}

	ns, _ := Transform(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns",
		Annotations: map[string]string{"iam.amazonaws.com/permitted": ".*", "x": "y"}}})
	if a := ns.(*corev1.Namespace).Annotations; len(a) != 1 || a["iam.amazonaws.com/permitted"] != ".*" {
		t.Errorf("namespace annotations = %v", a)
	}
	sa, _ := Transform(&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sa", Namespace: "ns", UID: "u",
		Annotations: map[string]string{"iam.amazonaws.com/role": "app", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
		Secrets: []corev1.ObjectReference{{Name: "token"}}, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "pull"}}})
	if s := sa.(*corev1.ServiceAccount); len(s.Annotations) != 1 || s.Annotations["iam.amazonaws.com/role"] != "app" ||
		s.Secrets != nil || s.ImagePullSecrets != nil || s.Name != "sa" || s.Namespace != "ns" || s.UID != "u" {
		t.Errorf("serviceaccount = %+v", s)
	}
	tomb := "not a pod"
	if got, _ := Transform(tomb); got != tomb {
		t.Error("unknown types must pass through")
	}
}

// TestPodIsAnObject checks Pod against what client-go does with it: keys,
// the namespace index, event references and deep copies.
func TestPodIsAnObject(t *testing.T) {
	grace := int64(5)
	p := FromAPI(mkPod("a", ips("10.0.0.1"), func(p *corev1.Pod) {
		p.ResourceVersion = "3"
		p.DeletionGracePeriodSeconds = &grace
		p.Annotations = map[string]string{"iam.amazonaws.com/role": "r"}
	}, deleting(t0)))
	if key, err := cache.MetaNamespaceKeyFunc(p); err != nil || key != "ns/a" {
		t.Errorf("key = %q, %v", key, err)
	}
	if ns, err := cache.MetaNamespaceIndexFunc(p); err != nil || !slices.Equal(ns, []string{"ns"}) {
		t.Errorf("namespace index = %v, %v", ns, err)
	}
	ref, err := reference.GetReference(scheme.Scheme, p)
	want := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "ns", Name: "a", UID: "uid-a", ResourceVersion: "3"}
	if err != nil || *ref != *want {
		t.Errorf("reference = %+v, %v; want %+v as for a *corev1.Pod", ref, err, want)
	}
	fromAPI, _ := reference.GetReference(scheme.Scheme, mkPod("a", func(p *corev1.Pod) { p.ResourceVersion = "3" }))
	if *fromAPI != *want {
		t.Errorf("reference of the API pod = %+v", fromAPI)
	}

	c := p.DeepCopyObject().(*Pod)
	if !reflect.DeepEqual(c, p) {
		t.Fatalf("copy differs: %+v", c)
	}
	c.IPs[0] = "10.9.9.9"
	c.HostIPs = append(c.HostIPs, "x")
	*c.DeletionGracePeriodSeconds = 99
	c.DeletionTimestamp.Time = t0.Add(time.Hour)
	c.SetAnnotations(map[string]string{"iam.amazonaws.com/role": "other", "foreign": "x"})
	if p.IPs[0] != "10.0.0.1" || *p.DeletionGracePeriodSeconds != 5 || !p.DeletionTimestamp.Time.Equal(t0) {
		t.Errorf("copy shares state with the original: %+v", p)
	}
	if r, _ := p.Annotation("iam.amazonaws.com/role"); r != "r" {
		t.Errorf("original's annotations changed: %q", r)
	}
	if got := c.GetAnnotations(); !maps.Equal(got, map[string]string{"iam.amazonaws.com/role": "other"}) {
		t.Errorf("SetAnnotations kept %v", got)
	}
}

// TestLookupWaitsForEvent checks the pod-start race: a lookup that starts
// before the pod has its address returns as soon as the informer sees it.
// The fake clientset stands in for the API here because only the event
// plumbing is under test; the integration tests use a real API server.
func TestLookupWaitsForEvent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().Pods().Informer()
	// New sets the transform; the informer then stores *Pod.
	idx, err := New(inf, Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	type result struct {
		pod *Pod
		err error
	}
	done := make(chan result, 1)
	go func() {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		p, err := idx.Lookup(wctx, "10.1.2.3")
		done <- result{p, err}
	}()
	time.Sleep(50 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("lookup returned before the pod existed: %v %v", r.pod, r.err)
	default:
	}
	pod := mkPod("late", ips("10.1.2.3"))
	if _, err := client.CoreV1().Pods("ns").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.pod.Name != "late" {
			t.Fatalf("got %v %v", r.pod, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lookup did not wake on the informer event")
	}

	// An address nobody takes times out with ErrNotFound and leaves no waiter.
	sctx, scancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer scancel()
	if _, err := idx.Lookup(sctx, "10.9.9.9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	idx.mu.Lock()
	n := len(idx.waiters)
	idx.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d waiters leaked", n)
	}
	if _, err := idx.Lookup(ctx, "not-an-ip"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("bad address err = %v", err)
	}
}

// Addresses share index buckets: a lookup answers only the pod holding the
// very address, never another pod of its bucket, and an address nobody
// holds in a busy bucket is not found.
func TestResolveWithinBucket(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	idx, err := New(factory.Core().V1().Pods().Informer(), Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Three addresses of one bucket.
	var same []string
	for i := 0; len(same) < 3; i++ {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		if len(same) == 0 || ipBucket(ip) == ipBucket(same[0]) {
			same = append(same, ip)
		}
	}
	for i, ip := range same[:2] {
		if _, err := client.CoreV1().Pods("ns").Create(ctx, mkPod(fmt.Sprint("p", i), ips(ip)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	for i, ip := range same[:2] {
		pod, err := idx.Resolve(ip)
		if err != nil || pod.Name != fmt.Sprint("p", i) {
			t.Fatalf("Resolve(%s) = %v, %v; want p%d", ip, pod, err, i)
		}
	}
	if pod, err := idx.Resolve(same[2]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve(%s) = %v, %v; want ErrNotFound", same[2], pod, err)
	}
}

// Kept annotations read back exactly, whatever bytes their values hold and
// however long they are.
func TestAnnotationsAnyBytes(t *testing.T) {
	in := map[string]string{
		"iam.amazonaws.com/role":         "a\x00iam.amazonaws.com/external-id\x00x",
		"iam.amazonaws.com/external-id":  strings.Repeat("e", 300),
		"iam.amazonaws.com/session-name": "",
		"other/ignored":                  "v",
	}
	p := FromAPI(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: in}})
	delete(in, "other/ignored")
	for k, want := range in {
		if got, ok := p.Annotation(k); !ok || got != want {
			t.Errorf("Annotation(%q) = %q, %v; want %q", k, got, ok, want)
		}
	}
	if got := p.GetAnnotations(); !maps.Equal(got, in) {
		t.Errorf("GetAnnotations() = %q, want %q", got, in)
	}
	if _, ok := p.Annotation("other/ignored"); ok {
		t.Error("an annotation outside iam.amazonaws.com/ was kept")
	}
}
