package node

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podiam/podiam/test/testenv"
)

// The node's fixed names and addresses. They live in the node's own
// network namespace, so they collide with nothing on the host; runs are
// serialised by lockRun.
const (
	netnsName   = "podiam-node"
	nodeName    = "podiam-node"
	nodeIP      = "10.213.0.1"
	podCIDR     = "10.214.0.0/24"
	podGateway  = "10.214.0.1"
	serviceCIDR = "10.0.0.0/24"
	// The kubernetes Service's address is made local to the node, so pods
	// reach the API server without kube-proxy.
	kubernetesSvcIP = "10.0.0.1"
	metadataIP      = "169.254.169.254"
	motoPort        = "5000"
	workDir         = "/var/tmp/podiam-node-test"
	bridgeName      = "cni0"

	pauseImage = "docker.io/podiam/pause:test"
	sdkImage   = "docker.io/podiam/gosdk:test"
)

// node is the running single-node cluster.
type node struct {
	dir        string
	root       string // repository root
	bin        string // bin/kube-node-VERSION
	token      string
	kubeconfig string
	client     *kubernetes.Clientset
	procs      []*proc
	canary     *canary
	containerd string // containerd's socket
}

func (n *node) netnsPath() string { return "/run/netns/" + netnsName }

// phase runs one named step and prints how long it took.
func phase(t *testing.T, name string, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	msg := fmt.Sprintf("test/node phase %-28s %6.1fs", name, time.Since(start).Seconds())
	t.Log(msg)
	fmt.Println(msg)
}

func repoRoot(t *testing.T) string {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// inNetns runs fn on a thread in the node's network namespace.
func inNetns(fn func() error) error { return testenv.InNetNS(netnsName, fn) }

// dialInNetns connects from the node's network namespace.
var dialInNetns = testenv.DialInNetNS(netnsName, 10*time.Second)

// sweep removes what a run killed with SIGKILL may have left: the fixed
// names make that possible.
func sweep() {
	killByCmdline(workDir)
	unmountUnder(workDir)
	_ = exec.Command("ip", "netns", "delete", netnsName).Run()
	_ = removeCgroup("kubepods")
	_ = os.RemoveAll(workDir)
}

// setUpHost records and registers the restoration of everything on the
// host the node touches, then makes the node's network namespace.
func setUpHost(t *testing.T) *node {
	if os.Geteuid() != 0 {
		t.Fatal("test/node needs root (network namespaces, containerd, the kubelet); run make test as root")
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "ip", "etcd", "moto_server", "buildah", "debootstrap", "/usr/lib/cni/bridge"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not found: run hack/install-deps.sh", b)
		}
	}
	lockRun(t)
	sweep()
	n := &node{dir: workDir, root: repoRoot(t)}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last and then checks the host.
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range n.procs {
				t.Logf("last lines of %s:\n%s", p.name, p.tail(25))
			}
		}
		if err := cleanups.run(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		checkClean(t)
		for _, check := range afterCleanup {
			check(t)
		}
	})
	cleanups.push("sweep the run's processes, mounts, cgroups and directory", func() error {
		killByCmdline(workDir)
		if err := removeCgroup("kubepods"); err != nil {
			return err
		}
		unmountUnder(workDir)
		return os.RemoveAll(workDir)
	})
	saveSysctls(t)
	for _, d := range []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni", "/etc/cni", "/opt/cni", "/var/lib/containerd",
		// buildah's blob-info cache, whatever its storage root (make image).
		"/var/lib/containers"} {
		trackDir(t, d, "")
	}
	trackDir(t, "/run/netns", "cni-")

	for _, args := range [][]string{
		{"netns", "add", netnsName},
		{"-n", netnsName, "link", "set", "lo", "up"},
		{"-n", netnsName, "addr", "add", nodeIP + "/32", "dev", "lo"},
		{"-n", netnsName, "addr", "add", kubernetesSvcIP + "/32", "dev", "lo"},
		{"-n", netnsName, "addr", "add", metadataIP + "/32", "dev", "lo"},
	} {
		if _, err := run(context.Background(), "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	cleanups.push("delete the node's network namespace", func() error {
		_, err := run(context.Background(), "ip", "netns", "delete", netnsName)
		return err
	})
	// kube-proxy's part for the kubernetes Service, the one Service whose
	// port (443) is not its target port (6443); its address is local.
	for _, chain := range []string{"OUTPUT", "PREROUTING"} {
		if _, err := run(context.Background(), "nsenter", "--net="+"/run/netns/"+netnsName, "--", "iptables", "-t", "nat", "-A", chain,
			"-d", kubernetesSvcIP+"/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", nodeIP+":6443"); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// checkClean fails the test for anything of the run still on the host.
func checkClean(t *testing.T) {
	if _, err := os.Stat("/run/netns/" + netnsName); err == nil {
		t.Errorf("cleanup check: network namespace %s still exists", netnsName)
	}
	if ms := mountsUnder(workDir); len(ms) > 0 {
		t.Errorf("cleanup check: mounts left: %v", ms)
	}
	if _, err := os.Stat(workDir); err == nil {
		t.Errorf("cleanup check: %s still exists", workDir)
	}
	// make image's buildah storage is its own temporary directory.
	if left, _ := filepath.Glob("/var/tmp/podiam-build-image.*"); len(left) > 0 {
		t.Errorf("cleanup check: buildah storage left: %v", left)
	}
	for _, r := range cgroupRoots() {
		if _, err := os.Stat(filepath.Join(r, "kubepods")); err == nil {
			t.Errorf("cleanup check: cgroup %s/kubepods still exists", r)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), workDir) && e.Name() != fmt.Sprint(os.Getpid()) {
			t.Errorf("cleanup check: process %s still runs: %q", e.Name(), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startControlPlane runs etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in the node's namespace and returns once the API answers.
func (n *node) startControlPlane(t *testing.T) {
	d := n.dir
	n.token = randomHex(t, 32)
	writeFile(t, d+"/tokens.csv", n.token+",admin,admin,system:masters\n")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, d+"/sa.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, d+"/sa.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})))

	n.start(t, "etcd", nil, "etcd",
		"--name=node", "--data-dir="+d+"/etcd",
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=node=http://127.0.0.1:2380", "--logger=zap", "--log-outputs=stderr")
	n.start(t, "kube-apiserver", nil, n.bin+"/kube-apiserver",
		"--etcd-servers=http://127.0.0.1:2379",
		// Not 443: KIAM's server binds 0.0.0.0:443 on the host network.
		"--secure-port=6443", "--bind-address="+nodeIP, "--advertise-address="+nodeIP,
		"--cert-dir="+d+"/apiserver", "--token-auth-file="+d+"/tokens.csv",
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+d+"/sa.pub", "--service-account-signing-key-file="+d+"/sa.key",
		"--service-cluster-ip-range="+serviceCIDR, "--profiling=false",
		// The node name does not resolve; its InternalIP is the node IP.
		"--kubelet-preferred-address-types=InternalIP")
	n.kubeconfig = d + "/kubeconfig"
	writeFile(t, n.kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: https://%s:6443
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: node
  context: {cluster: node, user: admin}
current-context: node
`, nodeIP, d+"/apiserver/apiserver.crt", n.token))
	n.waitFor(t, "API server certificate", 2*time.Minute, func(context.Context) error {
		_, err := os.Stat(d + "/apiserver/apiserver.crt")
		return err
	})
	cfg := &rest.Config{
		Host:        "https://" + nodeIP + ":6443",
		BearerToken: n.token,
		// The API server's self-signed certificate, as in the kubeconfig.
		TLSClientConfig: rest.TLSClientConfig{CAFile: d + "/apiserver/apiserver.crt"},
		Dial:            dialInNetns,
	}
	n.client, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "API server", 2*time.Minute, func(ctx context.Context) error {
		_, err := n.client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	n.start(t, "kube-controller-manager", nil, n.bin+"/kube-controller-manager",
		"--kubeconfig="+n.kubeconfig, "--leader-elect=false",
		"--service-account-private-key-file="+d+"/sa.key",
		"--root-ca-file="+d+"/apiserver/apiserver.crt",
		"--use-service-account-credentials=true",
		"--bind-address=127.0.0.1", "--secure-port=10257")
	n.start(t, "kube-scheduler", nil, n.bin+"/kube-scheduler",
		"--kubeconfig="+n.kubeconfig, "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=10259")
}

// waitFor polls fn until it succeeds, failing with the last error and the
// tails of the node's logs, or as soon as one of its processes exits.
func (n *node) waitFor(t *testing.T, what string, timeout time.Duration, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		for _, p := range n.procs {
			if err := p.exited(); err != nil {
				t.Fatalf("waiting for %s: %v\n%s", what, err, p.tail(40))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		last = fn(ctx)
		cancel()
		if last == nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, p := range n.procs {
		t.Logf("last lines of %s:\n%s", p.name, p.tail(15))
	}
	t.Fatalf("%s not ready after %s: %v", what, timeout, last)
}

// startNode runs containerd and the kubelet, imports the images and waits
// for the Node to be Ready.
func (n *node) startNode(t *testing.T, images []string) {
	d := n.dir
	n.containerd = d + "/containerd/containerd.sock"
	writeFile(t, d+"/containerd/config.toml", fmt.Sprintf(`version = 2
root = "%[1]s/containerd/root"
state = "%[1]s/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "%[2]s"
[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[3]s"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "%[1]s/cni/net.d"
`, d, n.containerd, pauseImage))
	writeFile(t, d+"/cni/net.d/10-bridge.conflist", fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "podiam-node",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
`, bridgeName, d+"/cni/ipam", podCIDR, podGateway))
	n.start(t, "containerd", nil, "containerd", "--config", d+"/containerd/config.toml")
	n.waitFor(t, "containerd", time.Minute, func(ctx context.Context) error {
		_, err := run(ctx, "ctr", "--address", n.containerd, "version")
		return err
	})
	for _, img := range images {
		n.importImage(t, img)
	}

	writeFile(t, d+"/resolv.conf", "nameserver "+nodeIP+"\n")
	writeFile(t, d+"/kubelet/config.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://%[2]s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: %[3]s
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
clusterDNS: [%[3]s]
clusterDomain: cluster.local
resolvConf: %[1]s/resolv.conf
failSwapOn: false
podLogsDir: %[1]s/pod-logs
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, d, n.containerd, nodeIP))
	n.start(t, "kubelet", nil, n.bin+"/kubelet",
		"--config="+d+"/kubelet/config.yaml", "--kubeconfig="+n.kubeconfig,
		"--root-dir="+d+"/kubelet/root", "--hostname-override="+nodeName, "--node-ip="+nodeIP)
	n.waitFor(t, "Node Ready", 2*time.Minute, func(ctx context.Context) error {
		no, err := n.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range no.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status != corev1.ConditionTrue {
					return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
				}
				return nil
			}
		}
		return fmt.Errorf("no Ready condition")
	})
	// The kubelet may not label itself with a node role; KIAM's and
	// podiam's server DaemonSets select control-plane nodes, which this is.
	n.waitFor(t, "default ServiceAccount", time.Minute, func(ctx context.Context) error {
		_, err := n.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	no, err := n.client.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	no.Labels["node-role.kubernetes.io/control-plane"] = ""
	if _, err := n.client.CoreV1().Nodes().Update(context.Background(), no, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// importImage loads an image archive into the CRI's namespace.
func (n *node) importImage(t *testing.T, archive string) {
	if _, err := run(context.Background(), "ctr", "--address", n.containerd, "-n", "k8s.io", "images", "import", archive); err != nil {
		t.Fatal(err)
	}
}
