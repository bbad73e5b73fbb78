package cache

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/agent/sandbox"
)

func (fx *fixture) pushes(result string) int {
	return int(testutil.ToFloat64(fx.c.pushes.WithLabelValues(result)))
}

// pushFixture is a cache with sandbox checks and a synced pod stream, and a
// bridge sandbox at ip whose MAC the node does not know yet (the pod has
// sent nothing), as when a server pushes a new pod's credentials.
func pushFixture(t *testing.T, ip string) (*fixture, *interfaces, *queuedChanges) {
	t.Helper()
	ifaces := &interfaces{m: map[string]sandbox.ID{ip: {LinkIndex: bridgeA.LinkIndex}}}
	changes := &queuedChanges{}
	fx := newFixture(t, func(c *Config) { c.Sandbox, c.Changes = ifaces.lookup, changes })
	fx.c.PodStreamSynced(true)
	return fx, ifaces, changes
}

// arp is the pod's first packet: the node learns its MAC.
func arp(ifaces *interfaces, changes *queuedChanges, ip string, id sandbox.ID) {
	ifaces.set(ip, id)
	changes.queue(sandbox.Change{Neighbour: netip.MustParseAddr(ip), LinkIndex: id.LinkIndex, MAC: id.MAC})
}

// TestPushServedOnFirstRequest: pushed credentials answer the pod's first
// request without a server, after its own ARP; the entry is then bound to
// that sandbox, and a successor's MAC drops it.
func TestPushServedOnFirstRequest(t *testing.T) {
	ip := "10.0.0.1"
	fx, ifaces, changes := pushFixture(t, ip)
	pushed := podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour))
	if !fx.c.Push(ip, pushed) {
		t.Fatal("push not stored")
	}
	arp(ifaces, changes, ip, bridgeA)
	if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID != "AKIAPUSH" {
		t.Fatalf("got %s, want the pushed credentials", pc.Credentials.AccessKeyID)
	}
	fx.mustGet(t, ip)
	if n := fx.f.count(ip); n != 0 {
		t.Fatalf("%d server calls, want none", n)
	}
	if fx.requests("pushed") != 1 || fx.requests("hit") != 1 || fx.pushes("stored") != 1 {
		t.Fatalf("pushed %d, hit %d, stored %d; want 1, 1, 1", fx.requests("pushed"), fx.requests("hit"), fx.pushes("stored"))
	}
	// Bound to bridgeA now: another MAC on the address ends it.
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	arp(ifaces, changes, ip, bridgeB)
	fx.mustFail(t, ip, http.StatusServiceUnavailable)
	if fx.c.Len() != 0 {
		t.Fatal("the bound entry survived another sandbox's ARP")
	}
}

// TestPushedNotServedToAnotherSandbox: a pushed entry whose interface, or
// MAC known when it arrived, is not the asking sandbox's is dropped, never
// served.
func TestPushedNotServedToAnotherSandbox(t *testing.T) {
	ip := "10.0.0.1"
	t.Run("new veth", func(t *testing.T) {
		fx, ifaces, _ := pushFixture(t, ip)
		ifaces.set(ip, cali1)
		fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour)))
		// The pod's veth is replaced before anyone asks; no change was
		// read (no ARP on a routed interface).
		ifaces.set(ip, sandbox.ID{LinkIndex: cali1.LinkIndex + 1})
		if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID == "AKIAPUSH" {
			t.Fatal("the pushed entry was served to another interface")
		}
		if fx.f.count(ip) != 1 {
			t.Fatal("the server was not asked")
		}
	})
	t.Run("known MAC", func(t *testing.T) {
		fx, ifaces, changes := pushFixture(t, ip)
		ifaces.set(ip, bridgeA) // the pod talked already
		fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour)))
		arp(ifaces, changes, ip, bridgeB)
		if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID == "AKIAPUSH" {
			t.Fatal("the pushed entry was served to another MAC")
		}
	})
	t.Run("interface gone", func(t *testing.T) {
		fx, ifaces, changes := pushFixture(t, ip)
		ifaces.set(ip, cali1)
		fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour)))
		changes.queue(sandbox.Change{LinkGone: cali1.LinkIndex})
		fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
		fx.mustFail(t, ip, http.StatusServiceUnavailable)
	})
}

// TestPushIgnored: a push is not kept while the stream is down, over a
// standing refusal, over an entry bound to a sandbox, or when the sandbox
// cannot be told.
func TestPushIgnored(t *testing.T) {
	ip := "10.0.0.1"
	pushed := podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour))
	fx, ifaces, _ := pushFixture(t, ip)
	fx.c.PodStreamSynced(false)
	if fx.c.Push(ip, pushed) {
		t.Error("push kept while the stream is down")
	}
	fx.c.PodStreamSynced(true)

	fx.f.set(failing(http.StatusForbidden, errNoServer))
	fx.mustFail(t, ip, http.StatusForbidden)
	if fx.c.Push(ip, pushed) {
		t.Error("push kept over a standing refusal")
	}
	fx.c.Forget(ip)

	fx.f.set(issuing(fx.clk))
	fetched := fx.mustGet(t, ip)
	if fx.c.Push(ip, pushed) {
		t.Error("push kept over a bound entry")
	}
	if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID != fetched.Credentials.AccessKeyID {
		t.Error("the bound entry was replaced")
	}
	fx.c.Forget(ip)

	ifaces.set(ip, sandbox.ID{})
	if fx.c.Push(ip, pushed) {
		t.Error("push kept for an address whose sandbox cannot be told")
	}
	if fx.c.Push("10.0.0.9", podCreds("uid-b", "AKIAOLD", t0.Add(-time.Minute))) {
		t.Error("expired push kept")
	}
	if fx.pushes("ignored") != 5 {
		t.Errorf("ignored %d, want 5", fx.pushes("ignored"))
	}
}

// TestPushRevoked: the pod events that follow a push (its role or policy
// changed, the pod left, the stream resynced or broke) drop it, and the
// next request asks a server.
func TestPushRevoked(t *testing.T) {
	ip := "10.0.0.1"
	for name, revoke := range map[string]func(c *Cache){
		"changed":     func(c *Cache) { c.Forget(ip) },
		"stream down": func(c *Cache) { c.PodStreamSynced(false) },
		"resync":      func(c *Cache) { c.Retain(map[string]string{ip: "uid-a"}) },
		"lost":        func(c *Cache) { c.SandboxChanged(sandbox.Change{Lost: true}) },
	} {
		t.Run(name, func(t *testing.T) {
			fx, _, _ := pushFixture(t, ip)
			fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour)))
			revoke(fx.c)
			fx.c.PodStreamSynced(true)
			fx.f.set(failing(http.StatusForbidden, errNoServer))
			fx.mustFail(t, ip, http.StatusForbidden)
			if fx.f.count(ip) != 1 {
				t.Fatal("the server was not asked")
			}
		})
	}
}

// TestPushedNeverServedStale: a pushed entry that is no longer fresh when
// its pod first asks is not served as a stale fallback, as it is bound to
// no sandbox.
func TestPushedNeverServedStale(t *testing.T) {
	ip := "10.0.0.1"
	fx, _, _ := pushFixture(t, ip)
	fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(20*time.Minute)))
	fx.clk.Step(time.Minute) // past RefreshInterval: due
	fx.f.set(failing(http.StatusServiceUnavailable, errNoServer))
	fx.mustFail(t, ip, http.StatusServiceUnavailable)
}

// TestPushedBindingRacesChange: a neighbour change that comes while the
// first request looks its sandbox up voids that lookup; the request asks a
// server instead of binding what may be the previous state.
func TestPushedBindingRacesChange(t *testing.T) {
	ip := "10.0.0.1"
	fx, ifaces, _ := pushFixture(t, ip)
	fx.c.Push(ip, podCreds("uid-a", "AKIAPUSH", t0.Add(time.Hour)))
	ifaces.set(ip, bridgeA)
	lookups := 0
	fx.c.cfg.Sandbox = func(a netip.Addr) (sandbox.ID, error) {
		lookups++
		id, err := ifaces.lookup(a)
		if lookups == 1 {
			fx.c.SandboxChanged(sandbox.Change{Neighbour: a, LinkIndex: bridgeA.LinkIndex, MAC: bridgeA.MAC})
		}
		return id, err
	}
	if pc := fx.mustGet(t, ip); pc.Credentials.AccessKeyID == "AKIAPUSH" {
		t.Fatal("bound with a lookup a change overtook")
	}
	if fx.f.count(ip) != 1 {
		t.Fatal("the server was not asked")
	}
}
