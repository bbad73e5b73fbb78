//go:build privileged

package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
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
// CNIs), and the changes that end each identity. Drain is called right
// after each change, without waiting: the kernel queues a change before
// the call that made it returns, so a request that follows a change (a
// new pod's ARP precedes its first packet) always sees it applied.
func TestIdentifyAndWatch(t *testing.T) {
	inNewNetns(t)
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

	w, err := NewWatcher()
	must(t, err)
	var seen []Change
	collect := func(c Change) { seen = append(seen, c) }
	drained := func(match func(Change) bool) bool {
		t.Helper()
		seen = nil
		must(t, w.Drain(collect))
		for _, c := range seen {
			if match(c) {
				return true
			}
		}
		return false
	}

	// Bridge CNI: same interface, the address now answers from a new MAC.
	setNeigh(t, link.Attrs().Index, ip, "0a:00:00:00:00:02")
	if !drained(func(c Change) bool {
		return c.Neighbour == ip && c.LinkIndex == link.Attrs().Index && c.MAC == "0a:00:00:00:00:02"
	}) {
		t.Errorf("the new MAC was not drained at once: %+v", seen)
	}
	if id2, err := Identify(ip); err != nil || id2.Same(id) {
		t.Errorf("after the MAC changed: %v %v, want a different identity", id2, err)
	}
	if drained(func(Change) bool { return true }) {
		t.Errorf("a second drain applied %+v again", seen)
	}

	// Routed CNI: the pod is deleted (its veth goes) and a successor gets
	// the address on a new veth.
	must(t, netlink.LinkDel(link))
	if !drained(func(c Change) bool { return c.LinkGone == link.Attrs().Index }) {
		t.Errorf("the deleted veth was not drained at once: %+v", seen)
	}
	succ := addPod(t, "podv2", ip, "0a:00:00:00:00:01")
	id3, err := Identify(ip)
	must(t, err)
	if id3.LinkIndex != succ.Attrs().Index || id3.Same(id) {
		t.Errorf("successor identity %v; predecessor %v", id3, id)
	}

	// Run applies changes when no request drains them.
	changes := make(chan Change, 256)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(c Change) { changes <- c }) }()
	time.Sleep(100 * time.Millisecond)
	setNeigh(t, succ.Attrs().Index, ip, "0a:00:00:00:00:03")
	waitChange(t, changes, func(c Change) bool { return c.Neighbour == ip && c.MAC == "0a:00:00:00:00:03" })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// Requests still being answered as the agent stops drain on.
	setNeigh(t, succ.Attrs().Index, ip, "0a:00:00:00:00:04")
	if !drained(func(c Change) bool { return c.MAC == "0a:00:00:00:00:04" }) {
		t.Errorf("Drain after Run returned: %+v", seen)
	}
	must(t, w.Close())
	if err := w.Drain(collect); err == nil {
		t.Error("Drain after Close: no error, want one")
	}
}

// TestWatcherOverflow: changes the kernel had to drop are reported as
// Lost, so that the cache checks every identity again.
func TestWatcherOverflow(t *testing.T) {
	inNewNetns(t)
	ip := netip.MustParseAddr("10.244.0.5")
	link := addPod(t, "podv1", ip, "0a:00:00:00:00:01")
	w, err := NewWatcher()
	must(t, err)
	defer w.Close()
	must(t, unix.SetsockoptInt(w.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1024))
	for i := range 500 {
		setNeigh(t, link.Attrs().Index, ip, fmt.Sprintf("0a:00:00:00:%02x:%02x", i>>8, i&0xff))
	}
	lost := false
	must(t, w.Drain(func(c Change) { lost = lost || c.Lost }))
	if !lost {
		t.Error("500 changes into a 1 KiB buffer: no loss reported")
	}
}

// TestConcurrentDrainsApplyEarlierChanges: requests drain at once from
// many connections, and a drain may be covered by another's pass (or by
// Run's) instead of reading the socket itself. Each must still return only
// once the change its caller made before calling it has been applied.
func TestConcurrentDrainsApplyEarlierChanges(t *testing.T) {
	ns := inNewNetns(t)
	h, err := netlink.NewHandleAt(ns) // for goroutines on other threads
	must(t, err)
	defer h.Close()
	link := addPod(t, "podc", netip.MustParseAddr("10.244.1.1"), "0a:00:00:00:01:01")
	w, err := NewWatcher()
	must(t, err)
	defer w.Close()

	var mu sync.Mutex
	last := map[netip.Addr]string{}
	apply := func(c Change) {
		if c.Lost {
			t.Error("changes lost")
		}
		if c.Neighbour.IsValid() {
			mu.Lock()
			last[c.Neighbour] = c.MAC
			mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx, apply) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			ip := netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + g)})
			for i := range 150 {
				m := fmt.Sprintf("0a:00:00:00:%02x:%02x", g, i)
				if err := h.NeighSet(&netlink.Neigh{LinkIndex: link.Attrs().Index, IP: ip.AsSlice(),
					HardwareAddr: mac(m), State: netlink.NUD_REACHABLE}); err != nil {
					t.Error(err)
					return
				}
				if err := w.Drain(apply); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got := last[ip]
				mu.Unlock()
				if got != m {
					t.Errorf("%s: Drain returned with %q applied, want %q set before it", ip, got, m)
					return
				}
			}
		})
	}
	wg.Wait()
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
