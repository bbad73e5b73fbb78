// Package sandbox tells, from the node's side, which network sandbox holds
// a pod address: the host-side interface the node routes the address
// through and the MAC address its neighbour table holds for it.
//
// The agent binds the credentials it caches for an address to this
// identity. A pod that takes over a deleted pod's address gets a new
// sandbox: on routed CNIs (Calico, Cilium, AWS VPC CNI) a new veth with a
// new interface index; on bridge CNIs (cni0, Flannel, weave) every pod
// sits behind the same bridge, and only its MAC address tells it apart.
//
// Everything is read over netlink (github.com/vishvananda/netlink), in the
// agent's own network namespace: no binary is executed, so the agent needs
// no `ip` in its image, and a lookup costs microseconds rather than a fork.
// Watch streams the link and neighbour changes that end an identity, so
// that the agent forgets credentials the moment their sandbox is gone
// instead of checking on every request.
package sandbox

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ID identifies the sandbox holding a pod address, as the node sees it.
type ID struct {
	// LinkIndex is the host-side interface the node routes the address
	// through.
	LinkIndex int
	// MAC is the address's link-layer address in the node's neighbour
	// table on that interface, lower-case colon hex; empty when the table
	// has none for it (layer-3 devices, or no traffic yet).
	MAC string
}

// String is for logs: "17" or "17/0a:58:0a:f4:00:05".
func (id ID) String() string {
	if id.MAC == "" {
		return strconv.Itoa(id.LinkIndex)
	}
	return strconv.Itoa(id.LinkIndex) + "/" + id.MAC
}

// Same reports whether other is the same sandbox. A MAC address known on
// both sides must match; a missing one cannot tell two pods apart, so the
// interface alone decides then.
func (id ID) Same(other ID) bool {
	if id.LinkIndex != other.LinkIndex {
		return false
	}
	return id.MAC == "" || other.MAC == "" || id.MAC == other.MAC
}

// dumpAttempts bounds the neighbour dumps Identify tries when the table
// changes under one.
const dumpAttempts = 5

// ErrNoRoute means the node has no route to the address through an
// interface (unreachable, blackhole, or prohibited).
var ErrNoRoute = errors.New("sandbox: no route through an interface")

// Identify returns the sandbox that holds ip now.
func Identify(ip netip.Addr) (ID, error) {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return ID{}, errors.New("sandbox: invalid address")
	}
	routes, err := netlink.RouteGet(net.IP(ip.AsSlice()))
	if err != nil {
		return ID{}, fmt.Errorf("sandbox: route to %s: %w", ip, err)
	}
	idx, err := routeLink(routes)
	if err != nil {
		return ID{}, fmt.Errorf("sandbox: route to %s: %w", ip, err)
	}
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	// A dump that the kernel's table changed under is cut short; on a
	// busy node (pods starting and stopping) that happens, and the next
	// dump is whole.
	var neighs []netlink.Neigh
	for attempt := 0; ; attempt++ {
		neighs, err = netlink.NeighList(idx, family)
		if !errors.Is(err, netlink.ErrDumpInterrupted) || attempt == dumpAttempts-1 {
			break
		}
	}
	if err != nil {
		return ID{}, fmt.Errorf("sandbox: neighbours on interface %d: %w", idx, err)
	}
	return ID{LinkIndex: idx, MAC: neighMAC(neighs, ip)}, nil
}

// routeLink returns the output interface of the first route.
func routeLink(routes []netlink.Route) (int, error) {
	for _, r := range routes {
		if r.LinkIndex > 0 {
			return r.LinkIndex, nil
		}
	}
	return 0, ErrNoRoute
}

// neighMAC returns the link-layer address the table holds for ip, "" if it
// holds none that is usable (an entry still resolving or failed carries no
// address of the pod).
func neighMAC(neighs []netlink.Neigh, ip netip.Addr) string {
	for _, n := range neighs {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok || a.Unmap() != ip {
			continue
		}
		if mac := usableMAC(n); mac != "" {
			return mac
		}
	}
	return ""
}

func usableMAC(n netlink.Neigh) string {
	if n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) != 0 || len(n.HardwareAddr) == 0 {
		return ""
	}
	return n.HardwareAddr.String()
}
