// Package iptables installs and keeps the agent's interception rule: pod
// traffic to the metadata address is DNAT'ed to the agent, so pods reach
// podiam instead of the node's own IMDS and its role.
//
// The rules live in their own nat chain (PODIAM) with one jump from
// PREROUTING. The chain lets a changed configuration replace old rules
// without a moment with no rule, and the single jump is inserted at the top
// only when absent: CNI plugins such as Calico also manage PREROUTING, and
// fighting them for position would rewrite it on every check.
//
// Nothing here removes the rule on its own: while the agent restarts, pods
// must see "connection refused", never the node's role (fail closed).
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/prometheus/client_golang/prometheus"
)

// lockWaitSeconds bounds how long one iptables command waits for the xtables
// lock (go-iptables passes --wait): long enough for kube-proxy or Calico to
// finish a large restore, short enough that a stuck holder shows up as an
// error instead of a hung agent.
const lockWaitSeconds = 30

// Config says which traffic is intercepted and where it goes.
type Config struct {
	// HostInterfaces is KIAM's --host-interface split on commas: each value
	// is an iptables -i match ("cali+" is a wildcard, "!eth0" a negation),
	// one rule per value. Surrounding spaces are ignored.
	HostInterfaces []string
	// Host and Port are the IPv4 DNAT target (--host, --port). Without
	// Host, 169.254.169.254 is rejected instead (an IPv6-only node).
	Host string
	Port int
	// Host6 is the IPv6 DNAT target for fd00:ec2::254. Without it the
	// IPv6 metadata address is rejected: it is never left open.
	Host6 string
	// NoIPv6 leaves IPv6 alone, for a kernel with IPv6 disabled, where
	// nothing can reach the IPv6 address and ip6tables cannot run.
	NoIPv6 bool
	// Chain is the nat chain holding the rules; empty means DefaultChain.
	Chain string
	// IPTablesPath and IP6TablesPath override the binaries (tests run them
	// inside a network namespace); empty means looking them up in PATH.
	IPTablesPath, IP6TablesPath string
	// ConntrackFlush drops conntrack entries of connections to addr that
	// reach addr itself (not redirected), so a connection opened while no
	// rule was in place cannot keep bypassing it; connections already
	// redirected to an agent must be kept. nil means ExecConntrackFlush.
	ConntrackFlush func(ctx context.Context, addr string) error
}

// Rules installs and checks the interception rules of every configured
// address family. Its methods are safe for concurrent use.
type Rules struct {
	chain    string
	families []*family
	flush    func(ctx context.Context, addr string) error
	log      *slog.Logger
	metrics  metrics

	mu      sync.Mutex
	flushed bool
}

// family is the rule set of one address family.
type family struct {
	name     string // "ipv4" or "ipv6", for logs and errors
	ipt      tables
	metadata string
	// table holds the chain: nat where the agent serves the family (DNAT),
	// filter where it does not (REJECT). hooks are the built-in chains
	// that jump to it.
	table string
	hooks []string
	rules []rule
}

// The built-in chains that jump to the chain: PREROUTING for the DNAT
// rules (nat table); for the REJECT rules (filter table) INPUT, for a node
// that holds the address itself, and FORWARD, for one that routes it on to
// the real metadata service.
var (
	dnatHooks   = []string{prerouting}
	rejectHooks = []string{"INPUT", "FORWARD"}
)

// newFamily returns the rules of one address family: DNAT to host, or
// REJECT when host is not valid.
func newFamily(name string, ipt tables, metadata string, ifaces []iface, host netip.Addr, port int) *family {
	md := netip.MustParseAddr(metadata)
	if host.IsValid() {
		return &family{name: name, ipt: ipt, metadata: metadata, table: natTable, hooks: dnatHooks,
			rules: buildRules(md, ifaces, dnatTo(host, port))}
	}
	return &family{name: name, ipt: ipt, metadata: metadata, table: filterTable, hooks: rejectHooks,
		rules: buildRules(md, ifaces, rejectAction)}
}

// action says what the family's rules do, for logs.
func (f *family) action() string {
	if f.table == natTable {
		return "dnat"
	}
	return "reject"
}

// tables is what the rules need of one address family's iptables: the
// methods of go-iptables' *IPTables that Rules calls. It is an interface so
// that the rule logic can be tested against a fake without root or a
// network namespace, as kube-proxy tests its rules against a fake of its
// iptables Interface.
type tables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
	ClearAndDeleteChain(table, chain string) error
}

// openTables returns the tables of one address family, running the binary
// at path ("" looks it up in PATH).
type openTables func(proto goipt.Protocol, path string) (tables, error)

// New checks cfg, finds the iptables binaries and registers the metrics on
// reg. It changes no rules. reg may be nil (metrics not registered); log may
// be nil (discarded).
func New(cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Rules, error) {
	return newRules(cfg, reg, log, execTables)
}

// newRules is New with the iptables binaries replaceable.
func newRules(cfg Config, reg prometheus.Registerer, log *slog.Logger, open openTables) (*Rules, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chain := cfg.Chain
	if chain == "" {
		chain = DefaultChain
	}
	if err := checkChain(chain); err != nil {
		return nil, err
	}
	ifaces, err := parseInterfaces(cfg.HostInterfaces)
	if err != nil {
		return nil, err
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d is not a TCP port", ErrInvalidConfig, cfg.Port)
	}
	var host, host6 netip.Addr
	if cfg.Host != "" {
		if host, err = parseHost("host", cfg.Host, false); err != nil {
			return nil, err
		}
	}
	if cfg.Host6 != "" {
		if host6, err = parseHost("host6", cfg.Host6, true); err != nil {
			return nil, err
		}
		if cfg.NoIPv6 {
			return nil, fmt.Errorf("%w: an IPv6 host %s with IPv6 disabled", ErrInvalidConfig, cfg.Host6)
		}
	}
	if !host.IsValid() && !host6.IsValid() {
		return nil, fmt.Errorf("%w: neither an IPv4 nor an IPv6 host to redirect to", ErrInvalidConfig)
	}

	r := &Rules{chain: chain, flush: cfg.ConntrackFlush, log: log}
	if r.flush == nil {
		r.flush = ExecConntrackFlush
	}

	v4, err := open(goipt.ProtocolIPv4, cfg.IPTablesPath)
	if err != nil {
		return nil, err
	}
	r.families = append(r.families, newFamily("ipv4", v4, MetadataIPv4, ifaces, host, cfg.Port))
	if !cfg.NoIPv6 {
		v6, err := open(goipt.ProtocolIPv6, cfg.IP6TablesPath)
		if err != nil {
			return nil, err
		}
		r.families = append(r.families, newFamily("ipv6", v6, MetadataIPv6, ifaces, host6, cfg.Port))
	}

	if r.metrics, err = newMetrics(reg); err != nil {
		return nil, err
	}
	return r, nil
}

// execTables is the openTables of a running agent: go-iptables, which runs
// the binaries.
func execTables(proto goipt.Protocol, path string) (tables, error) {
	var (
		ipt *goipt.IPTables
		err error
	)
	// go-iptables' option type is unexported, so the calls cannot share a slice.
	if path != "" {
		ipt, err = goipt.New(goipt.IPFamily(proto), goipt.Timeout(lockWaitSeconds), goipt.Path(path))
	} else {
		ipt, err = goipt.New(goipt.IPFamily(proto), goipt.Timeout(lockWaitSeconds))
	}
	if err != nil {
		name := "iptables"
		if proto == goipt.ProtocolIPv6 {
			name = "ip6tables"
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ipt, nil
}

// Install makes the rules match the configuration: it creates the chain,
// adds missing rules before deleting stale ones (so traffic is never left
// without a rule), and inserts the jump from PREROUTING at position 1 when
// absent. Running it again changes nothing.
//
// After the first install, and after any install that had to add a rule or
// the jump, conntrack entries of connections that reach the real metadata
// address are flushed: a connection a pod opened to the real IMDS while no
// rule was in place would otherwise keep reaching it. Connections already
// redirected to an agent are kept (see ExecConntrackFlush). A failed flush
// is logged, not returned, since the rule itself is in place.
func (r *Rules) Install(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err := r.install(ctx)
	return err
}

func (r *Rules) install(ctx context.Context) (restored bool, err error) {
	var added []*family
	for _, f := range r.families {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n, err := r.installFamily(f)
		if err != nil {
			return false, fmt.Errorf("%s: %w", f.name, err)
		}
		if n > 0 {
			added = append(added, f)
		}
	}
	first := !r.flushed
	r.flushed = true
	for _, f := range r.families {
		if !first && !contains(added, f) {
			continue
		}
		if err := r.flush(ctx, f.metadata); err != nil {
			r.log.Warn("conntrack entries for the metadata address not flushed; connections opened before the rule may bypass it until they close",
				"family", f.name, "address", f.metadata, "error", err)
		}
	}
	return len(added) > 0, nil
}

func contains(fs []*family, f *family) bool {
	for _, g := range fs {
		if g == f {
			return true
		}
	}
	return false
}

// installFamily returns how many rules (the jump included) it had to add.
func (r *Rules) installFamily(f *family) (added int, err error) {
	exists, err := f.ipt.ChainExists(f.table, r.chain)
	if err != nil {
		return 0, fmt.Errorf("checking chain %s: %w", r.chain, err)
	}
	if !exists {
		if err := f.ipt.NewChain(f.table, r.chain); err != nil {
			// Another instance may have created it since we looked.
			if again, cerr := f.ipt.ChainExists(f.table, r.chain); cerr != nil || !again {
				return 0, fmt.Errorf("creating chain %s: %w", r.chain, err)
			}
		}
	}

	want := make(map[string]bool, len(f.rules))
	for _, rl := range f.rules {
		want[rl.id] = true
		ok, err := f.ipt.Exists(f.table, r.chain, rl.spec...)
		if err != nil {
			return added, fmt.Errorf("checking rule for interface %s: %w", rl.iface, err)
		}
		if ok {
			continue
		}
		if err := f.ipt.Append(f.table, r.chain, rl.spec...); err != nil {
			return added, fmt.Errorf("adding rule for interface %s: %w", rl.iface, err)
		}
		added++
		r.log.Info("added metadata rule", "family", f.name, "action", f.action(), "chain", r.chain, "interface", rl.iface.String())
	}

	listing, err := f.ipt.List(f.table, r.chain)
	if err != nil {
		return added, fmt.Errorf("listing chain %s: %w", r.chain, err)
	}
	stale, err := staleRules(listing, r.chain, want)
	if err != nil {
		return added, fmt.Errorf("reading chain %s: %w", r.chain, err)
	}
	for _, spec := range stale {
		if err := f.ipt.Delete(f.table, r.chain, spec...); err != nil && !isNotExist(err) {
			return added, fmt.Errorf("deleting stale rule %q: %w", strings.Join(spec, " "), err)
		}
		r.log.Info("deleted stale rule", "family", f.name, "chain", r.chain, "rule", strings.Join(spec, " "))
	}

	// The jumps go in last, so the chain is complete when traffic enters it.
	jump := []string{"-j", r.chain}
	for _, hook := range f.hooks {
		ok, err := f.ipt.Exists(f.table, hook, jump...)
		if err != nil {
			return added, fmt.Errorf("checking jump from %s: %w", hook, err)
		}
		if ok {
			continue
		}
		if err := f.ipt.Insert(f.table, hook, 1, jump...); err != nil {
			return added, fmt.Errorf("inserting jump from %s: %w", hook, err)
		}
		added++
		r.log.Info("inserted jump", "family", f.name, "table", f.table, "from", hook, "chain", r.chain)
	}
	// An agent that served the family before and no longer does, or the
	// reverse, leaves a chain in the other table; it must not linger.
	otherTable, otherHooks := natTable, dnatHooks
	if f.table == natTable {
		otherTable, otherHooks = filterTable, rejectHooks
	}
	if removed, err := r.removeChain(f.ipt, otherTable, otherHooks); err != nil {
		return added, fmt.Errorf("removing the %s chain of the other mode: %w", otherTable, err)
	} else if removed {
		r.log.Info("removed metadata rules of the other mode", "family", f.name, "table", otherTable, "chain", r.chain)
	}
	return added, nil
}

// Check reports whether the jump and every rule are present; the error
// wraps ErrMissing when something is absent, and is an iptables error when
// the tables could not be read.
func (r *Rules) Check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.families {
		if err := r.checkFamily(f); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

func (r *Rules) checkFamily(f *family) error {
	exists, err := f.ipt.ChainExists(f.table, r.chain)
	if err != nil {
		return fmt.Errorf("checking chain %s: %w", r.chain, err)
	}
	if !exists {
		return fmt.Errorf("%w: chain %s does not exist", ErrMissing, r.chain)
	}
	for _, hook := range f.hooks {
		ok, err := f.ipt.Exists(f.table, hook, "-j", r.chain)
		if err != nil {
			return fmt.Errorf("checking jump from %s: %w", hook, err)
		}
		if !ok {
			return fmt.Errorf("%w: no jump from %s to %s", ErrMissing, hook, r.chain)
		}
	}
	for _, rl := range f.rules {
		ok, err := f.ipt.Exists(f.table, r.chain, rl.spec...)
		if err != nil {
			return fmt.Errorf("checking rule for interface %s: %w", rl.iface, err)
		}
		if !ok {
			return fmt.Errorf("%w: no rule for interface %s in %s", ErrMissing, rl.iface, r.chain)
		}
	}
	return nil
}

// Run checks the rules every interval and installs them again when
// anything is missing, until ctx is done; it then returns nil and leaves the
// rules in place.
func (r *Rules) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("iptables check interval %v must be positive", interval)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		r.recheck(ctx)
	}
}

func (r *Rules) recheck(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var cerr error
	for _, f := range r.families {
		if cerr = r.checkFamily(f); cerr != nil {
			cerr = fmt.Errorf("%s: %w", f.name, cerr)
			break
		}
	}
	if cerr == nil {
		return
	}
	if errors.Is(cerr, ErrMissing) {
		r.log.Warn("metadata interception rule missing; restoring", "error", cerr)
	} else {
		r.metrics.failed(opCheck)
		r.log.Warn("checking metadata interception rule failed; reinstalling", "error", cerr)
	}
	restored, err := r.install(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.metrics.failed(opInstall)
			r.log.Error("restoring metadata interception rule failed", "error", err)
		}
		return
	}
	if restored {
		r.metrics.restores.Inc()
		r.log.Info("metadata interception rule restored")
	}
}

// Remove deletes the jump and the chain in every configured family. It is
// for --iptables-remove only: without the rule, pods reach the node's IMDS.
func (r *Rules) Remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, f := range r.families {
		if err := r.removeFamily(f); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Rules) removeFamily(f *family) error {
	removed, err := r.removeChain(f.ipt, f.table, f.hooks)
	if err != nil {
		return err
	}
	if removed {
		r.log.Info("removed metadata interception rule", "family", f.name, "chain", r.chain)
	}
	return nil
}

// removeChain deletes the jumps from hooks and the chain in table, and
// reports whether there was a chain.
func (r *Rules) removeChain(ipt tables, table string, hooks []string) (bool, error) {
	exists, err := ipt.ChainExists(table, r.chain)
	if err != nil {
		return false, fmt.Errorf("checking chain %s: %w", r.chain, err)
	}
	if !exists {
		// No chain means no jump: iptables refuses a jump to a missing chain.
		return false, nil
	}
	jump := []string{"-j", r.chain}
	for _, hook := range hooks {
		// Bounded, in case something re-adds the jump as fast as we delete it.
		for range 100 {
			ok, err := ipt.Exists(table, hook, jump...)
			if err != nil {
				return false, fmt.Errorf("checking jump from %s: %w", hook, err)
			}
			if !ok {
				break
			}
			if err := ipt.Delete(table, hook, jump...); err != nil && !isNotExist(err) {
				return false, fmt.Errorf("deleting jump from %s: %w", hook, err)
			}
		}
	}
	if err := ipt.ClearAndDeleteChain(table, r.chain); err != nil {
		return false, fmt.Errorf("deleting chain %s: %w", r.chain, err)
	}
	return true, nil
}

// isNotExist reports whether err says that the rule or chain is absent.
// go-iptables' *Error answers it; so does the fake the tests use.
func isNotExist(err error) bool {
	var e interface{ IsNotExist() bool }
	return errors.As(err, &e) && e.IsNotExist()
}
