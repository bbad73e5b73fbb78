package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdlatest "k8s.io/client-go/tools/clientcmd/api/latest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// kubeStartTimeout is generous because the CI machine has two cores shared
// with builds; kube-apiserver alone needs several seconds to become ready.
const kubeStartTimeout = 2 * time.Minute

// apiTimeout bounds each helper's API call so a wedged apiserver fails the
// test instead of hanging it.
const apiTimeout = 30 * time.Second

// Kube is a running etcd plus kube-apiserver. There is no controller-manager,
// scheduler or kubelet: tests create ServiceAccounts and set pod status
// themselves, which is exactly the control they need.
type Kube struct {
	URL            string       // https://addr:port
	RESTConfig     *rest.Config // admin (token auth, system:masters)
	Client         kubernetes.Interface
	KubeconfigPath string // the admin's kubeconfig, usable as podiam server --kubeconfig

	etcd *Proc
	// What StartAPIServer needs to run kube-apiserver again as before.
	dir, netns, token string
	apiserverBin      string
	apiserverArgs     []string

	mu        sync.Mutex
	apiserver *Proc // nil while stopped
}

// KubeOptions places the apiserver. The e2e tests run it inside the "node"
// network namespace at the node IP, so that agents reach it as on a cluster.
type KubeOptions struct {
	Addr  string // bind and advertise address; default 127.0.0.1
	NetNS string // if set, etcd and kube-apiserver run via `ip netns exec NetNS`
}

// StartKube starts etcd and kube-apiserver and waits until /readyz is ok and
// the "default" namespace exists. Both are killed in t.Cleanup.
func StartKube(t testing.TB, opts KubeOptions) *Kube {
	t.Helper()
	etcdBin := Bin(t, "etcd")
	apiserverBin := Bin(t, "kube-apiserver")
	addr := bindAddr(t, "KubeOptions.Addr", opts.Addr)
	if opts.NetNS != "" {
		// etcd listens on the namespace's loopback; a fresh namespace has it down.
		out, err := runCommand(Bin(t, "ip"), "netns", "exec", opts.NetNS, Bin(t, "ip"), "link", "set", "lo", "up")
		if err != nil {
			t.Fatalf("testenv: bring up lo in netns %s: %v: %s", opts.NetNS, err, out)
		}
	}

	dir := t.TempDir() // before any process, so its removal runs after they die
	ports := freePorts(t, 3)
	etcdClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	etcdPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	securePort := ports[2]

	etcdArgs := []string{
		"--name=podiam-test",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + etcdClient,
		"--advertise-client-urls=" + etcdClient,
		"--listen-peer-urls=" + etcdPeer,
		"--initial-advertise-peer-urls=" + etcdPeer,
		"--initial-cluster=podiam-test=" + etcdPeer,
		"--logger=zap",
		"--log-outputs=stderr",
	}
	etcd := StartProc(t, ProcSpec{Name: "etcd", Path: etcdBin, Args: etcdArgs, Env: etcdArchEnv(),
		Dir: dir, NetNS: opts.NetNS, Log: filepath.Join(dir, "etcd.log")})

	token := randomHex(t, 32)
	tokenFile := filepath.Join(dir, "tokens.csv")
	writeFile(t, tokenFile, []byte(token+",admin,admin,system:masters\n"), 0o600)
	saPriv, saPub := writeServiceAccountKey(t, dir)
	certDir := filepath.Join(dir, "certs")

	apiserverArgs := []string{
		"--etcd-servers=" + etcdClient,
		"--secure-port=" + strconv.Itoa(securePort),
		"--bind-address=" + addr,
		"--advertise-address=" + addr,
		"--cert-dir=" + certDir,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saPub,
		"--service-account-signing-key-file=" + saPriv,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--profiling=false",
	}

	url := "https://" + net.JoinHostPort(addr, strconv.Itoa(securePort))
	k := &Kube{URL: url, etcd: etcd, dir: dir, netns: opts.NetNS, token: token,
		apiserverBin: apiserverBin, apiserverArgs: apiserverArgs}
	// Registered after etcd's, so it runs before: whichever kube-apiserver
	// runs at the end, restarted or not, dies first.
	t.Cleanup(func() { k.stopAPIServer(t) })
	k.StartAPIServer(t)

	caData, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
	if err != nil {
		t.Fatalf("testenv: read generated serving certificate: %v", err)
	}
	k.RESTConfig = &rest.Config{
		Host:            url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: caData},
		// No Timeout: it would cut the long-running watches of informers
		// built from this config; helpers bound their calls with contexts.
		QPS:   200,
		Burst: 400,
	}
	client, err := kubernetes.NewForConfig(k.RESTConfig)
	if err != nil {
		t.Fatalf("testenv: kubernetes client: %v", err)
	}
	k.Client = client
	Ready(t, kubeStartTimeout, `namespace "default"`, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		return err
	}, k.procs()...)

	k.KubeconfigPath = filepath.Join(dir, "kubeconfig")
	kubeconfig := &clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"podiam-test": {Server: url, CertificateAuthorityData: caData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{"admin": {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{"podiam-test": {Cluster: "podiam-test", AuthInfo: "admin"}},
		CurrentContext: "podiam-test",
	}
	// Encoded the way clientcmd.Write does; clientcmd itself is not linked
	// because it drags in spf13/pflag, which go.mod does not list.
	kubeconfigJSON, err := runtime.Encode(clientcmdlatest.Codec, kubeconfig)
	if err != nil {
		t.Fatalf("testenv: encode kubeconfig: %v", err)
	}
	kubeconfigYAML, err := yaml.JSONToYAML(kubeconfigJSON)
	if err != nil {
		t.Fatalf("testenv: encode kubeconfig: %v", err)
	}
	writeFile(t, k.KubeconfigPath, kubeconfigYAML, 0o600)
	return k
}

// CreateNamespace creates a namespace with annotations and its "default"
// ServiceAccount, which the ServiceAccount admission plugin requires before
// any pod is admitted and which only kube-controller-manager would create.
func (k *Kube) CreateNamespace(t testing.TB, name string, annotations map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("testenv: create namespace %s: %v", name, err)
	}
	k.ensureServiceAccount(t, ctx, name, "default")
}

// EnsureServiceAccount creates a ServiceAccount unless it exists, for pods
// that run under another account than "default".
func (k *Kube) EnsureServiceAccount(t testing.TB, namespace, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	k.ensureServiceAccount(t, ctx, namespace, name)
}

func (k *Kube) ensureServiceAccount(t testing.TB, ctx context.Context, namespace, name string) {
	t.Helper()
	if err := k.tryEnsureServiceAccount(ctx, namespace, name); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

func (k *Kube) tryEnsureServiceAccount(ctx context.Context, namespace, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err := k.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create serviceaccount %s/%s: %w", namespace, name, err)
	}
	return nil
}

// PodSpec describes a pod as podiam sees it: what the informer indexes
// (status IPs, phase, hostNetwork) and what policy reads (annotations,
// service account, node).
type PodSpec struct {
	Namespace, Name string
	Annotations     map[string]string
	NodeName        string
	ServiceAccount  string // default "default"; none for a mirror pod (kubernetes.io/config.mirror)
	HostNetwork     bool
	// Status is set through the status subresource after create, if PodIPs
	// or Phase is set, as a kubelet would.
	Phase   corev1.PodPhase // default Running when PodIPs is set
	PodIPs  []string
	HostIPs []string
}

// CreatePod creates the pod and, when the spec asks for it, its status. A
// ServiceAccount other than "default" is created if missing.
func (k *Kube) CreatePod(t testing.TB, p PodSpec) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	pod, err := k.TryCreatePod(ctx, p)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return pod
}

// TryCreatePod is CreatePod for callers that are not the test's goroutine
// or that expect failures, such as a soak while kube-apiserver restarts.
func (k *Kube) TryCreatePod(ctx context.Context, p PodSpec) (*corev1.Pod, error) {
	sa := p.ServiceAccount
	_, mirror := p.Annotations[corev1.MirrorPodAnnotationKey]
	switch {
	case mirror:
		// The API server refuses a mirror pod that names a
		// ServiceAccount, as it gives static pods none.
		sa = ""
	case sa == "":
		sa = "default"
	case sa != "default":
		if err := k.tryEnsureServiceAccount(ctx, p.Namespace, sa); err != nil {
			return nil, err
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Annotations: p.Annotations},
		Spec: corev1.PodSpec{
			NodeName:           p.NodeName,
			ServiceAccountName: sa,
			HostNetwork:        p.HostNetwork,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/podiam/test:latest"}},
		},
	}
	created, err := k.Client.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if len(p.PodIPs) == 0 && p.Phase == "" {
		return created, nil
	}
	phase := p.Phase
	if phase == "" {
		phase = corev1.PodRunning
	}
	return k.TrySetPodStatus(ctx, p.Namespace, p.Name, phase, p.PodIPs, p.HostIPs)
}

// SetPodStatus sets phase and addresses through the status subresource, the
// way a kubelet reports them; podIP and hostIP follow the first of each list.
func (k *Kube) SetPodStatus(t testing.TB, namespace, name string, phase corev1.PodPhase, podIPs, hostIPs []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if _, err := k.TrySetPodStatus(ctx, namespace, name, phase, podIPs, hostIPs); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// TrySetPodStatus is SetPodStatus returning its error, as TryCreatePod.
func (k *Kube) TrySetPodStatus(ctx context.Context, namespace, name string, phase corev1.PodPhase, podIPs, hostIPs []string) (*corev1.Pod, error) {
	pods := k.Client.CoreV1().Pods(namespace)
	var updated *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod.Status.Phase = phase
		pod.Status.PodIP, pod.Status.PodIPs = "", nil
		for i, ip := range podIPs {
			if i == 0 {
				pod.Status.PodIP = ip
			}
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		pod.Status.HostIP, pod.Status.HostIPs = "", nil
		for i, ip := range hostIPs {
			if i == 0 {
				pod.Status.HostIP = ip
			}
			pod.Status.HostIPs = append(pod.Status.HostIPs, corev1.HostIP{IP: ip})
		}
		updated, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set status of pod %s/%s: %w", namespace, name, err)
	}
	return updated, nil
}

// DeletePod deletes a pod with the given grace period. Without a kubelet, a
// pod bound to a node and deleted with a grace period stays Terminating (it
// keeps a deletionTimestamp) until deleted again with 0: that is how tests
// hold a pod in its grace period.
func (k *Kube) DeletePod(t testing.TB, namespace, name string, gracePeriodSeconds int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := k.TryDeletePod(ctx, namespace, name, gracePeriodSeconds); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// TryDeletePod is DeletePod returning its error, as TryCreatePod.
func (k *Kube) TryDeletePod(ctx context.Context, namespace, name string, gracePeriodSeconds int64) error {
	err := k.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &gracePeriodSeconds})
	if err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// writeServiceAccountKey writes the key pair kube-apiserver 1.34 requires
// for signing and verifying ServiceAccount tokens.
func writeServiceAccountKey(t testing.TB, dir string) (privPath, pubPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: service account key: %v", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: marshal service account key: %v", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatalf("testenv: marshal service account public key: %v", err)
	}
	privPath = filepath.Join(dir, "sa.key")
	pubPath = filepath.Join(dir, "sa.pub")
	writeFile(t, privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600)
	writeFile(t, pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
	return privPath, pubPath
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testenv: random: %v", err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("testenv: write %s: %v", path, err)
	}
}

// TryAnnotateNamespace sets one annotation of a namespace, as an admin's
// kubectl annotate --overwrite does, and returns once the API server has
// stored it.
func (k *Kube) TryAnnotateNamespace(ctx context.Context, name, key, value string) error {
	nss := k.Client.CoreV1().Namespaces()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ns, err := nss.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ns.Annotations == nil {
			ns.Annotations = map[string]string{}
		}
		ns.Annotations[key] = value
		_, err = nss.Update(ctx, ns, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("annotate namespace %s: %w", name, err)
	}
	return nil
}
