package iptables

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// The metadata addresses pods use. EC2 serves IMDS on both; Nitro instances
// answer the IPv6 one only when the instance enables it, but a pod on such an
// instance must never reach it either.
const (
	MetadataIPv4 = "169.254.169.254"
	MetadataIPv6 = "fd00:ec2::254"
)

// DefaultChain is the nat chain the rules live in, so that everything podiam
// owns can be found, replaced and removed without touching other rules.
const DefaultChain = "PODIAM"

const (
	natTable    = "nat"
	filterTable = "filter"
	prerouting  = "PREROUTING"
	// ifNameMax is IFNAMSIZ-1: iptables refuses longer names, and a longer
	// name can never match a real interface.
	ifNameMax = 15
	// chainNameMax is XT_EXTENSION_MAXNAMELEN-1.
	chainNameMax = 28
	// commentPrefix marks rules as podiam's; the hash after it identifies
	// the exact rule, so a rule left by an older configuration is told apart
	// from a current one without depending on how iptables prints rules.
	commentPrefix = "podiam:"
)

// ErrInvalidConfig is returned by New when the configuration cannot produce
// a correct interception rule.
var ErrInvalidConfig = errors.New("invalid iptables config")

// ErrMissing is returned by Check when the jump or a rule is absent.
var ErrMissing = errors.New("iptables interception missing")

// iface is one --host-interface value: iptables matches a trailing "+" as a
// wildcard itself, but "!" must become a separate negation argument (iptables
// would otherwise look for an interface literally named "!eth0").
type iface struct {
	name   string
	negate bool
}

func (i iface) String() string {
	if i.negate {
		return "!" + i.name
	}
	return i.name
}

// rule is one DNAT rule in our chain: id is the hash carried in its comment.
type rule struct {
	id    string
	iface iface
	spec  []string
}

// parseInterfaces checks every value so that a typo fails at start-up with
// a message naming it, rather than leaving pods uncovered by a rule that
// silently matches no interface.
func parseInterfaces(values []string) ([]iface, error) {
	var out []iface
	seen := map[iface]bool{}
	for _, v := range values {
		raw := v
		v = strings.TrimSpace(v)
		var it iface
		if strings.HasPrefix(v, "!") {
			it.negate = true
			v = strings.TrimSpace(v[1:])
		}
		it.name = v
		if err := checkIfName(v); err != nil {
			return nil, fmt.Errorf("%w: host interface %q: %w", ErrInvalidConfig, raw, err)
		}
		if seen[it] {
			continue
		}
		seen[it] = true
		out = append(out, it)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no host interfaces: without one the rule would not know which traffic comes from pods", ErrInvalidConfig)
	}
	return out, nil
}

// checkIfName applies the kernel's rules for device names (dev_valid_name)
// and iptables' length limit.
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > ifNameMax:
		return fmt.Errorf("longer than %d characters", ifNameMax)
	case name == "." || name == "..":
		return errors.New("not a valid interface name")
	}
	for _, r := range name {
		if unicode.IsSpace(r) || r == '/' || r == ':' || r == '!' || r == '"' || r == '\\' || !unicode.IsPrint(r) || r > unicode.MaxASCII {
			return fmt.Errorf("character %q is not allowed in an interface name", r)
		}
	}
	return nil
}

// parseHost returns the DNAT target address. Loopback is refused because
// the kernel drops packets DNAT'ed from another interface to 127/8 or ::1
// (unless route_localnet is set), so pods would time out instead of
// reaching the agent.
func parseHost(flag, s string, want6 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %s %q is not an IP address", ErrInvalidConfig, flag, s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: %s %q: a zone cannot be a DNAT target", ErrInvalidConfig, flag, s)
	}
	if !want6 {
		a = a.Unmap()
		if !a.Is4() {
			return netip.Addr{}, fmt.Errorf("%w: %s %q is IPv6: the rule for %s can only DNAT to an IPv4 address (the IPv6 rule has its own host)", ErrInvalidConfig, flag, s, MetadataIPv4)
		}
	} else if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%w: %s %q is not an IPv6 address", ErrInvalidConfig, flag, s)
	}
	switch {
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Addr{}, fmt.Errorf("%w: %s %q cannot be a DNAT target", ErrInvalidConfig, flag, s)
	case a.IsLoopback():
		return netip.Addr{}, fmt.Errorf("%w: %s %q is loopback: the kernel drops pod traffic DNAT'ed to loopback; use the node's address", ErrInvalidConfig, flag, s)
	}
	return a, nil
}

var builtinNames = map[string]bool{
	"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true,
	"ACCEPT": true, "DROP": true, "RETURN": true, "QUEUE": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "REDIRECT": true, "REJECT": true,
}

func checkChain(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty chain name", ErrInvalidConfig)
	case len(name) > chainNameMax:
		return fmt.Errorf("%w: chain %q is longer than %d characters", ErrInvalidConfig, name, chainNameMax)
	case strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!"):
		return fmt.Errorf("%w: chain %q cannot start with %q", ErrInvalidConfig, name, name[:1])
	case builtinNames[strings.ToUpper(name)]:
		return fmt.Errorf("%w: chain %q is a built-in chain or target", ErrInvalidConfig, name)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || r > unicode.MaxASCII || r == '"' || r == '\\' {
			return fmt.Errorf("%w: character %q is not allowed in chain %q", ErrInvalidConfig, r, name)
		}
	}
	return nil
}

// dnatTo is the action of a rule that redirects to the agent at target.
func dnatTo(target netip.Addr, port int) []string {
	return []string{"-j", "DNAT", "--to-destination", net.JoinHostPort(target.String(), strconv.Itoa(port))}
}

// rejectAction is the action of a rule that refuses the connection at
// once, where the agent does not serve the address family: a pod's SDK
// moves on immediately instead of waiting for a timeout, and never reaches
// the node's metadata service.
var rejectAction = []string{"-j", "REJECT", "--reject-with", "tcp-reset"}

// buildRules returns one rule per interface for one address family, with
// action (dnatTo or rejectAction). Arguments follow the order `iptables -S`
// prints them in, so a listing reads the same as the code.
func buildRules(metadata netip.Addr, ifaces []iface, action []string) []rule {
	dst := netip.PrefixFrom(metadata, metadata.BitLen()).String()
	out := make([]rule, 0, len(ifaces))
	for _, it := range ifaces {
		match := []string{"-d", dst}
		if it.negate {
			match = append(match, "!")
		}
		match = append(match, "-i", it.name, "-p", "tcp", "-m", "tcp", "--dport", "80")

		sum := sha256.Sum256([]byte(strings.Join(append(append([]string{}, match...), action...), "\x00")))
		id := hex.EncodeToString(sum[:6])

		spec := append(append([]string{}, match...), "-m", "comment", "--comment", commentPrefix+id)
		spec = append(spec, action...)
		out = append(out, rule{id: id, iface: it, spec: spec})
	}
	return out
}

var commentRE = regexp.MustCompile(regexp.QuoteMeta(commentPrefix) + `([0-9a-f]{12})\b`)

// staleRules reads `iptables -t nat -S chain` output and returns, as
// arguments for `iptables -D chain`, every rule that is not one of want:
// rules from an older configuration, rules someone else put in our chain,
// and duplicates of a wanted rule.
func staleRules(listing []string, chain string, want map[string]bool) ([][]string, error) {
	var stale [][]string
	seen := map[string]bool{}
	for _, line := range listing {
		args, err := splitRule(line)
		if err != nil {
			return nil, fmt.Errorf("parsing %q: %w", line, err)
		}
		if len(args) < 2 || args[0] != "-A" || args[1] != chain {
			continue
		}
		if m := commentRE.FindStringSubmatch(line); m != nil && want[m[1]] && !seen[m[1]] {
			seen[m[1]] = true
			continue
		}
		stale = append(stale, args[2:])
	}
	return stale, nil
}

// splitRule splits one line of iptables-save format into arguments:
// iptables quotes values (comments) with double quotes and escapes quotes
// and backslashes inside them with a backslash.
func splitRule(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inWord  bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case inQuote && c == '"':
			inQuote = false
		case inQuote:
			cur.WriteByte(c)
		case c == '"':
			inQuote, inWord = true, true
		case c == ' ' || c == '\t':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
