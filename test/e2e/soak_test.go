package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// The soak (TestSoak) runs the e2e topology with two nodes and two servers
// for PODIAM_SOAK (default soakShort, the run inside make test; make soak
// runs ten minutes), while every pod asks for credentials, pods are
// re-created on the same addresses with other roles, a namespace's policy
// flips, and faults come on a seeded schedule. Every answer is checked
// against oracles: see soakReport.violations.
const (
	envSoak           = "PODIAM_SOAK"             // duration, e.g. 10m
	envSoakSeed       = "PODIAM_SOAK_SEED"        // replays a run's schedule
	envSoakReportOnly = "PODIAM_SOAK_REPORT_ONLY" // set: print violations, do not fail
	soakShort         = 90 * time.Second

	// soakNamespaces are the supervisor's namespaces the soak uses: the
	// second node's and the pods' (soakPods).
	soakNamespaces = 1 + soakPods
	soakPods       = 12
	soakPodsByNode = soakPods / 2

	node2IP     = "10.77.0.2"
	node2Name   = "node-2"
	node2Link   = "pdn2" // this node's side of the link to node 2; not pdm+, so no agent takes it for a pod
	node2PodNet = "10.81.0.0/24"
	// Pod addresses: node 1's after TestE2E's (whose veths may still be
	// there), node 2's in its own subnet.
	soakPodIP1 = "10.78.0.%d" // 21..26
	soakPodIP2 = "10.81.0.%d" // 31..36

	// serverName resolves, for the agents only, to both servers' addresses
	// (a hosts file in /etc/netns), as a headless Service's name does.
	serverName = "podiam-server"

	otherAccount = "210987654321"
	soakExtID    = "soak-ext-7f3c"
)

// Sessions are short so that credentials roll over many times in a run
// and the STS fault window (20 s) falls on refreshes: the server refreshes
// at 15 s of age, leaving 30 s of validity to ride out the faults.
const (
	soakSession       = 45 * time.Second
	soakServerRefresh = 30 * time.Second
	soakAgentRefresh  = 25 * time.Second
	soakMinServe      = 3 * time.Second
	// The servers close agent connections this often, so that certificate
	// rotations are exercised by new handshakes.
	soakConnAge = 10 * time.Second
)

// Kubernetes namespaces of the soak and the roles their pods take turns at.
const (
	nsSoakA      = "soak-a"      // account A, always permitted
	nsSoakFlip   = "soak-flip"   // account A, permitted flips between allow and deny
	nsSoakTenant = "soak-tenant" // account B, with a namespace External ID
)

var (
	soakRolesA      = []string{"soak-a-1", "soak-a-2", "soak-a-3", "soak-a-4"}
	soakRolesFlip   = []string{"soak-f-1", "soak-f-2", "soak-f-3"}
	soakRolesTenant = []string{otherRole("tenant-1"), otherRole("tenant-2"), otherRole("tenant-3")}

	flipAllow = roleARN("soak-f-.*")
	flipDeny  = roleARN("nothing-.*")
)

func otherRole(name string) string { return "arn:aws:iam::" + otherAccount + ":role/" + name }

// fullARN is the role ARN a pod annotation names, with the server's base
// ARN (autodetected: moto's account) for bare names.
func fullARN(role string) string {
	if strings.HasPrefix(role, "arn:") {
		return role
	}
	return roleARN(role)
}

// soakConfig is the run's length and seed, from the environment.
type soakConfig struct {
	duration   time.Duration
	seed       uint64
	reportOnly bool
}

func readSoakConfig(t *testing.T) soakConfig {
	c := soakConfig{duration: soakShort, seed: uint64(time.Now().UnixNano()), reportOnly: os.Getenv(envSoakReportOnly) != ""}
	if v := os.Getenv(envSoak); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a duration such as 10m", envSoak, v)
		}
		c.duration = d
	}
	if v := os.Getenv(envSoakSeed); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", envSoakSeed, v)
		}
		c.seed = s
	}
	return c
}

// soakNode is one node: its namespace, agent and canary.
type soakNode struct {
	name   string
	netns  string // network namespace; the agent runs there
	host   string
	canary *canary

	mu    sync.Mutex
	agent *testenv.Proc
	down  []window // while no agent listened (SIGKILL to ready)
}

func (n *soakNode) setAgent(p *testenv.Proc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.agent = p
}

func (n *soakNode) currentAgent() *testenv.Proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// window is a span of time, e.g. one chaos event.
type window struct {
	name       string
	start, end time.Time
}

func (w window) overlaps(start, end time.Time) bool {
	return start.Before(w.end) && end.After(w.start)
}

// soak is one run.
type soak struct {
	*env
	cfg   soakConfig
	proxy *testenv.STSFaultProxy
	cut   *testenv.NetCut
	nodes []*soakNode
	slots []*soakSlot

	server1, server2 *testenv.Proc
	server1Place     serverPlace
	server2Place     serverPlace
	procsMu          sync.Mutex
	procs            []*testenv.Proc

	// apiDown pauses churn and flips: kube-apiserver is being restarted.
	apiDown atomic.Bool
	// holdFlips > 0 holds policy flips: a server or its watch is being
	// taken away (see flipLoop).
	holdFlips atomic.Int32

	// loadCtx is the pods' workloads' context, which outlives churn.
	loadCtx context.Context

	recMu   sync.Mutex
	records []soakRecord
	sdkRuns []sdkRun

	evMu   sync.Mutex
	events []window
	flips  []flip
	churns int
	probes int // namespaces created to see that servers are current
	// harness errors from goroutines other than the test's
	harness []string
}

func (s *soak) track(p *testenv.Proc) *testenv.Proc {
	s.procsMu.Lock()
	defer s.procsMu.Unlock()
	s.procs = append(s.procs, p)
	return p
}

func (s *soak) harnessError(format string, args ...any) {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	s.harness = append(s.harness, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
}

// TestSoak is issue 18's chaos soak; see the constants above.
func TestSoak(t *testing.T) {
	cfg := readSoakConfig(t)
	fmt.Printf("soak: %s, seed %d (replay: %s=%d %s=%s)\n", cfg.duration, cfg.seed, envSoakSeed, cfg.seed, envSoak, cfg.duration)
	s := &soak{env: newNodeEnv(t), cfg: cfg}
	t.Cleanup(func() {
		s.procsMu.Lock()
		defer s.procsMu.Unlock()
		testenv.LogTails(t, s.procs...)
	})
	s.setUp(t)
	s.run(t)
}

// setUp builds the second node, the servers, the agents and the pods, and
// waits until every pod is served.
func (s *soak) setUp(t *testing.T) {
	e := s.env
	topo := e.topo
	node2NS := topo.PodNS[podNamespaces-soakNamespaces]
	podNS := topo.PodNS[podNamespaces-soakNamespaces+1:]
	topo.linkNode(t, node2NS, node2Link, node2IP, node2PodNet)
	s.nodes = []*soakNode{
		{name: nodeName, netns: topo.NodeNS, host: nodeIP, canary: e.canary},
		{name: node2Name, netns: node2NS, host: node2IP, canary: startCanaryIn(t, node2NS, hostPort(testenv.MetadataIP, 80))},
	}
	for _, n := range s.nodes {
		dir := testenv.NetNSEtc(n.netns)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		hosts := fmt.Sprintf("127.0.0.1 localhost\n::1 localhost\n%s %s\n%s %s\n", nodeIP, serverName, node2IP, serverName)
		if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	s.proxy = testenv.StartSTSFaultProxy(t, hostPort(nodeIP, 0), e.moto.Endpoint)
	for _, r := range soakRolesTenant {
		s.proxy.RequireExternalID(r, soakExtID)
	}
	viaProxy := *e.moto
	viaProxy.Endpoint = s.proxy.URL
	s.cut = testenv.StartNetCut(t, hostPort(nodeIP, 0), strings.TrimPrefix(e.kube.URL, "https://"))

	e.kube.CreateNamespace(t, nsSoakA, map[string]string{"iam.amazonaws.com/permitted": roleARN("soak-a-.*")})
	e.kube.CreateNamespace(t, nsSoakFlip, map[string]string{"iam.amazonaws.com/permitted": flipAllow})
	s.flips = append(s.flips, flip{at: time.Now(), allow: true})
	e.kube.CreateNamespace(t, nsSoakTenant, map[string]string{
		"iam.amazonaws.com/permitted":   otherRole("tenant-.*"),
		"iam.amazonaws.com/external-id": soakExtID,
	})

	// Per node: two pods in each namespace; the first of soak-a keeps its
	// role all run and also runs the real SDK.
	for i := range soakPods {
		node := s.nodes[i/soakPodsByNode]
		k := i % soakPodsByNode
		sl := &soakSlot{idx: i, node: node, ns: podNS[i], churn: k != 0, sdk: k == 0}
		if node.netns == topo.NodeNS {
			sl.ip, sl.veth = fmt.Sprintf(soakPodIP1, 21+k), fmt.Sprintf("pdm%d", 21+k)
		} else {
			sl.ip, sl.veth = fmt.Sprintf(soakPodIP2, 31+k), fmt.Sprintf("pdm%d", 31+k)
		}
		switch k / 2 {
		case 0:
			sl.kns, sl.pool = nsSoakA, soakRolesA
		case 1:
			sl.kns, sl.pool = nsSoakFlip, soakRolesFlip
		default:
			sl.kns, sl.pool = nsSoakTenant, soakRolesTenant
		}
		sl.role = sl.pool[(i/soakPodsByNode+k)%len(sl.pool)]
		topo.wirePodTo(t, node.netns, node.host, sl.ns, sl.veth, sl.ip)
		e.kube.CreatePod(t, sl.podSpec(sl.podName(), true))
		s.slots = append(s.slots, sl)
	}

	serverArgs := s.serverArgs()
	// Server 1 reaches kube-apiserver through the cut, server 2 runs on
	// node 2 and is the one killed.
	s.server1Place = serverPlace{name: "server1", host: nodeIP, sts: &viaProxy,
		kubeconfig: testenv.KubeconfigVia(t, e.kube.KubeconfigPath, e.kube.URL, s.cut.Addr)}
	s.server2Place = serverPlace{name: "server2", netns: node2NS, host: node2IP, sts: &viaProxy, kubeconfig: e.kube.KubeconfigPath}
	s.server1 = s.track(e.startServerAt(t, s.server1Place, serverArgs...))
	s.server2 = s.track(e.startServerAt(t, s.server2Place, serverArgs...))
	for i, n := range s.nodes {
		n.setAgent(s.track(e.startAgentAt(t, fmt.Sprintf("agent%d", i+1), n.netns, n.host, s.agentArgs()...)))
	}
}

// agentArgs are the soak's agent flags on top of the DaemonSet's.
func (s *soak) agentArgs() []string {
	return []string{
		"--server-address=" + hostPort(serverName, serverPort),
		"--credential-refresh=" + soakAgentRefresh.String(),
		"--credential-min-serve=" + soakMinServe.String(),
		"--level=info",
	}
}

func (s *soak) serverArgs() []string {
	return []string{
		"--session-duration=" + soakSession.String(),
		"--session-refresh=" + soakServerRefresh.String(),
		"--grpc-max-connection-age-duration=" + soakConnAge.String(),
		"--grpc-max-connection-age-grace-duration=2s",
		"--level=info",
	}
}

// run drives load, churn, flips and chaos for the configured time, then
// checks and prints.
func (s *soak) run(t *testing.T) {
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	s.loadCtx = ctx
	for _, sl := range s.slots {
		sl.startGen(ctx, s, sl.role, sl.podName())
	}
	testenv.Eventually(t, 90*time.Second, "every soak pod gets credentials", func() error {
		for _, sl := range s.slots {
			if !s.servedSince(sl, time.Time{}) {
				return fmt.Errorf("pod %s (%s) has no credentials yet", sl.ip, sl.role)
			}
		}
		return nil
	})
	before := s.scrapeAll(t)
	start := time.Now()

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	rng := rand.New(rand.NewPCG(s.cfg.seed, 1))
	churnRng := rand.New(rand.NewPCG(s.cfg.seed, 2))
	flipRng := rand.New(rand.NewPCG(s.cfg.seed, 3))
	wg.Go(func() { s.churnLoop(bg, churnRng) })
	wg.Go(func() { s.flipLoop(bg, flipRng) })
	for _, sl := range s.slots {
		if sl.sdk {
			wg.Go(func() { s.sdkLoop(bg, sl) })
		}
	}
	s.chaos(t, rng, start.Add(s.cfg.duration))
	stopBG()
	wg.Wait()
	// A calm end, so that the end figures are not a chaos event's.
	time.Sleep(5 * time.Second)
	after := s.scrapeAll(t)
	end := time.Now()
	for _, sl := range s.slots {
		sl.stopGen()
	}
	stopLoad()

	rep := s.report(t, start, end, before, after)
	table := rep.table()
	fmt.Print(table)
	t.Log("\n" + table)
	if v := rep.violationList(); v != "" {
		if s.cfg.reportOnly {
			fmt.Printf("soak: VIOLATIONS (reported only, %s is set):\n%s", envSoakReportOnly, v)
		} else {
			t.Errorf("soak oracle violations (replay with %s=%d %s=%s):\n%s", envSoakSeed, s.cfg.seed, envSoak, s.cfg.duration, v)
		}
	}
	s.evMu.Lock()
	harness := s.harness
	s.evMu.Unlock()
	if len(harness) > 0 {
		t.Errorf("the soak's own machinery failed:\n%s", strings.Join(harness, "\n"))
	}
}

// servedSince reports whether the slot's current pod got a credentials
// document after since.
func (s *soak) servedSince(sl *soakSlot, since time.Time) bool {
	g := sl.current()
	s.recMu.Lock()
	defer s.recMu.Unlock()
	for i := len(s.records) - 1; i >= 0; i-- {
		r := s.records[i]
		if r.start.Before(since) {
			return false
		}
		if r.gen == g && r.kind == kindCreds && r.code == http.StatusOK {
			return true
		}
	}
	return false
}
