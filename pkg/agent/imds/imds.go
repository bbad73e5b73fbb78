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
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
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

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/creds"
)

// Provider returns the role and credentials of the pod at ip (what the server
// answered, possibly cached). Errors carry their HTTP status via httperr
// (404 no role, 403 denied, 503 unknown/unavailable); an error without one
// means 503.
type Provider interface {
	Credentials(ctx context.Context, ip string) (creds.PodCredentials, error)
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
	// timeLayout is what botocore parses with strptime: UTC, no fraction.
	timeLayout = "2006-01-02T15:04:05Z"
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
	maxPerIP   int
	ready      func() error
	deepCheck  func(ctx context.Context) error
	now        func() time.Time

	mu       sync.Mutex
	inflight map[netip.Addr]int

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
		maxPerIP:  cfg.MaxPerIP,
		ready:     cfg.Ready,
		deepCheck: cfg.DeepCheck,
		now:       cfg.Now,
		inflight:  map[netip.Addr]int{},
	}
	if h.maxPerIP == 0 {
		h.maxPerIP = DefaultMaxPerIP
	}
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

// outcome is how a request ended, for the metric and the log line. reason
// must never hold credentials or tokens.
type outcome struct {
	status int
	reason string
	// quiet marks refusals that are routine noise (404 on a path we do not
	// serve): logged at debug only.
	quiet bool
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
		slog.String("pod_ip", ip), slog.String("class", class),
		slog.Int("status", o.status), slog.String("reason", o.reason))
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) (ipStr, class string, o outcome) {
	ip, ok := sourceIP(r.RemoteAddr)
	if !ok {
		return r.RemoteAddr, classOther, h.fail(w, http.StatusBadRequest, "unparsable remote address")
	}
	ipStr = ip.String()
	canon, pathOK := Canonical(r.URL.EscapedPath())
	rt := route{kind: kindOther}
	if pathOK {
		rt = classify(canon)
	}
	class = h.classOf(rt, canon, r.Method)

	if !h.acquire(ip) {
		return ipStr, class, h.fail(w, http.StatusTooManyRequests, "too many concurrent requests from this address")
	}
	defer h.release(ip)

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

func (h *Handler) classOf(rt route, canon, method string) string {
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
// IPv6 unmapped and any zone dropped so one pod has one spelling.
func sourceIP(remote string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if a, err := netip.ParseAddr(remote); err == nil {
		return a.Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

func (h *Handler) acquire(ip netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inflight[ip] >= h.maxPerIP {
		return false
	}
	h.inflight[ip]++
	return true
}

func (h *Handler) release(ip netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inflight[ip] <= 1 {
		delete(h.inflight, ip)
		return
	}
	h.inflight[ip]--
}

// checkToken applies IMDSv2: a token, if sent, must be ours, for this IP and
// unexpired; without one the request is IMDSv1 and allowed unless v2 is
// required.
func (h *Handler) checkToken(w http.ResponseWriter, r *http.Request, ip string) (outcome, bool) {
	toks := r.Header.Values(headerToken)
	if len(toks) == 0 {
		if h.requireV2 {
			return h.fail(w, http.StatusUnauthorized, "imdsv2 token required"), false
		}
		return outcome{}, true
	}
	if len(toks) != 1 || !validToken(h.key, ip, toks[0], h.now()) {
		return h.fail(w, http.StatusUnauthorized, "invalid or expired imdsv2 token"), false
	}
	return outcome{}, true
}

// putToken mints an IMDSv2 token locally; token requests are never forwarded.
// A token request carrying X-Forwarded-For came through a proxy, which the
// real service refuses too (it would let the proxy's clients share a token).
func (h *Handler) putToken(w http.ResponseWriter, r *http.Request, ip string) outcome {
	if _, ok := r.Header[http.CanonicalHeaderKey("X-Forwarded-For")]; ok {
		return h.fail(w, http.StatusForbidden, "token request with x-forwarded-for")
	}
	vals := r.Header.Values(headerTokenTTL)
	if len(vals) != 1 {
		return h.fail(w, http.StatusBadRequest, "token ttl header missing or repeated")
	}
	ttl, ok := parseTTL(vals[0])
	if !ok {
		return h.fail(w, http.StatusBadRequest, "token ttl not an integer in 1..21600")
	}
	tok := mintToken(h.key, ip, h.now().Add(time.Duration(ttl)*time.Second))
	// aws-sdk-go-v2 reads the TTL back from this header and fails without it.
	w.Header().Set(headerTokenTTL, vals[0])
	return h.text(w, http.StatusOK, tok)
}

// lookup asks the Provider about the pod at ip and checks the answer enough
// to fail closed: no role means 404, and a malformed ARN or missing or
// expired credentials are never served.
func (h *Handler) lookup(r *http.Request, ip string) (creds.PodCredentials, string, outcome, bool) {
	pc, err := h.p.Credentials(r.Context(), ip)
	if err != nil {
		st := httperr.Status(err, http.StatusServiceUnavailable)
		if st < 400 || st > 599 {
			st = http.StatusServiceUnavailable
		}
		return pc, "", outcome{status: st, reason: err.Error()}, false
	}
	if pc.RoleARN == "" {
		return pc, "", outcome{status: http.StatusNotFound, reason: "pod has no role"}, false
	}
	a, ok := parseRoleARN(pc.RoleARN)
	if !ok {
		return pc, "", outcome{status: http.StatusServiceUnavailable, reason: "provider returned a malformed role arn"}, false
	}
	return pc, a.name, outcome{}, true
}

func (h *Handler) roleName(w http.ResponseWriter, r *http.Request, ip string) outcome {
	_, name, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	return h.text(w, http.StatusOK, name)
}

// credentialsDoc is the document SDKs parse; field order follows the real
// service.
type credentialsDoc struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

func (h *Handler) credentials(w http.ResponseWriter, r *http.Request, ip, asked string) outcome {
	pc, name, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	if asked != name {
		return h.fail(w, http.StatusNotFound, "role name is not the pod's role")
	}
	c := pc.Credentials
	now := h.now()
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || !c.Expiration.After(now) {
		return h.fail(w, http.StatusServiceUnavailable, "provider returned missing or expired credentials")
	}
	updated := c.LastUpdated
	if updated.IsZero() {
		updated = now
	}
	return h.json(w, credentialsDoc{
		Code:            "Success",
		LastUpdated:     updated.UTC().Format(timeLayout),
		Type:            "AWS-HMAC",
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		Token:           c.SessionToken,
		Expiration:      c.Expiration.UTC().Format(timeLayout),
	})
}

type infoDoc struct {
	Code               string `json:"Code"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn"`
	InstanceProfileID  string `json:"InstanceProfileId"`
}

// info describes the pod's role as if it were an instance profile; the
// node's profile is never revealed.
func (h *Handler) info(w http.ResponseWriter, r *http.Request, ip string) outcome {
	pc, _, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	a, _ := parseRoleARN(pc.RoleARN)
	updated := pc.Credentials.LastUpdated
	if updated.IsZero() {
		updated = h.now()
	}
	return h.json(w, infoDoc{
		Code:               "Success",
		LastUpdated:        updated.UTC().Format(timeLayout),
		InstanceProfileArn: "arn:" + a.partition + ":iam::" + a.account + ":instance-profile/" + a.name,
		InstanceProfileID:  instanceProfileID(pc.RoleARN),
	})
}

// roleARN is the part of an IAM role ARN the metadata API shows.
type roleARN struct {
	partition, account, name string
}

// parseRoleARN accepts arn:<partition>:iam::<account>:role[/path]/<name>.
func parseRoleARN(arn string) (roleARN, bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[1] == "" || parts[2] != "iam" || parts[3] != "" || parts[4] == "" {
		return roleARN{}, false
	}
	res, ok := strings.CutPrefix(parts[5], "role/")
	if !ok {
		return roleARN{}, false
	}
	name := res[strings.LastIndexByte(res, '/')+1:]
	if name == "" {
		return roleARN{}, false
	}
	return roleARN{partition: parts[1], account: parts[4], name: name}, true
}

// instanceProfileID is a stable pseudo ID in the real format (AIPA + 17
// uppercase alphanumerics), derived from the role ARN so that it is the same
// on every node and across restarts.
func instanceProfileID(arn string) string {
	sum := sha256.Sum256([]byte(arn))
	return "AIPA" + base32.StdEncoding.EncodeToString(sum[:])[:17]
}

func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, canon string) outcome {
	p, err := h.up.get(r.Context(), canon)
	if err != nil {
		return h.fail(w, http.StatusBadGateway, err.Error())
	}
	if p.contentType != "" {
		w.Header().Set("Content-Type", p.contentType)
	}
	w.WriteHeader(p.status)
	_, _ = w.Write(p.body)
	if p.status >= 400 {
		return outcome{status: p.status, reason: "upstream refused", quiet: p.status == http.StatusNotFound}
	}
	return outcome{status: p.status}
}

// health reports readiness without anything about the node: the reasons go
// to the log, the body only says which check failed.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) outcome {
	if h.ready != nil {
		if err := h.ready(); err != nil {
			o := h.text(w, http.StatusServiceUnavailable, "not ready")
			o.reason = "not ready: " + err.Error()
			return o
		}
	}
	if d := r.URL.Query().Get("deep"); d == "1" || d == "true" {
		if err := h.deep(r.Context()); err != nil {
			o := h.text(w, http.StatusServiceUnavailable, "server unavailable")
			o.reason = "deep check: " + err.Error()
			return o
		}
	}
	return h.text(w, http.StatusOK, "ok")
}

// deep runs DeepCheck at most once per DeepCheckInterval, because pods can
// reach /health too and must not be able to turn it into load on the
// servers. The call is detached from the request so that one impatient
// caller does not cache a cancellation for everyone.
func (h *Handler) deep(ctx context.Context) error {
	if h.deepCheck == nil {
		return nil
	}
	h.deepMu.Lock()
	defer h.deepMu.Unlock()
	now := h.now()
	if h.deepRan && now.Sub(h.deepAt) < DeepCheckInterval && !now.Before(h.deepAt) {
		return h.deepErr
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deepCheckTimeout)
	defer cancel()
	h.deepErr = h.deepCheck(cctx)
	h.deepAt = now
	h.deepRan = true
	return h.deepErr
}

func (h *Handler) text(w http.ResponseWriter, status int, body string) outcome {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return outcome{status: status}
}

func (h *Handler) json(w http.ResponseWriter, v any) outcome {
	b, err := json.Marshal(v)
	if err != nil {
		return h.fail(w, http.StatusInternalServerError, "encoding response")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return outcome{status: http.StatusOK}
}

// fail answers with the status text only: reasons (which may name the
// server's view of the pod) go to the log, not to the pod.
func (h *Handler) fail(w http.ResponseWriter, status int, reason string) outcome {
	o := h.text(w, status, http.StatusText(status))
	o.reason = reason
	return o
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, allow string) outcome {
	w.Header().Set("Allow", allow)
	return h.fail(w, http.StatusMethodNotAllowed, "method not allowed")
}
