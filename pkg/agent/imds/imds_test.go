package imds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/agent/metadoc"
	"github.com/podiam/podiam/pkg/creds"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/podiam/podiam/test/syncbuf"
)

var testNow = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

const (
	appRoleARN = "arn:aws:iam::123456789012:role/team/app-role"
	secretKey  = "SECRETsecretSECRETsecret"
	sessTok    = "SESSIONTOKENsessiontoken"
)

// Pods known to the fake provider, by IP.
const (
	ipApp        = "10.0.0.1"
	ipNoRole     = "10.0.0.2"
	ipDenied     = "10.0.0.3"
	ipUnknown    = "10.0.0.4"
	ipUnavail    = "10.0.0.5"
	ipEmptyRole  = "10.0.0.6"
	ipBadARN     = "10.0.0.7"
	ipExpired    = "10.0.0.8"
	ipChina      = "10.0.0.9"
	ipV6         = "fd00::1"
	ipNoLastUpd  = "10.0.0.10"
	ipWeirdError = "10.0.0.11"
)

func podCreds(arn string) creds.PodCredentials {
	return creds.PodCredentials{
		PodUID: "uid", Namespace: "ns", Name: "pod", RoleARN: arn,
		Credentials: creds.Credentials{
			AccessKeyID:     "ASIAEXAMPLE",
			SecretAccessKey: secretKey,
			SessionToken:    sessTok,
			// Non-UTC zone and a fraction: the output must still be UTC
			// without a fraction.
			Expiration:  time.Date(2025, 3, 4, 7, 6, 7, 999_999_999, time.FixedZone("CET", 3600)),
			LastUpdated: time.Date(2025, 3, 4, 5, 1, 2, 500_000_000, time.UTC),
		},
	}
}

type answer struct {
	pc  creds.PodCredentials
	err error
}

type fakeProvider struct {
	answers map[string]answer
	// now is when an answer is received, for the documents built from it;
	// nil means testNow.
	now func() time.Time

	mu   sync.Mutex
	seen []string

	// block, when set, makes calls for blockIP wait on it after signalling
	// entered.
	blockIP string
	block   chan struct{}
	entered chan struct{}
}

func newFakeProvider() *fakeProvider {
	expired := podCreds(appRoleARN)
	expired.Credentials.Expiration = testNow.Add(-time.Second)
	noLast := podCreds(appRoleARN)
	noLast.Credentials.LastUpdated = time.Time{}
	return &fakeProvider{answers: map[string]answer{
		ipApp:        {pc: podCreds(appRoleARN)},
		ipV6:         {pc: podCreds(appRoleARN)},
		ipNoRole:     {err: httperr.New(http.StatusNotFound, errors.New("pod has no role annotation"))},
		ipDenied:     {err: httperr.New(http.StatusForbidden, errors.New("namespace policy denies role"))},
		ipUnknown:    {err: errors.New("pod unknown after wait")},
		ipUnavail:    {err: httperr.New(http.StatusServiceUnavailable, creds.ErrUnavailable)},
		ipEmptyRole:  {pc: podCreds("")},
		ipBadARN:     {pc: podCreds("arn:aws:iam::123456789012:user/bob")},
		ipExpired:    {pc: expired},
		ipChina:      {pc: podCreds("arn:aws-cn:iam::210987654321:role/cn-role")},
		ipNoLastUpd:  {pc: noLast},
		ipWeirdError: {err: httperr.New(http.StatusOK, errors.New("nonsense status"))},
	}}
}

// Documents builds the documents of each answer when it is asked for, as
// the agent cache does when it receives one.
func (p *fakeProvider) Documents(ctx context.Context, ip string) (*metadoc.Docs, error) {
	pc, err := p.credentials(ctx, ip)
	if err != nil {
		return nil, err
	}
	now := testNow
	if p.now != nil {
		now = p.now()
	}
	return metadoc.Build(pc, now), nil
}

func (p *fakeProvider) credentials(ctx context.Context, ip string) (creds.PodCredentials, error) {
	p.mu.Lock()
	p.seen = append(p.seen, ip)
	p.mu.Unlock()
	if p.block != nil && ip == p.blockIP {
		p.entered <- struct{}{}
		select {
		case <-p.block:
		case <-ctx.Done():
			return creds.PodCredentials{}, ctx.Err()
		}
	}
	a, ok := p.answers[ip]
	if !ok {
		return creds.PodCredentials{}, errors.New("no such pod")
	}
	return a.pc, a.err
}

func (p *fakeProvider) seenIPs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

type env struct {
	h     *Handler
	p     *fakeProvider
	clock *testingclock.FakeClock
	reg   *prometheus.Registry
	logs  *syncbuf.Buffer
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	e := &env{p: newFakeProvider(), clock: testingclock.NewFakeClock(testNow), reg: prometheus.NewRegistry(), logs: &syncbuf.Buffer{}}
	e.p.now = e.clock.Now
	if cfg.Now == nil {
		cfg.Now = e.clock.Now
	}
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := New(cfg, e.p, e.reg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.h = h
	return e
}

type req struct {
	method  string
	target  string
	remote  string
	headers map[string]string
	body    string
}

func (e *env) do(t testing.TB, q req) *http.Response {
	t.Helper()
	if q.method == "" {
		q.method = http.MethodGet
	}
	if q.remote == "" {
		q.remote = ipApp + ":40000"
	}
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	var r *http.Request
	if _, err := url.ParseRequestURI(q.target); err == nil {
		r = httptest.NewRequest(q.method, q.target, body)
	} else {
		// net/http refuses such a request line itself; a handler can still
		// be handed one by other code, with the bytes in URL.Path.
		r = httptest.NewRequest(q.method, "/", body)
		r.URL = &url.URL{Path: q.target}
		r.RequestURI = q.target
	}
	r.RemoteAddr = q.remote
	for k, v := range q.headers {
		r.Header.Set(k, v)
	}
	rr := httptest.NewRecorder()
	e.h.ServeHTTP(rr, r)
	return rr.Result()
}

// token obtains an IMDSv2 token for remote through the handler.
func (e *env) token(t testing.TB, remote string, ttl string) string {
	t.Helper()
	resp := e.do(t, req{method: http.MethodPut, target: "/latest/api/token", remote: remote,
		headers: map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": ttl}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token PUT: status %d", resp.StatusCode)
	}
	return readBody(t, resp)
}

func readBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

var credPath = "/latest/meta-data/iam/security-credentials/app-role"

func TestRoutes(t *testing.T) {
	e := newEnv(t, Config{})
	tests := []struct {
		name     string
		req      req
		status   int
		body     string // exact body when non-empty
		ctPrefix string
	}{
		{"ping", req{target: "/ping"}, 200, "pong", "text/plain"},
		{"ping post", req{method: http.MethodPost, target: "/ping"}, 405, "", "text/plain"},
		{"health", req{target: "/health"}, 200, "ok", "text/plain"},

		{"role listing", req{target: "/latest/meta-data/iam/security-credentials"}, 200, "app-role", "text/plain"},
		{"role listing slash", req{target: "/latest/meta-data/iam/security-credentials/"}, 200, "app-role", "text/plain"},
		{"role listing dated version", req{target: "/2016-09-02/meta-data/iam/security-credentials/"}, 200, "app-role", "text/plain"},
		{"role listing no role", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipNoRole + ":1"}, 404, "", "text/plain"},
		{"role listing empty role", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipEmptyRole + ":1"}, 404, "", "text/plain"},
		{"role listing denied", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipDenied + ":1"}, 403, "", "text/plain"},
		{"role listing unknown pod", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipUnknown + ":1"}, 503, "", "text/plain"},
		{"role listing unavailable", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipUnavail + ":1"}, 503, "", "text/plain"},
		{"role listing bad arn", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipBadARN + ":1"}, 503, "", "text/plain"},
		{"role listing nonsense status", req{target: "/latest/meta-data/iam/security-credentials/", remote: ipWeirdError + ":1"}, 503, "", "text/plain"},
		{"role listing ipv6", req{target: "/latest/meta-data/iam/security-credentials/", remote: "[" + ipV6 + "]:1"}, 200, "app-role", "text/plain"},

		{"credentials", req{target: credPath}, 200, "", "application/json"},
		{"credentials slash", req{target: credPath + "/"}, 200, "", "application/json"},
		{"credentials wrong role", req{target: "/latest/meta-data/iam/security-credentials/node-role"}, 404, "", "text/plain"},
		{"credentials other case", req{target: "/latest/meta-data/iam/security-credentials/App-Role"}, 404, "", "text/plain"},
		{"credentials no role", req{target: credPath, remote: ipNoRole + ":1"}, 404, "", "text/plain"},
		{"credentials denied", req{target: credPath, remote: ipDenied + ":1"}, 403, "", "text/plain"},
		{"credentials unknown pod", req{target: credPath, remote: ipUnknown + ":1"}, 503, "", "text/plain"},
		{"credentials unavailable", req{target: credPath, remote: ipUnavail + ":1"}, 503, "", "text/plain"},
		{"credentials expired", req{target: credPath, remote: ipExpired + ":1"}, 503, "", "text/plain"},
		{"credentials post", req{method: http.MethodPost, target: credPath}, 405, "", "text/plain"},
		{"credentials head", req{method: http.MethodHead, target: credPath}, 405, "", "text/plain"},

		{"info", req{target: "/latest/meta-data/iam/info"}, 200, "", "application/json"},
		{"info denied", req{target: "/latest/meta-data/iam/info", remote: ipDenied + ":1"}, 403, "", "text/plain"},
		{"info no role", req{target: "/latest/meta-data/iam/info", remote: ipNoRole + ":1"}, 404, "", "text/plain"},

		{"iam listing", req{target: "/latest/meta-data/iam/"}, 404, "", "text/plain"},
		{"identity credentials", req{target: "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"}, 404, "", "text/plain"},
		{"user-data", req{target: "/latest/user-data"}, 404, "", "text/plain"},
		{"pkcs7", req{target: "/latest/dynamic/instance-identity/pkcs7"}, 404, "", "text/plain"},
		{"unrelated", req{target: "/latest/meta-data/instance-id"}, 404, "", "text/plain"},
		{"root", req{target: "/"}, 404, "", "text/plain"},
		{"delete", req{method: http.MethodDelete, target: "/latest/meta-data/"}, 405, "", "text/plain"},
		{"put elsewhere", req{method: http.MethodPut, target: "/latest/meta-data/"}, 405, "", "text/plain"},
		{"get token", req{target: "/latest/api/token"}, 405, "", "text/plain"},

		{"body", req{method: http.MethodGet, target: credPath, body: "x"}, 400, "", "text/plain"},
		{"bad escape", req{target: "/latest/%zz"}, 400, "", "text/plain"},
		{"nul", req{target: "/latest/meta-data/iam/security-credentials/app-role%00"}, 400, "", "text/plain"},
		{"too long", req{target: "/latest/" + strings.Repeat("a", MaxPathLen)}, 400, "", "text/plain"},
		{"bad remote", req{target: "/ping", remote: "not-an-ip"}, 400, "", "text/plain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(t, tc.req)
			body := readBody(t, resp)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if tc.body != "" && body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctPrefix) {
				t.Errorf("Content-Type %q, want prefix %q", ct, tc.ctPrefix)
			}
			if tc.status == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow header")
			}
			if tc.status >= 400 && (strings.Contains(body, "policy") || strings.Contains(body, "annotation")) {
				t.Errorf("error body leaks the reason: %q", body)
			}
		})
	}
}

var exactTime = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$`)

func TestCredentialsDocument(t *testing.T) {
	e := newEnv(t, Config{})
	resp := e.do(t, req{target: credPath})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	body := readBody(t, resp)
	var doc map[string]string
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("body %q: %v", body, err)
	}
	want := map[string]string{
		"Code":            "Success",
		"LastUpdated":     "2025-03-04T05:01:02Z",
		"Type":            "AWS-HMAC",
		"AccessKeyId":     "ASIAEXAMPLE",
		"SecretAccessKey": secretKey,
		"Token":           sessTok,
		"Expiration":      "2025-03-04T06:06:07Z", // 07:06:07 CET, fraction dropped
	}
	if len(doc) != len(want) {
		t.Errorf("document has fields %v, want %v", doc, want)
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("%s = %q, want %q", k, doc[k], v)
		}
	}
	for _, k := range []string{"LastUpdated", "Expiration"} {
		if !exactTime.MatchString(doc[k]) {
			t.Errorf("%s = %q not in the exact layout", k, doc[k])
		}
	}
	// Field order as the real service (some parsers are picky).
	if !strings.HasPrefix(body, `{"Code":"Success","LastUpdated":`) {
		t.Errorf("unexpected field order: %s", body)
	}

	// LastUpdated defaults to now when the provider has none.
	resp = e.do(t, req{target: credPath, remote: ipNoLastUpd + ":1"})
	if err := json.Unmarshal([]byte(readBody(t, resp)), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["LastUpdated"] != "2025-03-04T05:06:07Z" {
		t.Errorf("LastUpdated = %q, want now", doc["LastUpdated"])
	}
}

func TestInfoDocument(t *testing.T) {
	e := newEnv(t, Config{})
	tests := []struct {
		remote  string
		arn     string
		roleARN string
	}{
		{ipApp, "arn:aws:iam::123456789012:instance-profile/app-role", appRoleARN},
		{ipChina, "arn:aws-cn:iam::210987654321:instance-profile/cn-role", "arn:aws-cn:iam::210987654321:role/cn-role"},
	}
	idRE := regexp.MustCompile(`^AIPA[A-Z0-9]{17}$`)
	for _, tc := range tests {
		resp := e.do(t, req{target: "/latest/meta-data/iam/info", remote: tc.remote + ":1"})
		body := readBody(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", tc.remote, resp.StatusCode)
		}
		var doc map[string]string
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatal(err)
		}
		if doc["Code"] != "Success" || doc["InstanceProfileArn"] != tc.arn || !exactTime.MatchString(doc["LastUpdated"]) {
			t.Errorf("%s: info %v", tc.remote, doc)
		}
		if !idRE.MatchString(doc["InstanceProfileId"]) || doc["InstanceProfileId"] != metadoc.InstanceProfileID(tc.roleARN) {
			t.Errorf("%s: InstanceProfileId %q", tc.remote, doc["InstanceProfileId"])
		}
	}
	if metadoc.InstanceProfileID(appRoleARN) == metadoc.InstanceProfileID("arn:aws:iam::123456789012:role/other") {
		t.Error("instance profile IDs of two roles collide")
	}
}

func TestTokenPut(t *testing.T) {
	e := newEnv(t, Config{})
	const ttlHeader = "X-aws-ec2-metadata-token-ttl-seconds"
	tests := []struct {
		name    string
		headers map[string]string
		target  string
		status  int
	}{
		{"ok", map[string]string{ttlHeader: "21600"}, "/latest/api/token", 200},
		{"ok min", map[string]string{ttlHeader: "1"}, "/latest/api/token", 200},
		{"ok dated version", map[string]string{ttlHeader: "60"}, "/2021-03-23/api/token", 200},
		{"ok lower-case header", map[string]string{"x-aws-ec2-metadata-token-ttl-seconds": "60"}, "/latest/api/token", 200},
		{"missing ttl", map[string]string{}, "/latest/api/token", 400},
		{"zero ttl", map[string]string{ttlHeader: "0"}, "/latest/api/token", 400},
		{"ttl too large", map[string]string{ttlHeader: "21601"}, "/latest/api/token", 400},
		{"ttl non-numeric", map[string]string{ttlHeader: "abc"}, "/latest/api/token", 400},
		{"ttl negative", map[string]string{ttlHeader: "-5"}, "/latest/api/token", 400},
		{"x-forwarded-for", map[string]string{ttlHeader: "60", "X-Forwarded-For": "10.0.0.9"}, "/latest/api/token", 403},
		{"x-forwarded-for empty", map[string]string{ttlHeader: "60", "X-Forwarded-For": ""}, "/latest/api/token", 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(t, req{method: http.MethodPut, target: tc.target, headers: tc.headers})
			body := readBody(t, resp)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != 200 {
				if resp.Header.Get(ttlHeader) != "" {
					t.Errorf("error response echoes the ttl header")
				}
				return
			}
			ttl := tc.headers[ttlHeader]
			if ttl == "" {
				ttl = tc.headers["x-aws-ec2-metadata-token-ttl-seconds"]
			}
			if got := resp.Header.Get(ttlHeader); got != ttl {
				t.Errorf("echoed ttl header %q, want %q", got, ttl)
			}
			if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if len(body) != tokenLen {
				t.Errorf("token %q has length %d", body, len(body))
			}
		})
	}
}

func TestTokenUse(t *testing.T) {
	const tokHeader = "X-aws-ec2-metadata-token"
	for _, requireV2 := range []bool{false, true} {
		e := newEnv(t, Config{RequireIMDSv2: requireV2})
		tok := e.token(t, ipApp+":1000", "60")
		otherTok := e.token(t, ipDenied+":1000", "60")
		// A token from another handler (another key) looks right but is not ours.
		foreign := newEnv(t, Config{}).token(t, ipApp+":1000", "60")
		tampered := []byte(tok)
		tampered[10] ^= 1

		v1Status := 200
		if requireV2 {
			v1Status = 401
		}
		tests := []struct {
			name    string
			headers map[string]string
			advance time.Duration
			status  int
		}{
			{"valid token", map[string]string{tokHeader: tok}, 0, 200},
			{"valid token near expiry", map[string]string{tokHeader: tok}, 59 * time.Second, 200},
			{"expired token", map[string]string{tokHeader: tok}, 60 * time.Second, 401},
			{"token from another ip", map[string]string{tokHeader: otherTok}, 0, 401},
			{"token from another key", map[string]string{tokHeader: foreign}, 0, 401},
			{"tampered token", map[string]string{tokHeader: string(tampered)}, 0, 401},
			{"garbage token", map[string]string{tokHeader: "garbage"}, 0, 401},
			{"empty token", map[string]string{tokHeader: ""}, 0, 401},
			{"no token", nil, 0, v1Status},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := testingclock.NewFakeClock(testNow.Add(tc.advance))
				e.h.now = c.Now
				defer func() { e.h.now = e.clock.Now }()
				for _, target := range []string{credPath, "/latest/meta-data/iam/security-credentials/", "/latest/meta-data/iam/info"} {
					resp := e.do(t, req{target: target, remote: ipApp + ":2000", headers: tc.headers})
					if resp.StatusCode != tc.status {
						t.Errorf("requireV2=%v %s: status %d, want %d", requireV2, target, resp.StatusCode, tc.status)
					}
				}
			})
		}
		// Liveness and health never need a token, or kubelet probes would fail.
		for _, target := range []string{"/ping", "/health"} {
			if resp := e.do(t, req{target: target}); resp.StatusCode != 200 {
				t.Errorf("requireV2=%v %s: status %d", requireV2, target, resp.StatusCode)
			}
		}
		// Tokens are never logged.
		if logs := e.logs.String(); strings.Contains(logs, tok) || strings.Contains(logs, string(tampered)) {
			t.Errorf("token in logs: %s", logs)
		}
	}
}

// The token is bound to the address, not to the port, and to one spelling of
// it: an IPv4-mapped IPv6 peer is the same pod.
func TestTokenBindingAcrossPortsAndMappedAddresses(t *testing.T) {
	e := newEnv(t, Config{RequireIMDSv2: true})
	tok := e.token(t, ipApp+":1111", "60")
	for _, remote := range []string{ipApp + ":2222", "[::ffff:" + ipApp + "]:3333"} {
		resp := e.do(t, req{target: credPath, remote: remote, headers: map[string]string{"X-aws-ec2-metadata-token": tok}})
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", remote, resp.StatusCode)
		}
	}
}

func TestForwardedForNeverChangesIdentity(t *testing.T) {
	e := newEnv(t, Config{})
	for _, h := range []string{"X-Forwarded-For", "X-Real-Ip", "Forwarded", "X-Client-Ip"} {
		resp := e.do(t, req{target: credPath, remote: ipNoRole + ":1",
			headers: map[string]string{h: ipApp, "X-Forwarded-Host": ipApp}})
		if resp.StatusCode != 404 {
			t.Errorf("%s: status %d, want 404 (the caller has no role)", h, resp.StatusCode)
		}
	}
	for _, ip := range e.p.seenIPs() {
		if ip != ipNoRole {
			t.Errorf("provider asked about %s; only the TCP peer %s may be used", ip, ipNoRole)
		}
	}
	// A token minted for the real peer still works with a spoofed header,
	// and is still bound to the peer.
	tok := e.token(t, ipDenied+":1", "60")
	resp := e.do(t, req{target: credPath, remote: ipApp + ":1",
		headers: map[string]string{"X-aws-ec2-metadata-token": tok, "X-Forwarded-For": ipDenied}})
	if resp.StatusCode != 401 {
		t.Errorf("token of %s accepted from %s with X-Forwarded-For: status %d", ipDenied, ipApp, resp.StatusCode)
	}
}

func TestChunkedBody(t *testing.T) {
	e := newEnv(t, Config{})
	r := httptest.NewRequest(http.MethodGet, credPath, nil)
	r.RemoteAddr = ipApp + ":1"
	r.TransferEncoding = []string{"chunked"}
	r.ContentLength = -1
	rr := httptest.NewRecorder()
	e.h.ServeHTTP(rr, r)
	if rr.Code != 400 {
		t.Errorf("chunked request: status %d, want 400", rr.Code)
	}
	if len(e.p.seenIPs()) != 0 {
		t.Error("provider asked for a request with a body")
	}
}

func TestPerIPCap(t *testing.T) {
	e := newEnv(t, Config{MaxPerIP: 2})
	e.p.blockIP = ipApp
	e.p.block = make(chan struct{})
	e.p.entered = make(chan struct{}, 2)

	results := make(chan int, 2)
	for i := 0; i < 2; i++ {
		go func() {
			r := httptest.NewRequest(http.MethodGet, credPath, nil)
			r.RemoteAddr = ipApp + ":5000"
			rr := httptest.NewRecorder()
			e.h.ServeHTTP(rr, r)
			results <- rr.Code
		}()
	}
	<-e.p.entered
	<-e.p.entered

	if resp := e.do(t, req{target: credPath, remote: ipApp + ":6000"}); resp.StatusCode != 429 {
		t.Errorf("third concurrent request: status %d, want 429", resp.StatusCode)
	}
	if resp := e.do(t, req{target: "/ping", remote: ipApp + ":6001"}); resp.StatusCode != 429 {
		t.Errorf("third concurrent request (ping): status %d, want 429", resp.StatusCode)
	}
	if resp := e.do(t, req{target: "/latest/meta-data/iam/info", remote: ipChina + ":6000"}); resp.StatusCode != 200 {
		t.Errorf("other address: status %d, want 200", resp.StatusCode)
	}
	close(e.p.block)
	for i := 0; i < 2; i++ {
		if code := <-results; code != 200 {
			t.Errorf("blocked request finished with %d", code)
		}
	}
	e.p.block = nil
	if resp := e.do(t, req{target: credPath}); resp.StatusCode != 200 {
		t.Errorf("after release: status %d, want 200", resp.StatusCode)
	}
	if left := e.h.perIP.addrs(); left != 0 {
		t.Errorf("%d addresses left in the in-flight map", left)
	}
	if got := testutil.ToFloat64(e.h.m.requests.WithLabelValues(string(classCredentials), "429")); got != 1 {
		t.Errorf("429 counter = %v, want 1", got)
	}
}

func TestHealth(t *testing.T) {
	var readyErr error
	var mu sync.Mutex
	deepCalls := 0
	var deepErr error
	e := newEnv(t, Config{
		Ready: func() error { mu.Lock(); defer mu.Unlock(); return readyErr },
		DeepCheck: func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := ctx.Deadline(); !ok {
				t.Error("deep check without deadline")
			}
			deepCalls++
			return deepErr
		},
	})
	set := func(r, d error) { mu.Lock(); readyErr, deepErr = r, d; mu.Unlock() }
	calls := func() int { mu.Lock(); defer mu.Unlock(); return deepCalls }
	check := func(target string, status int, body string) {
		t.Helper()
		resp := e.do(t, req{target: target})
		got := readBody(t, resp)
		if resp.StatusCode != status || got != body {
			t.Errorf("%s: %d %q, want %d %q", target, resp.StatusCode, got, status, body)
		}
	}

	check("/health", 200, "ok")
	if calls() != 0 {
		t.Errorf("shallow health ran the deep check")
	}
	set(errors.New("iptables rule for 10.1.2.3 on cni0 missing"), nil)
	check("/health", 503, "not ready")
	if !strings.Contains(e.logs.String(), "iptables rule") {
		t.Errorf("readiness reason not logged")
	}
	set(nil, nil)

	check("/health?deep=1", 200, "ok")
	check("/health?deep=1", 200, "ok")
	if calls() != 1 {
		t.Errorf("deep check ran %d times within the interval, want 1", calls())
	}
	set(nil, errors.New("server 10.9.9.9:443 unreachable"))
	e.clock.Step(DeepCheckInterval - time.Millisecond)
	check("/health?deep=1", 200, "ok") // cached result
	e.clock.Step(time.Millisecond)
	check("/health?deep=1", 503, "server unavailable")
	check("/health?deep=1", 503, "server unavailable")
	if calls() != 2 {
		t.Errorf("deep check ran %d times, want 2", calls())
	}
	check("/health", 200, "ok") // shallow health does not depend on the server
	set(nil, nil)
	e.clock.Step(DeepCheckInterval)
	check("/health?deep=1", 200, "ok")
	if calls() != 3 {
		t.Errorf("deep check ran %d times, want 3", calls())
	}
	// A clock that steps back does not pin an old result forever.
	e.clock.Step(-time.Hour)
	check("/health?deep=1", 200, "ok")
	if calls() != 4 {
		t.Errorf("deep check ran %d times after clock step back, want 4", calls())
	}

	// No DeepCheck: deep health is just health.
	e2 := newEnv(t, Config{})
	if resp := e2.do(t, req{target: "/health?deep=1"}); resp.StatusCode != 200 {
		t.Errorf("deep health without DeepCheck: %d", resp.StatusCode)
	}
}

// upstreamRecorder is a fake real metadata service. It fails the test when a
// never-proxied target reaches it, by an independent check on what it
// actually received.
type upstreamRecorder struct {
	t   testing.TB
	srv *httptest.Server

	mu        sync.Mutex
	gets      []recorded
	tokenPuts int
	violation []string
	// status to answer GETs with; 0 = 200.
	status int
	// unauthorizedOnce makes the next GET answer 401 (token revoked).
	unauthorizedOnce bool
	// noRecord keeps memory flat under fuzzing; violations are still kept.
	noRecord bool
}

type recorded struct {
	path, requestURI, token string
	header                  http.Header
}

// newUpstreamRecorder starts the fake upstream. With report, a violation
// also fails t from the server's goroutine; fuzz targets check violations
// themselves because F methods may not be called while fuzzing.
func newUpstreamRecorder(t testing.TB, report bool) *upstreamRecorder {
	u := &upstreamRecorder{}
	if report {
		u.t = t
	}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstreamRecorder) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			u.violation = append(u.violation, "token PUT without ttl")
		}
		u.tokenPuts++
		w.Write([]byte("agent-token-" + string(rune('0'+u.tokenPuts))))
		return
	}
	if v := forbiddenOnWire(r); v != "" {
		u.violation = append(u.violation, v)
		if u.t != nil {
			u.t.Errorf("upstream hit with a forbidden request: %s", v)
		}
	}
	if !u.noRecord {
		u.gets = append(u.gets, recorded{path: r.URL.Path, requestURI: r.RequestURI,
			token: r.Header.Get("X-aws-ec2-metadata-token"), header: r.Header.Clone()})
	}
	if u.unauthorizedOnce {
		u.unauthorizedOnce = false
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "text/x-upstream")
	if u.status != 0 {
		w.WriteHeader(u.status)
	}
	w.Write([]byte("upstream:" + r.URL.Path))
}

// takeViolations returns the violations so far and forgets them.
func (u *upstreamRecorder) takeViolations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.violation
	u.violation = nil
	return v
}

func (u *upstreamRecorder) snapshot() ([]recorded, int, []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recorded(nil), u.gets...), u.tokenPuts, append([]string(nil), u.violation...)
}

// forbiddenOnWire reports why a request that reached the upstream must never
// have been sent, or "". It decodes what was on the wire as far as it goes and
// looks at every piece between '/', '\' and ';' — deliberately written apart
// from the handler's own check.
func forbiddenOnWire(r *http.Request) string {
	if r.Method != http.MethodGet {
		return "method " + r.Method
	}
	if r.URL.RawQuery != "" {
		return "query forwarded: " + r.RequestURI
	}
	for _, form := range []string{r.RequestURI, r.URL.Path} {
		s := form
		for i := 0; i < 8; i++ {
			d, err := url.PathUnescape(s)
			if err != nil || d == s {
				break
			}
			s = d
		}
		s = strings.ToLower(s)
		pieces := strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == '\\' || r == ';' })
		for i, p := range pieces {
			if p == "." || p == ".." {
				return "dot segment in " + form
			}
			for _, bad := range []string{"iam", "identity-credentials", "user-data", "pkcs7", "signature", "rsa2048"} {
				if strings.HasPrefix(strings.TrimSpace(p), bad) {
					return "target " + bad + " in " + form
				}
			}
			if p == "api" && i+1 < len(pieces) && strings.HasPrefix(pieces[i+1], "token") {
				return "token endpoint in " + form
			}
		}
		if strings.Contains(form, "//") {
			return "repeated slash in " + form
		}
	}
	for _, h := range []string{"X-Forwarded-For", "Authorization", "Cookie", "X-Pod-Header"} {
		if r.Header.Get(h) != "" {
			return "pod header forwarded: " + h
		}
	}
	return ""
}

func TestProxy(t *testing.T) {
	up := newUpstreamRecorder(t, true)
	e := newEnv(t, Config{
		AllowRoute: regexp.MustCompile(`^/latest/meta-data/placement/availability-zone$`),
		Upstream:   up.srv.URL,
	})
	podTok := e.token(t, ipApp+":1", "60")
	headers := map[string]string{
		"X-aws-ec2-metadata-token": podTok,
		"X-Forwarded-For":          "10.9.9.9",
		"X-Pod-Header":             "x",
	}
	for _, target := range []string{
		"/latest/meta-data/placement/availability-zone",
		"/latest//meta-data/./placement/availability-zone",
		"/latest/meta-data/%70lacement/availability-zone",
		"/latest/meta-data/iam/../placement/availability-zone",
		`/latest\meta-data\placement\availability-zone?x=1`,
	} {
		resp := e.do(t, req{target: target, headers: headers})
		body := readBody(t, resp)
		if resp.StatusCode != 200 || body != "upstream:/latest/meta-data/placement/availability-zone" {
			t.Errorf("%s: %d %q", target, resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/x-upstream" {
			t.Errorf("%s: Content-Type %q not copied", target, ct)
		}
	}
	gets, puts, violations := up.snapshot()
	if len(gets) != 5 {
		t.Fatalf("upstream got %d GETs, want 5", len(gets))
	}
	for _, g := range gets {
		if g.requestURI != "/latest/meta-data/placement/availability-zone" {
			t.Errorf("upstream got %q, want the canonical path", g.requestURI)
		}
		if g.token != "agent-token-1" {
			t.Errorf("upstream got token %q, want the agent's own", g.token)
		}
	}
	if puts != 1 {
		t.Errorf("agent fetched %d upstream tokens, want 1 (cached)", puts)
	}
	if len(violations) != 0 {
		t.Errorf("violations: %v", violations)
	}

	// Not allowed: 404 without touching the upstream.
	for _, target := range []string{"/latest/meta-data/instance-id", "/latest/meta-data/placement/availability-zone/", "/latest/meta-data/placement/availability-zone-id"} {
		if resp := e.do(t, req{target: target}); resp.StatusCode != 404 {
			t.Errorf("%s: status %d, want 404", target, resp.StatusCode)
		}
	}
	if gets, _, _ := up.snapshot(); len(gets) != 5 {
		t.Errorf("upstream hit for a route outside the allow-list")
	}

	// Upstream status is copied.
	up.mu.Lock()
	up.status = http.StatusNotFound
	up.mu.Unlock()
	if resp := e.do(t, req{target: "/latest/meta-data/placement/availability-zone"}); resp.StatusCode != 404 {
		t.Errorf("upstream 404 answered as %d", resp.StatusCode)
	}
	up.mu.Lock()
	up.status = 0
	up.mu.Unlock()

	// The upstream token expires: a new one is fetched before it does.
	e.clock.Step(upstreamTokenTTL*time.Second - upstreamTokenMargin)
	e.do(t, req{target: "/latest/meta-data/placement/availability-zone"})
	gets, puts, _ = up.snapshot()
	if puts != 2 || gets[len(gets)-1].token != "agent-token-2" {
		t.Errorf("after token renewal: %d PUTs, last token %q", puts, gets[len(gets)-1].token)
	}

	// The upstream forgets our token: one retry with a fresh one.
	up.mu.Lock()
	up.unauthorizedOnce = true
	up.mu.Unlock()
	if resp := e.do(t, req{target: "/latest/meta-data/placement/availability-zone"}); resp.StatusCode != 200 {
		t.Errorf("after upstream 401: status %d, want 200", resp.StatusCode)
	}
	gets, puts, _ = up.snapshot()
	if puts != 3 || gets[len(gets)-1].token != "agent-token-3" {
		t.Errorf("after upstream 401: %d PUTs, last token %q", puts, gets[len(gets)-1].token)
	}
	if got := testutil.ToFloat64(e.h.m.requests.WithLabelValues(string(classProxy), "200")); got != 7 {
		t.Errorf("proxy 200 counter = %v, want 7", got)
	}

	// Upstream down: 502.
	up.srv.Close()
	if resp := e.do(t, req{target: "/latest/meta-data/placement/availability-zone"}); resp.StatusCode != 502 {
		t.Errorf("upstream down: status %d, want 502", resp.StatusCode)
	}
}

func TestProxyBodyCap(t *testing.T) {
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			w.Write([]byte("tok"))
			return
		}
		w.Write(bytes.Repeat([]byte("a"), maxProxyBody+1))
	}))
	defer big.Close()
	e := newEnv(t, Config{AllowRoute: regexp.MustCompile(`^/latest/meta-data/big$`), Upstream: big.URL})
	if resp := e.do(t, req{target: "/latest/meta-data/big"}); resp.StatusCode != 502 {
		t.Errorf("oversized upstream body: status %d, want 502", resp.StatusCode)
	}
}

func TestProxyNeverFollowsRedirects(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.Method == http.MethodPut {
			w.Write([]byte("tok"))
			return
		}
		http.Redirect(w, r, "/latest/user-data", http.StatusFound)
	}))
	defer srv.Close()
	for _, client := range []*http.Client{nil, {}} {
		e := newEnv(t, Config{AllowRoute: regexp.MustCompile(`^/latest/meta-data/`), Upstream: srv.URL, UpstreamClient: client})
		resp := e.do(t, req{target: "/latest/meta-data/x"})
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "" {
			t.Errorf("redirect: status %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range paths {
		if strings.Contains(p, "user-data") {
			t.Errorf("redirect followed to %s", p)
		}
	}
}

// Tricky spellings of never-proxied targets, with an allow-list that allows
// everything: none may reach the upstream, and each answers 404, 400 or (for
// the pod's own local routes) the pod's own data.
func TestTrickyPathsNeverReachUpstream(t *testing.T) {
	up := newUpstreamRecorder(t, true)
	e := newEnv(t, Config{AllowRoute: regexp.MustCompile(`.*`), Upstream: up.srv.URL})
	tests := []struct {
		target string
		status int
	}{
		{"/latest/meta-data/iam/security-credentials/../../user-data", 404},
		{"/latest/meta-data/../user-data", 404},
		{"/latest/%2e%2e/latest/user-data", 404},
		{"/latest/%2E%2E/%2E/user-data", 404},
		{"/latest/%252e%252e/latest/user-data", 404},
		{"/latest/user%2Ddata", 404},
		{"/latest/USER-DATA", 404},
		{"/latest/user-data;x", 404},
		{"/latest/user-data%3B", 404},
		{"/latest/user-data%3Fx", 404},
		{"/latest/user-data%23", 404},
		{"/latest/user-data/", 404},
		{"//latest//user-data", 404},
		{"/latest/./user-data", 404},
		{`/latest\user-data`, 404},
		{"/latest%5Cuser-data", 404},
		{"/latest%2Fuser-data", 404},
		{"/2021-01-03/user-data", 404},
		{"/user-data", 404},
		{"/latest/meta-data/iam", 404},
		{"/latest/meta-data/iam/", 404},
		{"/latest/meta-data/Iam/info", 404},
		{"/latest/meta-data/iam/security-credentials/app-role/../node-role", 404},
		{"/latest/meta-data/iam/security-credentials/node-role", 404},
		{"/latest/meta-data%2Fiam%2Fsecurity-credentials%2Fnode-role", 404},
		{"/latest/meta-data/iam/security-credentials/app-role/x", 404},
		{"/foo/meta-data/iam/security-credentials/", 404},
		{"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", 404},
		{"/latest/meta-data/identity-credentials/ec2/info", 404},
		{"/latest/dynamic/instance-identity/pkcs7", 404},
		{"/latest/dynamic/instance-identity/signature", 404},
		{"/latest/dynamic/instance-identity/rsa2048", 404},
		{"/latest/dynamic/instance-identity/%70kcs7", 404},
		{"/latest/dynamic/instance-identity/document/../pkcs7", 404},
		{"/latest/dynamic/instance-identity/PKCS7", 404},
		{"/latest/api/token/../../user-data", 404},
		{"/latest/%2e%2e%2fuser-data", 404},
		{"/latest/api/token", 405}, // GET of the token path
		{"/latest/%zz/user-data", 400},
		{"/latest/user-data%00", 400},
		{"/latest/%2500/user-data", 400},
		{"/latest/%25252525252e/user-data", 400},

		// The pod's own data, served locally.
		{`/latest\meta-data\iam\security-credentials\`, 200},
		{"/latest/meta-data/iam/security-credentials/node-role/../app-role", 200},
		{"/latest//meta-data//iam//info", 200},
	}
	for _, tc := range tests {
		for _, withToken := range []bool{false, true} {
			h := map[string]string{"X-Pod-Header": "x"}
			if withToken {
				h["X-aws-ec2-metadata-token"] = e.token(t, ipApp+":1", "60")
			}
			resp := e.do(t, req{target: tc.target, headers: h})
			body := readBody(t, resp)
			if resp.StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d", tc.target, resp.StatusCode, tc.status)
			}
			if strings.HasPrefix(body, "upstream:") {
				t.Errorf("%s: answered by the upstream", tc.target)
			}
			if resp.StatusCode == 200 && !strings.Contains(body, "app-role") && !strings.Contains(body, `"AccessKeyId":"ASIAEXAMPLE"`) {
				t.Errorf("%s: local answer %q is not the pod's role", tc.target, body)
			}
		}
	}
	gets, _, violations := up.snapshot()
	if len(gets) != 0 || len(violations) != 0 {
		t.Errorf("upstream was hit: %v %v", gets, violations)
	}

	// The same permissive handler does proxy a harmless path, canonically.
	resp := e.do(t, req{target: "/latest/meta-data/%2e/placement//zone%2F"})
	if body := readBody(t, resp); resp.StatusCode != 200 || body != "upstream:/latest/meta-data/placement/zone/" {
		t.Errorf("harmless path: %d %q", resp.StatusCode, body)
	}
}

func TestLogsNeverHoldSecrets(t *testing.T) {
	up := newUpstreamRecorder(t, true)
	e := newEnv(t, Config{AllowRoute: regexp.MustCompile(`^/latest/meta-data/x$`), Upstream: up.srv.URL})
	tok := e.token(t, ipApp+":1", "60")
	for _, q := range []req{
		{target: credPath},
		{target: credPath, remote: ipExpired + ":1"},
		{target: credPath, remote: ipDenied + ":1"},
		{target: "/latest/meta-data/iam/security-credentials/other"},
		{target: credPath, remote: ipDenied + ":1", headers: map[string]string{"X-aws-ec2-metadata-token": tok}},
		{target: "/latest/meta-data/x"},
		{target: "/latest/user-data"},
	} {
		e.do(t, q)
	}
	logs := e.logs.String()
	for _, s := range []string{secretKey, sessTok, tok, "agent-token"} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
	}
	// One line per refusal, with the fields operators search for.
	var sawDenied bool
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		for _, k := range []string{"pod_ip", "class", "status", "reason"} {
			if _, ok := m[k]; !ok {
				t.Errorf("log line without %s: %s", k, line)
			}
		}
		if m["pod_ip"] == ipDenied && m["status"] == float64(403) {
			sawDenied = true
		}
	}
	if !sawDenied {
		t.Errorf("no log line for the denied request:\n%s", logs)
	}
}

func TestMetricsLabelsBounded(t *testing.T) {
	up := newUpstreamRecorder(t, true)
	e := newEnv(t, Config{AllowRoute: regexp.MustCompile(`^/latest/meta-data/x$`), Upstream: up.srv.URL})
	for _, q := range []req{
		{target: credPath}, {target: "/latest/meta-data/iam/security-credentials/"}, {target: "/latest/meta-data/iam/info"},
		{method: http.MethodPut, target: "/latest/api/token", headers: map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "5"}},
		{target: "/latest/meta-data/x"}, {target: "/ping"}, {target: "/health"}, {target: "/nope/" + ipApp},
	} {
		e.do(t, q)
	}
	for class, want := range map[requestClass]float64{
		classCredentials: 1, classRole: 1, classInfo: 1, classToken: 1, classProxy: 1, classHealth: 2,
	} {
		if got := testutil.ToFloat64(e.h.m.requests.WithLabelValues(string(class), "200")); got != want {
			t.Errorf("%s 200 = %v, want %v", class, got, want)
		}
	}
	if got := testutil.ToFloat64(e.h.m.requests.WithLabelValues(string(classOther), "404")); got != 1 {
		t.Errorf("other 404 = %v, want 1", got)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, c := range allClasses {
		known[string(c)] = true
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "class" && !known[l.GetValue()] {
					t.Errorf("unbounded class label %q", l.GetValue())
				}
				if strings.Contains(l.GetValue(), ".") || strings.Contains(l.GetValue(), "/") {
					t.Errorf("label %s=%q looks like an IP or path", l.GetName(), l.GetValue())
				}
			}
		}
	}
	if problems, err := testutil.GatherAndLint(e.reg); err != nil || len(problems) != 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
}

func TestNewValidation(t *testing.T) {
	p := newFakeProvider()
	tests := []struct {
		name string
		cfg  Config
		p    Provider
	}{
		{"nil provider", Config{}, nil},
		{"negative cap", Config{MaxPerIP: -1}, p},
		{"short key", Config{TokenKey: []byte("short")}, p},
		{"empty key", Config{TokenKey: []byte{}}, p},
		{"allow without upstream", Config{AllowRoute: regexp.MustCompile("x")}, p},
		{"upstream with path", Config{AllowRoute: regexp.MustCompile("x"), Upstream: "http://169.254.169.254/latest"}, p},
		{"upstream bad scheme", Config{AllowRoute: regexp.MustCompile("x"), Upstream: "file:///etc"}, p},
		{"upstream no host", Config{AllowRoute: regexp.MustCompile("x"), Upstream: "http://"}, p},
	}
	for _, tc := range tests {
		if _, err := New(tc.cfg, tc.p, nil, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err %v, want ErrInvalidConfig", tc.name, err)
		}
	}
	for _, cfg := range []Config{
		{},
		{AllowRoute: regexp.MustCompile("^$")}, // KIAM's default: nothing proxied, no upstream needed
		{AllowRoute: regexp.MustCompile("x"), Upstream: "http://169.254.169.254"},
		{TokenKey: bytes.Repeat([]byte("k"), 16)},
	} {
		if _, err := New(cfg, p, prometheus.NewRegistry(), nil); err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{}, p, reg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}, p, reg, nil); err == nil {
		t.Error("second registration on one registry succeeded")
	}
}

// A configured TokenKey makes tokens survive a restart (a second Handler).
func TestTokenKeyShared(t *testing.T) {
	key := bytes.Repeat([]byte("k"), 32)
	a := newEnv(t, Config{TokenKey: key})
	b := newEnv(t, Config{TokenKey: key, RequireIMDSv2: true})
	tok := a.token(t, ipApp+":1", "60")
	if resp := b.do(t, req{target: credPath, headers: map[string]string{"X-aws-ec2-metadata-token": tok}}); resp.StatusCode != 200 {
		t.Errorf("token from a handler with the same key: status %d", resp.StatusCode)
	}
}

func TestNewServer(t *testing.T) {
	h := http.NotFoundHandler()
	s := NewServer(h)
	if s.ReadHeaderTimeout != 2*time.Second || s.ReadTimeout != 5*time.Second || s.WriteTimeout != 10*time.Second ||
		s.IdleTimeout != 15*time.Second || s.MaxHeaderBytes != 8192 {
		t.Errorf("limits %+v", s)
	}
	if s.Handler == nil {
		t.Error("no handler")
	}
}

// End to end over a real listener: the server sets RemoteAddr from the TCP
// peer, and an SDK-like client gets a token and then credentials.
func TestServerEndToEnd(t *testing.T) {
	p := &fakeProvider{answers: map[string]answer{"127.0.0.1": {pc: podCreds(appRoleARN)}}}
	h, err := New(Config{RequireIMDSv2: true, Now: func() time.Time { return testNow }}, p, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config = NewServer(h).Server
	srv.Start()
	defer srv.Close()

	put, _ := http.NewRequest(http.MethodPut, srv.URL+"/latest/api/token", nil)
	put.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "21600")
	resp, err := srv.Client().Do(put)
	if err != nil {
		t.Fatal(err)
	}
	tok := readBody(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") != "21600" {
		t.Fatalf("token: %d %v", resp.StatusCode, resp.Header)
	}
	get, _ := http.NewRequest(http.MethodGet, srv.URL+"/latest/meta-data/iam/security-credentials/", nil)
	get.Header.Set("X-aws-ec2-metadata-token", tok)
	get.Header.Set("X-Forwarded-For", "10.0.0.99")
	resp, err = srv.Client().Do(get)
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != 200 || body != "app-role" {
		t.Fatalf("role: %d %q", resp.StatusCode, body)
	}
	if seen := p.seenIPs(); len(seen) != 1 || seen[0] != "127.0.0.1" {
		t.Errorf("provider saw %v, want the TCP peer 127.0.0.1", seen)
	}

	// An oversized header block is refused by the server itself.
	big, _ := http.NewRequest(http.MethodGet, srv.URL+"/ping", nil)
	big.Header.Set("X-Big", strings.Repeat("a", 16<<10))
	resp, err = srv.Client().Do(big)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: status %d", resp.StatusCode)
	}
}
