package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

const (
	podiamImage  = "ghcr.io/podiam/podiam:dev"
	motoAccount  = "123456789012"
	appNamespace = "payments"
)

// TestNode installs podiam as a user would and checks what pods get.
func TestNode(t *testing.T) {
	var n *node
	phase(t, "host set-up", func() { n = setUpHost(t) })

	var podiamArchive string
	phase(t, "kube binaries (cached)", func() {
		out := hack(t, n, "install-kube-node.sh")
		n.bin = lastLine(out)
	})
	phase(t, "make image (cached)", func() {
		podiamArchive = lastLine(hack(t, n, "build-image.sh", podiamImage))
	})
	var images []string
	phase(t, "pause and test images", func() {
		images = append(images, podiamArchive, n.binaryImage(t, "./test/node/pause", pauseImage), n.binaryImage(t, "./test/e2e/gosdk", sdkImage))
	})
	phase(t, "moto, canary, DNS", func() {
		n.start(t, "moto", nil, "moto_server", "-H", nodeIP, "-p", motoPort)
		n.startCanary(t)
		n.waitFor(t, "moto", time.Minute, func(ctx context.Context) error {
			_, err := dialInNetns(ctx, "tcp", nodeIP+":"+motoPort)
			return err
		})
	})
	phase(t, "control plane", func() {
		n.startControlPlane(t)
		n.startDNS(t)
	})
	phase(t, "containerd and kubelet", func() { n.startNode(t, images) })
	phase(t, "a plain pod runs", func() {
		n.runPausePod(t)
	})

	if t.Failed() {
		return
	}
	phase(t, "helm install", func() { n.helmInstall(t) })
	phase(t, "pods get their roles", func() { n.checkRoles(t) })
	phase(t, "rule in the node's back end", func() {
		n.checkRule(t, true)
		n.checkAgentLog(t)
	})
	phase(t, "agent away and back", func() {
		n.checkAgentAway(t, "kube-system", "podiam-agent", "app.kubernetes.io/component=agent")
	})
	phase(t, "helm uninstall, README steps", func() {
		if out, err := n.helm(context.Background(), "uninstall", "podiam", "-n", "kube-system", "--wait"); err != nil {
			t.Fatalf("helm uninstall: %v\n%s", err, out)
		}
		n.checkRule(t, true) // deliberately kept: pods never fall through
		n.uninstallREADME(t)
		n.checkRule(t, false)
	})
	phase(t, "deploy/manifests", func() { n.manifests(t) })
	phase(t, "KIAM's manifests", func() { n.kiam(t) })
}

// hack runs a script of hack/ and returns its standard output.
func hack(t *testing.T, n *node, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(n.root, "hack", script), args...)
	cmd.Stderr = os.Stderr
	// An interrupted test takes its builds with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/%s: %v", script, err)
	}
	return string(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// binaryImage builds a main package statically and wraps it as an image.
func (n *node) binaryImage(t *testing.T, pkg, ref string) string {
	t.Helper()
	name := filepath.Base(pkg)
	bin := filepath.Join(n.dir, "images", name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = n.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	archive := bin + ".tar"
	if err := writeBinaryImage(archive, ref, bin, []string{"PATH=/"}); err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	return archive
}

func (n *node) runPausePod(t *testing.T) {
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "pause", Image: pauseImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
	if _, err := n.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "plain pod Running", 2*time.Minute, func(ctx context.Context) error {
		p, err := n.client.CoreV1().Pods("default").Get(ctx, "plain", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return fmt.Errorf("phase %s, IP %q: %v", p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
		}
		return nil
	})
	n.deletePod(t, "default", "plain")
}

func (n *node) deletePod(t *testing.T, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := n.client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	n.waitFor(t, "pod "+ns+"/"+name+" gone", time.Minute, func(ctx context.Context) error {
		_, err := n.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
}

// helm runs bin/helm against the node's API server.
func (n *node) helm(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "nsenter", append([]string{"--net=" + n.netnsPath(), "--", filepath.Join(n.root, "bin", "helm"), "--kubeconfig", n.kubeconfig}, args...)...)
}

// certSecret creates the kube-system Secret name from the files
// hack/gen-certs.sh wrote in dir, each file under the key files maps it to.
func (n *node) certSecret(t *testing.T, name, dir string, files map[string]string) {
	t.Helper()
	data := map[string][]byte{}
	for file, key := range files {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		data[key] = b
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"}, Data: data}
	if _, err := n.client.CoreV1().Secrets("kube-system").Create(context.Background(), sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// helmInstall follows the README: hack/gen-certs.sh, the two Secrets it
// prints the commands for, and helm install of the chart with the image.
func (n *node) helmInstall(t *testing.T) {
	ctx := context.Background()
	certs := filepath.Join(n.dir, "certs")
	if _, err := run(ctx, filepath.Join(n.root, "hack", "gen-certs.sh"), "-o", certs, "-n", "kube-system", "-p", "podiam"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct{ name, dir string }{{"podiam-server-tls", "server"}, {"podiam-agent-tls", "agent"}} {
		n.certSecret(t, s.name, filepath.Join(certs, s.dir), map[string]string{"tls.crt": "tls.crt", "tls.key": "tls.key", "ca.crt": "ca.crt"})
	}
	values := filepath.Join(n.dir, "values.yaml")
	repo, tag, _ := strings.Cut(podiamImage, ":")
	writeFile(t, values, fmt.Sprintf(`image: {repository: %s, tag: %s, pullPolicy: Never}
agent:
  hostInterface: %s
  # The SDK falls back to IMDSv1 when the token request fails: requiring
  # v2 makes a pod's success prove the IMDSv2 exchange through the agent.
  requireIMDSv2: true
server:
  env:
    - {name: AWS_ENDPOINT_URL_STS, value: "http://%s:%s"}
    - {name: AWS_REGION, value: us-east-1}
    - {name: AWS_ACCESS_KEY_ID, value: testing}
    - {name: AWS_SECRET_ACCESS_KEY, value: testing}
`, repo, tag, bridgeName, nodeIP, motoPort))
	out, err := n.helm(ctx, "install", "podiam", filepath.Join(n.root, "deploy", "helm", "podiam"),
		"-n", "kube-system", "-f", values, "--wait", "--timeout", "3m")
	if err != nil {
		n.dumpPods(t, "kube-system")
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	n.waitDaemonSetReady(t, "kube-system", "podiam-server")
	n.waitDaemonSetReady(t, "kube-system", "podiam-agent")
}

func (n *node) waitDaemonSetReady(t *testing.T, ns, name string) {
	t.Helper()
	n.waitFor(t, "DaemonSet "+name+" ready", 2*time.Minute, func(ctx context.Context) error {
		ds, err := n.client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		return dsReady(ds)
	})
}

func dsReady(ds *appsv1.DaemonSet) error {
	s := ds.Status
	if s.DesiredNumberScheduled == 0 || s.NumberReady != s.DesiredNumberScheduled || s.UpdatedNumberScheduled != s.DesiredNumberScheduled {
		return fmt.Errorf("desired %d, ready %d, updated %d", s.DesiredNumberScheduled, s.NumberReady, s.UpdatedNumberScheduled)
	}
	return nil
}

// dumpPods logs the pods of ns with their container states and log tails.
func (n *node) dumpPods(t *testing.T, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pods, err := n.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("list pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		t.Logf("pod %s/%s: %s %+v", ns, p.Name, p.Status.Phase, p.Status.ContainerStatuses)
		for _, c := range p.Spec.Containers {
			tail := int64(30)
			b, err := n.client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: &tail}).DoRaw(ctx)
			t.Logf("logs of %s/%s: %v\n%s", p.Name, c.Name, err, b)
		}
	}
}

// sdkPod runs the aws-sdk-go-v2 client in a pod with the role annotation
// and returns its phase and output once it has finished.
func (n *node) sdkPod(t *testing.T, ns, name, role string) (corev1.PodPhase, string) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{"iam.amazonaws.com/role": role}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "sdk", Image: sdkImage, ImagePullPolicy: corev1.PullNever,
				Env: []corev1.EnvVar{
					{Name: "AWS_ENDPOINT_URL_STS", Value: "http://" + nodeIP + ":" + motoPort},
					{Name: "AWS_REGION", Value: "us-east-1"},
				},
			}},
		},
	}
	if _, err := n.client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	n.waitFor(t, "pod "+name+" finished", 2*time.Minute, func(ctx context.Context) error {
		p, err := n.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		phase = p.Status.Phase
		if phase != corev1.PodSucceeded && phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", phase)
		}
		return nil
	})
	b, err := n.client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("logs of %s: %v", name, err)
	}
	n.deletePod(t, ns, name)
	return phase, string(b)
}

// checkRoles: a permitted pod gets its role's assumed-role ARN through the
// SDK's IMDSv2 flow, a denied pod gets nothing, and no pod ever reaches the
// node's metadata service.
func (n *node) checkRoles(t *testing.T) {
	ctx := context.Background()
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appNamespace, Annotations: map[string]string{
		"iam.amazonaws.com/permitted": "arn:aws:iam::" + motoAccount + ":role/payments-.*",
	}}}
	if _, err := n.client.CoreV1().Namespaces().Create(ctx, nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFor(t, "ServiceAccount "+appNamespace+"/default", time.Minute, func(ctx context.Context) error {
		_, err := n.client.CoreV1().ServiceAccounts(appNamespace).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	// helm install starts agent and server together; an agent that
	// resolved the headless Service before the server was ready has no
	// server until gRPC's DNS resolver asks again (30 s later): retry for
	// that long and say how long it took.
	start := time.Now()
	for try := 1; ; try++ {
		phase, out := n.sdkPod(t, appNamespace, fmt.Sprintf("ledger-%d", try), "payments-ledger")
		if phase == corev1.PodSucceeded || time.Since(start) > 45*time.Second || !strings.Contains(out, "StatusCode: 503") {
			break
		}
		t.Logf("the agent refused a pod (503) %s after helm install: retrying", time.Since(start).Round(time.Second))
	}
	n.expectRole(t, "ledger", "payments-ledger")
	phase, out := n.sdkPod(t, appNamespace, "denied", "billing-admin")
	if phase != corev1.PodFailed || strings.Contains(out, "assumed-role") || strings.Contains(out, canaryKeyID) {
		t.Errorf("denied pod: phase %s, output:\n%s", phase, out)
	}
	n.checkCanary(t)
}

// expectRole runs an SDK pod with role and checks it was that role at STS.
func (n *node) expectRole(t *testing.T, name, role string) {
	t.Helper()
	phase, out := n.sdkPod(t, appNamespace, name, role)
	want := "arn:aws:sts::" + motoAccount + ":assumed-role/" + role + "/"
	if phase != corev1.PodSucceeded || !strings.Contains(out, want) {
		n.dumpPods(t, "kube-system")
		t.Fatalf("pod %s with role %s: phase %s, want %s in output:\n%s", name, role, phase, want, out)
	}
	if !strings.Contains(out, "credential source: EC2RoleProvider") {
		t.Errorf("pod %s: credentials did not come from the metadata address:\n%s", name, out)
	}
}

func (n *node) checkCanary(t *testing.T) {
	t.Helper()
	if hits := n.canary.podHits(); len(hits) > 0 {
		t.Errorf("the node's metadata service answered pods: %v", hits)
	}
}

// nat returns the nat and filter tables (IPv4 and IPv6) of one iptables
// back end in the node's namespace (the agent's DNAT rules are in nat, its
// REJECT rule for an address family it does not serve in filter), and
// whether that back end holds the kubelet's KUBE-IPTABLES-HINT, i.e. is
// the node's.
func (n *node) nat(t *testing.T, mode string) (rules string, nodes bool) {
	t.Helper()
	ctx := context.Background()
	in := func(args ...string) string {
		out, err := run(ctx, "nsenter", append([]string{"--net=" + n.netnsPath(), "--"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, tool := range []string{"iptables-", "ip6tables-"} {
		for _, table := range []string{"nat", "filter"} {
			rules += in(tool+mode+"-save", "-t", table)
		}
	}
	return rules, strings.Contains(in("iptables-"+mode+"-save", "-t", "mangle"), ":KUBE-IPTABLES-HINT")
}

// checkRule: the agent's DNAT rule is in the node's back end (the one the
// kubelet uses), put there through the image's wrapper, and not in the other.
func (n *node) checkRule(t *testing.T, want bool) {
	t.Helper()
	found := map[string]bool{}
	nodeMode := ""
	for _, mode := range []string{"legacy", "nft"} {
		rules, nodes := n.nat(t, mode)
		if nodes {
			nodeMode = mode
		}
		found[mode] = strings.Contains(rules, "-j PODIAM")
		if want && found[mode] && !strings.Contains(rules, "--to-destination "+nodeIP+":8181") {
			t.Errorf("iptables-%s: the PODIAM rule does not redirect to the agent at %s:8181:\n%s", mode, nodeIP, rules)
		}
		if !want && strings.Contains(rules, "PODIAM") {
			t.Errorf("iptables-%s still has podiam's chain:\n%s", mode, rules)
		}
	}
	if nodeMode == "" {
		t.Fatal("no back end holds the kubelet's KUBE-IPTABLES-HINT chain")
	}
	if want && (!found[nodeMode] || found[map[string]string{"nft": "legacy", "legacy": "nft"}[nodeMode]]) {
		t.Errorf("the agent's rule is in %v; want it in the node's back end (%s) only", found, nodeMode)
	}
}

// agentPods lists the agent's pods.
func (n *node) agentPods(ctx context.Context, ns, selector string) ([]corev1.Pod, error) {
	l, err := n.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// checkAgentAway deletes the agent's pod (the rule stays), then keeps the
// agent off the node while a pod asks for credentials: the rule still sends
// it to the agent's port, so it gets nothing, and the canary is never
// reached. Then the agent comes back and serves.
func (n *node) checkAgentAway(t *testing.T, ns, ds, selector string) {
	t.Helper()
	ctx := context.Background()
	pods, err := n.agentPods(ctx, ns, selector)
	if err != nil || len(pods) != 1 {
		t.Fatalf("agent pods: %v, %d", err, len(pods))
	}
	n.deletePod(t, ns, pods[0].Name)
	n.checkRule(t, true)

	setSelector := func(sel map[string]string) {
		d, err := n.client.AppsV1().DaemonSets(ns).Get(ctx, ds, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Template.Spec.NodeSelector = sel
		if _, err := n.client.AppsV1().DaemonSets(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := n.client.AppsV1().DaemonSets(ns).Get(ctx, ds, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := d.Spec.Template.Spec.NodeSelector
	setSelector(map[string]string{"podiam.test/no-such-node": "true"})
	n.waitFor(t, "agent gone", 2*time.Minute, func(ctx context.Context) error {
		pods, err := n.agentPods(ctx, ns, selector)
		if err == nil && len(pods) > 0 {
			err = fmt.Errorf("%d agent pods", len(pods))
		}
		return err
	})
	n.checkRule(t, true)
	phase, out := n.sdkPod(t, appNamespace, "agentless", "payments-ledger")
	if phase != corev1.PodFailed || strings.Contains(out, "assumed-role") || strings.Contains(out, canaryKeyID) {
		t.Errorf("pod while the agent is away: phase %s, output:\n%s", phase, out)
	}
	n.checkCanary(t)
	setSelector(orig)
	n.waitDaemonSetReady(t, ns, ds)
	n.expectRole(t, "ledger-again", "payments-ledger")
	n.checkCanary(t)
}

// uninstallREADME runs the README's uninstall steps on the node.
func (n *node) uninstallREADME(t *testing.T) {
	t.Helper()
	for _, args := range [][]string{
		{"iptables", "-t", "nat", "-D", "PREROUTING", "-j", "PODIAM"},
		{"iptables", "-t", "nat", "-F", "PODIAM"},
		{"iptables", "-t", "nat", "-X", "PODIAM"},
		// The node has no IPv6 address for the agent: its IPv6 rule is
		// the REJECT one in the filter table.
		{"ip6tables", "-t", "filter", "-D", "INPUT", "-j", "PODIAM"},
		{"ip6tables", "-t", "filter", "-D", "FORWARD", "-j", "PODIAM"},
		{"ip6tables", "-t", "filter", "-F", "PODIAM"},
		{"ip6tables", "-t", "filter", "-X", "PODIAM"},
	} {
		if _, err := run(context.Background(), "nsenter", append([]string{"--net=" + n.netnsPath(), "--"}, args...)...); err != nil {
			t.Errorf("README uninstall step: %v", err)
		}
	}
}

// manifests installs deploy/manifests as the README says (rbac, Service,
// agent and server DaemonSets), edited only where the README tells users
// to edit (image, --assume-role-arn's account, --host-interface) and where
// this node is not AWS (the server's STS endpoint and credentials).
func (n *node) manifests(t *testing.T) {
	t.Helper()
	dir := filepath.Join(n.root, "deploy", "manifests")
	edit := func(o runtime.Object) {
		spec := podSpecOf(o)
		if spec == nil {
			return
		}
		for i := range spec.Containers {
			c := &spec.Containers[i]
			c.Image, c.ImagePullPolicy = podiamImage, corev1.PullNever
			for j, a := range c.Args {
				a = strings.Replace(a, "arn:aws:iam::111122223333:", "arn:aws:iam::"+motoAccount+":", 1)
				if strings.HasPrefix(a, "--host-interface=") {
					a = "--host-interface=" + bridgeName
				}
				c.Args[j] = a
			}
			if c.Name == "server" {
				c.Env = append(c.Env, stsEnv()...)
			}
		}
	}
	// The server first: an agent that starts before any server is ready
	// resolves the headless Service to nothing, and gRPC's DNS resolver
	// asks again only after 30 s, refusing pods (503) meanwhile.
	removeServer := n.apply(t, []string{filepath.Join(dir, "rbac.yaml"), filepath.Join(dir, "server-service.yaml"), filepath.Join(dir, "server-daemonset.yaml")}, edit)
	n.waitDaemonSetReady(t, "kube-system", "podiam-server")
	removeAgent := n.apply(t, []string{filepath.Join(dir, "agent-daemonset.yaml")}, edit)
	remove := func() { removeAgent(); removeServer() }
	n.waitDaemonSetReady(t, "kube-system", "podiam-agent")
	n.checkRule(t, true)
	n.expectRole(t, "ledger-manifests", "payments-ledger")
	phase, out := n.sdkPod(t, appNamespace, "denied-manifests", "billing-admin")
	if phase != corev1.PodFailed || strings.Contains(out, "assumed-role") {
		t.Errorf("denied pod: phase %s, output:\n%s", phase, out)
	}
	n.checkCanary(t)
	remove()
	n.waitFor(t, "podiam pods gone", 2*time.Minute, func(ctx context.Context) error {
		pods, err := n.agentPods(ctx, "kube-system", "app.kubernetes.io/name=podiam")
		if err == nil && len(pods) > 0 {
			err = fmt.Errorf("%d pods left", len(pods))
		}
		return err
	})
	n.checkRule(t, true)
	n.uninstallREADME(t)
	n.checkRule(t, false)
}

// stsEnv points a server at moto, the node's STS.
func stsEnv() []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: "AWS_ENDPOINT_URL_STS", Value: "http://" + nodeIP + ":" + motoPort},
		{Name: "AWS_REGION", Value: "us-east-1"},
		{Name: "AWS_ACCESS_KEY_ID", Value: "testing"},
		{Name: "AWS_SECRET_ACCESS_KEY", Value: "testing"},
	}
}

// checkAgentLog: the image's iptables wrapper chose the node's back end
// (the one holding the kubelet's hint chain), and the agent's known defect
// in the image is reported, not hidden.
func (n *node) checkAgentLog(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pods, err := n.agentPods(ctx, "kube-system", "app.kubernetes.io/component=agent")
	if err != nil || len(pods) != 1 {
		t.Fatalf("agent pods: %v, %d", err, len(pods))
	}
	b, err := n.client.CoreV1().Pods("kube-system").GetLogs(pods[0].Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mode := "nft"
	if _, nodes := n.nat(t, "legacy"); nodes {
		mode = "legacy"
	}
	// The wrapper caches its choice in the agent's state volume.
	state := filepath.Join(n.dir, "kubelet", "root", "pods", string(pods[0].UID), "volumes", "kubernetes.io~empty-dir", "state", "iptables-mode")
	got, err := os.ReadFile(state)
	if err != nil {
		t.Errorf("the image's iptables wrapper left no choice: %v", err)
	} else if strings.TrimSpace(string(got)) != mode {
		t.Errorf("the image's iptables wrapper chose %q; the node uses iptables-%s", got, mode)
	}
	// The image has no ip binary: the agent's route lookup (being replaced
	// by netlink) fails on every cache miss and binds nothing to the pod's
	// interface. Reported until that change lands.
	if strings.Contains(string(b), `exec: \"ip\": executable file not found`) {
		t.Log("known: the agent cannot exec `ip route get` in the image (no iproute2); pods are served without interface binding")
	}
}

// kiam runs KIAM's own manifests (test/manifests/testdata/kiam.yaml: the
// seed with only the image swapped) on the node. Beyond the image, only
// what this node dictates changes: no registry (pull policy), moto instead
// of AWS (the base role's account, the server's STS endpoint), the bridge
// CNI instead of Calico (--host-interface, as the README tells users), and
// the agent's metrics port, because KIAM puts server and agent on
// different nodes and both on the host network's 9620.
func (n *node) kiam(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	certs := filepath.Join(n.dir, "kiam-certs")
	// -k: KIAM's probes run `health` with the server's certificate, which
	// therefore needs client auth (podiam's own is for server auth only).
	if _, err := run(ctx, filepath.Join(n.root, "hack", "gen-certs.sh"), "-o", certs, "-n", "kube-system", "-p", "kiam", "-k"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct{ name, dir, prefix string }{{"kiam-server-tls", "server", "server"}, {"kiam-agent-tls", "agent", "agent"}} {
		// KIAM's manifests mount the keys under its own file names.
		n.certSecret(t, s.name, filepath.Join(certs, s.dir), map[string]string{"tls.crt": s.prefix + ".pem", "tls.key": s.prefix + "-key.pem", "ca.crt": "ca.pem"})
	}
	edit := func(o runtime.Object) {
		spec := podSpecOf(o)
		if spec == nil {
			return
		}
		for i := range spec.Containers {
			c := &spec.Containers[i]
			c.Image, c.ImagePullPolicy = podiamImage, corev1.PullNever
			agent := len(c.Args) > 0 && c.Args[0] == "agent"
			for j, a := range c.Args {
				a = strings.Replace(a, "<SOURCE_AWS_ACCOUNT>", motoAccount, 1)
				if strings.HasPrefix(a, "--host-interface=") {
					a = "--host-interface=" + bridgeName
				}
				if agent && strings.HasPrefix(a, "--prometheus-listen-addr=") {
					a = "--prometheus-listen-addr=0.0.0.0:9622"
				}
				c.Args[j] = a
			}
			if len(c.Args) > 0 && c.Args[0] == "server" {
				c.Env = append(c.Env, stsEnv()...)
			}
		}
	}
	fixture := filepath.Join(n.root, "test", "manifests", "testdata", "kiam.yaml")
	// One file, applied at once as KIAM's users do: the agent may start
	// before the server is ready (see manifests), hence the retry below.
	remove := n.apply(t, []string{fixture}, edit)
	n.waitDaemonSetReady(t, "kube-system", "kiam-server")
	n.waitDaemonSetReady(t, "kube-system", "kiam-agent")
	n.checkRule(t, true)
	start := time.Now()
	for try := 1; ; try++ {
		phase, out := n.sdkPod(t, appNamespace, fmt.Sprintf("kiam-%d", try), "payments-ledger")
		if phase == corev1.PodSucceeded || time.Since(start) > 45*time.Second || !strings.Contains(out, "StatusCode: 503") {
			break
		}
		t.Logf("KIAM's agent refused a pod (503) %s after apply: retrying", time.Since(start).Round(time.Second))
	}
	n.expectRole(t, "ledger-kiam", "payments-ledger")
	n.checkCanary(t)
	remove()
	n.waitFor(t, "KIAM pods gone", 2*time.Minute, func(ctx context.Context) error {
		pods, err := n.agentPods(ctx, "kube-system", "app=kiam")
		if err == nil && len(pods) > 0 {
			err = fmt.Errorf("%d pods left", len(pods))
		}
		return err
	})
	n.uninstallREADME(t)
	n.checkRule(t, false)
}
