package iptables

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	goipt "github.com/coreos/go-iptables/iptables"
)

// fakeTables is one address family's nat table in memory, behaving like
// iptables where Rules depends on it: rules match by exact arguments, a jump
// needs its target chain, a referenced chain cannot be deleted, and deleting
// what is absent fails with an error that isNotExist recognises. It records
// every call, so tests can check what was written and in which order.
type fakeTables struct {
	table  string      // "nat" or "filter"
	filter *fakeTables // the family's filter table, for a nat fake
	mu     sync.Mutex
	chains map[string][][]string // chain -> its rules' arguments, in order
	user   []string              // user chains in creation order, for List
	calls  []string
	// hook, if set, runs before every call without the lock held; an error
	// from it fails the call. It may change the tables through the fake's
	// own methods (another iptables user acting meanwhile).
	hook func(op, chain string) error
}

var builtinChains = []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"}

// newFakeTables returns one address family's nat table, with its filter
// table beside it (methods called for the filter table go there).
func newFakeTables() *fakeTables {
	f := newFakeTable(natTable, "PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
	f.filter = newFakeTable(filterTable, "INPUT", "FORWARD", "OUTPUT")
	return f
}

func newFakeTable(table string, builtins ...string) *fakeTables {
	f := &fakeTables{table: table, chains: map[string][][]string{}}
	for _, c := range builtins {
		f.chains[c] = nil
	}
	return f
}

// of returns the fake that holds table.
func (f *fakeTables) of(table string) *fakeTables {
	if table == filterTable && f.filter != nil {
		return f.filter
	}
	return f
}

// fakeOpener returns an openTables serving v4 and v6 (nil: the family
// cannot be opened) and records the paths it was asked for.
func fakeOpener(v4, v6 *fakeTables) (openTables, *[]string) {
	var opened []string
	return func(proto goipt.Protocol, path string) (tables, error) {
		f, name := v4, "IPv4"
		if proto == goipt.ProtocolIPv6 {
			f, name = v6, "IPv6"
		}
		opened = append(opened, name+":"+path)
		if f == nil {
			return nil, fmt.Errorf("fake: no tables for protocol %v", proto)
		}
		return f, nil
	}, &opened
}

// fakeNotExist is the fake's "no such rule or chain", as iptables' exit
// status 1 with "does a matching rule exist" is for go-iptables.
type fakeNotExist struct{ what string }

func (e *fakeNotExist) Error() string    { return "fake iptables: " + e.what + " does not exist" }
func (e *fakeNotExist) IsNotExist() bool { return true }

// enter runs the hook and records the call; on success it returns with f.mu
// held, for the caller to release.
func (f *fakeTables) enter(op, table, chain string, args ...string) error {
	if f.hook != nil {
		if err := f.hook(op, chain); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, strings.TrimSpace(op+" "+chain+" "+strings.Join(args, " ")))
	if table != f.table {
		f.mu.Unlock()
		return fmt.Errorf("fake iptables: table %q not supported", table)
	}
	return nil
}

func (f *fakeTables) ChainExists(table, chain string) (bool, error) {
	if g := f.of(table); g != f {
		return g.ChainExists(table, chain)
	}
	if err := f.enter("chain-exists", table, chain); err != nil {
		return false, err
	}
	defer f.mu.Unlock()
	_, ok := f.chains[chain]
	return ok, nil
}

func (f *fakeTables) NewChain(table, chain string) error {
	if g := f.of(table); g != f {
		return g.NewChain(table, chain)
	}
	if err := f.enter("new-chain", table, chain); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if _, ok := f.chains[chain]; ok {
		return errors.New("fake iptables: chain already exists")
	}
	f.chains[chain] = nil
	f.user = append(f.user, chain)
	return nil
}

// checkTarget refuses a jump to a chain that does not exist, as iptables
// does. f.mu must be held.
func (f *fakeTables) checkTarget(spec []string) error {
	i := slices.Index(spec, "-j")
	if i < 0 || i+1 >= len(spec) {
		return nil
	}
	target := spec[i+1]
	if builtinNames[target] {
		return nil
	}
	if _, ok := f.chains[target]; !ok {
		return errors.New("fake iptables: couldn't load target " + target)
	}
	return nil
}

func (f *fakeTables) Exists(table, chain string, spec ...string) (bool, error) {
	if g := f.of(table); g != f {
		return g.Exists(table, chain, spec...)
	}
	if err := f.enter("exists", table, chain, spec...); err != nil {
		return false, err
	}
	defer f.mu.Unlock()
	rules, ok := f.chains[chain]
	if !ok {
		return false, &fakeNotExist{"chain " + chain}
	}
	if err := f.checkTarget(spec); err != nil {
		return false, err
	}
	return slices.ContainsFunc(rules, func(r []string) bool { return slices.Equal(r, spec) }), nil
}

func (f *fakeTables) Append(table, chain string, spec ...string) error {
	if g := f.of(table); g != f {
		return g.Append(table, chain, spec...)
	}
	if err := f.enter("append", table, chain, spec...); err != nil {
		return err
	}
	defer f.mu.Unlock()
	return f.insertLocked(chain, -1, spec)
}

func (f *fakeTables) Insert(table, chain string, pos int, spec ...string) error {
	if g := f.of(table); g != f {
		return g.Insert(table, chain, pos, spec...)
	}
	if err := f.enter("insert", table, chain, append([]string{strconv.Itoa(pos)}, spec...)...); err != nil {
		return err
	}
	defer f.mu.Unlock()
	return f.insertLocked(chain, pos, spec)
}

// insertLocked puts spec at 1-based position pos, or last for pos -1.
func (f *fakeTables) insertLocked(chain string, pos int, spec []string) error {
	rules, ok := f.chains[chain]
	if !ok {
		return &fakeNotExist{"chain " + chain}
	}
	if err := f.checkTarget(spec); err != nil {
		return err
	}
	if pos == -1 {
		pos = len(rules) + 1
	}
	if pos < 1 || pos > len(rules)+1 {
		return fmt.Errorf("fake iptables: index of insertion %d too big", pos)
	}
	f.chains[chain] = slices.Insert(rules, pos-1, slices.Clone(spec))
	return nil
}

func (f *fakeTables) Delete(table, chain string, spec ...string) error {
	if g := f.of(table); g != f {
		return g.Delete(table, chain, spec...)
	}
	if err := f.enter("delete", table, chain, spec...); err != nil {
		return err
	}
	defer f.mu.Unlock()
	rules, ok := f.chains[chain]
	if !ok {
		return &fakeNotExist{"chain " + chain}
	}
	i := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(r, spec) })
	if i < 0 {
		return &fakeNotExist{"rule " + strings.Join(spec, " ")}
	}
	f.chains[chain] = slices.Delete(rules, i, i+1)
	return nil
}

// List prints the chain as `iptables -t nat -S chain` does, comments in
// double quotes.
func (f *fakeTables) List(table, chain string) ([]string, error) {
	if g := f.of(table); g != f {
		return g.List(table, chain)
	}
	if err := f.enter("list", table, chain); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	rules, ok := f.chains[chain]
	if !ok {
		return nil, &fakeNotExist{"chain " + chain}
	}
	out := []string{"-N " + chain}
	if slices.Contains(builtinChains, chain) {
		out[0] = "-P " + chain + " ACCEPT"
	}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+quoteRule(r))
	}
	return out, nil
}

func quoteRule(spec []string) string {
	q := make([]string, len(spec))
	for i, a := range spec {
		if (i > 0 && spec[i-1] == "--comment") || strings.ContainsAny(a, " \"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

func (f *fakeTables) ClearAndDeleteChain(table, chain string) error {
	if g := f.of(table); g != f {
		return g.ClearAndDeleteChain(table, chain)
	}
	if err := f.enter("clear-and-delete-chain", table, chain); err != nil {
		return err
	}
	defer f.mu.Unlock()
	if _, ok := f.chains[chain]; !ok {
		return nil // go-iptables returns nil for an absent chain
	}
	if slices.Contains(builtinChains, chain) {
		return errors.New("fake iptables: cannot delete a built-in chain")
	}
	for c, rules := range f.chains {
		for _, r := range rules {
			if i := slices.Index(r, "-j"); i >= 0 && i+1 < len(r) && r[i+1] == chain {
				return fmt.Errorf("fake iptables: chain %s is referenced from %s", chain, c)
			}
		}
	}
	delete(f.chains, chain)
	f.user = slices.DeleteFunc(f.user, func(c string) bool { return c == chain })
	return nil
}

// rules returns the chain's rules as List prints them, without the -N or
// -P line, or nil if the chain does not exist.
func (f *fakeTables) rules(chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.chains[chain] {
		out = append(out, "-A "+chain+" "+quoteRule(r))
	}
	return out
}

// dump prints the whole table, for comparing states.
func (f *fakeTables) dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, c := range append(slices.Clone(builtinChains), f.user...) {
		fmt.Fprintf(&b, "chain %s\n", c)
		for _, r := range f.chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, quoteRule(r))
		}
	}
	return b.String()
}

// sortedDump is dump with the lines sorted, for states where only the set
// of rules matters.
func (f *fakeTables) sortedDump() string {
	l := strings.Split(f.dump(), "\n")
	slices.Sort(l)
	return strings.Join(l, "\n")
}

// writes returns the calls that changed or could have changed the tables
// since the last reset, in order.
func (f *fakeTables) writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		op, _, _ := strings.Cut(c, " ")
		switch op {
		case "new-chain", "append", "insert", "delete", "clear-and-delete-chain":
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeTables) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// run applies an iptables-style change directly, as another program on the
// node would: "-D chain spec...", "-A chain spec...", "-I chain pos spec...",
// "-F chain", "-X chain", "-N chain", "-F" (the whole table).
func (f *fakeTables) run(args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case len(args) == 1 && args[0] == "-F":
		for c := range f.chains {
			f.chains[c] = nil
		}
		return nil
	case len(args) < 2:
		return fmt.Errorf("fake iptables: bad command %q", args)
	}
	chain, rest := args[1], args[2:]
	switch args[0] {
	case "-A":
		return f.insertLocked(chain, -1, rest)
	case "-I":
		pos, err := strconv.Atoi(rest[0])
		if err != nil {
			return err
		}
		return f.insertLocked(chain, pos, rest[1:])
	case "-D":
		rules := f.chains[chain]
		if n, err := strconv.Atoi(rest[0]); err == nil && len(rest) == 1 {
			if n < 1 || n > len(rules) {
				return fmt.Errorf("fake iptables: no rule %d in %s", n, chain)
			}
			f.chains[chain] = slices.Delete(rules, n-1, n)
			return nil
		}
		i := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(r, rest) })
		if i < 0 {
			return &fakeNotExist{"rule"}
		}
		f.chains[chain] = slices.Delete(rules, i, i+1)
		return nil
	case "-F":
		if _, ok := f.chains[chain]; !ok {
			return &fakeNotExist{"chain " + chain}
		}
		f.chains[chain] = nil
		return nil
	case "-X":
		if len(f.chains[chain]) > 0 {
			return errors.New("fake iptables: chain not empty")
		}
		delete(f.chains, chain)
		f.user = slices.DeleteFunc(f.user, func(c string) bool { return c == chain })
		return nil
	case "-N":
		f.chains[chain] = nil
		f.user = append(f.user, chain)
		return nil
	}
	return fmt.Errorf("fake iptables: bad command %q", args)
}
