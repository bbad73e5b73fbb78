package serverclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/resolver"
)

// resolverScheme names the resolver of a server address without a scheme.
const resolverScheme = "podiam-dns"

// How often the server name is looked up again. gRPC's own DNS resolver
// waits at least 30 s between lookups, and after failures backs off to two
// minutes: an agent started before any server is ready (servers behind a
// headless Service only appear in DNS once ready), or whose only server
// came back on a new pod address, would wait that long with every pod on
// its node unserved. A lookup a second while no address is known, and
// every few seconds otherwise, costs a node's resolver nothing.
const (
	resolveRetry   = time.Second
	resolveRefresh = 5 * time.Second
	lookupTimeout  = 5 * time.Second
)

// lookupHost returns the addresses of host, like net.Resolver.LookupHost.
type lookupHost func(ctx context.Context, host string) ([]string, error)

// pollingResolver is a gRPC resolver that looks the server name up on a
// short period, and at once (at most once per resolveRetry) when gRPC asks
// because a connection failed.
type pollingResolver struct {
	lookup         lookupHost
	retry, refresh time.Duration
}

func (b *pollingResolver) Scheme() string { return resolverScheme }

// Build starts a resolver for target ("podiam-dns:///host:port"); Close
// stops it.
func (b *pollingResolver) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	host, port, err := net.SplitHostPort(target.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("serverclient: server address %q: %w", target.Endpoint(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &polling{b: b, cc: cc, host: host, port: port, cancel: cancel, now: make(chan struct{}, 1)}
	r.wg.Add(1)
	go r.run(ctx)
	return r, nil
}

// polling is one running resolver.
type polling struct {
	b          *pollingResolver
	cc         resolver.ClientConn
	host, port string
	cancel     context.CancelFunc
	now        chan struct{}
	wg         sync.WaitGroup
}

func (r *polling) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

func (r *polling) Close() {
	r.cancel()
	r.wg.Wait()
}

// run looks the name up until Close: every refresh period while it has
// addresses, every retry period while it has none, and on ResolveNow no
// sooner than retry after the previous lookup.
func (r *polling) run(ctx context.Context) {
	defer r.wg.Done()
	var last []string
	for {
		addrs, err := r.resolve(ctx)
		wait := r.b.refresh
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.cc.ReportError(err)
			wait, last = r.b.retry, nil
		case !slices.Equal(addrs, last):
			state := resolver.State{}
			for _, a := range addrs {
				state.Addresses = append(state.Addresses, resolver.Address{Addr: net.JoinHostPort(a, r.port)})
			}
			if err := r.cc.UpdateState(state); err != nil {
				wait = r.b.retry
			}
			last = addrs
		}
		retry := time.NewTimer(r.b.retry)
		select {
		case <-ctx.Done():
			retry.Stop()
			return
		case <-retry.C:
		}
		// From here on a ResolveNow, or the end of the wait, looks again.
		timer := time.NewTimer(wait - r.b.retry)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-r.now:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// resolve returns the sorted addresses of the host; an IP literal is its
// own answer. No address at all is an error: gRPC keeps what it has and
// the lookup is tried again soon.
func (r *polling) resolve(ctx context.Context) ([]string, error) {
	if a, err := netip.ParseAddr(r.host); err == nil {
		return []string{a.String()}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	addrs, err := r.b.lookup(ctx, r.host)
	if err != nil {
		return nil, fmt.Errorf("serverclient: look up %s: %w", r.host, err)
	}
	if len(addrs) == 0 {
		return nil, errors.New("serverclient: look up " + r.host + ": no addresses")
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}
