package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/podiam/podiam/test/testenv"
)

// Addresses inside the namespaces this test creates; nothing outside them
// ever sees these.
const (
	nodeIP      = "10.77.0.1"
	agentPort   = 8181
	serverPort  = 9610
	serverMetr  = 9620
	agentMetr   = 9621
	hostIfWild  = "pdm+"
	podIPFormat = "10.78.0.%d"
	// podIP6Format is a pod's IPv6 /64 (by its IPv4 address's last
	// number) and the host (1) or pod (2) address in it.
	podIP6Format = "fd78:%s::%d"
	metadataIPv6 = "fd00:ec2::254"
	// nodeIP6 is the node's IPv6 address, the only one the IPv6-only
	// node scenario names it by.
	nodeIP6 = "fd77::1"
)

// podNet is one pod namespace as the node sees it.
type podNet struct {
	NS   string // network namespace name
	Veth string // host side, in the node namespace
	IP   string
	IP6  string
}

// topology is the node namespace this process runs in and the pod
// namespaces the supervisor created.
type topology struct {
	NodeNS string
	PodNS  []string // pod1..pod7
	BinDir string
	ip     string
}

// childTopology reads what the supervisor prepared and checks that this
// process really runs in the node namespace: every address the test uses
// depends on it.
func childTopology(t testing.TB) *topology {
	t.Helper()
	node := os.Getenv(envNodeNS)
	if node == "" {
		t.Fatalf("%s is not set: run the e2e test with go test as root, its TestMain prepares the namespaces", envNodeNS)
	}
	topo := &topology{
		NodeNS: node,
		PodNS:  strings.Split(os.Getenv(envPodNS), ","),
		BinDir: os.Getenv(envBinDir),
		ip:     testenv.Bin(t, "ip"),
	}
	if len(topo.PodNS) != podNamespaces {
		t.Fatalf("%s = %q, want %d namespaces", envPodNS, os.Getenv(envPodNS), podNamespaces)
	}
	var self, want syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatalf("stat own network namespace: %v", err)
	}
	if err := syscall.Stat(filepath.Join("/run/netns", node), &want); err != nil {
		t.Fatalf("stat node namespace %s: %v", node, err)
	}
	if self.Dev != want.Dev || self.Ino != want.Ino {
		t.Fatalf("test process is not in the node namespace %s", node)
	}
	return topo
}

// sh runs a short command and fails the test with its output on error.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// setUpNode gives the node namespace its addresses: the node IP and the
// metadata address (for the canary) on lo, since the kernel has no dummy
// link type.
// The addresses are replaced, not added, so that a second test of the run
// (the soak after TestE2E) can set up the same node again.
func (tp *topology) setUpNode(t testing.TB) {
	t.Helper()
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", "lo", "up")
	sh(t, tp.ip, "-n", tp.NodeNS, "addr", "replace", nodeIP+"/32", "dev", "lo")
	sh(t, tp.ip, "-n", tp.NodeNS, "addr", "replace", testenv.MetadataIP+"/32", "dev", "lo")
	// The IPv6 metadata address, for the IPv6 canary.
	sh(t, tp.ip, "-n", tp.NodeNS, "-6", "addr", "replace", metadataIPv6+"/128", "dev", "lo")
	sh(t, tp.ip, "-n", tp.NodeNS, "-6", "addr", "replace", nodeIP6+"/128", "dev", "lo", "nodad")
}

// linkNode makes network namespace ns a second node with address ip,
// joined to this node by a veth pair (host side named veth here): each
// node reaches the other's address and pod subnet (podNet, a CIDR)
// through it, and forwards its pods' traffic, as routed nodes do. The
// node gets the metadata address too, for its own canary.
func (tp *topology) linkNode(t testing.TB, ns, veth, ip, podNet string) {
	t.Helper()
	sh(t, tp.ip, "-n", ns, "link", "set", "lo", "up")
	sh(t, tp.ip, "-n", ns, "addr", "add", testenv.MetadataIP+"/32", "dev", "lo")
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", veth, "up")
	sh(t, tp.ip, "-n", ns, "addr", "add", ip+"/32", "dev", "eth0")
	sh(t, tp.ip, "-n", ns, "link", "set", "eth0", "up")
	sh(t, tp.ip, "-n", tp.NodeNS, "route", "add", ip+"/32", "dev", veth)
	sh(t, tp.ip, "-n", tp.NodeNS, "route", "add", podNet, "via", ip, "dev", veth, "onlink")
	sh(t, tp.ip, "-n", ns, "route", "add", nodeIP+"/32", "dev", "eth0")
	sh(t, tp.ip, "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
}

// wirePod6 joins pod namespace ns to the node with IPv6 only: the pod has
// ip6 in a /64 whose first address is the host side's, and an IPv6
// default route through it; no IPv4 at all.
func (tp *topology) wirePod6(t testing.TB, ns, veth, ip6 string) *podNet {
	t.Helper()
	prefix := ip6[:strings.LastIndex(ip6, ":")+1]
	hostSide6 := prefix + "1"
	sh(t, tp.ip, "-n", ns, "link", "set", "lo", "up")
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	sh(t, tp.ip, "-n", tp.NodeNS, "-6", "addr", "add", hostSide6+"/64", "dev", veth, "nodad")
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", veth, "up")
	sh(t, tp.ip, "-n", ns, "-6", "addr", "add", ip6+"/64", "dev", "eth0", "nodad")
	sh(t, tp.ip, "-n", ns, "link", "set", "eth0", "up")
	sh(t, tp.ip, "-n", ns, "-6", "route", "add", "default", "via", hostSide6, "dev", "eth0")
	return &podNet{NS: ns, Veth: veth, IP6: ip6}
}

// wirePod joins pod namespace ns to the node as Calico does: a veth whose
// host side has no address, a /32 route to the pod on the node, and in the
// pod a /32 route to the node plus a default route through it. The pod is
// dual-stack: it also gets an IPv6 address in a /64 of its own whose
// first address is the host side's, and an IPv6 default route through it,
// so that a pod can try the IPv6 metadata address.
func (tp *topology) wirePod(t testing.TB, ns, veth, ip string) *podNet {
	t.Helper()
	return tp.wirePodTo(t, tp.NodeNS, nodeIP, ns, veth, ip)
}

// wirePodTo is wirePod for the node in network namespace node, whose
// address is host.
func (tp *topology) wirePodTo(t testing.TB, node, host, ns, veth, ip string) *podNet {
	t.Helper()
	p, err := tp.wirePodErr(node, host, ns, veth, ip)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wirePodErr is wirePodTo for a goroutine other than the test's: it
// returns the first failure.
func (tp *topology) wirePodErr(node, host, ns, veth, ip string) (*podNet, error) {
	last := ip[strings.LastIndex(ip, ".")+1:]
	hostSide6, ip6 := fmt.Sprintf(podIP6Format, last, 1), fmt.Sprintf(podIP6Format, last, 2)
	for _, args := range [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", node, "-6", "addr", "add", hostSide6 + "/64", "dev", veth, "nodad"},
		{"-n", node, "link", "set", veth, "up"},
		{"-n", ns, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", ns, "-6", "addr", "add", ip6 + "/64", "dev", "eth0", "nodad"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", node, "route", "add", ip + "/32", "dev", veth},
		{"-n", ns, "route", "add", host + "/32", "dev", "eth0"},
		{"-n", ns, "route", "add", "default", "via", host, "dev", "eth0"},
		{"-n", ns, "-6", "route", "add", "default", "via", hostSide6, "dev", "eth0"},
	} {
		if out, err := exec.Command(tp.ip, args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return &podNet{NS: ns, Veth: veth, IP: ip, IP6: ip6}, nil
}

// Addresses of the bridge scenario: every pod sits behind one Linux
// bridge in the node, as with the bridge CNI plugin, Flannel or weave.
const (
	bridgeName   = "pdmbr0" // matches the agent's --host-interface=pdm+
	bridgeGW     = "10.79.0.1"
	bridgeIPForm = "10.79.0.%d"
)

// setUpBridge creates the node's bridge with the pods' gateway address.
func (tp *topology) setUpBridge(t testing.TB) {
	t.Helper()
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "add", bridgeName, "type", "bridge")
	sh(t, tp.ip, "-n", tp.NodeNS, "addr", "add", bridgeGW+"/24", "dev", bridgeName)
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", bridgeName, "up")
}

// wireBridgePod joins pod namespace ns to the node's bridge: its veth's
// host side is a bridge port, and the node reaches the pod by ARP on the
// bridge, so only the pod's MAC address tells it from another pod.
func (tp *topology) wireBridgePod(t testing.TB, ns, veth, ip string) *podNet {
	t.Helper()
	sh(t, tp.ip, "-n", ns, "link", "set", "lo", "up")
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", veth, "master", bridgeName)
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "set", veth, "up")
	sh(t, tp.ip, "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
	sh(t, tp.ip, "-n", ns, "link", "set", "eth0", "up")
	sh(t, tp.ip, "-n", ns, "route", "add", "default", "via", bridgeGW, "dev", "eth0")
	return &podNet{NS: ns, Veth: veth, IP: ip}
}

// unwirePod deletes the pod's veth, as a CNI plugin does when a pod goes
// away; its peer in the pod namespace goes with it.
func (tp *topology) unwirePod(t *testing.T, p *podNet) {
	t.Helper()
	sh(t, tp.ip, "-n", tp.NodeNS, "link", "del", p.Veth)
}

// natRules returns `iptables -t nat -S` of the node namespace.
func natRules(t testing.TB) string {
	t.Helper()
	return sh(t, testenv.Bin(t, "iptables"), "-w", "5", "-t", "nat", "-S")
}

// natRulesIn is natRules of the node in network namespace ns.
func natRulesIn(t testing.TB, ns string) string {
	t.Helper()
	return sh(t, testenv.Bin(t, "ip"), "netns", "exec", ns, testenv.Bin(t, "iptables"), "-w", "5", "-t", "nat", "-S")
}

// dnatRules returns the nat rules that mention the metadata address.
func dnatRules(rules string) []string {
	var out []string
	for _, l := range strings.Split(rules, "\n") {
		if strings.Contains(l, testenv.MetadataIP) {
			out = append(out, l)
		}
	}
	return out
}

// dnatCount counts the DNAT rules for the metadata address.
func dnatCount(rules string) int {
	n := 0
	for _, l := range dnatRules(rules) {
		if strings.Contains(l, "-j DNAT") {
			n++
		}
	}
	return n
}

// ruleInstalled reports whether the nat table sends pod traffic for the
// metadata address to the agent.
func ruleInstalled(rules string) bool { return ruleInstalledFor(rules, nodeIP) }

// ruleInstalledFor is ruleInstalled for the agent of the node at host.
func ruleInstalledFor(rules, host string) bool {
	want := fmt.Sprintf("--to-destination %s:%d", host, agentPort)
	for _, l := range dnatRules(rules) {
		if strings.Contains(l, "-j DNAT") && strings.Contains(l, want) && strings.Contains(l, "--dport 80") {
			return true
		}
	}
	return false
}
