package imds

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// TestAddrLimitConcurrent: however many goroutines share an address, it
// never holds more than max, and it always gets a slot while it holds
// fewer.
func TestAddrLimitConcurrent(t *testing.T) {
	const max, workers, rounds = 4, 16, 2000
	l := newAddrLimit(max)
	ip := netip.MustParseAddr("10.0.0.1")
	var held, peak atomic.Int32
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				s, ok := l.acquire(ip)
				if !ok {
					continue
				}
				n := held.Add(1)
				if n > max {
					t.Errorf("%d held at once, max %d", n, max)
				}
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				held.Add(-1)
				s.release()
			}
		})
	}
	wg.Wait()
	if l.count(ip) != 0 || l.addrs() != 0 {
		t.Errorf("after all releases: count %d, addrs %d", l.count(ip), l.addrs())
	}
	var slots []*addrSlot
	for range max {
		s, ok := l.acquire(ip)
		if !ok {
			t.Fatal("a free slot was refused")
		}
		slots = append(slots, s)
	}
	if _, ok := l.acquire(ip); ok {
		t.Fatal("acquired beyond max")
	}
	if other, ok := l.acquire(netip.MustParseAddr("10.0.0.2")); !ok {
		t.Fatal("another address was refused")
	} else {
		other.release()
	}
	for _, s := range slots {
		s.release()
	}
}

// TestAddrLimitSweeps: addresses that hold nothing do not pile up, and a
// slot swept while a caller was about to take it is looked up again.
func TestAddrLimitSweeps(t *testing.T) {
	l := newAddrLimit(2)
	busy := netip.MustParseAddr("10.1.0.1")
	kept, ok := l.acquire(busy)
	if !ok {
		t.Fatal("refused")
	}
	for i := range 20000 {
		ip := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		s, ok := l.acquire(ip)
		if !ok {
			t.Fatalf("%s refused", ip)
		}
		s.release()
	}
	total := 0
	for i := range l.shards {
		sh := &l.shards[i]
		if len(sh.slots) > max(2*minSweep, sh.sweepAt) {
			t.Errorf("shard %d holds %d slots", i, len(sh.slots))
		}
		total += len(sh.slots)
	}
	if total > addrShards*2*minSweep {
		t.Errorf("%d slots kept for 1 busy address", total)
	}
	if l.count(busy) != 1 || l.addrs() != 1 {
		t.Errorf("busy address: count %d, addrs %d", l.count(busy), l.addrs())
	}
	kept.release()

	// A retired slot is never taken: the caller finds a new one.
	ip := netip.MustParseAddr("10.3.0.1")
	s, _ := l.acquire(ip)
	s.release()
	sh := l.shard(ip)
	sh.mu.Lock()
	if !sh.slots[ip].n.CompareAndSwap(0, retired) {
		t.Fatal("slot not idle")
	}
	delete(sh.slots, ip)
	sh.mu.Unlock()
	s2, ok := l.acquire(ip)
	if !ok || s2 == s || l.count(ip) != 1 || s.n.Load() != retired {
		t.Errorf("after a sweep: ok %v, same slot %v, count %d", ok, s2 == s, l.count(ip))
	}
}
