package testenv

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// STSAttempt is one HTTP request the server sent to STS.
type STSAttempt struct {
	At      time.Time
	Action  string // AssumeRole, GetCallerIdentity
	RoleARN string
	// ExternalID is the AssumeRole's ExternalId parameter, "" when absent.
	ExternalID string
	// Fault is the HTTP status of the error the proxy injected, 0 when the
	// request went through to moto.
	Fault int
	// Form is every parameter of the request, as sent.
	Form url.Values
}

// STSFaultProxy sits between the server and moto. While faulting is on it
// answers every AssumeRole with an error shaped as STS sends it, in turn
// throttling, an internal failure and unavailability; everything else, and
// everything while faulting is off, goes to moto. It records every request,
// so the test sees exactly the traffic STS would.
//
// moto enforces no trust policy, so the proxy plays one for chosen roles:
// RequireExternalID makes a role's trust policy demand an sts:ExternalId
// (AWS answers AccessDenied, not a validation error, when it is missing or
// differs), DenyRole one that does not name the caller at all,
// TrustLacks one whose Action does not list sts:TagSession or
// sts:SetSourceIdentity (AWS refuses the whole AssumeRole when it carries
// tags or a SourceIdentity then, naming the action), and AnswerRole any
// other error STS gives.
type STSFaultProxy struct {
	URL      string
	upstream string

	mu       sync.Mutex
	faulting bool
	faults   int
	attempts []STSAttempt
	// trust maps a role ARN to the External IDs its trust policy accepts;
	// an empty set accepts none (the caller is not trusted).
	trust map[string][]string
	// answers maps a role ARN to the error every AssumeRole of it gets.
	answers map[string]stsError
	// lacks maps a role ARN to the actions its trust policy does not
	// allow: sts:TagSession, sts:SetSourceIdentity.
	lacks map[string][]string
	// issued maps the access key IDs of STS's successful answers to what
	// they were issued for.
	issued map[string]IssuedCredentials
}

// stsError is an error answer as STS's query protocol sends it.
type stsError struct {
	status     int
	kind, code string
	message    string
	// action is the action an AccessDenied names, "" for sts:AssumeRole.
	action string
}

// stsFaults are the answers of a real STS having a bad day. The query
// protocol's error document is what aws-sdk-go-v2 parses the code from.
var stsFaults = []struct {
	status     int
	kind, code string
	message    string
}{
	{http.StatusBadRequest, "Sender", "Throttling", "Rate exceeded"},
	{http.StatusInternalServerError, "Receiver", "InternalFailure", "An internal error occurred."},
	{http.StatusServiceUnavailable, "Receiver", "ServiceUnavailable", "Service is unavailable."},
}

// BehindProxy starts a fault proxy in front of moto and returns it with a
// copy of moto whose endpoint is the proxy, for servers that must reach
// STS through the proxy only.
func BehindProxy(t testing.TB, moto *Moto) (*STSFaultProxy, *Moto) {
	t.Helper()
	proxy := StartSTSFaultProxy(t, "", moto.Endpoint)
	via := *moto
	via.Endpoint = proxy.URL
	return proxy, &via
}

// StartSTSFaultProxy starts the proxy in front of upstream (moto) on
// listen, a host:port ("" means a free port on 127.0.0.1); it stops in t's
// cleanup.
func StartSTSFaultProxy(t testing.TB, listen, upstream string) *STSFaultProxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("testenv: STS proxy listen %s: %v", listen, err)
	}
	p := &STSFaultProxy{upstream: upstream, trust: map[string][]string{}, answers: map[string]stsError{},
		lacks: map[string][]string{}, issued: map[string]IssuedCredentials{}}
	forward := httputil.NewSingleHostReverseProxy(target)
	forward.ModifyResponse = p.recordIssued
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		a := STSAttempt{At: time.Now(), Action: form.Get("Action"), RoleARN: form.Get("RoleArn"), ExternalID: form.Get("ExternalId"), Form: form}

		p.mu.Lock()
		var answer *stsError
		switch accepted, ruled := p.trust[a.RoleARN]; {
		case a.Action != "AssumeRole":
		case p.faulting:
			f := stsFaults[p.faults%len(stsFaults)]
			p.faults++
			answer = &stsError{status: f.status, kind: f.kind, code: f.code, message: f.message}
		case p.answers[a.RoleARN].code != "":
			e := p.answers[a.RoleARN]
			answer = &e
		case ruled && (a.ExternalID == "" || !slices.Contains(accepted, a.ExternalID)):
			answer = &stsError{status: http.StatusForbidden, kind: "Sender", code: "AccessDenied"}
		case form.Get("SourceIdentity") != "" && slices.Contains(p.lacks[a.RoleARN], "sts:SetSourceIdentity"):
			answer = &stsError{status: http.StatusForbidden, kind: "Sender", code: "AccessDenied", action: "sts:SetSourceIdentity"}
		case form.Get("Tags.member.1.Key") != "" && slices.Contains(p.lacks[a.RoleARN], "sts:TagSession"):
			answer = &stsError{status: http.StatusForbidden, kind: "Sender", code: "AccessDenied", action: "sts:TagSession"}
		}
		if answer != nil {
			a.Fault = answer.status
		}
		p.attempts = append(p.attempts, a)
		p.mu.Unlock()

		if answer == nil {
			forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), attemptKey{}, a)))
			return
		}
		if answer.code == "AccessDenied" && answer.message == "" {
			// STS's words, which name the caller and the role but never
			// say whether the trust policy or the External ID failed;
			// only an action other than sts:AssumeRole is named.
			action := answer.action
			if action == "" {
				action = "sts:AssumeRole"
			}
			answer.message = fmt.Sprintf("User: %s is not authorized to perform: %s on resource: %s", p.caller(r), action, a.RoleARN)
		}
		w.Header().Set("Content-Type", "text/xml")
		w.Header().Set("x-amzn-RequestId", fmt.Sprintf("fault-%d", time.Now().UnixNano()))
		w.WriteHeader(answer.status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>%s</Type>
    <Code>%s</Code>
    <Message>%s</Message>
  </Error>
  <RequestId>fault-request</RequestId>
</ErrorResponse>
`, answer.kind, answer.code, html.EscapeString(answer.message))
	}))
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// attemptKey carries an AssumeRole's STSAttempt from the handler to
// recordIssued, through the forwarded request's context.
type attemptKey struct{}

// IssuedCredentials is what STS (moto) answered to one AssumeRole that
// went through the proxy: a test maps an access key ID seen anywhere back
// to the role STS issued it for, from STS's own answer rather than from
// podiam's logs.
type IssuedCredentials struct {
	AccessKeyID string
	RoleARN     string // as requested
	ExternalID  string
	// AssumedRoleARN is the AssumedRoleUser's ARN in the answer.
	AssumedRoleARN string
	Expiration     time.Time
	At             time.Time
}

// recordIssued reads a successful AssumeRole answer on its way back and
// records its access key ID. The body is put back as it was.
func (p *STSFaultProxy) recordIssued(resp *http.Response) error {
	a, ok := resp.Request.Context().Value(attemptKey{}).(STSAttempt)
	if !ok || a.Action != "AssumeRole" || resp.StatusCode != http.StatusOK {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read AssumeRole answer: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var out struct {
		Result struct {
			Credentials struct {
				AccessKeyID string `xml:"AccessKeyId"`
				Expiration  string `xml:"Expiration"`
			} `xml:"Credentials"`
			User struct {
				Arn string `xml:"Arn"`
			} `xml:"AssumedRoleUser"`
		} `xml:"AssumeRoleResult"`
	}
	if err := xml.Unmarshal(body, &out); err != nil || out.Result.Credentials.AccessKeyID == "" {
		// Nothing to record; the server will see the same document and
		// report it.
		return nil //nolint:nilerr // the answer goes on unchanged
	}
	exp, _ := time.Parse(time.RFC3339, out.Result.Credentials.Expiration)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.issued[out.Result.Credentials.AccessKeyID] = IssuedCredentials{
		AccessKeyID: out.Result.Credentials.AccessKeyID, RoleARN: a.RoleARN, ExternalID: a.ExternalID,
		AssumedRoleARN: out.Result.User.Arn, Expiration: exp, At: time.Now(),
	}
	return nil
}

// Issued returns what STS answered for an access key ID, and whether the
// key went through the proxy at all.
func (p *STSFaultProxy) Issued(accessKeyID string) (IssuedCredentials, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.issued[accessKeyID]
	return c, ok
}

// RequireExternalID gives roleARN a trust policy that trusts any caller
// presenting one of externalIDs, replacing what it had; with none it
// trusts no caller.
func (p *STSFaultProxy) RequireExternalID(roleARN string, externalIDs ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trust[roleARN] = append([]string{}, externalIDs...)
}

// DenyRole gives roleARN a trust policy that does not name the caller.
func (p *STSFaultProxy) DenyRole(roleARN string) { p.RequireExternalID(roleARN) }

// TrustLacks gives roleARN a trust policy that trusts the caller for
// sts:AssumeRole but not for actions (sts:TagSession,
// sts:SetSourceIdentity): an AssumeRole carrying session tags or a
// SourceIdentity is then AccessDenied, as AWS answers it.
func (p *STSFaultProxy) TrustLacks(roleARN string, actions ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lacks[roleARN] = append([]string{}, actions...)
}

// AnswerRole makes every AssumeRole of roleARN fail with the given error.
func (p *STSFaultProxy) AnswerRole(roleARN string, status int, code, message string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kind := "Sender"
	if status >= 500 {
		kind = "Receiver"
	}
	p.answers[roleARN] = stsError{status: status, kind: kind, code: code, message: message}
}

// caller asks moto who signed r, as STS names the caller in AccessDenied:
// moto checks no signatures, so the same headers on a GetCallerIdentity
// name the same identity.
func (p *STSFaultProxy) caller(r *http.Request) string {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, p.upstream,
		strings.NewReader("Action=GetCallerIdentity&Version=2011-06-15"))
	if err != nil {
		return "unknown"
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, h := range []string{"Authorization", "X-Amz-Date", "X-Amz-Security-Token"} {
		req.Header.Set(h, r.Header.Get(h))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "unknown"
	}
	defer resp.Body.Close()
	var out struct {
		Arn string `xml:"GetCallerIdentityResult>Arn"`
	}
	if err := xml.NewDecoder(resp.Body).Decode(&out); err != nil || out.Arn == "" {
		return "unknown"
	}
	return out.Arn
}

// SetFaulting turns the fault window on or off and returns when it did.
func (p *STSFaultProxy) SetFaulting(on bool) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faulting = on
	return time.Now()
}

// Attempts returns what the proxy has seen so far, in arrival order.
func (p *STSFaultProxy) Attempts() []STSAttempt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]STSAttempt(nil), p.attempts...)
}

// AssumeRoles returns the AssumeRole requests for roleARN that reached moto.
func (p *STSFaultProxy) AssumeRoles(roleARN string) []STSAttempt {
	var out []STSAttempt
	for _, a := range p.Attempts() {
		if a.Action == "AssumeRole" && a.RoleARN == roleARN && a.Fault == 0 {
			out = append(out, a)
		}
	}
	return out
}
