package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

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
	p := StartSTSFaultProxy(t, "", upstream.URL)
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
	p := StartSTSFaultProxy(t, "", upstream.URL)
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
		{untagged, "", 200, "", ""},
		{untagged, "tags", 403, "AccessDenied", "User: " + caller + " is not authorized to perform: sts:TagSession on resource: " + untagged},
		{untagged, "source", 403, "AccessDenied", "is not authorized to perform: sts:SetSourceIdentity on resource: " + untagged},
		{free, "tags", 200, "", ""},
		{free, "anything", 200, "", ""},
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
	want := []string{"owned::403", "owned:tenant-c:403", "owned:tenant-a:0", "owned:tenant-b:0", "foreign::403", "foreign:tenant-a:403", "chained::400",
		"untagged::0", "untagged::403", "untagged::403", "free::0", "free:anything:0"}
	if !slices.Equal(seen, want) {
		t.Fatalf("attempts %v, want %v", seen, want)
	}
	// The last successful AssumeRole (free, with "anything") is what the
	// access key ID maps back to.
	if got, ok := p.Issued("ASIAUPSTREAM"); !ok || got.RoleARN != free || got.ExternalID != "anything" {
		t.Fatalf("Issued(ASIAUPSTREAM) = %+v, %v; want the role %s with External ID anything", got, ok, free)
	}
	if _, ok := p.Issued("ASIANEVER"); ok {
		t.Fatal("Issued knows a key STS never answered")
	}
}
