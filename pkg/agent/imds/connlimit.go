package imds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxConnsPerIP is how many connections one pod address may hold
// open to the agent. SDKs use one or two; a pod with many threads a few
// dozen.
const DefaultMaxConnsPerIP = 128

// ConnLimitConfig bounds the connections each source address may hold.
type ConnLimitConfig struct {
	// MaxPerIP is the most connections one source address may hold open;
	// 0 means DefaultMaxConnsPerIP.
	MaxPerIP int
}

// LimitListener wraps l so that a source address already holding MaxPerIP
// connections has each further connection closed as soon as it is
// accepted, never queued. Every open connection costs the agent a
// goroutine and buffers: without a cap, one pod holding tens of thousands
// of idle connections could push the agent to its memory limit, and an
// OOM-killed agent leaves every pod on the node without credentials.
//
// Accepting and closing at once (rather than not accepting) keeps the
// kernel's accept queue moving for every other pod.
func LimitListener(l net.Listener, cfg ConnLimitConfig, reg prometheus.Registerer) (net.Listener, error) {
	if cfg.MaxPerIP < 0 {
		return nil, fmt.Errorf("%w: MaxPerIP %d < 0", ErrInvalidConfig, cfg.MaxPerIP)
	}
	if cfg.MaxPerIP == 0 {
		cfg.MaxPerIP = DefaultMaxConnsPerIP
	}
	ll := &limitListener{
		Listener: l,
		held:     newAddrLimit(cfg.MaxPerIP),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podiam_agent_connections_refused_total",
			Help: "Connections closed at once because their source address already held the most connections allowed (--max-connections-per-ip).",
		}),
	}
	if reg != nil {
		if err := reg.Register(ll.refused); err != nil {
			return nil, fmt.Errorf("imds: registering metrics: %w", err)
		}
	}
	return ll, nil
}

type limitListener struct {
	net.Listener
	held    *addrLimit // open connections per source address
	refused prometheus.Counter
}

// Accept returns the next connection whose source address is under its
// cap, closing those over it.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		slot, ok := l.held.acquire(sourceAddr(c))
		if !ok {
			l.refused.Inc()
			_ = c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: slot.release}, nil
	}
}

// sourceAddr is the connection's remote address, IPv4-mapped addresses
// unmapped so that one pod counts once; the zero Addr if it has none.
func sourceAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// limitedConn gives its slot back once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// CloseWrite passes a half close through: net/http half-closes a
// connection it gives up on (a header too large) and waits a moment before
// closing it, so that the client reads the error instead of a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
