package sandbox

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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

// neighMsg is the message the kernel sends for a neighbour entry.
func neighMsg(typ uint16, idx int, ip string, state int, hw net.HardwareAddr) syscall.NetlinkMessage {
	family := unix.AF_INET
	addr := net.ParseIP(ip).To4()
	if addr == nil {
		family, addr = unix.AF_INET6, net.ParseIP(ip)
	}
	b := (&netlink.Ndmsg{Family: uint8(family), Index: uint32(idx), State: uint16(state)}).Serialize()
	b = append(b, nl.NewRtAttr(unix.NDA_DST, addr).Serialize()...)
	if hw != nil {
		b = append(b, nl.NewRtAttr(unix.NDA_LLADDR, hw).Serialize()...)
	}
	return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ}, Data: b}
}

func TestChangeOf(t *testing.T) {
	del := syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.RTM_DELLINK}}
	info := nl.NewIfInfomsg(unix.AF_UNSPEC)
	info.Index = 9
	del.Data = info.Serialize()
	if c, ok := changeOf(del); !ok || c.LinkGone != 9 {
		t.Errorf("link deleted: %+v %v", c, ok)
	}
	add := del
	add.Header.Type = unix.RTM_NEWLINK
	if _, ok := changeOf(add); ok {
		t.Error("a new link is not a change of identity")
	}
	if _, ok := changeOf(syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.RTM_DELLINK}, Data: []byte{1, 2}}); ok {
		t.Error("a truncated message is a change")
	}

	n := neighMsg(unix.RTM_NEWNEIGH, 4, "10.244.0.5", netlink.NUD_REACHABLE, mac("0a:00:00:00:00:07"))
	c, ok := changeOf(n)
	if !ok || c.Neighbour != netip.MustParseAddr("10.244.0.5") || c.LinkIndex != 4 || c.MAC != "0a:00:00:00:00:07" {
		t.Errorf("neighbour changed: %+v %v", c, ok)
	}
	v6 := neighMsg(unix.RTM_NEWNEIGH, 4, "fd00::5", netlink.NUD_STALE, mac("0a:00:00:00:00:08"))
	if c, ok := changeOf(v6); !ok || c.Neighbour != netip.MustParseAddr("fd00::5") || c.MAC != "0a:00:00:00:00:08" {
		t.Errorf("IPv6 neighbour changed: %+v %v", c, ok)
	}
	if _, ok := changeOf(neighMsg(unix.RTM_DELNEIGH, 4, "10.244.0.5", netlink.NUD_REACHABLE, mac("0a:00:00:00:00:07"))); ok {
		t.Error("a deleted neighbour entry is not a change of identity")
	}
	if _, ok := changeOf(neighMsg(unix.RTM_NEWNEIGH, 4, "10.244.0.5", netlink.NUD_FAILED, nil)); ok {
		t.Error("a failed entry carries no identity")
	}
	if _, ok := changeOf(syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.RTM_NEWNEIGH}, Data: []byte{2, 0, 0}}); ok {
		t.Error("a truncated neighbour message is a change")
	}
}
