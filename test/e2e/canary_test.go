package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// Everything the canary serves contains canaryMarker, so a pod that ever
// reads it in a response has reached the node's metadata.
const (
	canaryMarker    = "NODECANARY"
	canaryAccessKey = "ASIANODECANARY000001"
	canaryRole      = "node-role-NODECANARY"
	canaryInstance  = "i-NODECANARY0000001"
	canaryTokenPref = "NODECANARY-TOKEN-"
)

// canaryRequest is one request as the canary received it.
type canaryRequest struct {
	Remote string // ip:port the connection came from
	Method string
	URI    string // the request target exactly as sent
	Token  string // X-aws-ec2-metadata-token
}

func (r canaryRequest) String() string {
	return fmt.Sprintf("%s %s from %s (token %q)", r.Method, r.URI, r.Remote, r.Token)
}

// canary stands where the node's real metadata service would be and records
// every connection and request, including connections that never carry a
// request Go's server can parse.
type canary struct {
	srv *http.Server

	mu     sync.Mutex
	conns  []string // remote addresses of accepted connections
	reqs   []canaryRequest
	tokens int
}

func startCanary(t testing.TB, addr string) *canary {
	t.Helper()
	return startCanaryIn(t, "", addr)
}

// startCanaryIn is startCanary in network namespace ns, another node's
// ("" is this process's).
func startCanaryIn(t testing.TB, ns, addr string) *canary {
	t.Helper()
	var l net.Listener
	listen := func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}
	var err error
	if ns == "" {
		err = listen()
	} else {
		err = testenv.InNetNS(ns, listen)
	}
	if err != nil {
		t.Fatalf("canary listen %s: %v", addr, err)
	}
	c := &canary{}
	c.srv = &http.Server{Handler: http.HandlerFunc(c.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = c.srv.Serve(&recordingListener{Listener: l, c: c}) }()
	t.Cleanup(func() { _ = c.srv.Close() })
	return c
}

type recordingListener struct {
	net.Listener
	c *canary
}

func (l *recordingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.c.mu.Lock()
		l.c.conns = append(l.c.conns, conn.RemoteAddr().String())
		l.c.mu.Unlock()
	}
	return conn, err
}

// serve answers like a node's IMDS that holds a node role and user data,
// and tokens for IMDSv2.
func (c *canary) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.reqs = append(c.reqs, canaryRequest{Remote: r.RemoteAddr, Method: r.Method, URI: r.RequestURI,
		Token: r.Header.Get(testenv.TokenHeader)})
	c.tokens++
	n := c.tokens
	c.mu.Unlock()

	path := r.URL.Path
	switch {
	case r.Method == http.MethodPut && path == testenv.TokenPath:
		w.Header().Set(testenv.TokenTTLHeader, r.Header.Get(testenv.TokenTTLHeader))
		fmt.Fprintf(w, "%s%d", canaryTokenPref, n)
	case strings.HasSuffix(path, "/iam/security-credentials") || strings.HasSuffix(path, "/iam/security-credentials/"):
		fmt.Fprint(w, canaryRole)
	case strings.Contains(path, "/iam/security-credentials/"):
		w.Header().Set("Content-Type", "application/json")
		now := time.Now().UTC()
		_ = json.NewEncoder(w).Encode(map[string]string{
			"Code":            "Success",
			"LastUpdated":     now.Format("2006-01-02T15:04:05Z"),
			"Type":            "AWS-HMAC",
			"AccessKeyId":     canaryAccessKey,
			"SecretAccessKey": "NODECANARY-secret-access-key",
			"Token":           "NODECANARY-session-token",
			"Expiration":      now.Add(6 * time.Hour).Format("2006-01-02T15:04:05Z"),
		})
	case strings.HasSuffix(path, "/meta-data/instance-id"):
		fmt.Fprint(w, canaryInstance)
	default:
		fmt.Fprintf(w, "%s node secret for %s", canaryMarker, r.RequestURI)
	}
}

// Connections returns the remote addresses of every connection so far.
func (c *canary) Connections() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.conns...)
}

// Requests returns every request so far.
func (c *canary) Requests() []canaryRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]canaryRequest(nil), c.reqs...)
}

// Reset forgets what the canary saw, e.g. after the harness's own checks.
func (c *canary) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conns, c.reqs = nil, nil
}

// assertUntouched fails when anything at all reached the canary.
func (c *canary) assertUntouched(t testing.TB) {
	t.Helper()
	conns, reqs := c.Connections(), c.Requests()
	if len(conns) == 0 && len(reqs) == 0 {
		return
	}
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "\n  %s", r)
	}
	t.Errorf("the node's metadata (canary) was reached: %d connections from %v, requests:%s", len(conns), conns, b.String())
}
