package imds

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// addrLimit counts what each source address holds (requests in flight,
// open connections) against one cap, so that one pod cannot take what the
// agent has for every pod on the node.
//
// Every request takes and gives back one of its address's slots, and all
// the connections of a busy pod share that address: behind one mutex they
// would queue for each other. So the count of an address is atomic, its
// slot is found in one of several shards under a read lock, and a slot
// that holds nothing stays until its shard has grown enough to be swept,
// rather than being freed on every release: a pod asking again and again
// then neither allocates nor takes a write lock.
type addrLimit struct {
	max    int32
	shards [addrShards]addrShard
}

const (
	// addrShards spreads the pods of a node over that many locks.
	addrShards = 16
	// minSweep is how many slots a shard holds before it sweeps idle ones.
	minSweep = 64
	// retired marks a slot swept out of its shard: whoever still holds a
	// pointer to it looks its address up again.
	retired = -1
)

type addrShard struct {
	mu    sync.RWMutex
	slots map[netip.Addr]*addrSlot
	// sweepAt is the size at which the next insert sweeps idle slots.
	sweepAt int
}

// addrSlot is what one address holds.
type addrSlot struct{ n atomic.Int32 }

func newAddrLimit(max int) *addrLimit {
	l := &addrLimit{max: int32(min(max, 1<<30))}
	for i := range l.shards {
		l.shards[i].slots = map[netip.Addr]*addrSlot{}
		l.shards[i].sweepAt = minSweep
	}
	return l
}

// shard picks ip's shard from its last bytes, where the addresses of one
// node's pods differ.
func (l *addrLimit) shard(ip netip.Addr) *addrShard {
	b := ip.As16()
	return &l.shards[(b[15]^b[14]^b[13])%addrShards]
}

// acquire takes one for ip and returns the slot to release it on, or
// reports false if ip holds max already.
func (l *addrLimit) acquire(ip netip.Addr) (*addrSlot, bool) {
	sh := l.shard(ip)
	for {
		sh.mu.RLock()
		s := sh.slots[ip]
		sh.mu.RUnlock()
		if s == nil {
			s = sh.insert(ip)
		}
		for {
			n := s.n.Load()
			if n == retired {
				break
			}
			if n >= l.max {
				return nil, false
			}
			if s.n.CompareAndSwap(n, n+1) {
				return s, true
			}
		}
	}
}

// insert returns ip's slot, making one if there is none, and sweeps the
// shard's idle slots when it has grown.
func (sh *addrShard) insert(ip netip.Addr) *addrSlot {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s := sh.slots[ip]; s != nil {
		return s
	}
	if len(sh.slots) >= sh.sweepAt {
		for a, s := range sh.slots {
			// Only a slot that holds nothing can retire; one taken
			// meanwhile stays.
			if s.n.CompareAndSwap(0, retired) {
				delete(sh.slots, a)
			}
		}
		sh.sweepAt = max(2*len(sh.slots), minSweep)
	}
	s := &addrSlot{}
	sh.slots[ip] = s
	return s
}

// release gives back one acquire.
func (s *addrSlot) release() { s.n.Add(-1) }

// count returns what ip holds.
func (l *addrLimit) count(ip netip.Addr) int {
	sh := l.shard(ip)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if s := sh.slots[ip]; s != nil {
		return int(max(s.n.Load(), 0))
	}
	return 0
}

// addrs returns how many addresses hold anything.
func (l *addrLimit) addrs() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.RLock()
		for _, s := range sh.slots {
			if s.n.Load() > 0 {
				n++
			}
		}
		sh.mu.RUnlock()
	}
	return n
}
