package sandbox

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestSame(t *testing.T) {
	for _, tc := range []struct {
		a, b ID
		same bool
	}{
		{ID{5, "aa:bb:cc:dd:ee:01"}, ID{5, "aa:bb:cc:dd:ee:01"}, true},
		{ID{5, "aa:bb:cc:dd:ee:01"}, ID{5, "aa:bb:cc:dd:ee:02"}, false}, // bridge: new pod, new MAC
		{ID{5, "aa:bb:cc:dd:ee:01"}, ID{6, "aa:bb:cc:dd:ee:01"}, false}, // routed: new veth
		{ID{5, ""}, ID{5, "aa:bb:cc:dd:ee:01"}, true},
		{ID{5, ""}, ID{6, ""}, false},
	} {
		if got := tc.a.Same(tc.b); got != tc.same {
			t.Errorf("%v.Same(%v) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

func TestRouteLink(t *testing.T) {
	if _, err := routeLink(nil); err != ErrNoRoute {
		t.Errorf("no routes: %v", err)
	}
	if _, err := routeLink([]netlink.Route{{Type: unix.RTN_BLACKHOLE}}); err != ErrNoRoute {
		t.Errorf("blackhole: %v", err)
	}
	if idx, err := routeLink([]netlink.Route{{LinkIndex: 17}}); idx != 17 || err != nil {
		t.Errorf("routed: %d %v", idx, err)
	}
}

func TestNeighMAC(t *testing.T) {
	ip := netip.MustParseAddr("10.244.0.5")
	neighs := []netlink.Neigh{
		{IP: net.ParseIP("10.244.0.6"), HardwareAddr: mac("0a:00:00:00:00:06"), State: netlink.NUD_REACHABLE},
		{IP: net.ParseIP("10.244.0.5"), State: netlink.NUD_INCOMPLETE},
		{IP: net.ParseIP("10.244.0.5"), HardwareAddr: mac("0a:00:00:00:00:05"), State: netlink.NUD_STALE},
	}
	if got := neighMAC(neighs, ip); got != "0a:00:00:00:00:05" {
		t.Errorf("MAC = %q", got)
	}
	if got := neighMAC(neighs[:2], ip); got != "" {
		t.Errorf("only an incomplete entry: %q, want none", got)
	}
	v6 := []netlink.Neigh{{IP: net.ParseIP("fd00::5"), HardwareAddr: mac("0a:00:00:00:00:05"), State: netlink.NUD_REACHABLE}}
	if got := neighMAC(v6, netip.MustParseAddr("fd00::5")); got != "0a:00:00:00:00:05" {
		t.Errorf("IPv6 MAC = %q", got)
	}
}

func TestChanges(t *testing.T) {
	del := netlink.LinkUpdate{Header: unix.NlMsghdr{Type: unix.RTM_DELLINK}, Link: &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 9}}}
	if c, ok := linkChange(del); !ok || c.LinkGone != 9 {
		t.Errorf("link deleted: %+v %v", c, ok)
	}
	add := del
	add.Header.Type = unix.RTM_NEWLINK
	if _, ok := linkChange(add); ok {
		t.Error("a new link is not a change of identity")
	}
	n := netlink.NeighUpdate{Type: unix.RTM_NEWNEIGH, Neigh: netlink.Neigh{LinkIndex: 4, IP: net.ParseIP("10.244.0.5"), HardwareAddr: mac("0a:00:00:00:00:07"), State: netlink.NUD_REACHABLE}}
	c, ok := neighChange(n)
	if !ok || c.Neighbour != netip.MustParseAddr("10.244.0.5") || c.LinkIndex != 4 || c.MAC != "0a:00:00:00:00:07" {
		t.Errorf("neighbour changed: %+v %v", c, ok)
	}
	gone := n
	gone.Type = unix.RTM_DELNEIGH
	if _, ok := neighChange(gone); ok {
		t.Error("a deleted neighbour entry is not a change of identity")
	}
	failed := n
	failed.State, failed.HardwareAddr = netlink.NUD_FAILED, nil
	if _, ok := neighChange(failed); ok {
		t.Error("a failed entry carries no identity")
	}
}
