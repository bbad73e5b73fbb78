package sts

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podiam/podiam/pkg/creds"
)

// fakeSTS answers the STS query API with canned documents, so that the
// request path, the classification and the metrics are tested without moto
// (moto_test.go, privileged tag, runs against the real thing).
type fakeSTS struct {
	srv *httptest.Server

	mu    sync.Mutex
	forms []url.Values
	// status and code, when status is not 0, answer every request with an
	// STS error document.
	status int
	code   string
}

func newFakeSTS(t *testing.T) *fakeSTS {
	t.Helper()
	f := &fakeSTS{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	isolateAWSEnv(t)
	t.Setenv("AWS_ENDPOINT_URL_STS", f.srv.URL)
	return f
}

const stsNS = "https://sts.amazonaws.com/doc/2011-06-15/"

var fakeExpiry = time.Date(2031, 2, 3, 4, 5, 6, 789, time.UTC)

func (f *fakeSTS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	f.mu.Lock()
	f.forms = append(f.forms, form)
	status, code := f.status, f.code
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/xml")
	if status != 0 {
		w.WriteHeader(status)
		fmt.Fprintf(w, `<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code><Message>from the fake</Message></Error><RequestId>r</RequestId></ErrorResponse>`, stsNS, code)
		return
	}
	switch form.Get("Action") {
	case "AssumeRole":
		fmt.Fprintf(w, `<AssumeRoleResponse xmlns="%s"><AssumeRoleResult><Credentials>`+
			`<AccessKeyId>ASIAFAKE</AccessKeyId><SecretAccessKey>secret</SecretAccessKey><SessionToken>token</SessionToken>`+
			`<Expiration>%s</Expiration></Credentials>`+
			`<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/%s</Arn><AssumedRoleId>AROA:x</AssumedRoleId></AssumedRoleUser>`+
			`</AssumeRoleResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleResponse>`,
			stsNS, fakeExpiry.Format(time.RFC3339Nano), form.Get("RoleSessionName"))
	case "GetCallerIdentity":
		fmt.Fprintf(w, `<GetCallerIdentityResponse xmlns="%s"><GetCallerIdentityResult>`+
			`<Arn>arn:aws:iam::123456789012:user/podiam</Arn><UserId>AIDA</UserId><Account>123456789012</Account>`+
			`</GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>`, stsNS)
	default:
		w.WriteHeader(http.StatusBadRequest)
	}
}

func (f *fakeSTS) failWith(status int, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status, f.code = status, code
}

func (f *fakeSTS) requests() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.forms...)
}

var fakeKey = creds.Key{RoleARN: "arn:aws:iam::123456789012:role/app", SessionName: "kiam-kiam", ExternalID: "ext-1",
	SourceIdentity: "payments.ledger",
	Tags:           creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "payments"}, creds.Tag{Key: "eks-cluster-name", Value: "prod"})}

func TestAssumeAgainstFakeSTS(t *testing.T) {
	f := newFakeSTS(t)
	reg := prometheus.NewRegistry()
	a, err := New(t.Context(), Config{SessionDuration: 15 * time.Minute, AssumeMaxAttempts: 1, TransitiveTags: true}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC().Truncate(time.Second)
	c, err := a.Assume(t.Context(), fakeKey)
	if err != nil {
		t.Fatalf("Assume: %v", err)
	}
	if c.AccessKeyID != "ASIAFAKE" || c.SecretAccessKey != "secret" || c.SessionToken != "token" {
		t.Fatalf("credentials %+v, want the fake's", c)
	}
	// Second precision in UTC, as served to SDKs.
	if want := fakeExpiry.Truncate(time.Second); !c.Expiration.Equal(want) || c.Expiration.Location() != time.UTC {
		t.Fatalf("Expiration = %v, want %v in UTC", c.Expiration, want)
	}
	if c.LastUpdated.Before(before) || c.LastUpdated.Nanosecond() != 0 {
		t.Fatalf("LastUpdated = %v, want now to the second", c.LastUpdated)
	}
	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	for k, want := range map[string]string{
		"Action": "AssumeRole", "RoleArn": fakeKey.RoleARN, "RoleSessionName": fakeKey.SessionName,
		"ExternalId": fakeKey.ExternalID, "DurationSeconds": "900", "SourceIdentity": fakeKey.SourceIdentity,
		// The tags in the key's order (sorted), each transitive.
		"Tags.member.1.Key": "eks-cluster-name", "Tags.member.1.Value": "prod",
		"Tags.member.2.Key": "kubernetes-namespace", "Tags.member.2.Value": "payments",
		"TransitiveTagKeys.member.1": "eks-cluster-name", "TransitiveTagKeys.member.2": "kubernetes-namespace",
	} {
		if got := reqs[0].Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := testutil.ToFloat64(a.requests.WithLabelValues(string(opAssumeRole), string(resultOK))); got != 1 {
		t.Fatalf("requests{assume_role,ok} = %v, want 1", got)
	}

	arn, err := a.CallerARN(t.Context())
	if err != nil || arn != "arn:aws:iam::123456789012:user/podiam" {
		t.Fatalf("CallerARN = %q, %v", arn, err)
	}
	if got := testutil.ToFloat64(a.requests.WithLabelValues(string(opGetCallerIdentity), string(resultOK))); got != 1 {
		t.Fatalf("requests{get_caller_identity,ok} = %v, want 1", got)
	}
	if err := a.CheckBase(t.Context()); err != nil {
		t.Fatalf("CheckBase with static credentials: %v", err)
	}
}

func TestAssumeFailuresAgainstFakeSTS(t *testing.T) {
	tests := []struct {
		name   string
		status int
		code   string
		want   error
		res    result
	}{
		{"access denied", http.StatusForbidden, "AccessDenied", creds.ErrDenied, resultDenied},
		{"throttled", http.StatusBadRequest, "Throttling", creds.ErrUnavailable, resultUnavailable},
		{"server error", http.StatusInternalServerError, "InternalFailure", creds.ErrUnavailable, resultUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSTS(t)
			f.failWith(tt.status, tt.code)
			a, err := New(t.Context(), Config{AssumeMaxAttempts: 1, MaxAttempts: 1}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = a.Assume(t.Context(), fakeKey)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.code) {
				t.Fatalf("Assume = %v, want %v naming %s", err, tt.want, tt.code)
			}
			if n := len(f.requests()); n != 1 {
				t.Fatalf("%d requests with AssumeMaxAttempts 1, want 1", n)
			}
			if got := testutil.ToFloat64(a.requests.WithLabelValues(string(opAssumeRole), string(tt.res))); got != 1 {
				t.Fatalf("requests{assume_role,%s} = %v, want 1", tt.res, got)
			}
			if _, err := a.CallerARN(t.Context()); !errors.Is(err, tt.want) {
				t.Fatalf("CallerARN = %v, want %v", err, tt.want)
			}
		})
	}

	t.Run("invalid key refused without a call", func(t *testing.T) {
		f := newFakeSTS(t)
		a, err := New(t.Context(), Config{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Assume(t.Context(), creds.Key{RoleARN: fakeKey.RoleARN, SessionName: "x"}); !errors.Is(err, creds.ErrDenied) {
			t.Fatalf("Assume = %v, want ErrDenied", err)
		}
		if n := len(f.requests()); n != 0 {
			t.Fatalf("%d requests for an invalid key, want none", n)
		}
	})
}
