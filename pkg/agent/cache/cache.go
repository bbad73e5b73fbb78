// Package cache keeps, per pod address, the credentials the agent got
// from a server, so that a pod keeps working through a server outage and
// most requests never leave the node.
//
// Three things make a cached answer safe to reuse:
//   - policy is the server's: while a server answers, an entry is only used
//     until it is due for refresh, and every refusal a server gives drops it
//     (an address two live pods claim included); pod events (a namespace's
//     policy or External ID changed) drop it at once, and when the pod
//     stream resyncs, having perhaps missed some, it is checked again;
//   - addresses are reused: an entry records the pod UID, and the agent's
//     watch of its node's pods calls Forget and Retain when a pod leaves;
//   - an entry is bound to the pod's sandbox as the node sees it (the
//     host-side interface of the route to the address and the neighbour's
//     MAC address, package sandbox): SandboxChanged drops it the moment
//     either changes, so a successor pod on the same address never gets it,
//     fresh or stale. During an outage nobody can say who holds an address,
//     so a stale entry is served only while the sandbox is still the same,
//     and while the pod stream is down an entry whose sandbox was never
//     known is not served at all.
//
// A server may also push a pod's credentials on the pod stream before the
// pod asks (Push), so that its first request is answered here. Such an
// entry is bound to a sandbox when it is first served, not when it
// arrives: the pod has usually sent nothing yet, so the node knows no MAC
// address for it. Until then it holds the interface the address was routed
// through when it arrived, a neighbour change that reveals the MAC does not
// end it, and it is served only while the pod stream is up, never stale;
// the first request looks the sandbox up, and from then on the entry is
// like a fetched one. A pushed entry whose interface (or known MAC) changed
// before that request is dropped, never served.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/agent/metadoc"
	"github.com/podiam/podiam/pkg/agent/sandbox"
	"github.com/podiam/podiam/pkg/creds"
)

// ErrPodUnknownSynced means a server whose view of the pods is complete
// found no live pod at the address: cached credentials for it must go.
// A Fetcher wraps it into its error (with HTTP status 503).
var ErrPodUnknownSynced = errors.New("a synced server knows no live pod at this address")

// ErrAddressConflict means a server found two live pods claiming the
// address: whichever sandbox asks now may be either, so cached credentials
// for it must go. A Fetcher wraps it into its error (with HTTP status 503).
var ErrAddressConflict = errors.New("several live pods claim this address")

// Fetcher asks a server about the pod at ip. Its errors carry an HTTP
// status (httperr); one without is treated as 503, a transient failure.
type Fetcher interface {
	Fetch(ctx context.Context, ip string) (creds.PodCredentials, error)
}

// ChangeSource hands over the sandbox changes queued so far, without
// waiting for more. An error means changes can no longer be read.
type ChangeSource interface {
	Drain(apply func(sandbox.Change)) error
}

// Config tunes the cache. Zero values take the defaults noted.
type Config struct {
	// Refresh: an entry with this much validity or less left is fetched
	// again (35m). It must be below the server's refresh-ahead (40m), or
	// the agent would keep fetching credentials the server will not renew.
	Refresh time.Duration
	// MinServe: while no server answers, cached credentials are served
	// until this much validity remains (5m).
	MinServe time.Duration
	// Sandbox identifies the sandbox holding ip now (sandbox.Identify).
	// nil disables every sandbox check, for tests only.
	Sandbox func(ip netip.Addr) (sandbox.ID, error)
	// Changes holds the sandbox changes the kernel has reported and no
	// one has applied yet (a sandbox.Watcher). Every request drains it
	// before it is answered from the cache, so a change that happened
	// before the request (a new pod's ARP precedes its first packet) is
	// never missed by a race with the goroutine that watches. nil for
	// tests only.
	Changes ChangeSource
	// RefreshInterval is the period of the background refresh scan;
	// 0 means Refresh/20 clamped to [100ms, 30s]. An entry fetched less
	// than this long ago is not fetched again on the request path even if
	// due, so a server handing out short-lived credentials is asked once per
	// interval, not once per request.
	RefreshInterval time.Duration
	// FetchTimeout bounds one shared fetch, which no single caller's
	// context may cancel (10s).
	FetchTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// staleRecheck is how long a stale answer stands before a server is asked
// again for the same address.
const staleRecheck = time.Second

const (
	defaultRefresh      = 35 * time.Minute
	defaultMinServe     = 5 * time.Minute
	defaultFetchTimeout = 10 * time.Second
)

func (cfg *Config) setDefaults() error {
	if cfg.Refresh == 0 {
		cfg.Refresh = defaultRefresh
	}
	if cfg.MinServe == 0 {
		cfg.MinServe = defaultMinServe
	}
	if cfg.FetchTimeout == 0 {
		cfg.FetchTimeout = defaultFetchTimeout
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = min(max(cfg.Refresh/20, 100*time.Millisecond), 30*time.Second)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.Refresh < 0 || cfg.MinServe < 0 || cfg.RefreshInterval < 0 || cfg.FetchTimeout < 0:
		return errors.New("agent cache: durations must not be negative")
	case cfg.MinServe >= cfg.Refresh:
		return fmt.Errorf("agent cache: MinServe %s must be below Refresh %s", cfg.MinServe, cfg.Refresh)
	}
	return nil
}

// entry is what one successful fetch taught us about an address.
type entry struct {
	pod creds.PodCredentials
	// docs are what the metadata API shows for pod, built when it was
	// received, so that a request writes them as they are.
	docs      *metadoc.Docs
	fetchedAt time.Time
	// sandbox is the sandbox that held the address just before the fetch;
	// known is false when the lookup failed, which rules out serving the
	// entry stale, or at all while the pod stream is down.
	sandbox sandbox.ID
	known   bool
	// staleUntil: the entry was last served stale after a failed fetch and
	// a sandbox check; until then it is served stale without repeating
	// both. SDKs ask on every call once credentials near expiry.
	staleUntil time.Time
	// recheck: the pod stream resynced after the entry was stored, so pod
	// events that would have dropped it may have been missed (a namespace's
	// policy or External ID changed while the stream was down or behind).
	// It is not fresh: its next request asks a server, and it is served
	// only as a stale fallback if no server answers.
	recheck bool
	// pushed: a server sent the entry before the pod asked, and no
	// request has been answered from it yet; sandbox is what held the
	// address when it arrived (often without a MAC). The first request
	// binds it (bindPushed). moves counts the neighbour changes of its
	// address that did not end it meanwhile, so that a binding looked up
	// before one of them is not used.
	pushed bool
	moves  uint64
}

// result is the value of the metrics' result label. For requests: how one
// was answered (hit, miss, stale, error, refused); for background refreshes: ok or
// error.
type result string

const (
	resultHit   result = "hit"
	resultMiss  result = "miss"
	resultStale result = "stale"
	resultError result = "error"
	// resultRefused: answered with a server's recent definitive refusal
	// without asking again.
	resultRefused result = "refused"
	// resultPushed: answered from credentials a server pushed before the
	// pod asked, the request that binds them to its sandbox.
	resultPushed result = "pushed"
	resultOK     result = "ok" // refreshes only
	// For pushes: kept, or not (no stream, a refusal or fetch stands, an
	// entry is bound already, the sandbox cannot be told).
	resultStored  result = "stored"
	resultIgnored result = "ignored"
)

// refusalTTL is how long a server's 403 or 404 for an address is answered
// again without asking: a denied pod retrying in a tight loop costs a
// server at most one call per address and TTL. Pod events drop it, so a
// pod that gains a role or permission waits for none of it.
const refusalTTL = time.Second

// refusal is a server's definitive 403 or 404 for an address, given to
// the sandbox that held it when asked.
type refusal struct {
	err     error
	until   time.Time
	sandbox sandbox.ID
	known   bool
}

// flight is one fetch for an address, shared by every request for it that
// arrives meanwhile and by the background refresh.
type flight struct {
	done chan struct{}
	// Set before done is closed.
	docs *metadoc.Docs
	res  result
	err  error
	// Guarded by Cache.mu. forgotten: Forget or Retain ran while the fetch
	// was under way; its answer may describe the pod that left, so it is
	// passed to the callers that asked before but not stored. expectUID:
	// Retain saw this UID at the address; an answer for another is not
	// stored.
	forgotten bool
	expectUID string
	waiters   int // callers waiting, for tests
	// identified: the fetch has looked up the sandbox (sandbox, known),
	// so a neighbour change that leaves that sandbox in place does not
	// end it.
	identified bool
	sandbox    sandbox.ID
	known      bool
}

// Cache holds credentials per pod address. It is safe for concurrent use.
type Cache struct {
	cfg Config
	f   Fetcher
	log *slog.Logger

	// mu is read-locked by a request answered from what is cached, so
	// that the requests of many connections do not queue for each other;
	// everything that changes the maps takes it whole.
	mu      sync.RWMutex
	entries map[string]*entry
	flights map[string]*flight
	refused map[string]refusal
	// streamSynced: the agent's pod stream from a server is open and has
	// delivered its snapshot, so a pod that leaves is reported.
	streamSynced bool

	requests  *prometheus.CounterVec
	refreshes *prometheus.CounterVec
	pushes    *prometheus.CounterVec
	// answered holds requests' children, resolved once: WithLabelValues
	// hashes its labels and takes a lock on every call.
	answered map[result]prometheus.Counter
	// applyChange is SandboxChanged, bound once: the request path hands
	// it to every Drain.
	applyChange func(sandbox.Change)
}

// New checks cfg and registers the cache's metrics on reg. reg may be nil
// (metrics not registered); log may be nil (discarded).
func New(cfg Config, f Fetcher, reg prometheus.Registerer, log *slog.Logger) (*Cache, error) {
	if f == nil {
		return nil, errors.New("agent cache: a fetcher is required")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		cfg:     cfg,
		f:       f,
		log:     log,
		entries: map[string]*entry{},
		flights: map[string]*flight{},
		refused: map[string]refusal{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_cache_requests_total",
			Help: "Credential requests answered by the agent cache, by result (hit, miss, stale, error, refused).",
		}, []string{"result"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_cache_refreshes_total",
			Help: "Background refreshes of cached credentials, by result.",
		}, []string{"result"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_agent_cache_pushes_total",
			Help: "Credentials a server pushed before the pod asked, by result (stored, ignored).",
		}, []string{"result"}),
	}
	c.applyChange = c.SandboxChanged
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "podiam_agent_cache_entries",
		Help: "Pod addresses with cached credentials.",
	}, func() float64 { return float64(c.Len()) })
	c.answered = map[result]prometheus.Counter{}
	for _, r := range []result{resultHit, resultMiss, resultStale, resultError, resultRefused, resultPushed} {
		c.answered[r] = c.requests.WithLabelValues(string(r))
	}
	c.refreshes.WithLabelValues(string(resultOK))
	c.refreshes.WithLabelValues(string(resultError))
	c.pushes.WithLabelValues(string(resultStored))
	c.pushes.WithLabelValues(string(resultIgnored))
	if reg == nil {
		return c, nil
	}
	for _, col := range []prometheus.Collector{c.requests, c.refreshes, c.pushes, entries} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("agent cache: register metrics: %w", err)
		}
	}
	return c, nil
}

// Credentials returns credentials for the pod at ip: from the cache while
// they are fresh, otherwise from a server, otherwise (no server answers)
// from the cache while they have MinServe left and the address is still
// routed to the same interface. Errors carry an HTTP status (httperr).
func (c *Cache) Credentials(ctx context.Context, ip string) (creds.PodCredentials, error) {
	d, err := c.Documents(ctx, ip)
	if err != nil {
		return creds.PodCredentials{}, err
	}
	return *d.Pod(), nil
}

// connKey is the context key of a connMark.
type connKey struct{}

// connMark is one TCP connection's: whether the sandbox changes have been
// drained since it was accepted.
type connMark struct{ drained atomic.Bool }

// WithConnection returns ctx for the requests of one TCP connection, to be
// called once per accepted connection (http.Server.ConnContext). The
// pending sandbox changes are then drained before the connection's first
// request only, not before every request. That is enough: a change that
// matters to a connection (its sandbox's ARP, or its predecessor's veth
// going) is queued before its handshake, so before its first request; and
// every later request on it comes from the sandbox that made the
// handshake, since a TCP connection cannot move to another network
// namespace. Changes that come later are applied by the next connection's
// first request, or by the watcher in the background. Keep-alive clients
// (every SDK) so pay for one read of the netlink socket per connection
// instead of one per request.
func WithConnection(ctx context.Context) context.Context {
	return context.WithValue(ctx, connKey{}, &connMark{})
}

// Documents is Credentials with the documents built from them when they
// were received, which the metadata API serves.
func (c *Cache) Documents(ctx context.Context, ip string) (*metadoc.Docs, error) {
	if c.cfg.Changes != nil {
		conn, _ := ctx.Value(connKey{}).(*connMark)
		if conn == nil || !conn.drained.Load() {
			if err := c.cfg.Changes.Drain(c.applyChange); err != nil {
				c.answered[resultError].Inc()
				return nil, httperr.New(http.StatusServiceUnavailable,
					fmt.Errorf("reading sandbox changes: %w", err))
			}
			if conn != nil {
				conn.drained.Store(true)
			}
		}
	}
	now := c.cfg.Now()
	if a, ok := c.cached(ip, now); ok {
		c.answered[a.res].Inc()
		return a.docs, a.err
	}
	c.mu.Lock()
	if r, ok := c.refused[ip]; ok {
		if now.Before(r.until) {
			c.mu.Unlock()
			c.answered[resultRefused].Inc()
			return nil, r.err
		}
		delete(c.refused, ip)
	}
	if d, res, ok := c.servableLocked(c.entries[ip], now); ok {
		c.mu.Unlock()
		c.answered[res].Inc()
		return d, nil
	}
	if e := c.entries[ip]; e != nil && e.pushed {
		c.mu.Unlock()
		if d, ok := c.bindPushed(ip, e, now); ok {
			c.answered[resultPushed].Inc()
			return d, nil
		}
		// Bound by a request meanwhile, or not to be served: as if it
		// had never come.
		c.mu.Lock()
		if d, res, ok := c.servableLocked(c.entries[ip], now); ok {
			c.mu.Unlock()
			c.answered[res].Inc()
			return d, nil
		}
	}
	fl := c.joinLocked(ctx, ip)
	fl.waiters++
	c.mu.Unlock()

	select {
	case <-fl.done:
	case <-ctx.Done():
		c.mu.Lock()
		fl.waiters--
		c.mu.Unlock()
		c.answered[resultError].Inc()
		return nil, httperr.New(http.StatusServiceUnavailable,
			fmt.Errorf("waiting for credentials: %w", context.Cause(ctx)))
	}
	c.answered[fl.res].Inc()
	if fl.err != nil {
		return nil, fl.err
	}
	return fl.docs, nil
}

// answer is how a request was answered without a fetch.
type answer struct {
	docs *metadoc.Docs
	res  result
	err  error
}

// cached answers the request for ip under the read lock when what is
// cached decides it: a standing refusal, or an entry that may be served.
// It reports false when a server must be asked (or an expired refusal
// dropped), which takes the write lock.
func (c *Cache) cached(ip string, now time.Time) (answer, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if r, found := c.refused[ip]; found {
		if now.Before(r.until) {
			return answer{res: resultRefused, err: r.err}, true
		}
		return answer{}, false
	}
	d, res, ok := c.servableLocked(c.entries[ip], now)
	return answer{docs: d, res: res}, ok
}

// servableLocked returns e's documents if e may be served without asking a
// server: fresh, or recently served stale after a failed fetch. c.mu must
// be held, read or write.
func (c *Cache) servableLocked(e *entry, now time.Time) (*metadoc.Docs, result, bool) {
	if e == nil || e.pushed || !c.confirmedLocked(e) {
		return nil, "", false
	}
	switch {
	case c.fresh(e, now):
		return e.docs, resultHit, true
	case now.Before(e.staleUntil) && e.pod.Credentials.Remaining(now) > c.cfg.MinServe:
		return e.docs, resultStale, true
	}
	return nil, "", false
}

// confirmedLocked reports whether the agent can vouch that e's sandbox
// still holds the address: its sandbox is known (SandboxChanged would have
// dropped it otherwise), or the pod stream is up and would report the pod
// leaving. c.mu must be held.
func (c *Cache) confirmedLocked(e *entry) bool {
	return e.known || c.streamSynced || c.cfg.Sandbox == nil
}

// fresh reports whether e may be served without asking a server.
func (c *Cache) fresh(e *entry, now time.Time) bool {
	if e.recheck {
		return false
	}
	left := e.pod.Credentials.Remaining(now)
	return left > c.cfg.Refresh || (left > c.cfg.MinServe && now.Sub(e.fetchedAt) < c.cfg.RefreshInterval)
}

// joinLocked returns the fetch under way for ip, starting one if there is
// none. The fetch keeps ctx's values but not its cancellation: other callers
// may be waiting for it. c.mu must be held.
func (c *Cache) joinLocked(ctx context.Context, ip string) *flight {
	if fl := c.flights[ip]; fl != nil {
		return fl
	}
	fl := &flight{done: make(chan struct{})}
	c.flights[ip] = fl
	go c.fetch(context.WithoutCancel(ctx), ip, fl)
	return fl
}

// fetch runs one flight to completion and publishes its result.
func (c *Cache) fetch(ctx context.Context, ip string, fl *flight) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.FetchTimeout)
	defer cancel()
	// The sandbox is looked up before the server is asked: if a successor
	// pod takes the address meanwhile, the recorded sandbox is its
	// predecessor's, so the entry can only be refused later, never served
	// to the wrong pod.
	id, known := c.identity(ip)
	c.mu.Lock()
	fl.identified, fl.sandbox, fl.known = true, id, known
	c.mu.Unlock()
	pod, err := c.f.Fetch(ctx, ip)
	now := c.cfg.Now()

	if err == nil {
		// Built here, once per answer, outside the lock.
		docs := metadoc.Build(pod, now)
		c.mu.Lock()
		c.storeLocked(ip, fl, docs, id, known, now)
		c.finishLocked(ip, fl, docs, resultMiss, nil)
		c.mu.Unlock()
		return
	}

	status := httperr.Status(err, http.StatusServiceUnavailable)
	if definitive(status, err) {
		c.mu.Lock()
		// A forgotten flight's refusal is about a pod already dropped; an
		// entry now present came from a newer fetch.
		if e := c.entries[ip]; e != nil && !fl.forgotten {
			delete(c.entries, ip)
			c.log.Info("dropped cached credentials: server refused",
				"namespace", e.pod.Namespace, "pod", e.pod.Name, "pod_uid", e.pod.PodUID, "pod_ip", ip,
				"status", status, "error", err)
		}
		if (status == http.StatusForbidden || status == http.StatusNotFound) && !fl.forgotten {
			c.refused[ip] = refusal{err: err, until: now.Add(refusalTTL), sandbox: id, known: known}
		}
		c.finishLocked(ip, fl, nil, resultError, err)
		c.mu.Unlock()
		return
	}

	// The fetch may have used up ctx; the check gets its own time.
	if e := c.staleCandidate(ip, fl, now); e != nil {
		c.mu.Lock()
		if c.entries[ip] == e && !fl.forgotten {
			if e.staleUntil.IsZero() {
				c.log.Warn("no server answered; serving cached credentials",
					"namespace", e.pod.Namespace, "pod", e.pod.Name, "pod_uid", e.pod.PodUID, "pod_ip", ip,
					"role_arn", e.pod.RoleARN, "remaining", e.pod.Credentials.Remaining(now).Round(time.Second), "error", err)
			}
			e.staleUntil = now.Add(staleRecheck)
			c.finishLocked(ip, fl, e.docs, resultStale, nil)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.finishLocked(ip, fl, nil, resultError, httperr.New(status, err))
	c.mu.Unlock()
}

// definitive reports whether a fetch error proves that cached credentials
// for the address must not be served any more.
func definitive(status int, err error) bool {
	if status >= 400 && status < 500 {
		return true
	}
	return errors.Is(err, ErrPodUnknownSynced) || errors.Is(err, ErrAddressConflict)
}

// staleCandidate returns the entry for ip if it may be served although no
// server answered: enough validity left and the same sandbox.
func (c *Cache) staleCandidate(ip string, fl *flight, now time.Time) *entry {
	c.mu.Lock()
	e := c.entries[ip]
	// A pushed entry never served is bound to no sandbox yet.
	ok := e != nil && !e.pushed && !fl.forgotten && e.pod.Credentials.Remaining(now) > c.cfg.MinServe
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if c.cfg.Sandbox == nil {
		return e
	}
	if !e.known {
		return nil
	}
	if cur, known := c.identity(ip); !known || !cur.Same(e.sandbox) {
		c.log.Warn("another sandbox holds the address now; not serving cached credentials",
			"namespace", e.pod.Namespace, "pod", e.pod.Name, "pod_uid", e.pod.PodUID, "pod_ip", ip,
			"sandbox", e.sandbox.String(), "current_sandbox", cur.String())
		return nil
	}
	return e
}

// identity returns the sandbox holding ip and whether it could be told.
func (c *Cache) identity(ip string) (sandbox.ID, bool) {
	if c.cfg.Sandbox == nil {
		return sandbox.ID{}, false
	}
	addr, err := netip.ParseAddr(ip)
	if err == nil {
		var id sandbox.ID
		if id, err = c.cfg.Sandbox(addr); err == nil {
			return id, true
		}
	}
	c.log.Warn("cannot tell the sandbox of a pod address", "pod_ip", ip, "error", err)
	return sandbox.ID{}, false
}

// storeLocked records a successful answer unless the pod it may describe
// left while it was fetched. c.mu must be held.
func (c *Cache) storeLocked(ip string, fl *flight, docs *metadoc.Docs, id sandbox.ID, known bool, now time.Time) {
	pod := *docs.Pod()
	if fl.forgotten || (fl.expectUID != "" && fl.expectUID != pod.PodUID) {
		return
	}
	if pod.Credentials.Remaining(now) <= 0 {
		return
	}
	if old := c.entries[ip]; old != nil && old.pod.PodUID != pod.PodUID {
		c.log.Info("another pod holds the address; replacing cached credentials",
			"pod_ip", ip, "old_pod_uid", old.pod.PodUID, "namespace", pod.Namespace, "pod", pod.Name, "pod_uid", pod.PodUID)
	}
	c.entries[ip] = &entry{pod: pod, docs: docs, fetchedAt: now, sandbox: id, known: known}
}

// finishLocked publishes a flight's result and retires it, so that the
// next request sees the stored entry or starts a new fetch. c.mu must be
// held.
func (c *Cache) finishLocked(ip string, fl *flight, docs *metadoc.Docs, res result, err error) {
	if c.flights[ip] == fl {
		delete(c.flights, ip)
	}
	fl.docs, fl.res, fl.err = docs, res, err
	close(fl.done)
}

// Forget drops everything cached for ip, including the answer of a fetch
// under way: the agent calls it when the pod at ip is deleted or changed.
func (c *Cache) Forget(ip string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetLocked(ip)
}

func (c *Cache) forgetLocked(ip string) {
	delete(c.entries, ip)
	delete(c.refused, ip)
	if fl := c.flights[ip]; fl != nil {
		fl.forgotten = true
		delete(c.flights, ip)
	}
}

// Retain keeps only the entries whose address maps to the same pod UID in
// present (address -> UID), the pods a server listed on this node after a
// resync. Fetches under way are held to the same rule when they finish.
// The snapshot says who holds an address, not whether the pod's role,
// External ID or namespace policy changed meanwhile (the events saying so
// may be among those missed), so a kept entry is checked with a server on
// its next request.
func (c *Cache) Retain(present map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.refused)
	for ip, e := range c.entries {
		// A pushed entry never served goes too: it is only as good as the
		// stream it came on, and the next request asks a server anyway.
		if uid, ok := present[ip]; !ok || uid != e.pod.PodUID || e.pushed {
			delete(c.entries, ip)
			continue
		}
		e.recheck = true
	}
	for ip, fl := range c.flights {
		uid, ok := present[ip]
		if !ok || uid == "" {
			fl.forgotten = true
			delete(c.flights, ip)
			continue
		}
		fl.expectUID = uid
	}
}

// SandboxChanged applies a change of the node's links or neighbours (from
// a sandbox.Watcher): an entry whose interface is gone, or whose address
// now answers from another MAC address on its interface, belongs to a
// sandbox that no longer holds the address, and is dropped with any fetch
// under way for it and any refusal given to it.
func (c *Cache) SandboxChanged(ch sandbox.Change) {
	if ch.Lost {
		c.recheckAll()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case ch.LinkGone != 0:
		// Many addresses may sit behind one interface (a bridge).
		for ip, e := range c.entries {
			if e.known && e.sandbox.LinkIndex == ch.LinkGone {
				c.dropEndedLocked(ip, e)
			}
		}
		clear(c.refused)
	case ch.Neighbour.IsValid():
		// One address changed: look it up rather than scan every entry
		// under the lock the request path takes, as neighbour updates
		// are frequent on a busy node. Most of them are state changes of
		// the same sandbox (reachable, stale, probe): they end nothing.
		ip := ch.Neighbour.String()
		if e := c.entries[ip]; e != nil {
			switch {
			case e.pushed && !pushedEnds(ch, e.sandbox):
				// Most likely the pod's own first ARP: the entry is
				// bound by the first request, which looks again.
				e.moves++
			case e.pushed || ends(ch, e.sandbox, e.known):
				c.dropEndedLocked(ip, e)
			}
		}
		if r, ok := c.refused[ip]; ok && (!r.known || ends(ch, r.sandbox, true)) {
			delete(c.refused, ip)
		}
		// A fetch that has not looked up its sandbox yet will see the
		// change; one that has may have recorded the previous MAC.
		if fl := c.flights[ip]; fl != nil && fl.identified && ends(ch, fl.sandbox, fl.known) {
			fl.forgotten = true
			delete(c.flights, ip)
		}
	}
}

// ends reports whether neighbour change ch ends the sandbox id recorded
// for its address: the same interface now has another MAC there. An
// identity that was never known cannot be told apart, so any change ends
// it.
func ends(ch sandbox.Change, id sandbox.ID, known bool) bool {
	if !known {
		return true
	}
	return id.LinkIndex == ch.LinkIndex && id.MAC != ch.MAC
}

// pushedEnds reports whether neighbour change ch ends the sandbox a pushed
// entry recorded when it arrived, before any request: only a MAC address
// known then and another now on the same interface tells another sandbox
// apart, since the pod's own first packet brings its MAC.
func pushedEnds(ch sandbox.Change, id sandbox.ID) bool {
	return id.MAC != "" && id.LinkIndex == ch.LinkIndex && id.MAC != ch.MAC
}

// recheckAll looks up the sandbox of every cached address again, after
// changes were lost: what no longer matches is dropped, and every fetch
// under way and every refusal is forgotten, since they may have seen the
// lost change or not.
func (c *Cache) recheckAll() {
	c.mu.Lock()
	c.log.Warn("sandbox changes were lost; checking every cached address again")
	snapshot := make(map[string]*entry, len(c.entries))
	for ip, e := range c.entries {
		if e.pushed {
			// A lost change may have been its sandbox's: never served,
			// it costs only a fetch.
			delete(c.entries, ip)
			continue
		}
		snapshot[ip] = e
	}
	for ip, fl := range c.flights {
		fl.forgotten = true
		delete(c.flights, ip)
	}
	clear(c.refused)
	c.mu.Unlock()
	for ip, e := range snapshot {
		if !e.known {
			continue
		}
		if cur, ok := c.identity(ip); ok && cur.Same(e.sandbox) {
			continue
		}
		c.mu.Lock()
		if c.entries[ip] == e {
			c.dropEndedLocked(ip, e)
		}
		c.mu.Unlock()
	}
}

// dropEndedLocked forgets e, whose sandbox no longer holds ip. c.mu must be
// held.
func (c *Cache) dropEndedLocked(ip string, e *entry) {
	c.forgetLocked(ip)
	c.log.Info("dropped cached credentials: the pod's sandbox is gone",
		"namespace", e.pod.Namespace, "pod", e.pod.Name, "pod_uid", e.pod.PodUID, "pod_ip", ip,
		"sandbox", e.sandbox.String())
}

// PodStreamSynced records whether the agent's pod stream from a server is
// open and has delivered its snapshot. While it is not, nothing reports a
// pod leaving, and only entries whose sandbox is known are served.
func (c *Cache) PodStreamSynced(synced bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streamSynced = synced
	if synced {
		return
	}
	// Pushed entries never served rely on the stream to hear of their pod
	// leaving before they are bound to a sandbox.
	for ip, e := range c.entries {
		if e.pushed {
			delete(c.entries, ip)
		}
	}
}

// Push stores credentials a server sent for the pod at ip before it asked,
// on the pod stream, after the event that announced that pod. They wait
// for the first request, which binds them to its sandbox (bindPushed). A
// push is ignored while the stream is not synced, while a refusal for ip
// stands or a fetch for it is under way (their answers are newer), when an
// entry bound to a sandbox holds ip already, and when the sandbox holding
// ip cannot be told. It reports whether the credentials were kept.
func (c *Cache) Push(ip string, pod creds.PodCredentials) bool {
	now := c.cfg.Now()
	c.mu.RLock()
	prev, ok := c.entries[ip], c.pushable(ip, pod, now)
	c.mu.RUnlock()
	if !ok {
		c.pushes.WithLabelValues(string(resultIgnored)).Inc()
		return false
	}
	// Looked up before storing: a change that comes between is not seen
	// here, but the first request looks again and drops the entry if the
	// interface or a known MAC differs.
	id, known := c.identity(ip)
	if c.cfg.Sandbox != nil && !known {
		c.pushes.WithLabelValues(string(resultIgnored)).Inc()
		return false
	}
	docs := metadoc.Build(pod, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[ip] != prev || !c.pushable(ip, pod, now) {
		c.pushes.WithLabelValues(string(resultIgnored)).Inc()
		return false
	}
	c.entries[ip] = &entry{pod: pod, docs: docs, fetchedAt: now, sandbox: id, known: known, pushed: true}
	c.pushes.WithLabelValues(string(resultStored)).Inc()
	return true
}

// pushable reports whether a push for ip may be stored now. c.mu must be
// held, read or write.
func (c *Cache) pushable(ip string, pod creds.PodCredentials, now time.Time) bool {
	if !c.streamSynced || pod.Credentials.Remaining(now) <= 0 {
		return false
	}
	if _, refused := c.refused[ip]; refused {
		return false
	}
	if c.flights[ip] != nil {
		return false
	}
	e := c.entries[ip]
	return e == nil || e.pushed
}

// bindPushed serves pushed entry e to the request for ip that comes first:
// it looks up the sandbox holding ip now and binds e to it, unless that is
// not the sandbox e recorded when it arrived (then e is dropped). It
// reports false when e may not be served this way: the stream is down, e
// is no longer fresh or no longer pushed (a request bound it meanwhile),
// or a neighbour change of ip came during the lookup.
func (c *Cache) bindPushed(ip string, e *entry, now time.Time) (*metadoc.Docs, bool) {
	c.mu.RLock()
	moves := e.moves
	ok := c.entries[ip] == e && e.pushed && c.streamSynced && c.fresh(e, now)
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	// The lookup (netlink) is made outside the lock; moves tells whether
	// it may be stale by the time the lock is taken again.
	cur, known := c.identity(ip)
	if c.cfg.Sandbox != nil && !known {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[ip] != e || !e.pushed || e.moves != moves || !c.streamSynced {
		return nil, false
	}
	if c.cfg.Sandbox != nil && !cur.Same(e.sandbox) {
		c.dropEndedLocked(ip, e)
		return nil, false
	}
	e.pushed, e.sandbox, e.known = false, cur, known
	return e.docs, true
}

// Len returns the number of addresses with cached credentials.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Run refreshes due entries and drops expired ones every RefreshInterval
// until ctx is done; it then returns nil.
func (c *Cache) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c.refresh(ctx)
		}
	}
}

// refresh runs one scan: expired entries go, due entries are fetched again
// (sharing any fetch a request already started) and the scan waits for
// those fetches, so that scans never overlap.
func (c *Cache) refresh(ctx context.Context) {
	now := c.cfg.Now()
	type due struct {
		ip string
		fl *flight
	}
	var pending []due
	c.mu.Lock()
	for ip, r := range c.refused {
		if !now.Before(r.until) {
			delete(c.refused, ip)
		}
	}
	for ip, e := range c.entries {
		left := e.pod.Credentials.Remaining(now)
		switch {
		case left <= 0:
			delete(c.entries, ip)
			c.log.Info("dropped expired credentials", "namespace", e.pod.Namespace, "pod", e.pod.Name, "pod_ip", ip)
		case left <= c.cfg.Refresh:
			pending = append(pending, due{ip: ip, fl: c.joinLocked(ctx, ip)})
		}
	}
	c.mu.Unlock()
	for _, d := range pending {
		select {
		case <-d.fl.done:
		case <-ctx.Done():
			return
		}
		if d.fl.res == resultMiss {
			c.refreshes.WithLabelValues(string(resultOK)).Inc()
			continue
		}
		c.refreshes.WithLabelValues(string(resultError)).Inc()
		c.log.Debug("refresh of cached credentials failed", "pod_ip", d.ip, "error", d.fl.err)
	}
}
