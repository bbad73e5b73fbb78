//go:build privileged

package iptables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// These tests run real iptables and ip6tables, always inside a fresh network
// namespace through wrapper scripts, so the host's own tables are never read
// or changed. They need root; without it they fail rather than skip, since a
// skipped test here would hide that the rule was never exercised. They are
// built only with the privileged tag, which make test sets; rules_test.go
// covers the same logic against a fake as any user (make unit).

const (
	helperEnv     = "PODIAM_IPT_HELPER"
	helperAddrEnv = "PODIAM_IPT_HELPER_ADDR"
	helperBanner  = "podiam-ipt-ok"
)

// TestMain lets the test binary double as the listener and client the
// traffic test runs inside namespaces via `ip netns exec`.
func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "listen":
		os.Exit(helperListen(os.Getenv(helperAddrEnv)))
	case "dial":
		os.Exit(helperDial(os.Getenv(helperAddrEnv)))
	case "echo":
		os.Exit(helperEcho(os.Getenv(helperAddrEnv), os.Getenv(helperTagEnv), os.Getenv(helperGateEnv)))
	case "hold":
		os.Exit(helperHold(os.Getenv(helperAddrEnv)))
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode")
		os.Exit(2)
	}
}

func helperListen(addr string) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		// The remote address is echoed so the test can see the pod's source
		// IP survived the DNAT: the agent identifies pods by it.
		fmt.Fprintf(c, "%s %s\n", helperBanner, c.RemoteAddr())
		c.Close()
	}
}

func helperDial(addr string) int {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(string(b))
	return 0
}

type testNS struct {
	name      string
	ipt, ip6t string // wrapper scripts running the tools inside the namespace
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root: it creates a network namespace (ip netns add) and runs iptables inside it; run go test as root")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("this test needs %s (Debian packages iproute2 and iptables): %v", tool, err)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := &testNS{name: "podiam-ipt-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.name, err, out)
		}
	})
	dir := t.TempDir()
	for tool, dst := range map[string]*string{"iptables": &ns.ipt, "ip6tables": &ns.ip6t} {
		*dst = filepath.Join(dir, tool)
		script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns.name, tool)
		if err := os.WriteFile(*dst, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ns.run(t, "ip", "link", "set", "lo", "up")
	return ns
}

func (ns *testNS) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rules returns the `-A chain` lines of the nat table with rule ids
// replaced by ID, so tests can compare whole lines.
func (ns *testNS) rules(t *testing.T, tool, chain string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(ns.run(t, tool, "-t", "nat", "-S"), "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, idRE.ReplaceAllString(l, "podiam:ID"))
		}
	}
	return out
}

func (ns *testNS) natDump(t *testing.T, tool string) string {
	t.Helper()
	return ns.run(t, tool, "-t", "nat", "-S")
}

// config points every tool at the namespace; ConntrackFlush is recorded,
// because the default would act on the host's conntrack table.
func (ns *testNS) config(f *flushRecorder, ifaces ...string) Config {
	return Config{
		HostInterfaces: ifaces,
		Host:           "10.77.0.1",
		Port:           8181,
		IPTablesPath:   ns.ipt,
		IP6TablesPath:  ns.ip6t,
		ConntrackFlush: f.flush,
	}
}

func mustNew(t *testing.T, cfg Config, reg prometheus.Registerer) *Rules {
	t.Helper()
	r, err := New(cfg, reg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestInstallCreatesChainRulesAndJump(t *testing.T) {
	ns := newTestNS(t)
	// A rule someone else owns must stay first in PREROUTING only if our
	// jump was already there; on a first install the jump goes on top.
	ns.run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")
	f := &flushRecorder{}
	r := mustNew(t, ns.config(f, strings.Split("cali+,!eth0, eth1", ",")...), prometheus.NewRegistry())
	mustInstall(t, r)

	want := []string{
		dnat("169.254.169.254/32", "-i cali+", "10.77.0.1:8181"),
		dnat("169.254.169.254/32", "! -i eth0", "10.77.0.1:8181"),
		dnat("169.254.169.254/32", "-i eth1", "10.77.0.1:8181"),
	}
	if got := ns.rules(t, "iptables", "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	wantPre := []string{"-A PREROUTING -j PODIAM", "-A PREROUTING -s 10.9.9.9/32 -j RETURN"}
	if got := ns.rules(t, "iptables", "PREROUTING"); !slices.Equal(got, wantPre) {
		t.Fatalf("PREROUTING: %q, want %q", got, wantPre)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("Check after Install: %v", err)
	}
	if got := f.calls(); !slices.Equal(got, []string{MetadataIPv4, MetadataIPv6}) {
		t.Fatalf("conntrack flushed for %q, want once for each metadata address", got)
	}
	// Without Host6 the IPv6 address is refused (filter table), not
	// redirected (nat table).
	if strings.Contains(ns.natDump(t, "ip6tables"), "PODIAM") {
		t.Fatal("an IPv6 DNAT chain although Host6 is empty")
	}
	if !strings.Contains(ns.run(t, "ip6tables", "-S", "PODIAM"), "-j REJECT") {
		t.Fatal("no IPv6 REJECT rule although Host6 is empty")
	}
}

func TestInstallIsIdempotent(t *testing.T) {
	ns := newTestNS(t)
	f := &flushRecorder{}
	cfg := ns.config(f, "cali+", "!eth0")
	cfg.Host6 = "fd00::1"
	r := mustNew(t, cfg, prometheus.NewRegistry())
	mustInstall(t, r)
	before4, before6 := ns.natDump(t, "iptables"), ns.natDump(t, "ip6tables")

	mustInstall(t, r)
	// A restarted agent is a new Rules on the same tables.
	f2 := &flushRecorder{}
	restarted := ns.config(f2, "cali+", "!eth0")
	restarted.Host6 = "fd00::1"
	mustInstall(t, mustNew(t, restarted, prometheus.NewRegistry()))

	if after := ns.natDump(t, "iptables"); after != before4 {
		t.Fatalf("iptables changed by a repeated install:\nbefore:\n%s\nafter:\n%s", before4, after)
	}
	if after := ns.natDump(t, "ip6tables"); after != before6 {
		t.Fatalf("ip6tables changed by a repeated install:\nbefore:\n%s\nafter:\n%s", before6, after)
	}
	if n := len(ns.rules(t, "iptables", "PODIAM")); n != 2 {
		t.Fatalf("%d rules in PODIAM, want 2", n)
	}
	if n := len(ns.rules(t, "iptables", "PREROUTING")); n != 1 {
		t.Fatalf("%d rules in PREROUTING, want the one jump", n)
	}
	if got := f.calls(); len(got) != 2 {
		t.Fatalf("first agent flushed %q, want once per family and not again", got)
	}
	if got := f2.calls(); len(got) != 2 {
		t.Fatalf("restarted agent flushed %q, want once per family on its first install", got)
	}
}

func TestExistingJumpKeepsItsPosition(t *testing.T) {
	ns := newTestNS(t)
	f := &flushRecorder{}
	cfg := ns.config(f, "cali+")
	r := mustNew(t, cfg, prometheus.NewRegistry())
	mustInstall(t, r)
	// Calico puts its own rule first; we must not move back above it.
	ns.run(t, "iptables", "-t", "nat", "-I", "PREROUTING", "1", "-m", "comment", "--comment", "cali:first", "-j", "RETURN")
	want := []string{`-A PREROUTING -m comment --comment "cali:first" -j RETURN`, "-A PREROUTING -j PODIAM"}

	mustInstall(t, r)
	if got := ns.rules(t, "iptables", "PREROUTING"); !slices.Equal(got, want) {
		t.Fatalf("after re-install PREROUTING = %q, want %q", got, want)
	}
	mustInstall(t, mustNew(t, cfg, prometheus.NewRegistry()))
	if got := ns.rules(t, "iptables", "PREROUTING"); !slices.Equal(got, want) {
		t.Fatalf("after restart PREROUTING = %q, want %q", got, want)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("Check with the jump at position 2: %v", err)
	}
}

func TestChangedConfigReplacesStaleRules(t *testing.T) {
	ns := newTestNS(t)
	f := &flushRecorder{}
	old := ns.config(f, "cali+", "eth1")
	old.Host6 = "fd00::1"
	mustInstall(t, mustNew(t, old, prometheus.NewRegistry()))
	// Rules podiam never wrote do not belong in its chain either.
	ns.run(t, "iptables", "-t", "nat", "-A", "PODIAM", "-p", "tcp", "-m", "comment", "--comment", "left over", "-j", "DNAT", "--to-destination", "10.1.1.1:80")
	ns.run(t, "iptables", "-t", "nat", "-A", "PODIAM", "-d", "169.254.169.254", "-j", "RETURN")

	cur := ns.config(f, "cali+")
	cur.Host, cur.Port, cur.Host6 = "10.77.0.2", 9000, "fd00::2"
	r := mustNew(t, cur, prometheus.NewRegistry())
	mustInstall(t, r)

	want := []string{dnat("169.254.169.254/32", "-i cali+", "10.77.0.2:9000")}
	if got := ns.rules(t, "iptables", "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	want6 := []string{dnat("fd00:ec2::254/128", "-i cali+", "[fd00::2]:9000")}
	if got := ns.rules(t, "ip6tables", "PODIAM"); !slices.Equal(got, want6) {
		t.Fatalf("ip6 PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
	if got := ns.rules(t, "iptables", "PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -j PODIAM"}) {
		t.Fatalf("PREROUTING = %q, want one jump", got)
	}
}

func TestIPv6Rule(t *testing.T) {
	ns := newTestNS(t)
	f := &flushRecorder{}
	cfg := ns.config(f, "cali+", "!eth0")
	cfg.Host6 = "fd00::1"
	r := mustNew(t, cfg, prometheus.NewRegistry())
	mustInstall(t, r)

	want := []string{
		dnat("fd00:ec2::254/128", "-i cali+", "[fd00::1]:8181"),
		dnat("fd00:ec2::254/128", "! -i eth0", "[fd00::1]:8181"),
	}
	if got := ns.rules(t, "ip6tables", "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("ip6 PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := ns.rules(t, "ip6tables", "PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -j PODIAM"}) {
		t.Fatalf("ip6 PREROUTING = %q, want the jump", got)
	}
	if n := len(ns.rules(t, "iptables", "PODIAM")); n != 2 {
		t.Fatalf("%d IPv4 rules, want 2 next to the IPv6 ones", n)
	}
	if got := f.calls(); !slices.Equal(got, []string{MetadataIPv4, MetadataIPv6}) {
		t.Fatalf("conntrack flushed for %q, want both metadata addresses", got)
	}
	ns.run(t, "ip6tables", "-t", "nat", "-D", "PREROUTING", "-j", "PODIAM")
	if err := r.Check(); !errors.Is(err, ErrMissing) || !strings.HasPrefix(err.Error(), "ipv6: ") {
		t.Fatalf("Check without the IPv6 jump = %v, want ipv6 ErrMissing", err)
	}
}

func TestCheckReportsWhatIsMissing(t *testing.T) {
	tests := []struct {
		name    string
		install bool
		breakIt [][]string
		want    string
	}{
		{name: "nothing installed", want: "ipv4: iptables interception missing: chain PODIAM does not exist"},
		{name: "jump deleted", install: true, breakIt: [][]string{{"iptables", "-t", "nat", "-D", "PREROUTING", "-j", "PODIAM"}},
			want: "ipv4: iptables interception missing: no jump from PREROUTING to PODIAM"},
		{name: "rule deleted", install: true, breakIt: [][]string{{"iptables", "-t", "nat", "-D", "PODIAM", "2"}},
			want: "ipv4: iptables interception missing: no rule for interface !eth0 in PODIAM"},
		{name: "chain flushed", install: true, breakIt: [][]string{{"iptables", "-t", "nat", "-F", "PODIAM"}},
			want: "ipv4: iptables interception missing: no rule for interface cali+ in PODIAM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newTestNS(t)
			r := mustNew(t, ns.config(&flushRecorder{}, "cali+", "!eth0"), prometheus.NewRegistry())
			if tt.install {
				mustInstall(t, r)
			}
			for _, args := range tt.breakIt {
				ns.run(t, args...)
			}
			err := r.Check()
			if !errors.Is(err, ErrMissing) || err.Error() != tt.want {
				t.Fatalf("Check = %v, want %q (ErrMissing)", err, tt.want)
			}
		})
	}
}

func TestRunRestoresDeletedRules(t *testing.T) {
	tests := []struct {
		name    string
		breakIt [][]string
		flushed string
	}{
		{name: "jump deleted", flushed: MetadataIPv4,
			breakIt: [][]string{{"iptables", "-t", "nat", "-D", "PREROUTING", "-j", "PODIAM"}}},
		{name: "rule deleted", flushed: MetadataIPv4,
			breakIt: [][]string{{"iptables", "-t", "nat", "-D", "PODIAM", "1"}}},
		{name: "chain deleted", flushed: MetadataIPv4, breakIt: [][]string{
			{"iptables", "-t", "nat", "-D", "PREROUTING", "-j", "PODIAM"},
			{"iptables", "-t", "nat", "-F", "PODIAM"},
			{"iptables", "-t", "nat", "-X", "PODIAM"},
		}},
		{name: "nat table flushed", flushed: MetadataIPv4, breakIt: [][]string{
			{"iptables", "-t", "nat", "-F"},
		}},
		{name: "ipv6 rule deleted", flushed: MetadataIPv6,
			breakIt: [][]string{{"ip6tables", "-t", "nat", "-D", "PODIAM", "2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newTestNS(t)
			f := &flushRecorder{}
			cfg := ns.config(f, "cali+", "!eth0")
			cfg.Host6 = "fd00::1"
			reg := prometheus.NewRegistry()
			r := mustNew(t, cfg, reg)
			mustInstall(t, r)
			sorted := func(tool string) []string {
				l := strings.Split(ns.natDump(t, tool), "\n")
				slices.Sort(l)
				return l
			}
			want4, want6 := sorted("iptables"), sorted("ip6tables")

			for _, args := range tt.breakIt {
				ns.run(t, args...)
			}
			if err := r.Check(); !errors.Is(err, ErrMissing) {
				t.Fatalf("Check after breaking = %v, want ErrMissing", err)
			}

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx, 50*time.Millisecond) }()

			deadline := time.Now().Add(15 * time.Second)
			for counterValue(t, reg, "podiam_agent_iptables_restores_total") < 1 {
				if time.Now().After(deadline) {
					cancel()
					t.Fatalf("not restored: Check = %v", r.Check())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := r.Check(); err != nil {
				t.Fatalf("Check after restore: %v", err)
			}
			if got := sorted("iptables"); !slices.Equal(got, want4) {
				t.Fatalf("iptables after restore:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
			}
			if got := sorted("ip6tables"); !slices.Equal(got, want6) {
				t.Fatalf("ip6tables after restore:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
			}
			if pre := ns.rules(t, "iptables", "PREROUTING"); pre[0] != "-A PREROUTING -j PODIAM" {
				t.Fatalf("restored jump not first: %q", pre)
			}
			// A restore may have let pods reach the real IMDS meanwhile.
			if got := f.calls(); len(got) != 3 || got[2] != tt.flushed {
				t.Fatalf("conntrack flushes %q, want the install's two and then %s", got, tt.flushed)
			}

			// Intact rules must not count as restores.
			time.Sleep(300 * time.Millisecond)
			if v := counterValue(t, reg, "podiam_agent_iptables_restores_total"); v != 1 {
				t.Fatalf("restores = %v after the rules were back, want 1", v)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run returned %v after cancel, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			// Fail closed: stopping Run leaves the rule in place.
			if err := r.Check(); err != nil {
				t.Fatalf("rule gone after Run stopped: %v", err)
			}
		})
	}
}

func TestRunRejectsBadInterval(t *testing.T) {
	ns := newTestNS(t)
	r := mustNew(t, ns.config(&flushRecorder{}, "cali+"), nil)
	if err := r.Run(context.Background(), 0); err == nil {
		t.Fatal("Run with interval 0: want error")
	}
}

func TestRemoveDeletesJumpAndChain(t *testing.T) {
	ns := newTestNS(t)
	other := []string{"-A PREROUTING -s 10.9.9.9/32 -j RETURN"}
	ns.run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")
	cfg := ns.config(&flushRecorder{}, "cali+", "!eth0")
	cfg.Host6 = "fd00::1"
	r := mustNew(t, cfg, prometheus.NewRegistry())
	mustInstall(t, r)
	// A second jump (say, from an older agent) must go too, or -X fails.
	ns.run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "PODIAM")

	if err := r.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		if dump := ns.natDump(t, tool); strings.Contains(dump, "PODIAM") {
			t.Fatalf("%s still mentions PODIAM after Remove:\n%s", tool, dump)
		}
	}
	if got := ns.rules(t, "iptables", "PREROUTING"); !slices.Equal(got, other) {
		t.Fatalf("PREROUTING = %q, want only the foreign rule %q", got, other)
	}
	if err := r.Check(); !errors.Is(err, ErrMissing) {
		t.Fatalf("Check after Remove = %v, want ErrMissing", err)
	}
	if err := r.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestNewMissingIP6Tables(t *testing.T) {
	ns := newTestNS(t)
	cfg := ns.config(&flushRecorder{}, "cali+")
	cfg.Host6 = "fd00::1"
	cfg.IP6TablesPath = "/nonexistent/ip6tables"
	if _, err := New(cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "ip6tables") {
		t.Fatalf("New = %v, want an ip6tables error", err)
	}
}

func TestNewRegistersMetricsOnce(t *testing.T) {
	ns := newTestNS(t)
	reg := prometheus.NewRegistry()
	cfg := ns.config(&flushRecorder{}, "cali+")
	mustNew(t, cfg, reg)
	if _, err := New(cfg, reg, nil); err == nil {
		t.Fatal("second New on the same registry: want a registration error")
	}
}

// startListener runs the test binary in a namespace as a listener and waits
// until it listens.
func startListener(t *testing.T, ns, addr string) {
	t.Helper()
	startHelper(t, ns, helperEnv+"=listen", helperAddrEnv+"="+addr).expect(t, "listener in "+ns+" on "+addr, "ready")
}

func dialFrom(t *testing.T, ns, addr string) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), helperEnv+"=dial", helperAddrEnv+"="+addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// TestTrafficReachesAgent sends real TCP connections from a "pod"
// namespace to the metadata address and checks that they reach a listener
// on Host:Port in the "node" namespace only while the rule is installed, with
// the pod's source address intact.
func TestTrafficReachesAgent(t *testing.T) {
	node := newTestNS(t)
	pod := newTestNS(t)
	// Created inside the node namespace, so no name can clash with the host's.
	node.run(t, "ip", "link", "add", "calitest0", "type", "veth", "peer", "name", "eth0")
	node.run(t, "ip", "link", "set", "eth0", "netns", pod.name)
	node.run(t, "ip", "addr", "add", "10.78.0.1/24", "dev", "calitest0")
	node.run(t, "ip", "-6", "addr", "add", "fd01::1/64", "dev", "calitest0", "nodad")
	node.run(t, "ip", "link", "set", "calitest0", "up")
	node.run(t, "ip", "addr", "add", "10.77.0.1/32", "dev", "lo")
	node.run(t, "ip", "-6", "addr", "add", "fd00::1/128", "dev", "lo")
	pod.run(t, "ip", "addr", "add", "10.78.0.2/24", "dev", "eth0")
	pod.run(t, "ip", "-6", "addr", "add", "fd01::2/64", "dev", "eth0", "nodad")
	pod.run(t, "ip", "link", "set", "eth0", "up")
	pod.run(t, "ip", "route", "add", "default", "via", "10.78.0.1")
	pod.run(t, "ip", "-6", "route", "add", "default", "via", "fd01::1")

	startListener(t, node.name, "10.77.0.1:8181")
	startListener(t, node.name, "[fd00::1]:8181")

	targets := map[string]string{
		"169.254.169.254:80": "10.78.0.2:",
		"[fd00:ec2::254]:80": "[fd01::2]:",
	}
	for addr := range targets {
		if out, err := dialFrom(t, pod.name, addr); err == nil {
			t.Fatalf("%s reachable before the rule was installed: %q", addr, out)
		}
	}

	cfg := node.config(&flushRecorder{}, "cali+")
	cfg.Host6 = "fd00::1"
	r := mustNew(t, cfg, prometheus.NewRegistry())
	mustInstall(t, r)
	for addr, src := range targets {
		out, err := dialFrom(t, pod.name, addr)
		if err != nil {
			t.Fatalf("pod to %s with the rule installed: %v", addr, err)
		}
		if want := helperBanner + " " + src; !strings.HasPrefix(out, want) {
			t.Fatalf("pod to %s got %q, want the listener's answer to %s...", addr, out, src)
		}
	}

	// Traffic from an interface the rule excludes is not intercepted.
	excl := node.config(&flushRecorder{}, "!calitest0")
	excl.Host6 = "fd00::1"
	mustInstall(t, mustNew(t, excl, prometheus.NewRegistry()))
	for addr := range targets {
		if out, err := dialFrom(t, pod.name, addr); err == nil {
			t.Fatalf("%s intercepted from an excluded interface: %q", addr, out)
		}
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
}

// TestIPv6RejectedWhereNotServed: on a node whose agent serves IPv4 only,
// a pod's connection to fd00:ec2::254 is refused at once by the IPv6 rule
// in the filter table, never reaching what answers there (the node's
// metadata service, here a listener on that address in the node).
func TestIPv6RejectedWhereNotServed(t *testing.T) {
	node := newTestNS(t)
	pod := newTestNS(t)
	node.run(t, "ip", "link", "add", "calitest0", "type", "veth", "peer", "name", "eth0")
	node.run(t, "ip", "link", "set", "eth0", "netns", pod.name)
	node.run(t, "ip", "-6", "addr", "add", "fd01::1/64", "dev", "calitest0", "nodad")
	node.run(t, "ip", "link", "set", "calitest0", "up")
	node.run(t, "ip", "-6", "addr", "add", MetadataIPv6+"/128", "dev", "lo")
	pod.run(t, "ip", "-6", "addr", "add", "fd01::2/64", "dev", "eth0", "nodad")
	pod.run(t, "ip", "link", "set", "eth0", "up")
	pod.run(t, "ip", "-6", "route", "add", "default", "via", "fd01::1")
	startListener(t, node.name, "["+MetadataIPv6+"]:80")

	addr := "[" + MetadataIPv6 + "]:80"
	if out, err := dialFrom(t, pod.name, addr); err != nil || !strings.HasPrefix(out, helperBanner) {
		t.Fatalf("before the rule the pod must reach the node's IPv6 metadata listener (else this test proves nothing): %q %v", out, err)
	}
	r := mustNew(t, node.config(&flushRecorder{}, "cali+"), prometheus.NewRegistry())
	mustInstall(t, r)
	start := time.Now()
	out, err := dialFrom(t, pod.name, addr)
	if err == nil {
		t.Fatalf("pod reached %s with the IPv6 rule in place: %q", addr, out)
	}
	if !strings.Contains(err.Error(), "connection refused") || time.Since(start) > 900*time.Millisecond {
		t.Fatalf("pod to %s: %v after %s, want an immediate connection refused", addr, err, time.Since(start))
	}
	var filter []string
	for _, l := range strings.Split(node.run(t, "ip6tables", "-S"), "\n") {
		if strings.Contains(l, "PODIAM") {
			filter = append(filter, idRE.ReplaceAllString(l, "podiam:ID"))
		}
	}
	want := []string{"-N PODIAM", "-A INPUT -j PODIAM", "-A FORWARD -j PODIAM", reject(MetadataIPv6+"/128", "-i cali+")}
	if !slices.Equal(filter, want) {
		t.Fatalf("ip6tables filter:\n%s\nwant:\n%s", strings.Join(filter, "\n"), strings.Join(want, "\n"))
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	// Kept on exit like the IPv4 rule; removed only by Remove.
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if out, err := dialFrom(t, pod.name, addr); err != nil || !strings.HasPrefix(out, helperBanner) {
		t.Fatalf("after Remove: %q %v", out, err)
	}
}
