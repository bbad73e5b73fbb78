// Package route tells which host-side interface the node routes a pod
// address through. A pod that takes over a deleted pod's address gets a new
// veth (a new ifindex, often a new name), so comparing this identity lets the
// agent tell a pod it holds cached credentials for from its successor while
// no server can say who is there.
package route

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
)

// ErrNoDevice means the route lookup named no output interface, e.g. for an
// unreachable or blackhole route.
var ErrNoDevice = errors.New("route names no device")

// Interface returns the interface the node routes ip through, as
// "name/ifindex" (e.g. "cali1234/17").
//
// The lookup execs `ip -o route get`, because the kernel's answer includes
// policy routing and every CNI's way of wiring pods, and no netlink library
// is linked into the agent. The ifindex comes from the interface table of
// the agent's own network namespace, the same one the route lookup used;
// that is what /sys/class/net/NAME/ifindex shows too, but without depending
// on which namespace /sys was mounted from.
func Interface(ctx context.Context, ip string) (string, error) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return "", fmt.Errorf("route: invalid address %q: %w", ip, err)
	}
	// addr.String() cannot start with '-', so it is never taken as an option.
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", "-o", "route", "get", addr.Unmap().String())
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("route: ip route get %s: %w: %s", addr, err, strings.TrimSpace(stderr.String()))
	}
	name, err := parseRouteGet(string(out))
	if err != nil {
		return "", fmt.Errorf("route: %s: %w", addr, err)
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return "", fmt.Errorf("route: interface %s of %s: %w", name, addr, err)
	}
	return fmt.Sprintf("%s/%d", name, ifc.Index), nil
}

// parseRouteGet returns the device named by the first route in the output
// of `ip -o route get`, e.g.
//
//	10.1.2.3 dev cali1234 src 10.0.0.1 uid 0 \    cache
//	10.9.9.9 via 10.0.0.254 dev eth0 src 10.0.0.1 uid 0 \    cache
//	local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \    cache <local>
func parseRouteGet(out string) (string, error) {
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		for i := 0; i+1 < len(fields); i++ {
			if fields[i] != "dev" {
				continue
			}
			name := fields[i+1]
			if !validName(name) {
				return "", fmt.Errorf("invalid device name %q in route %q", name, strings.TrimSpace(line))
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("%w: %q", ErrNoDevice, strings.TrimSpace(out))
}

// validName applies the kernel's rules for interface names (dev_valid_name),
// so that nothing else is ever looked up under that name.
func validName(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}
