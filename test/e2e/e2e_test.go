package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/test/testenv"
)

// imdsTime is the only layout botocore's strptime accepts.
var imdsTime = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// credDoc is the IMDS credential document.
type credDoc struct {
	Code, LastUpdated, Type, AccessKeyId, SecretAccessKey, Token, Expiration string
}

// trickyPaths must never be answered with anything the node's metadata
// holds: each canonicalizes (percent-decoding, backslashes, repeated
// slashes, dot segments) to a path outside the credential paths, most of
// them to user-data or the signed identity documents.
var trickyPaths = []string{
	"/latest/user-data",
	"/latest/meta-data/iam/security-credentials/..%2f..%2fuser-data",
	"/latest/meta-data/iam/security-credentials/..%2F..%2F..%2Fuser-data",
	"/latest/meta-data/iam/security-credentials/%2e%2e%2f%2e%2e%2f%2e%2e%2fuser-data",
	"/latest/meta-data/iam/security-credentials/%252e%252e/%252e%252e/%252e%252e/user-data",
	"/latest/meta-data/iam/security-credentials/app-web/../../../../user-data",
	"/latest/meta-data/iam/security-credentials/..\\..\\..\\user-data",
	"/latest/meta-data/%2e%2e/user-data",
	"/latest/meta-data/%2E%2E/%2E%2E/latest/user-data",
	"/latest/meta-data/../user-data",
	"/latest/meta-data\\..\\user-data",
	"/latest/meta-data/%5c..%5cuser-data",
	"/latest//user-data",
	"//latest/user-data",
	"/latest/./user-data",
	"/latest/%75ser-data",
	"/%2e%2e/latest/user-data",
	"/latest/dynamic/instance-identity/pkcs7",
	"/latest/dynamic/instance-identity//signature",
	"/latest/dynamic/instance-identity/%72sa2048",
	"/latest/dynamic/instance-identity/document/../pkcs7",
	"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
	"/latest/meta-data/iam/security-credentials/" + canaryRole,
}

// TestE2E runs the agent scenarios in order on one node: each leaves
// the node as the next expects it (agent running, canary untouched).
func TestE2E(t *testing.T) {
	e := newEnv(t)
	var procs []*testenv.Proc
	t.Cleanup(func() { testenv.LogTails(t, procs...) })
	track := func(p *testenv.Proc) *testenv.Proc { procs = append(procs, p); return p }

	if !t.Run("harness", func(t *testing.T) { testHarness(t, e) }) {
		t.Fatal("the harness itself does not work; the scenarios would prove nothing")
	}
	e.canary.Reset()

	e.createAPIObjects(t)
	e.server = track(e.startServer(t))
	e.agent = track(e.startAgent(t))

	var web credDoc // the web pod's credentials, for the outage scenario
	t.Run("agent endpoints reveal nothing", func(t *testing.T) { testAgentEndpoints(t, e) })
	t.Run("SDKs in a permitted pod get its role", func(t *testing.T) {
		for _, c := range sdkClients {
			t.Run(c.Name, func(t *testing.T) {
				r := e.runSDK(e.web, c)
				if got := strings.TrimSpace(r.Stdout); r.Err != nil || got != assumedARN("app-web") {
					t.Errorf("%s printed %q, want %q\n%s", c.Name, got, assumedARN("app-web"), r)
				}
			})
		}
		e.canary.assertUntouched(t)
	})
	t.Run("credential document", func(t *testing.T) { web = testCredentialDocument(t, e) })
	t.Run("the IPv6 metadata address is refused, never the node's", func(t *testing.T) { testIPv6Refused(t, e) })
	t.Run("denied pod finds no credentials", func(t *testing.T) { testDenied(t, e) })
	t.Run("IMDSv2 token errors", func(t *testing.T) { testTokens(t, e) })
	t.Run("tricky paths never reach the node's metadata", func(t *testing.T) {
		for _, path := range trickyPaths {
			r := e.imds(e.web, http.MethodGet, path)
			if r.Exit != 0 || r.Code < 400 || r.Code > 499 || strings.Contains(r.Body, canaryMarker) {
				t.Errorf("GET %s: %s, want a 4xx from the agent", path, r)
			}
		}
		e.assertAgentUp(t)
		e.canary.assertUntouched(t)
	})
	t.Run("malformed requests get a clean 4xx", func(t *testing.T) { testMalformed(t, e) })
	t.Run("ways around the rule get no more than the pod's own role", func(t *testing.T) { testBypasses(t, e) })
	t.Run("a deleted rule is restored", func(t *testing.T) { testRuleRestore(t, e) })
	t.Run("agent restart keeps the rule and does not duplicate it", func(t *testing.T) {
		e.agent = track(testAgentRestart(t, e))
	})
	t.Run("the IPv6 metadata address stays refused after the agent restart", func(t *testing.T) { testIPv6Refused(t, e) })
	t.Run("one pod's connection flood leaves the agent serving others", func(t *testing.T) { testFlood(t, e) })
	t.Run("allowed routes proxy canonical paths only, never the forbidden ones", func(t *testing.T) {
		testAllowedRoutes(t, e)
	})
	e.canary.Reset()
	t.Run("require-imdsv2", func(t *testing.T) {
		if err := stop(t.Context(), e.agent); err != nil {
			t.Errorf("agent stop: %v", err)
		}
		e.agent = track(e.startAgent(t, "--require-imdsv2"))
		testRequireIMDSv2(t, e)
		if err := stop(t.Context(), e.agent); err != nil {
			t.Errorf("agent stop: %v", err)
		}
		e.agent = track(e.startAgent(t))
	})
	t.Run("an IPv6-only node serves its pod's role over IPv6", func(t *testing.T) {
		// The server listens on every address, so that the IPv6-only
		// node's agent reaches it over IPv6; the rest of the run keeps it.
		if err := stop(t.Context(), e.server); err != nil {
			t.Errorf("server stop: %v", err)
		}
		e.server = track(e.startServer(t, "--bind="+hostPort("::", serverPort)))
		if err := stop(t.Context(), e.agent); err != nil {
			t.Errorf("agent stop: %v", err)
		}
		testIPv6OnlyNode(t, e, track)
		e.agent = track(e.startAgent(t))
	})
	t.Run("IP reuse never serves the old pod's role", func(t *testing.T) { testIPReuse(t, e) })
	t.Run("a new pod's first request is answered on the node", func(t *testing.T) { testPushedCredentials(t, e) })
	t.Run("roles bound to ServiceAccounts", func(t *testing.T) { testServiceAccountRoles(t, e) })
	t.Run("server outage: cached credentials are still served", func(t *testing.T) { testServerOutage(t, e, web) })
	t.Run("faults", func(t *testing.T) { testFaults(t, e, track) })
	t.Run("no secrets in logs", func(t *testing.T) {
		if web.SecretAccessKey == "" || web.Token == "" {
			t.Fatal("no credentials of the web pod were captured to look for")
		}
		for _, p := range procs {
			logs := p.Logs()
			for _, secret := range []string{web.SecretAccessKey, web.Token} {
				if strings.Contains(logs, secret) {
					t.Errorf("%s (%s) logged secret material of the web pod's credentials", p.Name(), p.LogPath())
				}
			}
		}
	})
	e.canary.assertUntouched(t)
}

// testHarness proves the test bed before any podiam process runs: pods
// reach the node with their own source address, curl sends paths verbatim,
// and without the DNAT rule every SDK really reads 169.254.169.254, which
// is the canary. So when the canary later sees nothing, that means
// something.
func testHarness(t *testing.T, e *env) {
	t.Run("no DNAT rule before the agent runs", func(t *testing.T) {
		if rules := natRules(t); len(dnatRules(rules)) != 0 {
			t.Fatalf("fresh node namespace already has metadata rules:\n%s", rules)
		}
	})
	t.Run("pods reach the node with their own source address", func(t *testing.T) {
		l, err := net.Listen("tcp", nodeIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "hello %s", host)
		})}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		for _, p := range []*podNet{e.web, e.intruder, e.norole, e.old} {
			r := e.curl(p, http.MethodGet, "http://"+l.Addr().String(), "/")
			if r.Code != http.StatusOK || r.Body != "hello "+p.IP {
				t.Errorf("pod %s -> node: %s, want 200 %q", p.IP, r, "hello "+p.IP)
			}
		}
	})
	t.Run("without the rule pods reach the canary and paths arrive verbatim", func(t *testing.T) {
		e.canary.Reset()
		r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath)
		if r.Code != http.StatusOK || r.Body != canaryRole {
			t.Fatalf("canary from pod: %s", r)
		}
		for _, path := range trickyPaths {
			e.canary.Reset()
			r := e.imds(e.web, http.MethodGet, path)
			reqs := e.canary.Requests()
			if r.Code == 0 || len(reqs) != 1 || reqs[0].URI != path {
				t.Errorf("GET %s: %s; canary saw %v, want exactly that request target", path, r, reqs)
			}
		}
	})
	t.Run("without the rule pods reach the IPv6 canary", func(t *testing.T) {
		e.canary6.Reset()
		r := e.curl(e.web, http.MethodGet, "http://["+metadataIPv6+"]", testenv.CredentialsPath, "-g")
		if r.Code != http.StatusOK || r.Body != canaryRole || len(e.canary6.Requests()) != 1 {
			t.Fatalf("IPv6 canary from pod: %s; canary saw %v", r, e.canary6.Requests())
		}
		e.canary6.Reset()
	})
	t.Run("SDKs read the node's metadata when nothing intercepts it", func(t *testing.T) {
		for _, c := range sdkClients {
			t.Run(c.Name, func(t *testing.T) {
				e.canary.Reset()
				r := e.runSDK(e.web, c)
				if r.Err != nil || !strings.HasPrefix(strings.TrimSpace(r.Stdout), "arn:aws:") {
					t.Errorf("%s with the canary's credentials: %s", c.Name, r)
				}
				want := testenv.CredentialsPath + canaryRole
				if !sawRequest(e.canary.Requests(), e.web.IP, want) {
					t.Errorf("%s never fetched %s from the canary; it saw %v", c.Name, want, e.canary.Requests())
				}
			})
		}
	})
}

func sawRequest(reqs []canaryRequest, fromIP, uri string) bool {
	for _, r := range reqs {
		host, _, _ := net.SplitHostPort(r.Remote)
		if host == fromIP && r.Method == http.MethodGet && r.URI == uri {
			return true
		}
	}
	return false
}

func (e *env) assertAgentUp(t testing.TB) {
	t.Helper()
	if gone, err := e.agent.Exited(); gone {
		t.Fatalf("agent exited: %v", err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	if code, body, err := get(client, "http://"+hostPort(nodeIP, agentPort)+"/ping"); err != nil || code != http.StatusOK {
		t.Fatalf("agent /ping: %d %q %v", code, body, err)
	}
}

func testAgentEndpoints(t *testing.T, e *env) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/ping", "/health"} {
		code, body, err := get(client, "http://"+hostPort(nodeIP, agentPort)+path)
		if err != nil || code != http.StatusOK {
			t.Errorf("GET %s: %d %q %v, want 200", path, code, body, err)
		}
		if strings.Contains(body, canaryMarker) || strings.Contains(body, "arn:") {
			t.Errorf("GET %s reveals node details: %q", path, body)
		}
	}
	code, body, err := get(client, "http://"+hostPort(nodeIP, agentMetr)+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("agent /metrics: %d %v", code, err)
	}
	// Label values must be bounded: never addresses or ARNs.
	for _, bad := range []string{"10.78.0.", "arn:aws"} {
		if strings.Contains(body, bad) {
			t.Errorf("agent metrics contain %q (unbounded label values)", bad)
		}
	}
	e.canary.assertUntouched(t)
}

func testCredentialDocument(t *testing.T, e *env) credDoc {
	for _, path := range []string{testenv.CredentialsPath, strings.TrimSuffix(testenv.CredentialsPath, "/"), "/2016-09-02/meta-data/iam/security-credentials/"} {
		if r := e.imds(e.web, http.MethodGet, path); r.Code != http.StatusOK || r.Body != "app-web" {
			t.Errorf("GET %s: %s, want 200 \"app-web\"", path, r)
		}
	}
	r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath+"app-web")
	if r.Code != http.StatusOK {
		t.Fatalf("GET %sapp-web: %s", testenv.CredentialsPath, r)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var doc credDoc
	if err := json.Unmarshal([]byte(r.Body), &doc); err != nil {
		t.Fatalf("credential document %q: %v", r.Body, err)
	}
	if doc.Code != "Success" || doc.Type != "AWS-HMAC" || doc.AccessKeyId == "" || doc.SecretAccessKey == "" || doc.Token == "" {
		t.Errorf("credential document fields: %+v", doc)
	}
	for name, v := range map[string]string{"Expiration": doc.Expiration, "LastUpdated": doc.LastUpdated} {
		if !imdsTime.MatchString(v) {
			t.Errorf("%s %q is not in the layout 2006-01-02T15:04:05Z", name, v)
		}
	}
	if exp, err := time.Parse(time.RFC3339, doc.Expiration); err != nil || time.Until(exp) < 5*time.Minute {
		t.Errorf("Expiration %q: %v (want more than 5 minutes ahead)", doc.Expiration, err)
	}
	if strings.Contains(r.Body, canaryMarker) {
		t.Errorf("credential document holds the node's credentials: %s", r.Body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	arn, err := e.moto.CallerIdentity(ctx, creds.Credentials{AccessKeyID: doc.AccessKeyId, SecretAccessKey: doc.SecretAccessKey, SessionToken: doc.Token})
	if err != nil || arn != assumedARN("app-web") {
		t.Errorf("served credentials are %q (%v), want %q", arn, err, assumedARN("app-web"))
	}

	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath+"app-other"); r.Code != http.StatusNotFound {
		t.Errorf("GET credentials of a role that is not the pod's: %s, want 404", r)
	}
	r = e.imds(e.web, http.MethodGet, "/latest/meta-data/iam/info")
	if r.Code != http.StatusOK || !strings.Contains(r.Body, "InstanceProfileArn") || strings.Contains(r.Body, canaryMarker) {
		t.Errorf("GET iam/info: %s, want 200 with the pod's InstanceProfileArn", r)
	}
	e.canary.assertUntouched(t)
	return doc
}

func testDenied(t *testing.T, e *env) {
	t.Run("aws cli", func(t *testing.T) {
		r := e.runSDK(e.intruder, sdkByName("aws-cli-imdsv2"))
		if r.Err == nil || !strings.Contains(r.Stderr, "Unable to locate credentials") {
			t.Errorf("denied pod's CLI: %s, want failure with \"Unable to locate credentials\"", r)
		}
	})
	t.Run("boto3", func(t *testing.T) {
		r := e.runSDK(e.intruder, sdkByName("boto3-imdsv1"))
		if r.Err == nil || !strings.Contains(r.Stderr, "Unable to locate credentials") {
			t.Errorf("denied pod's boto3: %s, want failure with \"Unable to locate credentials\"", r)
		}
	})
	t.Run("curl", func(t *testing.T) {
		for _, path := range []string{testenv.CredentialsPath, testenv.CredentialsPath + "app-web"} {
			if r := e.imds(e.intruder, http.MethodGet, path); r.Code != http.StatusForbidden {
				t.Errorf("denied pod GET %s: %s, want 403", path, r)
			}
		}
	})
	t.Run("headers never change the caller", func(t *testing.T) {
		spoof := []string{"X-Forwarded-For: " + e.web.IP, "X-Real-IP: " + e.web.IP, "Forwarded: for=" + e.web.IP}
		for _, path := range []string{testenv.CredentialsPath, testenv.CredentialsPath + "app-web"} {
			if r := e.imds(e.intruder, http.MethodGet, path, spoof...); r.Code != http.StatusForbidden {
				t.Errorf("denied pod GET %s claiming to be %s: %s, want 403", path, e.web.IP, r)
			}
		}
	})
	t.Run("pod without a role", func(t *testing.T) {
		if r := e.imds(e.norole, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusNotFound {
			t.Errorf("pod without role GET %s: %s, want 404", testenv.CredentialsPath, r)
		}
		if r := e.runSDK(e.norole, sdkByName("aws-sdk-go-v2")); r.Err == nil {
			t.Errorf("pod without role found credentials: %s", r)
		}
	})
	e.canary.assertUntouched(t)
}

// token fetches an IMDSv2 token for the pod.
func (e *env) token(t *testing.T, p *podNet, ttl string) string {
	t.Helper()
	r := e.imds(p, http.MethodPut, testenv.TokenPath, testenv.TokenTTLHeader+": "+ttl)
	if r.Code != http.StatusOK || r.Body == "" {
		t.Fatalf("PUT %s (ttl %s) from %s: %s", testenv.TokenPath, ttl, p.IP, r)
	}
	return r.Body
}

func testTokens(t *testing.T, e *env) {
	cases := []struct {
		name    string
		method  string
		path    string
		headers []string
		want    int
	}{
		{"PUT without TTL", http.MethodPut, testenv.TokenPath, nil, 400},
		{"TTL 0", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": 0"}, 400},
		{"TTL 21601", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": 21601"}, 400},
		{"TTL -1", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": -1"}, 400},
		{"TTL not a number", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": abc"}, 400},
		{"PUT with X-Forwarded-For", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": 60", "X-Forwarded-For: " + e.web.IP}, 403},
		{"invalid token", http.MethodGet, testenv.CredentialsPath, []string{testenv.TokenHeader + ": AQAEAInvalidTokenForPodiamE2E=="}, 401},
		{"TTL 1 accepted", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": 1"}, 200},
		{"TTL 21600 accepted", http.MethodPut, testenv.TokenPath, []string{testenv.TokenTTLHeader + ": 21600"}, 200},
	}
	for _, c := range cases {
		if r := e.imds(e.web, c.method, c.path, c.headers...); r.Code != c.want || strings.Contains(r.Body, canaryMarker) {
			t.Errorf("%s: %s %s %v: %s, want %d", c.name, c.method, c.path, c.headers, r, c.want)
		}
	}

	r := e.imds(e.web, http.MethodPut, testenv.TokenPath, testenv.TokenTTLHeader+": 60")
	if r.Code != http.StatusOK || r.Body == "" || r.Header.Get(testenv.TokenTTLHeader) != "60" {
		t.Fatalf("PUT token with TTL 60: %s, %s header %q (want 200, a token and the TTL echoed)", r, testenv.TokenTTLHeader, r.Header.Get(testenv.TokenTTLHeader))
	}
	tok := r.Body
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+tok); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("GET with a valid token: %s, want 200 app-web", r)
	}
	last := byte('A')
	if tok[len(tok)-1] == 'A' {
		last = 'B'
	}
	tampered := tok[:len(tok)-1] + string(last)
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+tampered); r.Code != http.StatusUnauthorized {
		t.Errorf("GET with a tampered token: %s, want 401", r)
	}
	// Tokens are bound to the caller's IP: web's token is worthless elsewhere.
	if r := e.imds(e.norole, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+tok); r.Code != http.StatusUnauthorized {
		t.Errorf("another pod presenting web's token: %s, want 401", r)
	}
	short := e.token(t, e.web, "1")
	time.Sleep(2500 * time.Millisecond)
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+short); r.Code != http.StatusUnauthorized {
		t.Errorf("GET with an expired token: %s, want 401", r)
	}
	e.canary.assertUntouched(t)
}

// testAgentRestart stops the agent with SIGTERM and checks fail-closed
// behaviour while it is down, then starts it with --allow-route-regexp=.*
// for the next scenario and returns it.
func testAgentRestart(t *testing.T, e *env) *testenv.Proc {
	before := natRules(t)
	t.Logf("nat table with the agent running:\n%s", before)
	if !ruleInstalled(before) || dnatCount(before) != 1 {
		t.Errorf("want exactly one metadata DNAT rule while the agent runs, got:\n%s", before)
	}
	if err := stop(t.Context(), e.agent); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	if during := natRules(t); during != before {
		t.Errorf("nat table changed when the agent stopped (--no-iptables-remove):\nbefore:\n%s\nafter:\n%s", before, during)
	}
	for _, p := range []*podNet{e.web, e.intruder} {
		r := e.imds(p, http.MethodGet, testenv.CredentialsPath)
		if r.Code != 0 || (r.Exit != 7 && r.Exit != 28) {
			t.Errorf("pod %s while the agent is down: %s, want connection refused or timeout", p.IP, r)
		}
	}
	if r := e.runSDK(e.web, sdkByName("aws-sdk-go-v2")); r.Err == nil {
		t.Errorf("SDK found credentials while the agent was down: %s", r)
	}
	e.canary.assertUntouched(t)

	agent := e.startAgent(t, "--allow-route-regexp=.*")
	if after := natRules(t); after != before {
		t.Errorf("nat table differs after the restart (duplicated or moved rule):\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("after restart: %s, want 200 app-web", r)
	}
	e.canary.assertUntouched(t)
	return agent
}

func testAllowedRoutes(t *testing.T, e *env) {
	e.canary.Reset()
	podToken := e.token(t, e.web, "60")
	proxied := []string{
		"/latest/meta-data/instance-id",
		"/latest/meta-data//instance-id",
		"/latest/meta-data/./instance-id",
		"/latest/meta-data/iam/../instance-id",
		"/latest/meta-data/%69nstance-id",
	}
	for _, path := range proxied {
		for _, hdr := range [][]string{nil, {testenv.TokenHeader + ": " + podToken}} {
			if r := e.imds(e.web, http.MethodGet, path, hdr...); r.Code != http.StatusOK || r.Body != canaryInstance {
				t.Errorf("GET %s %v with --allow-route-regexp=.*: %s, want the node's instance id proxied", path, hdr, r)
			}
		}
	}
	if r := e.imds(e.web, http.MethodGet, "/latest/dynamic/instance-identity/document"); r.Code != http.StatusOK {
		t.Errorf("GET the unsigned identity document with --allow-route-regexp=.*: %s, want it proxied", r)
	}
	for _, path := range trickyPaths {
		if r := e.imds(e.web, http.MethodGet, path); r.Exit != 0 || r.Code < 400 || r.Code > 499 || strings.Contains(r.Body, canaryMarker) {
			t.Errorf("GET %s with --allow-route-regexp=.*: %s, want a 4xx from the agent", path, r)
		}
	}
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("credential listing with --allow-route-regexp=.*: %s, want the pod's role", r)
	}

	allowed := map[string]bool{"/latest/meta-data/instance-id": true, "/latest/dynamic/instance-identity/document": true}
	sawInstanceID := false
	for _, req := range e.canary.Requests() {
		host, _, _ := net.SplitHostPort(req.Remote)
		if strings.HasPrefix(host, "10.78.") {
			t.Errorf("a pod reached the canary directly: %s", req)
		}
		switch {
		case req.Method == http.MethodPut && req.URI == testenv.TokenPath:
		case req.Method == http.MethodGet && allowed[req.URI]:
			sawInstanceID = sawInstanceID || req.URI == "/latest/meta-data/instance-id"
			if req.Token == podToken || !strings.HasPrefix(req.Token, canaryTokenPref) {
				t.Errorf("proxied request did not carry the agent's own IMDSv2 token: %s", req)
			}
		default:
			t.Errorf("the agent proxied a request it must not (forbidden or not canonical): %s", req)
		}
	}
	if !sawInstanceID {
		t.Errorf("the canary never saw the proxied instance-id request; it saw %v", e.canary.Requests())
	}
}

func testRequireIMDSv2(t *testing.T, e *env) {
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusUnauthorized {
		t.Errorf("IMDSv1 GET with --require-imdsv2: %s, want 401", r)
	}
	tok := e.token(t, e.web, "60")
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath, testenv.TokenHeader+": "+tok); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("IMDSv2 GET with --require-imdsv2: %s, want 200 app-web", r)
	}
	if r := e.runSDK(e.web, sdkByName("boto3-imdsv1")); r.Err == nil || !strings.Contains(r.Stderr, "Unable to locate credentials") {
		t.Errorf("boto3 over IMDSv1 with --require-imdsv2: %s, want no credentials", r)
	}
	if r := e.runSDK(e.web, sdkByName("aws-cli-imdsv2")); strings.TrimSpace(r.Stdout) != assumedARN("app-web") {
		t.Errorf("aws cli (IMDSv2) with --require-imdsv2: %s, want %s", r, assumedARN("app-web"))
	}
	e.canary.assertUntouched(t)
}

// credsOf fetches the listing and, when it names a role, that role's
// document, from pod p.
func (e *env) credsOf(p *podNet) (testenv.CurlResult, credDoc, testenv.CurlResult) {
	listing := e.imds(p, http.MethodGet, testenv.CredentialsPath)
	var doc credDoc
	var r testenv.CurlResult
	if listing.Code == http.StatusOK && listing.Body != "" {
		r = e.imds(p, http.MethodGet, testenv.CredentialsPath+listing.Body)
		_ = json.Unmarshal([]byte(r.Body), &doc)
	}
	return listing, doc, r
}

func (e *env) waitPodGone(t *testing.T, namespace, name string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "pod "+namespace+"/"+name+" deleted", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := e.kube.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
}

func testIPReuse(t *testing.T, e *env) {
	listing, oldDoc, _ := e.credsOf(e.old)
	if listing.Code != http.StatusOK || listing.Body != "app-old" || oldDoc.AccessKeyId == "" {
		t.Fatalf("old pod before deletion: %s, %+v", listing, oldDoc)
	}
	// The pod goes away: deleted in the API, its veth removed by the CNI.
	e.kube.DeletePod(t, nsApps, "old", 0)
	e.waitPodGone(t, nsApps, "old")
	e.topo.unwirePod(t, e.old)
	// A new pod gets the same IP on a new veth before the API has it.
	reused := e.topo.wirePod(t, e.spareNS, "pdm5", e.old.IP)
	e.reused = reused

	leaked := func(what string, listing testenv.CurlResult, doc credDoc) {
		t.Helper()
		if listing.Body == "app-old" || (oldDoc.AccessKeyId != "" && doc.AccessKeyId == oldDoc.AccessKeyId) {
			t.Errorf("%s: the new pod on %s got the deleted pod's role: %s", what, reused.IP, listing)
		}
	}
	var statuses []int
	for start := time.Now(); time.Since(start) < 2*time.Second; {
		l, doc, _ := e.credsOf(reused)
		leaked("before the new pod is in the API", l, doc)
		statuses = append(statuses, l.Code)
		if r := e.imds(reused, http.MethodGet, testenv.CredentialsPath+"app-old"); r.Code == http.StatusOK {
			t.Errorf("before the new pod is in the API, GET %sapp-old: %s", testenv.CredentialsPath, r)
		}
	}
	t.Logf("listing statuses before the new pod is in the API: %v", statuses)

	e.createPod(t, nsApps, "new", "app-new", reused)
	var newDoc credDoc
	testenv.Eventually(t, 15*time.Second, "new pod gets app-new", func() error {
		l, doc, _ := e.credsOf(reused)
		leaked("after the new pod is in the API", l, doc)
		if l.Code != http.StatusOK || l.Body != "app-new" || doc.AccessKeyId == "" {
			return fmt.Errorf("listing %s", l)
		}
		newDoc = doc
		return nil
	})
	if r := e.imds(reused, http.MethodGet, testenv.CredentialsPath+"app-old"); r.Code != http.StatusNotFound {
		t.Errorf("new pod GET %sapp-old: %s, want 404", testenv.CredentialsPath, r)
	}
	if r := e.runSDK(reused, sdkByName("aws-cli-imdsv2")); strings.TrimSpace(r.Stdout) != assumedARN("app-new") {
		t.Errorf("aws cli in the new pod: %s, want %s", r, assumedARN("app-new"))
	}

	// Same veth, pod replaced in the API: only the server's watch stream can
	// tell the agent that its cached app-new credentials belong to a pod
	// that no longer exists.
	e.kube.DeletePod(t, nsApps, "new", 0)
	e.waitPodGone(t, nsApps, "new")
	e.createPod(t, nsApps, "newer", "app-newer", reused)
	testenv.Eventually(t, 15*time.Second, "replacement on the same interface gets app-newer", func() error {
		l, doc, _ := e.credsOf(reused)
		if l.Code != http.StatusOK || l.Body != "app-newer" || doc.AccessKeyId == "" || doc.AccessKeyId == newDoc.AccessKeyId {
			return fmt.Errorf("listing %s, access key %s (app-new's was %s)", l, doc.AccessKeyId, newDoc.AccessKeyId)
		}
		return nil
	})
	if r := e.runSDK(reused, sdkByName("aws-sdk-go-v2")); strings.TrimSpace(r.Stdout) != assumedARN("app-newer") {
		t.Errorf("aws-sdk-go-v2 in the replacement pod: %s, want %s", r, assumedARN("app-newer"))
	}
	e.canary.assertUntouched(t)
}

func testServerOutage(t *testing.T, e *env, web credDoc) {
	// Make sure the agent holds the web pod's credentials right now.
	if l, doc, _ := e.credsOf(e.web); l.Code != http.StatusOK || doc.AccessKeyId == "" {
		t.Fatalf("web pod before the outage: %s", l)
	}
	// And a pod whose sandbox will be replaced during the outage, and two
	// pods behind a bridge, one of which will be replaced too.
	sandboxed := e.topo.wirePod(t, e.topo.PodNS[7], "pdm8", fmt.Sprintf(podIPFormat, 8))
	e.createPod(t, nsApps, "sandboxed", "app-sandboxed", sandboxed)
	e.topo.setUpBridge(t)
	bridgeA := e.topo.wireBridgePod(t, e.topo.PodNS[9], "pdmba", fmt.Sprintf(bridgeIPForm, 2))
	bridgeB := e.topo.wireBridgePod(t, e.topo.PodNS[10], "pdmbb", fmt.Sprintf(bridgeIPForm, 3))
	e.createPod(t, nsApps, "bridge-a", "app-bridge-a", bridgeA)
	e.createPod(t, nsApps, "bridge-b", "app-bridge-b", bridgeB)
	bridgeHeld := map[*podNet]credDoc{}
	for p, role := range map[*podNet]string{bridgeA: "app-bridge-a", bridgeB: "app-bridge-b"} {
		testenv.Eventually(t, 15*time.Second, "the bridge pod "+p.IP+" gets "+role, func() error {
			l, doc, _ := e.credsOf(p)
			if l.Code != http.StatusOK || l.Body != role || doc.AccessKeyId == "" {
				return fmt.Errorf("listing %s", l)
			}
			bridgeHeld[p] = doc
			return nil
		})
	}
	var held credDoc
	testenv.Eventually(t, 15*time.Second, "the sandboxed pod gets app-sandboxed", func() error {
		l, doc, _ := e.credsOf(sandboxed)
		if l.Code != http.StatusOK || l.Body != "app-sandboxed" || doc.AccessKeyId == "" {
			return fmt.Errorf("listing %s", l)
		}
		held = doc
		return nil
	})
	if err := e.server.Kill(); err != nil {
		t.Logf("server after SIGKILL: %v", err)
	}
	l, doc, r := e.credsOf(e.web)
	if l.Code != http.StatusOK || l.Body != "app-web" || r.Code != http.StatusOK || doc.AccessKeyId == "" {
		t.Errorf("web pod during the server outage: listing %s, document %s", l, r)
	}
	if web.AccessKeyId != "" && doc.AccessKeyId != web.AccessKeyId {
		t.Logf("access key changed since the first fetch (%s -> %s); fine if refreshed", web.AccessKeyId, doc.AccessKeyId)
	}
	for _, name := range []string{"aws-cli-imdsv2", "aws-sdk-go-v2", "js-sdk-v3-default-chain"} {
		if r := e.runSDK(e.web, sdkByName(name)); strings.TrimSpace(r.Stdout) != assumedARN("app-web") {
			t.Errorf("%s during the server outage: %s, want %s", name, r, assumedARN("app-web"))
		}
	}
	// The sandboxed pod, unchanged, is served through the outage too.
	if l, doc, _ := e.credsOf(sandboxed); l.Code != http.StatusOK || doc.AccessKeyId != held.AccessKeyId {
		t.Errorf("unchanged pod during the outage: %s", l)
	}
	// Its sandbox goes (the veth is deleted) and a new pod sandbox takes
	// its address on a new veth while no server can say who it is: the
	// agent must not hand it the old pod's credentials, fresh as they are.
	e.topo.unwirePod(t, sandboxed)
	successor := e.topo.wirePod(t, e.topo.PodNS[8], "pdm9", sandboxed.IP)
	for range 5 {
		l, doc, _ := e.credsOf(successor)
		if l.Code == http.StatusOK || l.Body == "app-sandboxed" || (doc.AccessKeyId != "" && doc.AccessKeyId == held.AccessKeyId) {
			t.Fatalf("a new sandbox on %s got the previous pod's credentials during the outage: %s", successor.IP, l)
		}
	}
	// Behind the bridge every pod has the same host interface; a new pod
	// sandbox on bridge-a's address has a new MAC address, and is refused,
	// while bridge-b, unchanged, is served.
	e.topo.unwirePod(t, bridgeA)
	bridgeA2 := e.topo.wireBridgePod(t, e.topo.PodNS[11], "pdmbc", bridgeA.IP)
	for range 5 {
		l, doc, _ := e.credsOf(bridgeA2)
		if l.Code == http.StatusOK || l.Body == "app-bridge-a" || (doc.AccessKeyId != "" && doc.AccessKeyId == bridgeHeld[bridgeA].AccessKeyId) {
			t.Fatalf("a new sandbox behind the bridge on %s got the previous pod's credentials during the outage: %s", bridgeA2.IP, l)
		}
	}
	if l, doc, _ := e.credsOf(bridgeB); l.Code != http.StatusOK || doc.AccessKeyId != bridgeHeld[bridgeB].AccessKeyId {
		t.Errorf("unchanged pod behind the bridge during the outage: %s", l)
	}
	// Fail closed: what was refused stays refused without a server.
	if r := e.imds(e.intruder, http.MethodGet, testenv.CredentialsPath+"app-web"); r.Code == http.StatusOK {
		t.Errorf("denied pod got credentials during the outage: %s", r)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	if code, body, err := get(client, "http://"+hostPort(nodeIP, agentPort)+"/health"); err != nil || code != http.StatusOK {
		t.Errorf("agent /health during a server outage: %d %q %v, want 200 (readiness must not depend on the server)", code, body, err)
	}
	e.canary.assertUntouched(t)

	// The only server comes back: the first request after it reports
	// SERVING is served (reconnect backoff is capped, and requests wait
	// for a ready connection within their deadline instead of failing).
	e.kube.DeletePod(t, nsApps, "sandboxed", 0)
	e.createPod(t, nsApps, "successor", "app-successor", successor)
	e.server = e.startServer(t) // returns once podiam health says SERVING
	if l, doc, _ := e.credsOf(successor); l.Code != http.StatusOK || l.Body != "app-successor" || doc.AccessKeyId == "" {
		t.Errorf("first request after the server is back: %s, want app-successor", l)
	}
	if err := e.server.Kill(); err != nil {
		t.Logf("server kill: %v", err)
	}
}

func testMalformed(t *testing.T, e *env) {
	base := "http://" + testenv.MetadataIP
	cases := []struct {
		name string
		path string
		args []string
	}{
		{"POST with a body", testenv.CredentialsPath, []string{"-X", "POST", "--data-binary", "x=1"}},
		{"GET with a body", testenv.CredentialsPath, []string{"-X", "GET", "--data-binary", "x=1"}},
		{"DELETE", testenv.CredentialsPath, []string{"-X", "DELETE"}},
		{"PUT token with a body", testenv.TokenPath, []string{"-X", "PUT", "-H", testenv.TokenTTLHeader + ": 60", "--data-binary", "x=1"}},
		{"bad percent escape", "/latest/meta-data/%zz", nil},
		{"huge header", testenv.CredentialsPath, []string{"-H", "X-Junk: " + strings.Repeat("a", 16<<10)}},
		{"huge path", "/latest/meta-data/" + strings.Repeat("a/", 8<<10), nil},
	}
	for _, c := range cases {
		r := e.curlArgs(e.web, base+c.path, c.args...)
		if r.Exit != 0 || r.Code < 400 || r.Code > 499 || strings.Contains(r.Body, canaryMarker) {
			t.Errorf("%s: %s, want a clean 4xx", c.name, r)
		}
	}
	e.assertAgentUp(t)
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("after malformed requests: %s, want 200 app-web", r)
	}
	e.canary.assertUntouched(t)
}

// testRuleRestore deletes the agent's DNAT rule, then the jump to its
// chain, as a CNI plugin or an operator flushing tables might, and waits for
// the agent's periodic check to put each back where it was. No pod traffic
// is sent meanwhile: while the rule is gone, pods would reach the node's
// metadata, which is exactly why the check exists.
func testRuleRestore(t *testing.T, e *env) {
	iptables := testenv.Bin(t, "iptables")
	before := natRules(t)
	var dnat, jump string
	for _, l := range strings.Split(before, "\n") {
		if strings.Contains(l, testenv.MetadataIP) && strings.Contains(l, "-j DNAT") {
			dnat = l
		}
	}
	if dnat == "" {
		t.Fatalf("no DNAT rule to delete:\n%s", before)
	}
	chain := strings.Fields(dnat)[1]
	for _, l := range strings.Split(before, "\n") {
		if strings.HasPrefix(l, "-A PREROUTING ") && strings.HasSuffix(l, "-j "+chain) && chain != "PREROUTING" {
			jump = l
		}
	}
	for _, rule := range []string{dnat, jump} {
		if rule == "" {
			continue // the DNAT rule sits in PREROUTING itself
		}
		restores := e.agentMetric(t, "podiam_agent_iptables_restores_total")
		// By number: -S output is shell-quoted (comments), -D by number is not.
		ruleChain := strings.Fields(rule)[1]
		sh(t, iptables, "-w", "5", "-t", "nat", "-D", ruleChain, strconv.Itoa(ruleNumber(before, rule)))
		if natRules(t) == before {
			t.Fatalf("deleting %q changed nothing", rule)
		}
		testenv.Eventually(t, 35*time.Second, "agent restores "+rule, func() error {
			if now := natRules(t); now != before {
				return fmt.Errorf("nat table:\n%s", now)
			}
			return nil
		})
		// The agent counts a restore once its install returns, which also
		// flushes conntrack after the rule is visible.
		testenv.Eventually(t, 10*time.Second, "restore of "+rule+" counted", func() error {
			if got := e.agentMetric(t, "podiam_agent_iptables_restores_total"); got <= restores {
				return fmt.Errorf("podiam_agent_iptables_restores_total %v, was %v", got, restores)
			}
			return nil
		})
	}
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("after the rule was restored: %s, want 200 app-web", r)
	}
	e.canary.assertUntouched(t)
}

// ruleNumber is the 1-based position of rule (an -S line) in its chain.
func ruleNumber(rules, rule string) int {
	prefix := strings.Join(strings.Fields(rule)[:2], " ") + " "
	n := 0
	for _, l := range strings.Split(rules, "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
			if l == rule {
				return n
			}
		}
	}
	return 0
}

// agentMetric returns the value of an unlabelled sample from the agent's
// /metrics, 0 when absent.
func (e *env) agentMetric(t testing.TB, name string) float64 {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	code, body, err := get(client, "http://"+hostPort(nodeIP, agentMetr)+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("agent /metrics: %d %v", code, err)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// testIPv6Refused: where the agent does not serve IPv6 (no --host-ipv6),
// a pod's request to [fd00:ec2::254] is refused at once, for a permitted
// and a denied pod alike, and never reaches what answers there.
func testIPv6Refused(t *testing.T, e *env) {
	e.canary6.Reset()
	for _, p := range []*podNet{e.web, e.intruder} {
		start := time.Now()
		r := e.curl(p, http.MethodGet, "http://["+metadataIPv6+"]", testenv.CredentialsPath, "-g")
		if r.Exit != 7 || r.Code != 0 || strings.Contains(r.Body, canaryMarker) {
			t.Errorf("pod %s to the IPv6 metadata address: %s, want connection refused (curl exit 7)", p.IP6, r)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("pod %s: refused only after %s, want at once", p.IP6, took)
		}
	}
	e.canary6.assertUntouched(t)
}

// floodScript is a Python program for a pod: it opens n connections to
// the metadata address, holds every one the agent has not closed, writes
// how many it holds to the file its first argument names, and sleeps
// until it is killed. It raises its descriptor limit to the hard one.
func floodScript(n int) string {
	return fmt.Sprintf(`
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(%d):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((%q, 80))
        held.append(s)
    except OSError:
        s.close()
with open(sys.argv[1], "w") as f:
    f.write("%%d" %% len(held))
time.sleep(3600)
`, n, testenv.MetadataIP)
}

// testFlood: one pod holds thousands of idle connections to the metadata
// address; the agent closes those over its per-address cap at once, stays
// up, and another pod is still served.
func testFlood(t *testing.T, e *env) {
	const conns = 3000
	before := e.agentMetric(t, "podiam_agent_connections_refused_total")
	// A process in the intruder pod opens the connections and holds them.
	script := floodScript(conns)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	flood := make(chan testenv.RunResult, 1)
	go func() {
		flood <- testenv.RunInNetNS(ctx, e.intruder.NS, e.podEnv, nil, "python3", "-c", script, filepath.Join(e.tmp, "flood"))
	}()
	testenv.Eventually(t, 30*time.Second, "the agent refusing the flood's connections over its cap", func() error {
		if n := e.agentMetric(t, "podiam_agent_connections_refused_total"); n-before < conns/2 {
			return fmt.Errorf("%v refused", n-before)
		}
		return nil
	})
	// Meanwhile another pod is served.
	if l, doc, _ := e.credsOf(e.web); l.Code != http.StatusOK || doc.AccessKeyId == "" {
		t.Errorf("web pod during the flood: %s", l)
	}
	e.assertAgentUp(t)
	cancel() // ends the flood's process
	<-flood
	e.canary.assertUntouched(t)
}
