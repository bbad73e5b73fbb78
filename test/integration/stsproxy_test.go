package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// stsAttempt is one HTTP request the server sent to STS.
type stsAttempt struct {
	At      time.Time
	Action  string // AssumeRole, GetCallerIdentity
	RoleARN string
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
type stsFaultProxy struct {
	URL string

	mu       sync.Mutex
	faulting bool
	faults   int
	attempts []stsAttempt
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

func startSTSFaultProxy(t *testing.T, upstream string) *stsFaultProxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	p := &stsFaultProxy{}
	forward := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		a := stsAttempt{At: time.Now(), Action: form.Get("Action"), RoleARN: form.Get("RoleArn"), Form: form}

		p.mu.Lock()
		inject := p.faulting && a.Action == "AssumeRole"
		fault := stsFaults[p.faults%len(stsFaults)]
		if inject {
			a.Fault = fault.status
			p.faults++
		}
		p.attempts = append(p.attempts, a)
		p.mu.Unlock()

		if !inject {
			forward.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		w.Header().Set("x-amzn-RequestId", fmt.Sprintf("fault-%d", time.Now().UnixNano()))
		w.WriteHeader(fault.status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>%s</Type>
    <Code>%s</Code>
    <Message>%s</Message>
  </Error>
  <RequestId>fault-request</RequestId>
</ErrorResponse>
`, fault.kind, fault.code, fault.message)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
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
