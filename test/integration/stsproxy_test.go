package integration

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/podiam/podiam/test/testenv"
)

// stsAttempt is one HTTP request the server sent to STS.
type stsAttempt struct {
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

// stsFaultProxy sits between the server and moto. While faulting is on it
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
type stsFaultProxy struct {
	URL      string
	upstream string

	mu       sync.Mutex
	faulting bool
	faults   int
	attempts []stsAttempt
	// trust maps a role ARN to the External IDs its trust policy accepts;
	// an empty set accepts none (the caller is not trusted).
	trust map[string][]string
	// answers maps a role ARN to the error every AssumeRole of it gets.
	answers map[string]stsError
	// lacks maps a role ARN to the actions its trust policy does not
	// allow: sts:TagSession, sts:SetSourceIdentity.
	lacks map[string][]string
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

// behindProxy starts a fault proxy in front of moto and returns it with a
// copy of moto whose endpoint is the proxy, for servers that must reach
// STS through the proxy only.
func behindProxy(t *testing.T, moto *testenv.Moto) (*stsFaultProxy, *testenv.Moto) {
	t.Helper()
	proxy := startSTSFaultProxy(t, moto.Endpoint)
	via := *moto
	via.Endpoint = proxy.URL
	return proxy, &via
}

func startSTSFaultProxy(t *testing.T, upstream string) *stsFaultProxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &stsFaultProxy{upstream: upstream, trust: map[string][]string{}, answers: map[string]stsError{}, lacks: map[string][]string{}}
	forward := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		a := stsAttempt{At: time.Now(), Action: form.Get("Action"), RoleARN: form.Get("RoleArn"), ExternalID: form.Get("ExternalId"), Form: form}

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
			forward.ServeHTTP(w, r)
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
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// RequireExternalID gives roleARN a trust policy that trusts any caller
// presenting one of externalIDs, replacing what it had; with none it
// trusts no caller.
func (p *stsFaultProxy) RequireExternalID(roleARN string, externalIDs ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trust[roleARN] = append([]string{}, externalIDs...)
}

// DenyRole gives roleARN a trust policy that does not name the caller.
func (p *stsFaultProxy) DenyRole(roleARN string) { p.RequireExternalID(roleARN) }

// TrustLacks gives roleARN a trust policy that trusts the caller for
// sts:AssumeRole but not for actions (sts:TagSession,
// sts:SetSourceIdentity): an AssumeRole carrying session tags or a
// SourceIdentity is then AccessDenied, as AWS answers it.
func (p *stsFaultProxy) TrustLacks(roleARN string, actions ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lacks[roleARN] = append([]string{}, actions...)
}

// AnswerRole makes every AssumeRole of roleARN fail with the given error.
func (p *stsFaultProxy) AnswerRole(roleARN string, status int, code, message string) {
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
func (p *stsFaultProxy) caller(r *http.Request) string {
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

// AssumeRoles returns the AssumeRole requests for roleARN that reached moto.
func (p *stsFaultProxy) AssumeRoles(roleARN string) []stsAttempt {
	var out []stsAttempt
	for _, a := range p.Attempts() {
		if a.Action == "AssumeRole" && a.RoleARN == roleARN && a.Fault == 0 {
			out = append(out, a)
		}
	}
	return out
}

// SetFaulting turns the fault window on or off and returns when it did.
func (p *stsFaultProxy) SetFaulting(on bool) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faulting = on
	return time.Now()
}

// Attempts returns what the proxy has seen so far, in arrival order.
func (p *stsFaultProxy) Attempts() []stsAttempt {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]stsAttempt(nil), p.attempts...)
}

func TestFaultProxy(t *testing.T) {
	var upstreamHits int
	var mu sync.Mutex
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamHits++
		mu.Unlock()
		fmt.Fprint(w, "from upstream")
	}))
	defer upstream.Close()
	p := startSTSFaultProxy(t, upstream.URL)
	post := func(action string) (int, string) {
		t.Helper()
		resp, err := http.PostForm(p.URL, url.Values{"Action": {action}, "RoleArn": {"arn:aws:iam::123456789012:role/x"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("AssumeRole"); code != 200 || body != "from upstream" {
		t.Fatalf("without faults: %d %q", code, body)
	}
	p.SetFaulting(true)
	var codes []int
	for range 3 {
		code, body := post("AssumeRole")
		codes = append(codes, code)
		if !bytes.Contains([]byte(body), []byte("<ErrorResponse")) {
			t.Fatalf("fault body %q is not an STS error document", body)
		}
	}
	if code, _ := post("GetCallerIdentity"); code != 200 {
		t.Fatalf("GetCallerIdentity faulted: %d", code)
	}
	p.SetFaulting(false)
	if code, _ := post("AssumeRole"); code != 200 {
		t.Fatalf("after the window: %d", code)
	}
	got := map[int]bool{}
	for _, c := range codes {
		got[c] = true
	}
	if !got[400] || !got[500] || !got[503] {
		t.Fatalf("fault statuses %v, want 400, 500 and 503 in turn", codes)
	}
	att := p.Attempts()
	if len(att) != 6 || att[0].Fault != 0 || att[1].Fault == 0 || att[4].Fault != 0 || att[1].RoleARN != "arn:aws:iam::123456789012:role/x" {
		t.Fatalf("attempts recorded: %+v", att)
	}
	mu.Lock()
	defer mu.Unlock()
	if upstreamHits != 3 {
		t.Fatalf("upstream saw %d requests, want 3", upstreamHits)
	}
}

// The trust rules answer as STS does: AccessDenied (403) naming the caller
// and the role, for a missing or different External ID alike, which the
// SDK parses into the same error a real denial gives.
func TestFaultProxyTrust(t *testing.T) {
	const caller = "arn:aws:sts::123456789012:assumed-role/podiam-server/kiam-kiam"
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "Action=GetCallerIdentity") {
			if r.Header.Get("X-Amz-Security-Token") != "token-of-base" {
				http.Error(w, "caller lookup without the caller's headers", http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, `<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>%s</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>`, caller)
			return
		}
		fmt.Fprint(w, `<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIAUPSTREAM</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>`)
	}))
	defer upstream.Close()
	p := startSTSFaultProxy(t, upstream.URL)
	const (
		owned    = "arn:aws:iam::123456789012:role/owned"
		foreign  = "arn:aws:iam::123456789012:role/foreign"
		chained  = "arn:aws:iam::123456789012:role/chained"
		free     = "arn:aws:iam::123456789012:role/free"
		untagged = "arn:aws:iam::123456789012:role/untagged"
	)
	p.RequireExternalID(owned, "tenant-a", "tenant-b")
	p.DenyRole(foreign)
	p.AnswerRole(chained, http.StatusBadRequest, "ValidationError",
		"The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.")
	p.TrustLacks(untagged, "sts:TagSession", "sts:SetSourceIdentity")

	client := sts.New(sts.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(p.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("ASIABASE", "secret", "token-of-base"),
		Retryer:      aws.NopRetryer{},
	})
	// externalID "tags" sends a session tag instead, "source" a
	// SourceIdentity.
	assume := func(role, externalID string) (*sts.AssumeRoleOutput, error) {
		in := &sts.AssumeRoleInput{RoleArn: aws.String(role), RoleSessionName: aws.String("kiam-kiam")}
		switch externalID {
		case "":
		case "tags":
			in.Tags = []ststypes.Tag{{Key: aws.String("kubernetes-namespace"), Value: aws.String("apps")}}
		case "source":
			in.SourceIdentity = aws.String("apps.web")
		default:
			in.ExternalId = aws.String(externalID)
		}
		return client.AssumeRole(context.Background(), in)
	}
	for _, tc := range []struct {
		role, externalID string
		status           int
		code, message    string
	}{
		{owned, "", 403, "AccessDenied", "User: " + caller + " is not authorized to perform: sts:AssumeRole on resource: " + owned},
		{owned, "tenant-c", 403, "AccessDenied", "User: " + caller + " is not authorized to perform: sts:AssumeRole on resource: " + owned},
		{owned, "tenant-a", 200, "", ""},
		{owned, "tenant-b", 200, "", ""},
		{foreign, "", 403, "AccessDenied", "is not authorized to perform: sts:AssumeRole on resource: " + foreign},
		{foreign, "tenant-a", 403, "AccessDenied", "on resource: " + foreign},
		{chained, "", 400, "ValidationError", "1 hour session limit"},
		{free, "anything", 200, "", ""},
		{untagged, "", 200, "", ""},
		{untagged, "tags", 403, "AccessDenied", "User: " + caller + " is not authorized to perform: sts:TagSession on resource: " + untagged},
		{untagged, "source", 403, "AccessDenied", "is not authorized to perform: sts:SetSourceIdentity on resource: " + untagged},
		{free, "tags", 200, "", ""},
	} {
		out, err := assume(tc.role, tc.externalID)
		if tc.status == 200 {
			if err != nil || aws.ToString(out.Credentials.AccessKeyId) != "ASIAUPSTREAM" {
				t.Errorf("%s with %q: %v, want the upstream's answer", tc.role, tc.externalID, err)
			}
			continue
		}
		var apiErr smithy.APIError
		var respErr *smithyhttp.ResponseError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode() != tc.code || !strings.Contains(apiErr.ErrorMessage(), tc.message) ||
			!errors.As(err, &respErr) || respErr.HTTPStatusCode() != tc.status {
			t.Errorf("%s with %q: %v, want %d %s %q", tc.role, tc.externalID, err, tc.status, tc.code, tc.message)
		}
	}
	var seen []string
	for _, a := range p.Attempts() {
		if a.Action == "AssumeRole" {
			seen = append(seen, fmt.Sprintf("%s:%s:%d", a.RoleARN[strings.LastIndex(a.RoleARN, "/")+1:], a.ExternalID, a.Fault))
		}
	}
	want := []string{"owned::403", "owned:tenant-c:403", "owned:tenant-a:0", "owned:tenant-b:0", "foreign::403", "foreign:tenant-a:403", "chained::400", "free:anything:0",
		"untagged::0", "untagged::403", "untagged::403", "free::0"}
	if !slices.Equal(seen, want) {
		t.Fatalf("attempts %v, want %v", seen, want)
	}
}
