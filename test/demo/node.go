package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/test/testenv"
)

// Addresses inside the namespaces the demo creates; nothing outside them
// ever sees these. They differ from the e2e test's so that a leak into the
// host's tables would be recognisable.
const (
	nodeIP        = "10.79.0.1"
	nodeName      = "node-1"
	agentPort     = 8181
	serverPort    = 9610
	serverMetrics = 9620
	agentMetrics  = 9621
)

// Values moto accepts for its default account.
const (
	account     = testenv.MotoAccountID
	baseRoleARN = "arn:aws:iam::" + account + ":role/podiam-server"
	roleBaseARN = "arn:aws:iam::" + account + ":role/"
)

// pod is one pod: an object in the API and a network namespace wired to
// the node with a veth pair, as Calico does it.
type pod struct {
	Namespace, Name, Role string
	IP                    string
	Veth                  string // host side, in the node namespace; matches the agent's default cali+
	NetNS                 string
}

// nsDef is a Kubernetes namespace and the roles it permits.
type nsDef struct{ Name, Permitted string }

func demoNamespaces() []nsDef {
	return []nsDef{
		{"demo-apps", roleBaseARN + "app-.*"},
		{"demo-batch", roleBaseARN + "batch-.*"},
	}
}

func demoPods(netns []string) []*pod {
	return []*pod{
		{Namespace: "demo-apps", Name: "web", Role: "app-web", IP: "10.79.1.1", Veth: "cali1", NetNS: netns[0]},
		{Namespace: "demo-batch", Name: "intruder", Role: "app-web", IP: "10.79.1.2", Veth: "cali2", NetNS: netns[1]},
		{Namespace: "demo-batch", Name: "report", Role: "batch-report", IP: "10.79.1.3", Veth: "cali3", NetNS: netns[2]},
	}
}

// assumedARN is what GetCallerIdentity returns for credentials podiam hands
// out: KIAM's default session name is kiam- plus --session ("kiam").
func assumedARN(role string) string {
	return "arn:aws:sts::" + account + ":assumed-role/" + role + "/kiam-kiam"
}

// node is the child process: it runs inside the node network namespace
// and drives the whole demo.
type node struct {
	r      *runner
	p      *printer
	ip     string // the ip(8) binary
	dir    string
	podiam string
	podNS  []string

	kube   *testenv.Kube
	moto   *testenv.Moto
	pki    *testenv.PKI
	podEnv []string
	pods   []*pod
	web    *pod
	denied *pod
	report *pod

	server, agent *testenv.Proc
}

// runNode runs the demo in the node namespace and returns the exit code.
// The demo itself runs in a goroutine because testenv's helpers end their
// goroutine on failure; this one waits for it or for a signal, then stops
// every process the demo started.
func runNode(stdout, stderr io.Writer) int {
	dir := os.Getenv(envDir)
	p := newPrinter(stdout)
	work := filepath.Join(dir, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		fmt.Fprintf(stderr, "podiam demo: %v\n", err)
		return 1
	}
	r := newRunner(work)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	done := make(chan struct{})
	completed := false
	go func() {
		defer close(done)
		n := &node{r: r, p: p, dir: dir, podiam: os.Getenv(envPodiam), podNS: strings.Split(os.Getenv(envPodNS), ",")}
		n.demo()
		completed = true
	}()
	var sig os.Signal
	select {
	case <-done:
	case sig = <-sigs:
		p.interrupted(sig)
	}
	r.runCleanups()
	if sig != nil {
		return exitCode(sig)
	}
	if !completed || r.Failed() {
		p.failed()
		fmt.Fprintf(stderr, "\npodiam demo FAILED:\n%s", r.report())
		return 1
	}
	return 0
}

func (n *node) demo() {
	r := n.r
	if len(n.podNS) != podCount || n.podiam == "" {
		r.Fatalf("started without the supervisor's environment (%s, %s): run make demo", envPodNS, envPodiam)
	}
	n.ip = testenv.Bin(r, "ip")
	n.pods = demoPods(n.podNS)
	n.web, n.denied, n.report = n.pods[0], n.pods[1], n.pods[2]

	done := n.p.step("wiring the pods to the node with veth pairs")
	n.wireNode()
	done()

	done = n.p.step("starting etcd and kube-apiserver")
	n.kube = testenv.StartKube(r, testenv.KubeOptions{Addr: nodeIP})
	done()

	done = n.p.step("starting moto as STS")
	n.moto = testenv.StartMoto(r, testenv.MotoOptions{Addr: nodeIP})
	n.pki = testenv.NewPKI(r, filepath.Join(r.TempDir(), "pki"), nodeIP)
	n.podEnv = testenv.PodEnv(n.r, n.moto.Endpoint, "PODIAM_DEMO_")
	done()

	done = n.p.step("starting podiam server")
	n.server = n.startServer()
	done()

	done = n.p.step("starting podiam agent")
	n.agent = n.startAgent()
	done()
	for _, rule := range dnatRules(n.natRules()) {
		n.p.linef("  node iptables: %s", rule)
	}

	done = n.p.step("creating namespaces and pods through the API")
	n.createAPIObjects()
	done()
	for _, ns := range demoNamespaces() {
		n.p.linef("  namespace %-20s iam.amazonaws.com/permitted: %s", ns.Name, ns.Permitted)
	}
	for _, pd := range n.pods {
		n.p.linef("  pod %-26s %-10s iam.amazonaws.com/role: %s", pd.Namespace+"/"+pd.Name, pd.IP, pd.Role)
	}

	n.showPermitted()
	n.showDenied()
	n.showIMDSv2()
	n.p.linef("")
}

// wireNode gives the node its address on lo (the kernel has no dummy link
// type) and joins each pod namespace to it: a veth whose host side has no
// address, a /32 route to the pod on the node, and in the pod a /32 route
// to the node plus a default route through it.
func (n *node) wireNode() {
	n.sh(n.ip, "link", "set", "lo", "up")
	n.sh(n.ip, "addr", "add", nodeIP+"/32", "dev", "lo")
	for _, pd := range n.pods {
		n.sh(n.ip, "-n", pd.NetNS, "link", "set", "lo", "up")
		n.sh(n.ip, "link", "add", pd.Veth, "type", "veth", "peer", "name", "eth0", "netns", pd.NetNS)
		n.sh(n.ip, "link", "set", pd.Veth, "up")
		n.sh(n.ip, "-n", pd.NetNS, "addr", "add", pd.IP+"/32", "dev", "eth0")
		n.sh(n.ip, "-n", pd.NetNS, "link", "set", "eth0", "up")
		n.sh(n.ip, "route", "add", pd.IP+"/32", "dev", pd.Veth)
		n.sh(n.ip, "-n", pd.NetNS, "route", "add", nodeIP+"/32", "dev", "eth0")
		n.sh(n.ip, "-n", pd.NetNS, "route", "add", "default", "via", nodeIP, "dev", "eth0")
	}
}

// sh runs a short command and ends the demo with its output on error.
func (n *node) sh(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		n.r.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (n *node) natRules() string {
	return n.sh(testenv.Bin(n.r, "iptables"), "-w", "5", "-t", "nat", "-S")
}

// dnatRules returns the nat rules that send the metadata address somewhere.
func dnatRules(rules string) []string {
	var out []string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, testenv.MetadataIP) && strings.Contains(l, "-j DNAT") {
			out = append(out, l)
		}
	}
	return out
}

func hostPort(host string, port int) string { return host + ":" + strconv.Itoa(port) }

// startServer runs `podiam server` on the node against kube-apiserver and
// moto, chaining from a base role into each pod's role, and waits until
// `podiam health` says it serves.
func (n *node) startServer() *testenv.Proc {
	addr := hostPort(nodeIP, serverPort)
	p := n.startProc("server", []string{"server",
		"--json-log",
		"--bind=" + addr,
		"--cert=" + n.pki.ServerCert, "--key=" + n.pki.ServerKey, "--ca=" + n.pki.CA,
		"--kubeconfig=" + n.kube.KubeconfigPath,
		"--prometheus-listen-addr=" + hostPort(nodeIP, serverMetrics),
		"--assume-role-arn=" + baseRoleARN,
		"--role-base-arn=" + roleBaseARN,
		"--drain-time=0s",
	}, n.moto.Env())
	testenv.Ready(n.r, 90*time.Second, "podiam server healthy", func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, n.podiam, "health",
			"--cert="+n.pki.AgentCert, "--key="+n.pki.AgentKey, "--ca="+n.pki.CA,
			"--server-address="+addr, "--timeout=2s").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}, p)
	return p
}

// startAgent runs `podiam agent` with the DaemonSet's command line and
// waits until it answers /ping and its DNAT rule is in the node's table.
func (n *node) startAgent() *testenv.Proc {
	p := n.startProc("agent", []string{"agent",
		"--json-log",
		"--port=" + strconv.Itoa(agentPort),
		"--host=" + nodeIP,
		"--iptables",
		"--server-address=" + hostPort(nodeIP, serverPort),
		"--cert=" + n.pki.AgentCert, "--key=" + n.pki.AgentKey, "--ca=" + n.pki.CA,
		"--prometheus-listen-addr=" + hostPort(nodeIP, agentMetrics),
	}, nil)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	testenv.Ready(n.r, 60*time.Second, "podiam agent ready", func(context.Context) error {
		resp, err := client.Get("http://" + hostPort(nodeIP, agentPort) + "/ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ping: %s", resp.Status)
		}
		if len(dnatRules(n.natRules())) == 0 {
			return fmt.Errorf("no DNAT rule for %s yet", testenv.MetadataIP)
		}
		return nil
	}, p)
	return p
}

func (n *node) createAPIObjects() {
	for _, ns := range demoNamespaces() {
		n.kube.CreateNamespace(n.r, ns.Name, map[string]string{"iam.amazonaws.com/permitted": ns.Permitted})
	}
	for _, pd := range n.pods {
		n.kube.CreatePod(n.r, testenv.PodSpec{
			Namespace:   pd.Namespace,
			Name:        pd.Name,
			Annotations: map[string]string{"iam.amazonaws.com/role": pd.Role},
			NodeName:    nodeName,
			PodIPs:      []string{pd.IP},
			HostIPs:     []string{nodeIP},
		})
	}
}

// showPermitted runs the AWS CLI in the web pod, which finds the agent at
// 169.254.169.254 like on any EC2 instance.
func (n *node) showPermitted() {
	pd := n.web
	n.p.linef("")
	n.p.linef("1. A permitted pod gets its role: %s/%s (role %s)", pd.Namespace, pd.Name, pd.Role)
	n.p.command(pd.Name, "aws sts get-caller-identity")
	res := n.inPod(pd, 60*time.Second, "aws", "sts", "get-caller-identity")
	n.p.output(res.Stdout)
	n.p.output(res.Stderr)
	var id struct{ Arn string }
	if err := json.Unmarshal([]byte(res.Stdout), &id); err != nil || res.Err != nil || id.Arn != assumedARN(pd.Role) {
		n.r.Errorf("aws sts get-caller-identity in pod %s: %v, ARN %q, want %q", pd.Name, res.Err, id.Arn, assumedARN(pd.Role))
	}
}

// showDenied shows a pod whose namespace does not permit its role: the
// pod learns only "403 Forbidden", while the agent's and the server's logs
// and an Event on the pod say why.
func (n *node) showDenied() {
	pd := n.denied
	n.p.linef("")
	n.p.linef("2. A pod whose namespace does not permit its role is refused: %s/%s (role %s)", pd.Namespace, pd.Name, pd.Role)
	n.p.command(pd.Name, "curl -s -i http://"+testenv.MetadataIP+testenv.CredentialsPath)
	r := n.curl(pd, http.MethodGet, testenv.CredentialsPath)
	n.p.output(fmt.Sprintf("HTTP/1.1 %d %s\n%s", r.Code, http.StatusText(r.Code), r.Body))
	if r.Code != http.StatusForbidden {
		n.r.Errorf("pod %s GET %s: %s, want 403", pd.Name, testenv.CredentialsPath, r)
	}
	n.p.command(pd.Name, "aws sts get-caller-identity")
	res := n.inPod(pd, 60*time.Second, "aws", "sts", "get-caller-identity")
	n.p.output(strings.TrimSpace(res.Stdout + res.Stderr))
	if res.Err == nil || !strings.Contains(res.Stderr, "Unable to locate credentials") {
		n.r.Errorf("aws cli in the denied pod: %v %q, want \"Unable to locate credentials\"", res.Err, res.Stderr)
	}

	n.p.linef("   why (the pod is never told; the logs and the pod's Events are):")
	agentLine, ok := n.waitLog(n.agent, map[string]string{"msg": "metadata request refused", "pod_ip": pd.IP, "status": "403"})
	if ok {
		n.p.linef("     agent:  %s", formatRecord(agentLine, "msg", "pod_ip", "status", "reason"))
	} else {
		n.r.Errorf("the agent logged no refusal for %s", pd.IP)
	}
	serverLine, ok := n.waitLog(n.server, map[string]string{"msg": "credentials denied", "pod": pd.Name})
	if ok {
		n.p.linef("     server: %s", formatRecord(serverLine, "msg", "namespace", "pod", "reason", "error"))
	} else {
		n.r.Errorf("the server logged no denial for pod %s", pd.Name)
	}
	if ev, ok := n.waitEvent(pd); ok {
		n.p.linef("     event:  %s", ev)
	} else {
		n.r.Errorf("no Event on pod %s/%s", pd.Namespace, pd.Name)
	}
}

// showIMDSv2 shows the token exchange IMDSv2 clients make, and that a
// token is worthless when wrong or presented from another pod's address.
func (n *node) showIMDSv2() {
	pd := n.report
	base := "http://" + testenv.MetadataIP
	n.p.linef("")
	n.p.linef("3. IMDSv2: the agent issues session tokens bound to the pod's address: %s/%s", pd.Namespace, pd.Name)

	n.p.command(pd.Name, fmt.Sprintf("TOKEN=$(curl -s -X PUT -H '%s: 300' %s%s)", testenv.TokenTTLHeader, base, testenv.TokenPath))
	r := n.curl(pd, http.MethodPut, testenv.TokenPath, testenv.TokenTTLHeader+": 300")
	if r.Code != http.StatusOK || r.Body == "" {
		n.p.output(fmt.Sprintf("%d %s", r.Code, r.Body))
		n.r.Errorf("PUT %s: %s, want 200 and a token", testenv.TokenPath, r)
		return
	}
	token := r.Body
	n.p.output(fmt.Sprintf("%d, a token of %d characters, valid for 300 s", r.Code, len(token)))

	n.p.command(pd.Name, fmt.Sprintf(`curl -s -H "%s: $TOKEN" %s%s`, testenv.TokenHeader, base, testenv.CredentialsPath))
	r = n.curl(pd, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+token)
	n.p.output(fmt.Sprintf("%d %s", r.Code, r.Body))
	if r.Code != http.StatusOK || r.Body != pd.Role {
		n.r.Errorf("GET %s with a token: %s, want 200 %s", testenv.CredentialsPath, r, pd.Role)
	}

	n.p.command(pd.Name, fmt.Sprintf(`curl -s -H "%s: $TOKEN" %s%s%s`, testenv.TokenHeader, base, testenv.CredentialsPath, pd.Role))
	r = n.curl(pd, http.MethodGet, testenv.CredentialsPath+pd.Role, testenv.TokenHeader+": "+token)
	n.p.output(fmt.Sprintf("%d %s", r.Code, summarizeCredentials(r.Body)))
	if r.Code != http.StatusOK || !strings.Contains(r.Body, `"AccessKeyId"`) {
		n.r.Errorf("GET %s%s with a token: %s, want 200 and credentials", testenv.CredentialsPath, pd.Role, r)
	}

	n.p.command(pd.Name, fmt.Sprintf(`curl -s -H "%s: not-a-valid-token" %s%s`, testenv.TokenHeader, base, testenv.CredentialsPath))
	r = n.curl(pd, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": not-a-valid-token")
	n.p.output(fmt.Sprintf("%d %s", r.Code, r.Body))
	if r.Code != http.StatusUnauthorized {
		n.r.Errorf("GET with a bad token: %s, want 401", r)
	}

	other := n.web
	n.p.command(other.Name, fmt.Sprintf(`curl -s -H "%s: $TOKEN" %s%s    # %s's token, from another pod`, testenv.TokenHeader, base, testenv.CredentialsPath, pd.Name))
	r = n.curl(other, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+token)
	n.p.output(fmt.Sprintf("%d %s", r.Code, r.Body))
	if r.Code != http.StatusUnauthorized {
		n.r.Errorf("GET from %s with %s's token: %s, want 401", other.Name, pd.Name, r)
	}
}

// waitLog waits briefly for a log record: the agent logs a refusal just
// after it answers, so curl may return first.
func (n *node) waitLog(p *testenv.Proc, want map[string]string) (map[string]any, bool) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		if rec, ok := findRecord(p.Logs(), want); ok {
			return rec, true
		}
		if time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEvent waits for the server's Event on the pod; events are sent
// asynchronously.
func (n *node) waitEvent(pd *pod) (string, bool) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		list, err := n.kube.Client.CoreV1().Events(pd.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + pd.Name,
		})
		cancel()
		if err == nil {
			for _, ev := range list.Items {
				if ev.Reason == "IAMRoleDenied" {
					return fmt.Sprintf("%s %s pod/%s (from %s): %s", ev.Type, ev.Reason, pd.Name, ev.Source.Component, ev.Message), true
				}
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// findRecord returns the first JSON log record that has every field in
// want, compared in its printed form (a status 403 matches "403").
func findRecord(logs string, want map[string]string) (map[string]any, bool) {
	for _, line := range strings.Split(logs, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			continue
		}
		match := true
		for k, v := range want {
			got, ok := rec[k]
			if !ok || fmt.Sprint(got) != v {
				match = false
				break
			}
		}
		if match {
			return rec, true
		}
	}
	return nil, false
}

// formatRecord prints the given fields of a log record as key=value, the
// message first and bare.
func formatRecord(rec map[string]any, keys ...string) string {
	var parts []string
	for _, k := range keys {
		v, ok := rec[k]
		if !ok {
			continue
		}
		s := fmt.Sprint(v)
		if k == "msg" {
			parts = append(parts, fmt.Sprintf("%q", s))
			continue
		}
		if strings.ContainsAny(s, " \"=") {
			s = strconv.Quote(s)
		}
		parts = append(parts, k+"="+s)
	}
	return strings.Join(parts, " ")
}

// summarizeCredentials shows a credential document without its secrets.
func summarizeCredentials(body string) string {
	var doc struct{ Code, Type, AccessKeyId, SecretAccessKey, Token, Expiration string }
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return body
	}
	return fmt.Sprintf(`{"Code": %q, "Type": %q, "AccessKeyId": %q, "Expiration": %q, `+
		`"SecretAccessKey" and "Token": not shown}`, doc.Code, doc.Type, doc.AccessKeyId, doc.Expiration)
}
