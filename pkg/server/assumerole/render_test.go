package assumerole

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
)

var testCreds = creds.Credentials{AccessKeyID: "ASIAEXAMPLE", SecretAccessKey: "secret/key+1", SessionToken: "token=="}

func TestRenderMap(t *testing.T) {
	r, err := Render(v1alpha1.SecretTypeMap, testCreds)
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != corev1.SecretTypeOpaque || len(r.Data) != 3 ||
		string(r.Data["awsAccessKeyId"]) != "ASIAEXAMPLE" || string(r.Data["awsSecretAccessKey"]) != "secret/key+1" ||
		string(r.Data["awsSessionToken"]) != "token==" {
		t.Fatalf("map secret = %v %q", r.Type, r.Data)
	}
}

func TestRenderFileINI(t *testing.T) {
	r, err := Render(v1alpha1.SecretTypeFile, testCreds)
	if err != nil {
		t.Fatal(err)
	}
	want := "[default]\naws_access_key_id=ASIAEXAMPLE\naws_secret_access_key=secret/key+1\naws_session_token=token==\n"
	if r.Type != corev1.SecretTypeOpaque || len(r.Data) != 1 || string(r.Data["credentials"]) != want {
		t.Fatalf("file secret = %v %q", r.Type, r.Data)
	}
	// A newline in a value would start a new INI line; it never reaches
	// the file.
	ini := CredentialsINI(creds.Credentials{AccessKeyID: "A\n[evil]", SecretAccessKey: "s", SessionToken: "t"})
	if strings.Count(ini, "\n") != 4 || strings.Contains(ini, "\n[evil]") {
		t.Fatalf("ini = %q", ini)
	}
}

func TestRenderDockerConfig(t *testing.T) {
	url := "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/v2/my-repo"
	r, err := RenderDockerConfig(url, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != corev1.SecretTypeDockerConfigJson || len(r.Data) != 1 {
		t.Fatalf("docker secret = %v %q", r.Type, r.Data)
	}
	var cfg struct {
		Auths map[string]struct{ Username, Password, Auth string }
	}
	if err := json.Unmarshal(r.Data[".dockerconfigjson"], &cfg); err != nil {
		t.Fatal(err)
	}
	e, ok := cfg.Auths[url]
	if !ok || len(cfg.Auths) != 1 || e.Username != "AWS" || e.Password != "pw" ||
		e.Auth != base64.StdEncoding.EncodeToString([]byte("AWS:pw")) {
		t.Fatalf("auths = %+v", cfg.Auths)
	}
	if _, err := Render(v1alpha1.SecretTypeEcrDockerConfigJson, testCreds); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Render(ECR) = %v, want ErrInvalidSpec", err)
	}
}

func TestECRPassword(t *testing.T) {
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	if pw, err := ECRPassword(enc("AWS:abc:def")); err != nil || pw != "abc:def" {
		t.Fatalf("got %q, %v", pw, err)
	}
	for _, bad := range []string{"!!", enc("AWS"), enc("root:pw"), enc("AWS:")} {
		if _, err := ECRPassword(bad); !errors.Is(err, ErrInvalidECRToken) {
			t.Errorf("ECRPassword(%q) = %v", bad, err)
		}
	}
}

func TestParseECRURL(t *testing.T) {
	for in, want := range map[string]Registry{
		"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/v2/my-repo": {ID: "123456789012", Region: "eu-west-1"},
		"123456789012.dkr.ecr.us-east-1.amazonaws.com":                    {ID: "123456789012", Region: "us-east-1"},
		"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/repo":           {ID: "123456789012", Region: "cn-north-1"},
	} {
		got, err := ParseECRURL(in)
		if err != nil || got != want {
			t.Errorf("ParseECRURL(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "https://<account>.dkr.ecr.<region>.amazonaws.com/v2/x", "https://docker.io/library/x", "https://12.dkr.ecr.us-east-1.amazonaws.com"} {
		if _, err := ParseECRURL(bad); !errors.Is(err, ErrInvalidECRURL) {
			t.Errorf("ParseECRURL(%q) = %v", bad, err)
		}
	}
}

func TestInUse(t *testing.T) {
	u := NewInUse()
	a, b := creds.Key{RoleARN: "a"}, creds.Key{RoleARN: "b"}
	u.Set("ns/x", a)
	u.Set("ns/y", a)
	u.Set("ns/x", a)
	u.Drop("ns/y")
	if !u.Has(a) {
		t.Fatal("a dropped while ns/x still uses it")
	}
	u.Set("ns/x", b)
	if u.Has(a) || !u.Has(b) {
		t.Fatal("moving ns/x to b left a in use")
	}
	u.Drop("ns/x")
	u.Drop("ns/x")
	if u.Has(b) {
		t.Fatal("b still in use")
	}
}

func TestTokenFresh(t *testing.T) {
	now := time.Now()
	for name, tc := range map[string]struct {
		exp  time.Time
		want bool
	}{
		"unknown expiry":             {time.Time{}, true},
		"expiry before fetch (moto)": {now.Add(-24 * time.Hour), true},
		"plenty left":                {now.Add(time.Hour), true},
		"inside refresh window":      {now.Add(time.Minute), false},
	} {
		if got := tokenFresh(ecrEntry{tok: ECRToken{ExpiresAt: tc.exp}, fetched: now.Add(-time.Second)}, now, 5*time.Minute); got != tc.want {
			t.Errorf("%s: fresh = %v", name, got)
		}
	}
}

func TestStatusConditions(t *testing.T) {
	var recorded []string
	c := &Controller{now: time.Now, deps: Deps{Events: recorderFunc(func(reason string) { recorded = append(recorded, reason) })}}
	var written *v1alpha1.AWSAssumeRole
	c.deps.Status = statusFunc(func(o *v1alpha1.AWSAssumeRole) { written = o })
	obj := &v1alpha1.AWSAssumeRole{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns", Generation: 3}}

	exp := time.Now().Add(time.Hour)
	if err := c.writeStatus(t.Context(), obj, outcome{reason: v1alpha1.ReasonSecretWritten, ready: true, message: "ok", roleARN: "arn", expires: exp, wrote: true}); err != nil {
		t.Fatal(err)
	}
	cond := meta.FindStatusCondition(written.Status.Conditions, "Ready")
	if cond == nil || cond.Status != metav1.ConditionTrue || written.Status.ObservedGeneration != 3 ||
		written.Status.Expiration == nil || written.Status.LastRefreshTime == nil || len(recorded) != 0 {
		t.Fatalf("status = %+v, events %v", written.Status, recorded)
	}
	// The same outcome again writes nothing: no status update loop.
	obj = written
	written = nil
	if err := c.writeStatus(t.Context(), obj, outcome{reason: v1alpha1.ReasonSecretWritten, ready: true, message: "ok", roleARN: "arn", expires: exp}); err != nil || written != nil {
		t.Fatalf("unchanged status written again: %v %v", err, written)
	}
	// A denial: Ready=False, no expiration, one Event, and none on repeat.
	deny := outcome{reason: v1alpha1.ReasonNotPermitted, message: "denied", event: "denied", roleARN: "arn"}
	if err := c.writeStatus(t.Context(), obj, deny); err != nil {
		t.Fatal(err)
	}
	cond = meta.FindStatusCondition(written.Status.Conditions, "Ready")
	if cond.Status != metav1.ConditionFalse || cond.Reason != "NotPermitted" || written.Status.Expiration != nil || len(recorded) != 1 {
		t.Fatalf("status = %+v, events %v", written.Status, recorded)
	}
	if err := c.writeStatus(t.Context(), written, deny); err != nil || len(recorded) != 1 {
		t.Fatalf("repeated denial recorded again: %v", recorded)
	}
}
