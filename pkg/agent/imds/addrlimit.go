package imds

import (
	"net/netip"
	"sync"
)

// addrLimit counts what each source address holds (requests in flight,
// open connections) against one cap, so that one pod cannot take what the
// agent has for every pod on the node.
type addrLimit struct {
	max int

	mu   sync.Mutex
	held map[netip.Addr]int
}

func newAddrLimit(max int) *addrLimit {
	return &addrLimit{max: max, held: map[netip.Addr]int{}}
}

// acquire takes one for ip, or reports false if ip holds max already.
func (l *addrLimit) acquire(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[ip] >= l.max {
		return false
	}
	l.held[ip]++
	return true
}

// release gives back one acquire of ip.
func (l *addrLimit) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[ip] <= 1 {
		delete(l.held, ip)
		return
	}
	l.held[ip]--
}

// count returns what ip holds, and addrs how many addresses hold anything.
func (l *addrLimit) count(ip netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[ip]
}

func (l *addrLimit) addrs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}
