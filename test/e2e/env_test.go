package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/podiam/podiam/test/testenv"
)

const account = testenv.MotoAccountID

func roleARN(name string) string { return "arn:aws:iam::" + account + ":role/" + name }

// assumedARN is what GetCallerIdentity returns for the credentials podiam
// hands out: KIAM's default session name is kiam- plus --session ("kiam").
func assumedARN(role string) string {
	return "arn:aws:sts::" + account + ":assumed-role/" + role + "/kiam-kiam"
}

// API objects of the run.
const (
	nsApps       = "e2e-apps"       // permits app-.*
	nsRestricted = "e2e-restricted" // permits batch-.* only
	nodeName     = "node-1"
)

// env is one node with its pods, shared by the scenarios in order.
type env struct {
	root   testing.TB // TestE2E (or a benchmark) itself: owns the processes
	topo   *topology
	dir    string // test/e2e, absolute
	tmp    string
	logDir string // every process's log; kept after the run with KEEP_E2E_LOGS=1
	seq    atomic.Int64
	podiam string
	gosdk  string

	canary *canary
	// canary6 stands at the IPv6 metadata address, [fd00:ec2::254]:80.
	canary6 *canary
	kube    *testenv.Kube
	moto    *testenv.Moto
	pki     *testenv.PKI
	podEnv  []string

	web, intruder, norole, old *podNet
	spareNS                    string
	// reused is the interface the IP reuse scenario wires into spareNS
	// and leaves to later scenarios, nil before it ran.
	reused *podNet

	server, agent *testenv.Proc
}

// newEnv builds the node: addresses, veths to four pod namespaces, the
// canary, etcd and kube-apiserver, moto and the PKI. Server and agent are
// started by the scenarios, after the harness has been checked.
func newEnv(t testing.TB) *env {
	t.Helper()
	e := newNodeEnv(t)
	topo := e.topo
	e.web = topo.wirePod(t, topo.PodNS[0], "pdm1", fmt.Sprintf(podIPFormat, 1))
	e.intruder = topo.wirePod(t, topo.PodNS[1], "pdm2", fmt.Sprintf(podIPFormat, 2))
	e.norole = topo.wirePod(t, topo.PodNS[2], "pdm3", fmt.Sprintf(podIPFormat, 3))
	e.old = topo.wirePod(t, topo.PodNS[3], "pdm4", fmt.Sprintf(podIPFormat, 4))
	e.spareNS = topo.PodNS[4]
	return e
}

// newNodeEnv is newEnv without pods: the node's addresses, the canaries,
// etcd and kube-apiserver, moto and the PKI.
func newNodeEnv(t testing.TB) *env {
	t.Helper()
	needBinaries(t)
	topo := childTopology(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		root:   t,
		topo:   topo,
		dir:    wd,
		tmp:    t.TempDir(),
		logDir: t.TempDir(),
		podiam: filepath.Join(topo.BinDir, "podiam"),
		gosdk:  filepath.Join(topo.BinDir, "gosdk"),
	}
	if os.Getenv("KEEP_E2E_LOGS") != "" {
		if e.logDir, err = os.MkdirTemp("", "podiam-e2e-logs-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("process logs are kept in %s", e.logDir)
	}
	for _, f := range []string{e.podiam, e.gosdk, filepath.Join(wd, "py", "imdsv1.py"), filepath.Join(wd, "js", "sts.mjs")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("missing %s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(wd, "js", "node_modules", "@aws-sdk", "client-sts", "package.json")); err != nil {
		t.Fatalf("the JavaScript SDK is not installed in test/e2e/js/node_modules (%v): run hack/install-deps.sh, or npm ci in test/e2e/js", err)
	}

	topo.setUpNode(t)

	e.canary = startCanary(t, hostPort(testenv.MetadataIP, 80))
	e.canary6 = startCanary(t, hostPort(metadataIPv6, 80))
	e.kube = testenv.StartKube(t, testenv.KubeOptions{Addr: nodeIP, NetNS: topo.NodeNS})
	e.moto = testenv.StartMoto(t, testenv.MotoOptions{Addr: nodeIP, NetNS: topo.NodeNS})
	e.pki = testenv.NewPKI(t, filepath.Join(e.tmp, "pki"), nodeIP, nodeIP6, node2IP)
	e.podEnv = testenv.PodEnv(t, e.moto.Endpoint, "PODIAM_E2E_")
	return e
}

// createAPIObjects creates the namespaces and the pods of the four pod
// namespaces, with their IPs in status.podIPs and the node in hostIPs.
func (e *env) createAPIObjects(t testing.TB) {
	t.Helper()
	e.kube.CreateNamespace(t, nsApps, map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")})
	e.kube.CreateNamespace(t, nsRestricted, map[string]string{"iam.amazonaws.com/permitted": roleARN("batch-.*")})
	e.createPod(t, nsApps, "web", "app-web", e.web)
	e.createPod(t, nsRestricted, "intruder", "app-web", e.intruder)
	e.createPod(t, nsApps, "norole", "", e.norole)
	e.createPod(t, nsApps, "old", "app-old", e.old)
}

func (e *env) createPod(t testing.TB, namespace, name, role string, p *podNet) {
	t.Helper()
	ann := map[string]string{}
	if role != "" {
		ann["iam.amazonaws.com/role"] = role
	}
	e.kube.CreatePod(t, testenv.PodSpec{Namespace: namespace, Name: name, Annotations: ann,
		NodeName: nodeName, PodIPs: []string{p.IP}, HostIPs: []string{nodeIP}})
}
