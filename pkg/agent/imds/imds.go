// Package imds is the agent's HTTP server that unmodified AWS SDKs talk to,
// reached by pods through a DNAT of 169.254.169.254:80. It serves each pod
// its own role and nothing of the node's.
//
// The caller is identified only by the TCP source address: headers such as
// X-Forwarded-For are chosen by the pod and so prove nothing. Policy is not
// decided here; a Provider (the agent's client of the server) answers for the
// pod's address and its errors carry the HTTP status to return. Every path is
// made canonical before any decision, so that no spelling of a node-only
// target (iam/, user-data, signed identity documents) can slip through the
// allow-list to the real metadata service.
package imds

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/agent/metadoc"
)

// Provider returns the documents of the pod at ip: what the server
// answered, possibly cached, with the bodies built when it was received.
// Errors carry their HTTP status via httperr (404 no role, 403 denied, 503
// unknown/unavailable); an error without one means 503.
type Provider interface {
	Documents(ctx context.Context, ip string) (*metadoc.Docs, error)
}

// Config tunes the handler.
type Config struct {
	// RequireIMDSv2 refuses requests without a valid token (401), as
	// podiam's --require-imdsv2.
	RequireIMDSv2 bool
	// AllowRoute is KIAM's --allow-route-regexp, matched against the
	// canonical path; nil or "^$" proxies nothing. Never-proxied targets are
	// refused whatever it matches.
	AllowRoute *regexp.Regexp
	// Upstream is the real metadata service for allowed routes, e.g.
	// "http://169.254.169.254". Required when AllowRoute can match.
	Upstream string
	// UpstreamClient may be nil (a client with short timeouts is built).
	// Redirects are never followed whichever client is used.
	UpstreamClient *http.Client
	// TokenKey is the HMAC key for IMDSv2 tokens (at least 16 bytes); nil
	// means 32 random bytes per process.
	TokenKey []byte
	// MaxPerIP caps concurrent requests per source IP; excess gets 429.
	// 0 means DefaultMaxPerIP.
	MaxPerIP int
	// Ready reports agent readiness for /health. nil means always ready.
	Ready func() error
	// DeepCheck asks a server, for /health?deep=1. It runs at most once per
	// DeepCheckInterval; requests in between get the last result. nil means
	// no deep check (treated as ok).
	DeepCheck func(ctx context.Context) error
	// Now is the clock for tokens and credential times; nil means time.Now.
	Now func() time.Time
}

// Defaults and fixed limits.
const (
	DefaultMaxPerIP   = 32
	DeepCheckInterval = 5 * time.Second
	// deepCheckTimeout bounds one DeepCheck call.
	deepCheckTimeout = 2 * time.Second
	minTokenKeyLen   = 16
)

// ErrInvalidConfig is returned by New for a configuration that cannot work.
var ErrInvalidConfig = errors.New("imds: invalid config")

// Handler serves the metadata API to pods. It is safe for concurrent use.
type Handler struct {
	p          Provider
	log        *slog.Logger
	m          metrics
	key        []byte
	requireV2  bool
	allowRoute *regexp.Regexp // nil: nothing proxied
	up         *upstream      // nil when nothing can be proxied
	perIP      *addrLimit     // requests in flight per source address
	hdr        headerValues
	ready      func() error
	deepCheck  func(ctx context.Context) error
	now        func() time.Time

	deepMu  sync.Mutex
	deepAt  time.Time
	deepErr error
	deepRan bool
}

// New builds a Handler. reg may be nil (metrics not registered); log may be
// nil (discarded).
func New(cfg Config, p Provider, reg prometheus.Registerer, log *slog.Logger) (*Handler, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil provider", ErrInvalidConfig)
	}
	if cfg.MaxPerIP < 0 {
		return nil, fmt.Errorf("%w: MaxPerIP %d < 0", ErrInvalidConfig, cfg.MaxPerIP)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		p:         p,
		log:       log,
		requireV2: cfg.RequireIMDSv2,
		ready:     cfg.Ready,
		deepCheck: cfg.DeepCheck,
		now:       cfg.Now,
		hdr:       newHeaderValues(),
	}
	if cfg.MaxPerIP == 0 {
		cfg.MaxPerIP = DefaultMaxPerIP
	}
	h.perIP = newAddrLimit(cfg.MaxPerIP)
	if h.now == nil {
		h.now = time.Now
	}
	switch {
	case cfg.TokenKey == nil:
		h.key = make([]byte, 32)
		if _, err := rand.Read(h.key); err != nil {
			return nil, fmt.Errorf("imds: generating token key: %w", err)
		}
	case len(cfg.TokenKey) < minTokenKeyLen:
		return nil, fmt.Errorf("%w: TokenKey shorter than %d bytes", ErrInvalidConfig, minTokenKeyLen)
	default:
		h.key = append([]byte(nil), cfg.TokenKey...)
	}
	if cfg.AllowRoute != nil && cfg.AllowRoute.String() != "^$" && cfg.AllowRoute.String() != "" {
		if cfg.Upstream == "" {
			return nil, fmt.Errorf("%w: AllowRoute %q set without Upstream", ErrInvalidConfig, cfg.AllowRoute)
		}
		up, err := newUpstream(cfg.Upstream, cfg.UpstreamClient, h.now)
		if err != nil {
			return nil, err
		}
		h.allowRoute = cfg.AllowRoute
		h.up = up
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	h.m = m
	return h, nil
}

// ServeHTTP answers one metadata request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ip, class, o := h.serve(w, r)
	h.m.observe(class, o.status, time.Since(start))
	if o.status < 400 {
		return
	}
	level := slog.LevelInfo
	switch {
	case o.quiet:
		level = slog.LevelDebug
	case o.status >= 500:
		level = slog.LevelWarn
	}
	h.log.Log(r.Context(), level, "metadata request refused",
		slog.String("pod_ip", ip), slog.String("class", string(class)),
		slog.Int("status", o.status), slog.String("reason", o.reason))
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) (ipStr string, class requestClass, o outcome) {
	ip, ipStr, ok := sourceIP(r.RemoteAddr)
	if !ok {
		return r.RemoteAddr, classOther, h.fail(w, http.StatusBadRequest, "unparsable remote address")
	}
	canon, pathOK := Canonical(r.URL.EscapedPath())
	rt := route{kind: kindOther}
	if pathOK {
		rt = classify(canon)
	}
	class = h.classOf(rt, canon, r.Method)

	slot, ok := h.perIP.acquire(ip)
	if !ok {
		return ipStr, class, h.fail(w, http.StatusTooManyRequests, "too many concurrent requests from this address")
	}
	defer slot.release()

	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return ipStr, class, h.fail(w, http.StatusBadRequest, "request has a body")
	}
	if !pathOK {
		return ipStr, class, h.fail(w, http.StatusBadRequest, "unusable path")
	}

	switch rt.kind {
	case kindPing:
		if r.Method != http.MethodGet {
			return ipStr, class, h.methodNotAllowed(w, http.MethodGet)
		}
		return ipStr, class, h.text(w, http.StatusOK, "pong")
	case kindHealth:
		if r.Method != http.MethodGet {
			return ipStr, class, h.methodNotAllowed(w, http.MethodGet)
		}
		return ipStr, class, h.health(w, r)
	case kindToken:
		if r.Method != http.MethodPut {
			return ipStr, class, h.methodNotAllowed(w, http.MethodPut)
		}
		return ipStr, class, h.putToken(w, r, ipStr)
	}

	if r.Method != http.MethodGet {
		return ipStr, class, h.methodNotAllowed(w, http.MethodGet)
	}
	if o, ok := h.checkToken(w, r, ipStr); !ok {
		return ipStr, class, o
	}
	switch rt.kind {
	case kindRole:
		return ipStr, class, h.roleName(w, r, ipStr)
	case kindCreds:
		return ipStr, class, h.credentials(w, r, ipStr, rt.name)
	case kindInfo:
		return ipStr, class, h.info(w, r, ipStr)
	case kindForbidden:
		o := h.fail(w, http.StatusNotFound, "never-proxied target")
		return ipStr, class, o
	}
	if class == classProxy {
		return ipStr, class, h.proxy(w, r, canon)
	}
	o = h.fail(w, http.StatusNotFound, "path not served")
	o.quiet = true
	return ipStr, class, o
}

func (h *Handler) classOf(rt route, canon, method string) requestClass {
	switch rt.kind {
	case kindPing, kindHealth:
		return classHealth
	case kindToken:
		return classToken
	case kindRole:
		return classRole
	case kindCreds:
		return classCredentials
	case kindInfo:
		return classInfo
	case kindOther:
		if h.allowRoute != nil && method == http.MethodGet && h.allowRoute.MatchString(canon) {
			return classProxy
		}
	}
	return classOther
}

// sourceIP is the caller's identity: the TCP peer address, with IPv4-mapped
// IPv6 unmapped and any zone dropped so one pod has one spelling, and that
// spelling (the address's String), taken from remote when it is there
// already, so that a request from a pod allocates no string for it.
func sourceIP(remote string) (netip.Addr, string, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		a, err := netip.ParseAddr(remote)
		if err != nil {
			return netip.Addr{}, "", false
		}
		a = a.Unmap().WithZone("")
		return a, a.String(), true
	}
	a := ap.Addr().Unmap().WithZone("")
	host := remote[:strings.LastIndexByte(remote, ':')]
	if ap.Addr().Is4() {
		// ParseAddrPort accepts one spelling of an IPv4 address (no
		// leading zeros, four decimal fields): the text is its String.
		return a, host, true
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	var buf [64]byte
	if string(a.AppendTo(buf[:0])) == host {
		return a, host, true
	}
	return a, a.String(), true
}
