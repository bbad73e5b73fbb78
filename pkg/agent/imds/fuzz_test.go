package imds

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

var fuzzMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodHead, "PROPFIND"}

// FuzzRouter drives the handler with arbitrary request paths against an
// upstream that allows every route, and asserts: no panic, nothing
// never-proxied reaches the upstream (checked on what the upstream received,
// by forbiddenOnWire), local answers are the pod's own, Canonical is
// idempotent and yields canonical form, and the allocation-free paths decide
// as the general ones do.
//
//	go test -run '^$' -fuzz FuzzRouter -fuzztime 30s ./pkg/imds
func FuzzRouter(f *testing.F) {
	for _, s := range []string{
		"/", "/ping", "/health?deep=1", "/latest/api/token",
		"/latest/meta-data/iam/security-credentials/",
		"/latest/meta-data/iam/security-credentials/app-role",
		"/latest/meta-data/iam/security-credentials/../../user-data",
		"/latest/meta-data/iam/info",
		"/latest/user-data", "/latest/%2e%2e/user-data", "/latest/%252e%252e/user-data",
		"/latest%2Fuser-data", `/latest\user-data`, "//latest//user-data", "/latest/./user-data",
		"/latest/USER-DATA", "/latest/user-data;x", "/latest/user-data%3F", "/latest/user%2Ddata",
		"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
		"/latest/dynamic/instance-identity/pkcs7", "/latest/dynamic/instance-identity/%70kcs7",
		"/latest/dynamic/instance-identity/signature", "/latest/dynamic/instance-identity/rsa2048",
		"/latest/dynamic/instance-identity/document", "/latest/meta-data/placement/availability-zone",
		"/latest/meta-data/iam%2F..%2F..%2Fuser-data", "/latest/api/token/../../user-data",
		"/a/b/../../../../latest/user-data", "/latest/%zz", "/latest/%00", "http://x/latest/user-data",
		"/;.0", "/latest/meta-data/placement/..;/..;/instance-id", "/latest/x;user-data", "/latest/%C2%A0user-data",
	} {
		for i := range fuzzMethods {
			f.Add(uint8(i), s, false)
		}
		f.Add(uint8(0), s, true)
	}

	up := newUpstreamRecorder(f, false)
	up.mu.Lock()
	up.noRecord = true
	up.mu.Unlock()
	e := newEnv(f, Config{AllowRoute: regexp.MustCompile(`.*`), Upstream: up.srv.URL})
	e.h.log = slog.New(slog.DiscardHandler) // keep memory flat over millions of runs
	tok := e.token(f, ipApp+":1", "21600")

	f.Fuzz(func(t *testing.T, m uint8, raw string, withToken bool) {
		if c, ok := Canonical(raw); ok {
			checkCanonicalForm(t, raw, c)
		}
		checkFastPaths(t, raw)
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return // net/http answers 400 before any handler runs
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method = fuzzMethods[int(m)%len(fuzzMethods)]
		r.URL = u
		r.RequestURI = raw
		r.RemoteAddr = ipApp + ":4000"
		r.Header.Set("X-Pod-Header", "x")
		r.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		if withToken {
			r.Header.Set("X-aws-ec2-metadata-token", tok)
		}
		rr := httptest.NewRecorder()
		up.takeViolations()
		e.h.ServeHTTP(rr, r)

		if v := up.takeViolations(); len(v) > 0 {
			t.Fatalf("%s %q reached the upstream: %v", r.Method, raw, v)
		}
		body := rr.Body.String()
		if rr.Code == http.StatusOK && !strings.HasPrefix(body, "upstream:") {
			// A local 200 is one of ours and only ever about the pod's role.
			switch {
			case body == "pong", body == "ok", body == "app-role", len(body) == tokenLen,
				strings.Contains(body, `"AccessKeyId":"ASIAEXAMPLE"`),
				strings.Contains(body, `instance-profile/app-role"`):
			default:
				t.Fatalf("%s %q: unexpected local answer %q", r.Method, raw, body)
			}
		}
	})
}

// checkFastPaths holds the shortcuts of the hot path to the general code:
// Canonical's for an already canonical path to canonicalize, and classify's
// match of local routes to a segment by segment one (classifySegments).
func checkFastPaths(t *testing.T, raw string) {
	t.Helper()
	c, ok := canonicalize(raw)
	if isCanonical(raw) && (!ok || c != raw) {
		t.Fatalf("isCanonical(%q), but canonicalize gives %q, %v", raw, c, ok)
	}
	if got, gotOK := Canonical(raw); got != c || gotOK != ok {
		t.Fatalf("Canonical(%q) = %q, %v; canonicalize %q, %v", raw, got, gotOK, c, ok)
	}
	if !ok {
		return
	}
	if got, want := classify(c), classifySegments(c); got != want {
		t.Fatalf("classify(%q) = %+v, segment by segment %+v", c, got, want)
	}
}

// classifySegments is classify as it was written before its local routes
// were matched without splitting the path: the reference for them.
func classifySegments(canon string) route {
	switch canon {
	case "/ping":
		return route{kind: kindPing}
	case "/health":
		return route{kind: kindHealth}
	}
	segs := strings.Split(strings.Trim(canon, "/"), "/")
	if len(segs) >= 3 && isVersion(segs[0]) {
		rest := segs[1:]
		switch {
		case len(rest) == 2 && rest[0] == "api" && rest[1] == "token":
			return route{kind: kindToken}
		case len(rest) == 3 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "security-credentials":
			return route{kind: kindRole}
		case len(rest) == 4 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "security-credentials":
			return route{kind: kindCreds, name: rest[3]}
		case len(rest) == 3 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "info":
			return route{kind: kindInfo}
		}
	}
	if neverProxied(segs) {
		return route{kind: kindForbidden}
	}
	return route{kind: kindOther}
}
