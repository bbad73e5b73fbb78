package metadoc

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/creds"
)

var received = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func podCreds(arn string) creds.PodCredentials {
	return creds.PodCredentials{
		PodUID: "uid", Namespace: "ns", Name: "pod", RoleARN: arn,
		Credentials: creds.Credentials{
			AccessKeyID:     "ASIAEXAMPLE",
			SecretAccessKey: "SECRET<&>secret",
			SessionToken:    "SESSION+/=token",
			// Non-UTC zone and a fraction: the output must still be UTC
			// without a fraction.
			Expiration:  time.Date(2025, 3, 4, 7, 6, 7, 999_999_999, time.FixedZone("CET", 3600)),
			LastUpdated: time.Date(2025, 3, 4, 5, 1, 2, 500_000_000, time.UTC),
		},
	}
}

// perRequest is how the handler encoded the documents on every request
// before they were built once: the built ones must be the same bytes.
func perRequest(pc creds.PodCredentials, now time.Time) (role, credsDoc, info string) {
	a, _ := ParseRoleARN(pc.RoleARN)
	c := pc.Credentials
	updated := c.LastUpdated
	if updated.IsZero() {
		updated = now
	}
	cb, _ := json.Marshal(credentialsDoc{
		Code:            "Success",
		LastUpdated:     updated.UTC().Format(TimeLayout),
		Type:            "AWS-HMAC",
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		Token:           c.SessionToken,
		Expiration:      c.Expiration.UTC().Format(TimeLayout),
	})
	ib, _ := json.Marshal(infoDoc{
		Code:               "Success",
		LastUpdated:        updated.UTC().Format(TimeLayout),
		InstanceProfileArn: "arn:" + a.Partition + ":iam::" + a.Account + ":instance-profile/" + a.Name,
		InstanceProfileID:  InstanceProfileID(pc.RoleARN),
	})
	return a.Name, string(cb), string(ib)
}

func TestBuildSameBytesAsPerRequest(t *testing.T) {
	noLast := podCreds("arn:aws:iam::123456789012:role/team/app-role")
	noLast.Credentials.LastUpdated = time.Time{}
	for _, pc := range []creds.PodCredentials{
		podCreds("arn:aws:iam::123456789012:role/team/app-role"),
		podCreds("arn:aws-cn:iam::210987654321:role/cn-role"),
		noLast,
	} {
		d := Build(pc, received)
		if d.Err() != nil {
			t.Fatalf("%s: %v", pc.RoleARN, d.Err())
		}
		role, credsDoc, info := perRequest(pc, received)
		got, ok := d.Credentials(received)
		if !ok || string(got) != credsDoc || string(d.Info()) != info || string(d.Role()) != role || d.RoleName() != role {
			t.Errorf("%s:\n got %s %s %s\nwant %s %s %s", pc.RoleARN, d.Role(), got, d.Info(), role, credsDoc, info)
		}
		if *d.Pod() != pc {
			t.Errorf("Pod = %+v, want %+v", *d.Pod(), pc)
		}
	}
}

func TestCredentialsDocument(t *testing.T) {
	d := Build(podCreds("arn:aws:iam::123456789012:role/team/app-role"), received)
	b, ok := d.Credentials(received)
	if !ok {
		t.Fatal("not served")
	}
	const want = `{"Code":"Success","LastUpdated":"2025-03-04T05:01:02Z","Type":"AWS-HMAC","AccessKeyId":"ASIAEXAMPLE",` +
		`"SecretAccessKey":"SECRET\u003c\u0026\u003esecret","Token":"SESSION+/=token","Expiration":"2025-03-04T06:06:07Z"}`
	if string(b) != want {
		t.Errorf("document\n got %s\nwant %s", b, want)
	}
	// LastUpdated is the time of receipt when the server sent none.
	pc := podCreds("arn:aws:iam::123456789012:role/r")
	pc.Credentials.LastUpdated = time.Time{}
	var doc map[string]string
	b, _ = Build(pc, received.In(time.FixedZone("X", -7200))).Credentials(received)
	if err := json.Unmarshal(b, &doc); err != nil || doc["LastUpdated"] != "2025-03-04T05:06:07Z" {
		t.Errorf("LastUpdated %q, %v", doc["LastUpdated"], err)
	}
}

func TestCredentialsNotServed(t *testing.T) {
	pc := podCreds("arn:aws:iam::123456789012:role/r")
	exp := pc.Credentials.Expiration
	d := Build(pc, received)
	if _, ok := d.Credentials(exp); ok {
		t.Error("served at the instant of expiry")
	}
	if _, ok := d.Credentials(exp.Add(-time.Nanosecond)); !ok {
		t.Error("not served before expiry")
	}
	for name, mod := range map[string]func(*creds.PodCredentials){
		"no access key": func(pc *creds.PodCredentials) { pc.Credentials.AccessKeyID = "" },
		"no secret":     func(pc *creds.PodCredentials) { pc.Credentials.SecretAccessKey = "" },
	} {
		pc := podCreds("arn:aws:iam::123456789012:role/r")
		mod(&pc)
		d := Build(pc, received)
		if _, ok := d.Credentials(received); ok || d.Err() != nil {
			t.Errorf("%s: served %v, err %v", name, ok, d.Err())
		}
		// The role is still the pod's: its name and profile are shown.
		if d.RoleName() != "r" || len(d.Info()) == 0 {
			t.Errorf("%s: role %q info %s", name, d.RoleName(), d.Info())
		}
	}
}

func TestBuildRefusals(t *testing.T) {
	for arn, status := range map[string]int{
		"":                                    http.StatusNotFound,
		"arn:aws:iam::123456789012:user/bob":  http.StatusServiceUnavailable,
		"arn:aws:iam::123456789012:role/a/b/": http.StatusServiceUnavailable,
	} {
		d := Build(podCreds(arn), received)
		var he *httperr.Error
		if err := d.Err(); !errors.As(err, &he) || he.Status != status {
			t.Errorf("%q: err %v, want status %d", arn, err, status)
		}
		if _, ok := d.Credentials(received); ok || d.Role() != nil || d.Info() != nil {
			t.Errorf("%q: documents built for a refused answer", arn)
		}
	}
}

func TestParseRoleARN(t *testing.T) {
	tests := []struct {
		arn  string
		want RoleARN
		ok   bool
	}{
		{"arn:aws:iam::123456789012:role/r", RoleARN{"aws", "123456789012", "r"}, true},
		{"arn:aws-us-gov:iam::123456789012:role/a/b/c", RoleARN{"aws-us-gov", "123456789012", "c"}, true},
		{"arn:aws-iso-b:iam::123456789012:role/r", RoleARN{"aws-iso-b", "123456789012", "r"}, true},
		{"arn:aws:iam::123456789012:role/", RoleARN{}, false},
		{"arn:aws:iam::123456789012:role/a/", RoleARN{}, false},
		{"arn:aws:iam::123456789012:user/r", RoleARN{}, false},
		{"arn:aws:sts::123456789012:assumed-role/r/s", RoleARN{}, false},
		{"arn:aws:iam:us-east-1:123456789012:role/r", RoleARN{}, false},
		{"arn::iam::123456789012:role/r", RoleARN{}, false},
		{"arn:aws:iam:::role/r", RoleARN{}, false},
		{"role/r", RoleARN{}, false},
		{"", RoleARN{}, false},
	}
	for _, tc := range tests {
		got, ok := ParseRoleARN(tc.arn)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseRoleARN(%q) = %+v, %v; want %+v, %v", tc.arn, got, ok, tc.want, tc.ok)
		}
	}
}

func TestInstanceProfileID(t *testing.T) {
	a, b := InstanceProfileID("arn:aws:iam::123456789012:role/r"), InstanceProfileID("arn:aws:iam::123456789012:role/other")
	if a == b || a != InstanceProfileID("arn:aws:iam::123456789012:role/r") || len(a) != 21 || a[:4] != "AIPA" {
		t.Errorf("IDs %q %q", a, b)
	}
}
