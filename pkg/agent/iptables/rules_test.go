package iptables

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/test/syncbuf"
)

// These tests run the rule logic against fakeTables, so they need neither
// root nor iptables; netns_test.go (privileged tag) runs the same
// operations against real iptables in network namespaces.

type flushRecorder struct {
	mu    sync.Mutex
	addrs []string
	err   error // returned by every flush
}

func (f *flushRecorder) flush(_ context.Context, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = append(f.addrs, addr)
	return f.err
}

func (f *flushRecorder) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.addrs)
}

func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func mustInstall(t *testing.T, r *Rules) {
	t.Helper()
	if err := r.Install(context.Background()); err != nil {
		t.Fatalf("Install: %v", err)
	}
}

// fakeNode is one node's IPv4 and IPv6 nat tables.
type fakeNode struct {
	v4, v6 *fakeTables
}

func newFakeNode() *fakeNode {
	return &fakeNode{v4: newFakeTables(), v6: newFakeTables()}
}

func (n *fakeNode) tables(family string) *fakeTables {
	if family == "ipv6" {
		return n.v6
	}
	return n.v4
}

// config is an IPv4-only node's (NoIPv6); the IPv6 tests set their own.
func (n *fakeNode) config(f *flushRecorder, ifaces ...string) Config {
	return Config{HostInterfaces: ifaces, Host: "10.77.0.1", Port: 8181, ConntrackFlush: f.flush, NoIPv6: true}
}

// newRules builds Rules on the node's fake tables with a registry and a
// captured log.
func (n *fakeNode) newRules(t *testing.T, cfg Config) (*Rules, *prometheus.Registry, *syncbuf.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &syncbuf.Buffer{}
	open, _ := fakeOpener(n.v4, n.v6)
	r, err := newRules(cfg, reg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), open)
	if err != nil {
		t.Fatalf("newRules: %v", err)
	}
	return r, reg, logs
}

var idRE = regexp.MustCompile(`podiam:[0-9a-f]{12}`)

// dnat is one of our rules as iptables -S prints it, with its id replaced
// by ID.
func dnat(dst, iface, to string) string {
	return "-A PODIAM -d " + dst + " " + iface + " -p tcp -m tcp --dport 80 -m comment --comment \"podiam:ID\" -j DNAT --to-destination " + to
}

// listed returns the chain's rules with ids replaced by ID.
func listed(f *fakeTables, chain string) []string {
	var out []string
	for _, l := range f.rules(chain) {
		out = append(out, idRE.ReplaceAllString(l, "podiam:ID"))
	}
	return out
}

func mustRun(t *testing.T, f *fakeTables, args ...string) {
	t.Helper()
	if err := f.run(args...); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
}

func TestFakeInstallCreatesChainRulesAndJump(t *testing.T) {
	n := newFakeNode()
	mustRun(t, n.v4, "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")
	f := &flushRecorder{}
	open, opened := fakeOpener(n.v4, n.v6)
	cfg := n.config(f, strings.Split("cali+,!eth0, eth1", ",")...)
	cfg.IPTablesPath = "/sbin/iptables-legacy"
	r, err := newRules(cfg, nil, nil, open)
	if err != nil {
		t.Fatal(err)
	}
	mustInstall(t, r)

	want := []string{
		dnat("169.254.169.254/32", "-i cali+", "10.77.0.1:8181"),
		dnat("169.254.169.254/32", "! -i eth0", "10.77.0.1:8181"),
		dnat("169.254.169.254/32", "-i eth1", "10.77.0.1:8181"),
	}
	if got := listed(n.v4, "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	wantPre := []string{"-A PREROUTING -j PODIAM", "-A PREROUTING -s 10.9.9.9/32 -j RETURN"}
	if got := n.v4.rules("PREROUTING"); !slices.Equal(got, wantPre) {
		t.Fatalf("PREROUTING: %q, want %q", got, wantPre)
	}
	// The chain is complete before the jump sends traffic into it.
	w := n.v4.writes()
	if !strings.HasPrefix(w[0], "new-chain PODIAM") || w[len(w)-1] != "insert PREROUTING 1 -j PODIAM" {
		t.Fatalf("writes %q: want the chain first and the jump last", w)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("Check after Install: %v", err)
	}
	if got := f.calls(); !slices.Equal(got, []string{MetadataIPv4}) {
		t.Fatalf("conntrack flushed for %q, want once for %s", got, MetadataIPv4)
	}
	if len(n.v6.calls) != 0 {
		t.Fatalf("ip6tables used although IPv6 is off: %q", n.v6.calls)
	}
	if want := []string{"IPv4:/sbin/iptables-legacy"}; !slices.Equal(*opened, want) {
		t.Fatalf("opened %q, want %q", *opened, want)
	}
}

func TestFakeInstallIsIdempotent(t *testing.T) {
	n := newFakeNode()
	f := &flushRecorder{}
	cfg := n.config(f, "cali+", "!eth0")
	cfg.Host6, cfg.NoIPv6 = "fd00::1", false
	r, _, _ := n.newRules(t, cfg)
	mustInstall(t, r)
	n.v4.resetCalls()
	n.v6.resetCalls()

	mustInstall(t, r)
	// A restarted agent is a new Rules on the same tables.
	f2 := &flushRecorder{}
	restarted := n.config(f2, "cali+", "!eth0")
	restarted.Host6, restarted.NoIPv6 = "fd00::1", false
	r2, _, _ := n.newRules(t, restarted)
	mustInstall(t, r2)

	for _, fam := range []string{"ipv4", "ipv6"} {
		if w := n.tables(fam).writes(); len(w) != 0 {
			t.Fatalf("%s changed by a repeated install: %q", fam, w)
		}
	}
	if got := f.calls(); !slices.Equal(got, []string{MetadataIPv4, MetadataIPv6}) {
		t.Fatalf("first agent flushed %q, want once per family and not again", got)
	}
	if got := f2.calls(); !slices.Equal(got, []string{MetadataIPv4, MetadataIPv6}) {
		t.Fatalf("restarted agent flushed %q, want once per family on its first install", got)
	}
}

func TestFakeExistingJumpKeepsItsPosition(t *testing.T) {
	n := newFakeNode()
	r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	mustInstall(t, r)
	// Calico puts its own rule first; we must not move back above it.
	mustRun(t, n.v4, "-I", "PREROUTING", "1", "-m", "comment", "--comment", "cali:first", "-j", "RETURN")
	want := []string{`-A PREROUTING -m comment --comment "cali:first" -j RETURN`, "-A PREROUTING -j PODIAM"}
	mustInstall(t, r)
	if got := n.v4.rules("PREROUTING"); !slices.Equal(got, want) {
		t.Fatalf("after re-install PREROUTING = %q, want %q", got, want)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("Check with the jump at position 2: %v", err)
	}
}

func TestFakeChangedConfigReplacesStaleRules(t *testing.T) {
	n := newFakeNode()
	f := &flushRecorder{}
	old := n.config(f, "cali+", "eth1")
	old.Host6, old.NoIPv6 = "fd00::1", false
	r, _, _ := n.newRules(t, old)
	mustInstall(t, r)
	// Rules podiam never wrote do not belong in its chain either, nor does
	// a second copy of a current rule.
	mustRun(t, n.v4, "-A", "PODIAM", "-p", "tcp", "-m", "comment", "--comment", "left over", "-j", "DNAT", "--to-destination", "10.1.1.1:80")
	mustRun(t, n.v4, "-A", "PODIAM", "-d", "169.254.169.254", "-j", "RETURN")
	n.v4.resetCalls()

	cur := n.config(f, "cali+")
	cur.Host, cur.Port, cur.Host6, cur.NoIPv6 = "10.77.0.2", 9000, "fd00::2", false
	r2, _, logs := n.newRules(t, cur)
	mustInstall(t, r2)
	mustRun(t, n.v4, append([]string{"-A", "PODIAM"}, n.v4.chains["PODIAM"][0]...)...)
	mustInstall(t, r2)

	want := []string{dnat("169.254.169.254/32", "-i cali+", "10.77.0.2:9000")}
	if got := listed(n.v4, "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	want6 := []string{dnat("fd00:ec2::254/128", "-i cali+", "[fd00::2]:9000")}
	if got := listed(n.v6, "PODIAM"); !slices.Equal(got, want6) {
		t.Fatalf("ip6 PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
	if got := n.v4.rules("PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -j PODIAM"}) {
		t.Fatalf("PREROUTING = %q, want one jump", got)
	}
	// Added before anything is deleted: traffic never finds no rule.
	w := n.v4.writes()
	if !strings.HasPrefix(w[0], "append PODIAM ") || !strings.Contains(w[0], "10.77.0.2:9000") {
		t.Fatalf("first write %q, want the new rule appended", w[0])
	}
	for _, c := range w[1:] {
		if !strings.HasPrefix(c, "delete PODIAM ") {
			t.Fatalf("writes %q: want only deletions after the new rule", w)
		}
	}
	if !strings.Contains(logs.String(), "deleted stale rule") {
		t.Fatalf("no log line for the deleted rules:\n%s", logs)
	}
}

func TestFakeStaleRuleGoneMeanwhile(t *testing.T) {
	n := newFakeNode()
	r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+", "eth1"))
	mustInstall(t, r)
	r2, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	// Another agent deletes the stale rule between the listing and our
	// delete: that is success, not an error.
	n.v4.hook = func(op, chain string) error {
		if op == "delete" {
			n.v4.hook = nil
			_ = n.v4.run("-D", "PODIAM", "2")
		}
		return nil
	}
	mustInstall(t, r2)
	if got := listed(n.v4, "PODIAM"); len(got) != 1 {
		t.Fatalf("PODIAM = %q, want the one current rule", got)
	}
}

func TestFakeIPv6Rule(t *testing.T) {
	n := newFakeNode()
	f := &flushRecorder{}
	cfg := n.config(f, "cali+", "!eth0")
	cfg.Host6, cfg.NoIPv6 = "fd00::1", false
	r, _, _ := n.newRules(t, cfg)
	mustInstall(t, r)

	want := []string{
		dnat("fd00:ec2::254/128", "-i cali+", "[fd00::1]:8181"),
		dnat("fd00:ec2::254/128", "! -i eth0", "[fd00::1]:8181"),
	}
	if got := listed(n.v6, "PODIAM"); !slices.Equal(got, want) {
		t.Fatalf("ip6 PODIAM rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := n.v6.rules("PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -j PODIAM"}) {
		t.Fatalf("ip6 PREROUTING = %q, want the jump", got)
	}
	if got := f.calls(); !slices.Equal(got, []string{MetadataIPv4, MetadataIPv6}) {
		t.Fatalf("conntrack flushed for %q, want both metadata addresses", got)
	}
	mustRun(t, n.v6, "-D", "PREROUTING", "-j", "PODIAM")
	if err := r.Check(); !errors.Is(err, ErrMissing) || !strings.HasPrefix(err.Error(), "ipv6: ") {
		t.Fatalf("Check without the IPv6 jump = %v, want ipv6 ErrMissing", err)
	}
}

func TestFakeCheck(t *testing.T) {
	boom := errors.New("xtables lock held")
	tests := []struct {
		name    string
		install bool
		breakIt [][]string
		hook    func(op, chain string) error
		want    string
		missing bool
	}{
		{name: "nothing installed", missing: true, want: "ipv4: iptables interception missing: chain PODIAM does not exist"},
		{name: "jump deleted", install: true, missing: true, breakIt: [][]string{{"-D", "PREROUTING", "-j", "PODIAM"}},
			want: "ipv4: iptables interception missing: no jump from PREROUTING to PODIAM"},
		{name: "rule deleted", install: true, missing: true, breakIt: [][]string{{"-D", "PODIAM", "2"}},
			want: "ipv4: iptables interception missing: no rule for interface !eth0 in PODIAM"},
		{name: "chain flushed", install: true, missing: true, breakIt: [][]string{{"-F", "PODIAM"}},
			want: "ipv4: iptables interception missing: no rule for interface cali+ in PODIAM"},
		{name: "chain unreadable", install: true, want: "ipv4: checking chain PODIAM: xtables lock held",
			hook: func(op, _ string) error {
				if op == "chain-exists" {
					return boom
				}
				return nil
			}},
		{name: "jump unreadable", install: true, want: "ipv4: checking jump from PREROUTING: xtables lock held",
			hook: func(op, chain string) error {
				if op == "exists" && chain == "PREROUTING" {
					return boom
				}
				return nil
			}},
		{name: "rule unreadable", install: true, want: "ipv4: checking rule for interface cali+: xtables lock held",
			hook: func(op, chain string) error {
				if op == "exists" && chain == "PODIAM" {
					return boom
				}
				return nil
			}},
		{name: "intact", install: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode()
			r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+", "!eth0"))
			if tt.install {
				mustInstall(t, r)
			}
			for _, args := range tt.breakIt {
				mustRun(t, n.v4, args...)
			}
			n.v4.hook = tt.hook
			err := r.Check()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want || errors.Is(err, ErrMissing) != tt.missing {
				t.Fatalf("Check = %v, want %q (ErrMissing: %v)", err, tt.want, tt.missing)
			}
			if !tt.missing && !errors.Is(err, boom) {
				t.Fatalf("Check = %v, want it to wrap the iptables error", err)
			}
		})
	}
}

func TestFakeInstallErrors(t *testing.T) {
	boom := errors.New("boom")
	failOn := func(op, chain string) func(string, string) error {
		return func(o, c string) error {
			if o == op && c == chain {
				return boom
			}
			return nil
		}
	}
	tests := []struct {
		name string
		hook func(op, chain string) error
		want string
	}{
		{"chain unreadable", failOn("chain-exists", "PODIAM"), "ipv4: checking chain PODIAM: boom"},
		{"chain not created", failOn("new-chain", "PODIAM"), "ipv4: creating chain PODIAM: boom"},
		{"rule unreadable", failOn("exists", "PODIAM"), "ipv4: checking rule for interface cali+: boom"},
		{"rule not added", failOn("append", "PODIAM"), "ipv4: adding rule for interface cali+: boom"},
		{"chain not listed", failOn("list", "PODIAM"), "ipv4: listing chain PODIAM: boom"},
		{"jump unreadable", failOn("exists", "PREROUTING"), "ipv4: checking jump from PREROUTING: boom"},
		{"jump not inserted", failOn("insert", "PREROUTING"), "ipv4: inserting jump from PREROUTING: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode()
			f := &flushRecorder{}
			r, _, _ := n.newRules(t, n.config(f, "cali+"))
			n.v4.hook = tt.hook
			err := r.Install(context.Background())
			if !errors.Is(err, boom) || err.Error() != tt.want {
				t.Fatalf("Install = %v, want %q", err, tt.want)
			}
			if got := f.calls(); len(got) != 0 {
				t.Fatalf("conntrack flushed %q after a failed install", got)
			}
		})
	}

	t.Run("stale rule not deleted", func(t *testing.T) {
		n := newFakeNode()
		r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
		mustInstall(t, r)
		mustRun(t, n.v4, "-A", "PODIAM", "-j", "RETURN")
		n.v4.hook = failOn("delete", "PODIAM")
		if err := r.Install(context.Background()); !errors.Is(err, boom) || !strings.Contains(err.Error(), `ipv4: deleting stale rule "-j RETURN"`) {
			t.Fatalf("Install = %v, want the deletion error", err)
		}
	})
	t.Run("ipv6 failure names its family", func(t *testing.T) {
		n := newFakeNode()
		cfg := n.config(&flushRecorder{}, "cali+")
		cfg.Host6, cfg.NoIPv6 = "fd00::1", false
		r, _, _ := n.newRules(t, cfg)
		n.v6.hook = failOn("append", "PODIAM")
		if err := r.Install(context.Background()); !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "ipv6: ") {
			t.Fatalf("Install = %v, want an ipv6 error", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		n := newFakeNode()
		r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := r.Install(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Install = %v, want context.Canceled", err)
		}
		if len(n.v4.calls) != 0 {
			t.Fatalf("iptables used after cancellation: %q", n.v4.calls)
		}
	})
}

// Two agents starting together: the other one creates the chain between
// our check and our creation, which must not fail the install.
func TestFakeChainCreatedMeanwhile(t *testing.T) {
	n := newFakeNode()
	r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	n.v4.hook = func(op, chain string) error {
		if op == "new-chain" {
			n.v4.hook = nil
			_ = n.v4.run("-N", chain)
		}
		return nil
	}
	mustInstall(t, r)
	if err := r.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func TestFakeFailedFlushIsLoggedNotReturned(t *testing.T) {
	n := newFakeNode()
	f := &flushRecorder{err: ErrConntrackMissing}
	r, _, logs := n.newRules(t, n.config(f, "cali+"))
	mustInstall(t, r)
	if !strings.Contains(logs.String(), "conntrack entries for the metadata address not flushed") ||
		!strings.Contains(logs.String(), ErrConntrackMissing.Error()) {
		t.Fatalf("no warning for the failed flush:\n%s", logs)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// TestFakeRecheck drives one periodic check at a time: what is missing is
// restored, counted and flushed for its family only; an unreadable table
// is reinstalled and counted as a check error; a failed reinstall is
// counted as an install error.
func TestFakeRecheck(t *testing.T) {
	tests := []struct {
		name     string
		family   string
		breakIt  [][]string
		flushed  []string
		restores float64
	}{
		{name: "jump deleted", family: "ipv4", breakIt: [][]string{{"-D", "PREROUTING", "-j", "PODIAM"}},
			flushed: []string{MetadataIPv4}, restores: 1},
		{name: "rule deleted", family: "ipv4", breakIt: [][]string{{"-D", "PODIAM", "1"}},
			flushed: []string{MetadataIPv4}, restores: 1},
		{name: "chain deleted", family: "ipv4", breakIt: [][]string{
			{"-D", "PREROUTING", "-j", "PODIAM"}, {"-F", "PODIAM"}, {"-X", "PODIAM"},
		}, flushed: []string{MetadataIPv4}, restores: 1},
		{name: "nat table flushed", family: "ipv4", breakIt: [][]string{{"-F"}},
			flushed: []string{MetadataIPv4}, restores: 1},
		{name: "ipv6 rule deleted", family: "ipv6", breakIt: [][]string{{"-D", "PODIAM", "2"}},
			flushed: []string{MetadataIPv6}, restores: 1},
		{name: "intact", family: "ipv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode()
			f := &flushRecorder{}
			cfg := n.config(f, "cali+", "!eth0")
			cfg.Host6, cfg.NoIPv6 = "fd00::1", false
			r, reg, logs := n.newRules(t, cfg)
			mustInstall(t, r)
			want4, want6 := n.v4.sortedDump(), n.v6.sortedDump()
			for _, args := range tt.breakIt {
				mustRun(t, n.tables(tt.family), args...)
			}
			n.v4.resetCalls()
			n.v6.resetCalls()

			r.recheck(context.Background())
			if got := counterValue(t, reg, "podiam_agent_iptables_restores_total"); got != tt.restores {
				t.Fatalf("restores = %v, want %v", got, tt.restores)
			}
			// A restored rule is appended, so the order may differ.
			if got := n.v4.sortedDump(); got != want4 {
				t.Fatalf("iptables after recheck:\n%s\nwant:\n%s", got, want4)
			}
			if got := n.v6.sortedDump(); got != want6 {
				t.Fatalf("ip6tables after recheck:\n%s\nwant:\n%s", got, want6)
			}
			if got := f.calls()[2:]; !slices.Equal(got, tt.flushed) {
				t.Fatalf("conntrack flushes after the install %q, want %q", got, tt.flushed)
			}
			if tt.restores == 0 {
				if w := append(n.v4.writes(), n.v6.writes()...); len(w) != 0 {
					t.Fatalf("intact rules rewritten: %q", w)
				}
				return
			}
			if !strings.Contains(logs.String(), "metadata interception rule missing; restoring") {
				t.Fatalf("no warning for the missing rule:\n%s", logs)
			}
			for _, o := range []op{opCheck, opInstall} {
				if got := testutil.ToFloat64(r.metrics.errors.WithLabelValues(string(o))); got != 0 {
					t.Fatalf("errors{op=%s} = %v after a plain restore", o, got)
				}
			}
		})
	}

	t.Run("check error", func(t *testing.T) {
		n := newFakeNode()
		r, reg, logs := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
		mustInstall(t, r)
		failed := false
		n.v4.hook = func(op, chain string) error {
			if op == "exists" && chain == "PREROUTING" && !failed {
				failed = true
				return errors.New("lock held")
			}
			return nil
		}
		r.recheck(context.Background())
		if got := testutil.ToFloat64(r.metrics.errors.WithLabelValues("check")); got != 1 {
			t.Fatalf("errors{op=check} = %v, want 1", got)
		}
		// The reinstall found everything in place: not a restore.
		if got := counterValue(t, reg, "podiam_agent_iptables_restores_total"); got != 0 {
			t.Fatalf("restores = %v, want 0", got)
		}
		if !strings.Contains(logs.String(), "checking metadata interception rule failed; reinstalling") {
			t.Fatalf("no warning for the failed check:\n%s", logs)
		}
	})
	t.Run("install error", func(t *testing.T) {
		n := newFakeNode()
		r, _, logs := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
		mustInstall(t, r)
		mustRun(t, n.v4, "-D", "PREROUTING", "-j", "PODIAM")
		n.v4.hook = func(op, _ string) error {
			if op == "insert" {
				return errors.New("no permission")
			}
			return nil
		}
		r.recheck(context.Background())
		if got := testutil.ToFloat64(r.metrics.errors.WithLabelValues("install")); got != 1 {
			t.Fatalf("errors{op=install} = %v, want 1", got)
		}
		if !strings.Contains(logs.String(), "restoring metadata interception rule failed") {
			t.Fatalf("no error logged for the failed restore:\n%s", logs)
		}
	})
	t.Run("install cancelled", func(t *testing.T) {
		n := newFakeNode()
		r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
		mustInstall(t, r)
		mustRun(t, n.v4, "-D", "PREROUTING", "-j", "PODIAM")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		r.recheck(ctx)
		// Stopping is not a failure worth an alert.
		if got := testutil.ToFloat64(r.metrics.errors.WithLabelValues("install")); got != 0 {
			t.Fatalf("errors{op=install} = %v after cancellation, want 0", got)
		}
	})
}

func TestFakeRunRestoresUntilCancelled(t *testing.T) {
	n := newFakeNode()
	r, reg, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	mustInstall(t, r)
	mustRun(t, n.v4, "-D", "PREROUTING", "-j", "PODIAM")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, 10*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for counterValue(t, reg, "podiam_agent_iptables_restores_total") < 1 {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("not restored: Check = %v", r.Check())
		}
		time.Sleep(5 * time.Millisecond)
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
}

func TestFakeRunRejectsBadInterval(t *testing.T) {
	n := newFakeNode()
	r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	for _, d := range []time.Duration{0, -time.Second} {
		if err := r.Run(context.Background(), d); err == nil {
			t.Fatalf("Run with interval %v: want error", d)
		}
	}
}

func TestFakeRemove(t *testing.T) {
	n := newFakeNode()
	mustRun(t, n.v4, "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")
	cfg := n.config(&flushRecorder{}, "cali+", "!eth0")
	cfg.Host6, cfg.NoIPv6 = "fd00::1", false
	r, _, _ := n.newRules(t, cfg)
	mustInstall(t, r)
	// A second jump (say, from an older agent) must go too, or the chain
	// cannot be deleted.
	mustRun(t, n.v4, "-A", "PREROUTING", "-j", "PODIAM")

	if err := r.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		if dump := n.tables(fam).dump(); strings.Contains(dump, "PODIAM") {
			t.Fatalf("%s still mentions PODIAM after Remove:\n%s", fam, dump)
		}
	}
	if got := n.v4.rules("PREROUTING"); !slices.Equal(got, []string{"-A PREROUTING -s 10.9.9.9/32 -j RETURN"}) {
		t.Fatalf("PREROUTING = %q, want only the foreign rule", got)
	}
	if err := r.Check(); !errors.Is(err, ErrMissing) {
		t.Fatalf("Check after Remove = %v, want ErrMissing", err)
	}
	n.v4.resetCalls()
	if err := r.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if w := n.v4.writes(); len(w) != 0 {
		t.Fatalf("second Remove wrote %q", w)
	}
}

func TestFakeRemoveErrors(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		op, chai string
		want     string
	}{
		{"chain unreadable", "chain-exists", "PODIAM", "checking chain PODIAM: boom"},
		{"jump unreadable", "exists", "PREROUTING", "checking jump from PREROUTING: boom"},
		{"jump not deleted", "delete", "PREROUTING", "deleting jump from PREROUTING: boom"},
		{"chain not deleted", "clear-and-delete-chain", "PODIAM", "deleting chain PODIAM: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newFakeNode()
			cfg := n.config(&flushRecorder{}, "cali+")
			cfg.Host6, cfg.NoIPv6 = "fd00::1", false
			r, _, _ := n.newRules(t, cfg)
			mustInstall(t, r)
			n.v4.hook = func(op, chain string) error {
				if op == tt.op && chain == tt.chai {
					return boom
				}
				return nil
			}
			err := r.Remove()
			if !errors.Is(err, boom) || err.Error() != "ipv4: "+tt.want {
				t.Fatalf("Remove = %v, want %q", err, "ipv4: "+tt.want)
			}
			// One family's failure does not keep the other's rule.
			if strings.Contains(n.v6.dump(), "PODIAM") {
				t.Fatalf("ipv6 rule kept after an ipv4 failure:\n%s", n.v6.dump())
			}
		})
	}
}

// A jump re-added as fast as it is deleted does not keep Remove looping.
func TestFakeRemoveBoundedAgainstReAddedJump(t *testing.T) {
	n := newFakeNode()
	r, _, _ := n.newRules(t, n.config(&flushRecorder{}, "cali+"))
	mustInstall(t, r)
	n.v4.hook = func(op, chain string) error {
		if op == "delete" && chain == "PREROUTING" {
			_ = n.v4.run("-A", "PREROUTING", "-j", "PODIAM")
			_ = n.v4.run("-A", "PREROUTING", "-j", "PODIAM")
		}
		return nil
	}
	if err := r.Remove(); err == nil || !strings.Contains(err.Error(), "deleting chain PODIAM") {
		t.Fatalf("Remove = %v, want the chain deletion to fail while jumps remain", err)
	}
	if got := strings.Count(strings.Join(n.v4.calls, "\n"), "delete PREROUTING"); got != 100 {
		t.Fatalf("%d jump deletions, want the bound of 100", got)
	}
}

func TestFakeNewOpensEachFamilyOnce(t *testing.T) {
	n := newFakeNode()
	open, opened := fakeOpener(n.v4, n.v6)
	cfg := n.config(&flushRecorder{}, "cali+")
	cfg.Host6, cfg.NoIPv6 = "fd00::1", false
	cfg.IPTablesPath, cfg.IP6TablesPath = "/a/iptables", "/a/ip6tables"
	if _, err := newRules(cfg, nil, nil, open); err != nil {
		t.Fatal(err)
	}
	if want := []string{"IPv4:/a/iptables", "IPv6:/a/ip6tables"}; !slices.Equal(*opened, want) {
		t.Fatalf("opened %q, want %q", *opened, want)
	}

	open, _ = fakeOpener(n.v4, nil)
	if _, err := newRules(cfg, nil, nil, open); err == nil || !strings.Contains(err.Error(), "no tables for protocol") {
		t.Fatalf("newRules without ip6tables = %v, want the open error", err)
	}
}

func TestFakeNewRegistersMetricsOnce(t *testing.T) {
	n := newFakeNode()
	reg := prometheus.NewRegistry()
	open, _ := fakeOpener(n.v4, n.v6)
	cfg := n.config(&flushRecorder{}, "cali+")
	if _, err := newRules(cfg, reg, nil, open); err != nil {
		t.Fatal(err)
	}
	if _, err := newRules(cfg, reg, nil, open); err == nil {
		t.Fatal("second newRules on the same registry: want a registration error")
	}
	// Known label values are exported before the first event.
	if got := testutil.CollectAndCount(reg, "podiam_agent_iptables_errors_total"); got != 2 {
		t.Fatalf("%d errors series, want check and install", got)
	}
}

func TestIsNotExist(t *testing.T) {
	if !isNotExist(&fakeNotExist{"rule"}) {
		t.Fatal("fake not-exist error not recognised")
	}
	if isNotExist(errors.New("iptables: Resource temporarily unavailable.")) {
		t.Fatal("plain error taken for not-exist")
	}
}
func TestNewRejectsBadConfig(t *testing.T) {
	valid := func() Config {
		// Nonexistent binaries: a config that slipped through validation
		// fails with a lookup error, not ErrInvalidConfig.
		return Config{HostInterfaces: []string{"cali+"}, Host: "10.0.0.1", Port: 8181,
			IPTablesPath: "/nonexistent/iptables", IP6TablesPath: "/nonexistent/ip6tables"}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"interface too long", func(c *Config) { c.HostInterfaces = []string{"cali+", "averyveryverylongname0"} }, `host interface "averyveryverylongname0": longer than 15 characters`},
		{"interface with space", func(c *Config) { c.HostInterfaces = []string{"eth 0"} }, `host interface "eth 0"`},
		{"empty interface from a trailing comma", func(c *Config) { c.HostInterfaces = strings.Split("cali+,", ",") }, `host interface "": empty interface name`},
		{"no interfaces", func(c *Config) { c.HostInterfaces = nil }, "no host interfaces"},
		{"host not an address", func(c *Config) { c.Host = "node1" }, `host "node1" is not an IP address`},
		{"no host at all", func(c *Config) { c.Host = "" }, `neither an IPv4 nor an IPv6 host`},
		{"host garbage", func(c *Config) { c.Host = "not-an-ip" }, `host "not-an-ip" is not an IP address`},
		{"IPv6 host with IPv6 off", func(c *Config) { c.Host6, c.NoIPv6 = "fd00::1", true }, `with IPv6 disabled`},
		{"host IPv6", func(c *Config) { c.Host = "fd00::1" }, `host "fd00::1" is IPv6`},
		{"host loopback", func(c *Config) { c.Host = "127.0.0.1" }, "loopback"},
		{"host6 IPv4", func(c *Config) { c.Host6 = "10.0.0.1" }, `host6 "10.0.0.1" is not an IPv6 address`},
		{"port zero", func(c *Config) { c.Port = 0 }, "port 0 is not a TCP port"},
		{"port too big", func(c *Config) { c.Port = 70000 }, "port 70000"},
		{"chain builtin", func(c *Config) { c.Chain = "PREROUTING" }, "built-in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.modify(&cfg)
			_, err := New(cfg, nil, nil)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want ErrInvalidConfig containing %q", err, tt.want)
			}
		})
	}

	_, err := New(valid(), nil, nil)
	if err == nil || errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "iptables") {
		t.Fatalf("New with a missing binary = %v, want an iptables lookup error", err)
	}
}

func reject(dst, iface string) string {
	return "-A PODIAM -d " + dst + " " + iface + " -p tcp -m tcp --dport 80 -m comment --comment \"podiam:ID\" -j REJECT --reject-with tcp-reset"
}

// TestFakeIPv6ClosedByDefault: a node the agent serves over IPv4 only
// still gets an IPv6 rule, refusing fd00:ec2::254 at once in the filter
// table, so a pod with an IPv6 address never reaches the node's metadata;
// an IPv6-only node gets the mirror image.
func TestFakeIPv6ClosedByDefault(t *testing.T) {
	for _, tc := range []struct {
		name            string
		host, host6     string
		dnatFam, rejFam string
		dnat, rej       string
	}{
		{"IPv4 node", "10.77.0.1", "", "ipv4", "ipv6",
			dnat("169.254.169.254/32", "-i cali+", "10.77.0.1:8181"), reject("fd00:ec2::254/128", "-i cali+")},
		{"IPv6-only node", "", "fd00::1", "ipv6", "ipv4",
			dnat("fd00:ec2::254/128", "-i cali+", "[fd00::1]:8181"), reject("169.254.169.254/32", "-i cali+")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNode()
			f := &flushRecorder{}
			cfg := Config{HostInterfaces: []string{"cali+"}, Host: tc.host, Host6: tc.host6, Port: 8181, ConntrackFlush: f.flush}
			r, _, _ := n.newRules(t, cfg)
			mustInstall(t, r)
			d, j := n.tables(tc.dnatFam), n.tables(tc.rejFam)
			if got := listed(d, "PODIAM"); !slices.Equal(got, []string{tc.dnat}) {
				t.Errorf("%s nat PODIAM: %q, want %q", tc.dnatFam, got, tc.dnat)
			}
			if got := listed(j.filter, "PODIAM"); !slices.Equal(got, []string{tc.rej}) {
				t.Errorf("%s filter PODIAM: %q, want %q", tc.rejFam, got, tc.rej)
			}
			for _, hook := range []string{"INPUT", "FORWARD"} {
				if got := j.filter.rules(hook); !slices.Equal(got, []string{"-A " + hook + " -j PODIAM"}) {
					t.Errorf("%s filter %s: %q, want the jump", tc.rejFam, hook, got)
				}
			}
			if _, ok := j.chains["PODIAM"]; ok {
				t.Errorf("%s has a nat chain although the agent does not serve it", tc.rejFam)
			}
			if err := r.Check(); err != nil {
				t.Fatalf("Check: %v", err)
			}
			if got := f.calls(); len(got) != 2 {
				t.Errorf("conntrack flushed for %q, want both metadata addresses", got)
			}
			// A missing REJECT rule is reported and restored like a DNAT rule.
			mustRun(t, j.filter, "-F", "PODIAM")
			if err := r.Check(); !errors.Is(err, ErrMissing) {
				t.Fatalf("Check with the reject rule gone: %v, want ErrMissing", err)
			}
			mustInstall(t, r)
			if err := r.Check(); err != nil {
				t.Fatalf("Check after restore: %v", err)
			}
			if err := r.Remove(); err != nil {
				t.Fatal(err)
			}
			for _, hook := range []string{"INPUT", "FORWARD"} {
				if got := j.filter.rules(hook); len(got) != 0 {
					t.Errorf("after Remove, filter %s: %q", hook, got)
				}
			}
			if _, ok := j.filter.chains["PODIAM"]; ok {
				t.Error("after Remove the filter chain is still there")
			}
		})
	}
}

// TestFakeModeSwitch: an agent restarted with an IPv6 address replaces
// the IPv6 REJECT chain with the DNAT one, and the reverse; neither mode's
// chain lingers.
func TestFakeModeSwitch(t *testing.T) {
	n := newFakeNode()
	v4only := Config{HostInterfaces: []string{"cali+"}, Host: "10.77.0.1", Port: 8181, ConntrackFlush: (&flushRecorder{}).flush}
	r, _, _ := n.newRules(t, v4only)
	mustInstall(t, r)
	dual := v4only
	dual.Host6 = "fd00::1"
	r2, _, _ := n.newRules(t, dual)
	mustInstall(t, r2)
	if _, ok := n.v6.filter.chains["PODIAM"]; ok || len(n.v6.filter.rules("FORWARD")) != 0 {
		t.Fatalf("the IPv6 reject chain lingers after the switch to DNAT:\n%s", n.v6.filter.dump())
	}
	if got := listed(n.v6, "PODIAM"); len(got) != 1 || !strings.Contains(got[0], "-j DNAT") {
		t.Fatalf("IPv6 nat PODIAM: %q", got)
	}
	r3, _, _ := n.newRules(t, v4only)
	mustInstall(t, r3)
	if _, ok := n.v6.chains["PODIAM"]; ok || len(n.v6.rules("PREROUTING")) != 0 {
		t.Fatalf("the IPv6 DNAT chain lingers after the switch back:\n%s", n.v6.dump())
	}
	if err := r3.Check(); err != nil {
		t.Fatal(err)
	}
}
