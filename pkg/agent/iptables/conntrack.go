package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// ErrConntrackMissing is returned by ExecConntrackFlush when the conntrack
// tool is not installed.
var ErrConntrackMissing = errors.New("conntrack tool not found")

// conntrackTimeout bounds one flush: the table can be large on busy nodes,
// but a flush must not hold up the rule's install forever.
const conntrackTimeout = 30 * time.Second

// ExecConntrackFlush is the default Config.ConntrackFlush: it runs
// `conntrack -D -f <family> -d addr -r addr` in the agent's network
// namespace, deleting the connections to addr whose replies come from addr
// itself: those that reach the real metadata service. Connections the rule
// already sends to an agent have replies from the agent's address and are
// kept: deleting them would break pod requests in flight whenever an agent
// starts while another one serves (a rolling update), because the reply
// in flight would then leave the node without its address translated back.
// The tool exits non-zero when nothing matched; that is not an error.
func ExecConntrackFlush(ctx context.Context, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("conntrack flush: %q is not an IP address", addr)
	}
	path, err := exec.LookPath("conntrack")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConntrackMissing, err)
	}
	fam := "ipv4"
	if a.Unmap().Is6() {
		fam = "ipv6"
	}
	ctx, cancel := context.WithTimeout(ctx, conntrackTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-D", "-f", fam, "-d", addr, "--reply-src", addr)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if noneDeleted(out.String()) {
			return nil
		}
		return fmt.Errorf("conntrack -D -f %s -d %s: %w: %s", fam, addr, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// noneDeleted recognises conntrack's report that no entry matched, which
// older versions give with exit status 1.
func noneDeleted(output string) bool {
	return strings.Contains(output, "0 flow entries have been deleted")
}
