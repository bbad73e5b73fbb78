package imds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// maxProxyBody caps a proxied response; metadata documents are small.
	maxProxyBody = 1 << 20
	// maxUpstreamToken caps the upstream's token response.
	maxUpstreamToken = 4096
	// upstreamTokenTTL is what the agent asks the real service for.
	upstreamTokenTTL = MaxTokenTTL
	// upstreamTokenMargin: the cached token is replaced this long before it
	// expires, so a request never carries one that expires in flight.
	upstreamTokenMargin = 5 * time.Minute
)

// Header names of the IMDSv2 protocol.
const (
	headerToken    = "X-Aws-Ec2-Metadata-Token"
	headerTokenTTL = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
)

var errUpstream = errors.New("imds: upstream metadata service failed")

// upstream proxies allowed routes to the real metadata service with the
// agent's own IMDSv2 token. The pod's token is never forwarded: it is bound to
// the pod and means nothing upstream, and forwarding any pod header would let
// the pod steer the request.
type upstream struct {
	base   *url.URL
	client *http.Client
	now    func() time.Time

	mu      sync.Mutex
	token   string
	renewAt time.Time
}

func newUpstream(raw string, client *http.Client, now func() time.Time) (*upstream, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: upstream %q: %w", ErrInvalidConfig, raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("%w: upstream %q must be scheme://host[:port]", ErrInvalidConfig, raw)
	}
	if client == nil {
		client = defaultUpstreamClient()
	} else {
		c := *client
		client = &c
	}
	// A redirect from upstream must never be followed to a path we did not
	// check; the pod gets the 3xx itself and any follow-up comes back here.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &upstream{base: u, client: client, now: now}, nil
}

// defaultUpstreamClient has short timeouts (pods' SDKs wait about 1 s) and
// ignores HTTP_PROXY: the metadata service is link-local.
func defaultUpstreamClient() *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
			ResponseHeaderTimeout: 2 * time.Second,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       60 * time.Second,
		},
	}
}

func (u *upstream) url(path string) string {
	v := *u.base
	v.Path = path
	v.RawPath = ""
	v.RawQuery = ""
	v.Fragment = ""
	return v.String()
}

// proxied is an upstream answer, already read and capped.
type proxied struct {
	status      int
	contentType string
	body        []byte
}

// get fetches canonical path from upstream. A 401 means the upstream dropped
// our token (e.g. it restarted); we fetch a new one and retry once.
func (u *upstream) get(ctx context.Context, path string) (proxied, error) {
	for attempt := 0; ; attempt++ {
		tok, err := u.tokenFor(ctx)
		if err != nil {
			return proxied{}, err
		}
		p, err := u.do(ctx, path, tok)
		if err != nil {
			return proxied{}, err
		}
		if p.status == http.StatusUnauthorized && attempt == 0 {
			u.dropToken(tok)
			continue
		}
		return p, nil
	}
}

func (u *upstream) do(ctx context.Context, path, tok string) (proxied, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.url(path), nil)
	if err != nil {
		return proxied{}, fmt.Errorf("%w: %w", errUpstream, err)
	}
	req.Header.Set(headerToken, tok)
	req.Header.Set("User-Agent", "podiam-agent")
	resp, err := u.client.Do(req)
	if err != nil {
		return proxied{}, fmt.Errorf("%w: %w", errUpstream, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxProxyBody+1))
	if err != nil {
		return proxied{}, fmt.Errorf("%w: reading body: %w", errUpstream, err)
	}
	if len(body) > maxProxyBody {
		return proxied{}, fmt.Errorf("%w: body larger than %d bytes", errUpstream, maxProxyBody)
	}
	return proxied{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: body}, nil
}

// tokenFor returns the agent's cached upstream token, fetching one when none
// is held or it is near expiry. The lock is held across the fetch so that
// concurrent requests share one PUT.
func (u *upstream) tokenFor(ctx context.Context) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	if u.token != "" && now.Before(u.renewAt) {
		return u.token, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.url("/latest/api/token"), nil)
	if err != nil {
		return "", fmt.Errorf("%w: token: %w", errUpstream, err)
	}
	req.Header.Set(headerTokenTTL, strconv.Itoa(upstreamTokenTTL))
	req.Header.Set("User-Agent", "podiam-agent")
	resp, err := u.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: token: %w", errUpstream, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamToken+1))
	if err != nil {
		return "", fmt.Errorf("%w: token: reading body: %w", errUpstream, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%w: token: status %d", errUpstream, resp.StatusCode)
	}
	tok := strings.TrimSpace(string(body))
	if tok == "" || len(body) > maxUpstreamToken {
		return "", fmt.Errorf("%w: token: unusable response of %d bytes", errUpstream, len(body))
	}
	u.token = tok
	u.renewAt = now.Add(upstreamTokenTTL*time.Second - upstreamTokenMargin)
	return tok, nil
}

func (u *upstream) dropToken(tok string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.token == tok {
		u.token = ""
	}
}
