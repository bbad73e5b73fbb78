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
// by forbiddenOnWire), local answers are the pod's own, and Canonical is
// idempotent and yields canonical form.
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
