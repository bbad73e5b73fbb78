//go:build privileged

package sandbox

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs f on a thread switched into a fresh network namespace
// and returns that namespace, so the test never touches the host's links.
func inNewNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("current netns (root needed): %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new netns (root needed): %v", err)
	}
	t.Cleanup(func() {
		_ = netns.Set(orig)
		_ = orig.Close()
		_ = ns.Close()
		runtime.UnlockOSThread()
	})
	return ns
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// addPod makes a veth whose host side is routed to ip (Calico style) and
// gives its far side the MAC a pod would have, with a static neighbour
// entry as the node would learn by ARP.
func addPod(t *testing.T, host string, ip netip.Addr, podMAC string) netlink.Link {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: host + "p"}
	must(t, netlink.LinkAdd(veth))
	link, err := netlink.LinkByName(host)
	must(t, err)
	must(t, netlink.LinkSetUp(link))
	peer, err := netlink.LinkByName(host + "p")
	must(t, err)
	must(t, netlink.LinkSetUp(peer))
	bits := 32
	if ip.Is6() {
		bits = 128
	}
	must(t, netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, bits)}}))
	setNeigh(t, link.Attrs().Index, ip, podMAC)
	return link
}

func setNeigh(t *testing.T, idx int, ip netip.Addr, m string) {
	t.Helper()
	must(t, netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, IP: ip.AsSlice(), HardwareAddr: mac(m), State: netlink.NUD_REACHABLE}))
}

// TestIdentifyAndWatch runs the real netlink calls: a routed pod, its
// successor on a new veth, a new MAC behind the same interface (bridge
// CNIs), and the events that end each identity.
func TestIdentifyAndWatch(t *testing.T) {
	ns := inNewNetns(t)
	ip := netip.MustParseAddr("10.244.0.5")
	link := addPod(t, "podv1", ip, "0a:00:00:00:00:01")

	id, err := Identify(ip)
	must(t, err)
	if id.LinkIndex != link.Attrs().Index || id.MAC != "0a:00:00:00:00:01" {
		t.Fatalf("Identify = %v, want %d/0a:00:00:00:00:01", id, link.Attrs().Index)
	}
	if _, err := Identify(netip.MustParseAddr("192.0.2.9")); err == nil {
		t.Error("an address with no route was identified")
	}

	changes := make(chan Change, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- Watch(ctx, func(c Change) { changes <- c })
	}()
	time.Sleep(200 * time.Millisecond) // let the subscriptions open

	// Bridge CNI: same interface, the address now answers from a new MAC.
	setNeigh(t, link.Attrs().Index, ip, "0a:00:00:00:00:02")
	waitChange(t, changes, func(c Change) bool {
		return c.Neighbour == ip && c.LinkIndex == link.Attrs().Index && c.MAC == "0a:00:00:00:00:02"
	})
	if id2, err := Identify(ip); err != nil || id2.Same(id) {
		t.Errorf("after the MAC changed: %v %v, want a different identity", id2, err)
	}

	// Routed CNI: the pod is deleted (its veth goes) and a successor gets
	// the address on a new veth.
	must(t, netlink.LinkDel(link))
	waitChange(t, changes, func(c Change) bool { return c.LinkGone == link.Attrs().Index })
	succ := addPod(t, "podv2", ip, "0a:00:00:00:00:01")
	id3, err := Identify(ip)
	must(t, err)
	if id3.LinkIndex != succ.Attrs().Index || id3.Same(id) {
		t.Errorf("successor identity %v; predecessor %v", id3, id)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watch after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}

func waitChange(t *testing.T, ch <-chan Change, match func(Change) bool) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case c := <-ch:
			if match(c) {
				return
			}
		case <-timeout:
			t.Fatal("expected change not seen")
		}
	}
}
