package iampolicy

import (
	"encoding/json"
	"strings"
	"testing"
)

const (
	base   = "arn:aws:iam::111111111111:role/podiam-base"
	target = "arn:aws:iam::222222222222:role/tenant-app"
	other  = "arn:aws:iam::222222222222:role/path/tenant-db"
)

func TestBasePermissions(t *testing.T) {
	got, err := BasePermissions(Config{BaseRoleARN: base, RoleARNs: []string{target, other, target}}).JSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "PodiamAssumePodRoles",
      "Effect": "Allow",
      "Action": "sts:AssumeRole",
      "Resource": [
        "arn:aws:iam::222222222222:role/path/tenant-db",
        "arn:aws:iam::222222222222:role/tenant-app"
      ]
    }
  ]
}
`
	if string(got) != want {
		t.Fatalf("base permissions:\n%s\nwant:\n%s", got, want)
	}
	if !json.Valid(got) {
		t.Fatal("not JSON")
	}
}

func TestTargetTrust(t *testing.T) {
	for _, tc := range []struct {
		name, externalID, want string
	}{
		{"with an External ID", "ext-tenant-1", `{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "PodiamBaseRole",
      "Effect": "Allow",
      "Principal": {
        "AWS": "arn:aws:iam::111111111111:role/podiam-base"
      },
      "Action": "sts:AssumeRole",
      "Condition": {
        "StringEquals": {
          "sts:ExternalId": "ext-tenant-1"
        }
      }
    }
  ]
}
`},
		{"without", "", `{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "PodiamBaseRole",
      "Effect": "Allow",
      "Principal": {
        "AWS": "arn:aws:iam::111111111111:role/podiam-base"
      },
      "Action": "sts:AssumeRole"
    }
  ]
}
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TargetTrust(Config{BaseRoleARN: base, RoleARNs: []string{target}, ExternalID: tc.externalID}).JSON()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("trust policy:\n%s\nwant:\n%s", got, tc.want)
			}
			var doc map[string]any
			if err := json.Unmarshal(got, &doc); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(got), `"*"`) {
				t.Fatal("a trust policy names *")
			}
		})
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{BaseRoleARN: base, RoleARNs: []string{target}, ExternalID: "ext-1"}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no target", Config{BaseRoleARN: base}, "--role is required"},
		{"no base", Config{RoleARNs: []string{target}}, "--base-role"},
		{"base by name", Config{BaseRoleARN: "podiam-base", RoleARNs: []string{target}}, "full role ARN"},
		{"target by name", Config{BaseRoleARN: base, RoleARNs: []string{"tenant-app"}}, "full role ARN"},
		{"wildcard principal", Config{BaseRoleARN: "*", RoleARNs: []string{target}}, "--base-role"},
		{"wildcard role", Config{BaseRoleARN: base, RoleARNs: []string{"arn:aws:iam::222222222222:role/*"}}, "invalid character"},
		{"not a role", Config{BaseRoleARN: "arn:aws:iam::111111111111:user/ci", RoleARNs: []string{target}}, "not a role"},
		{"two partitions", Config{BaseRoleARN: base, RoleARNs: []string{"arn:aws-cn:iam::222222222222:role/app"}}, "another partition"},
		{"invalid External ID", Config{BaseRoleARN: base, RoleARNs: []string{target}, ExternalID: "a b"}, "--external-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// A server that sends session tags or a SourceIdentity needs the actions
// in both documents, as a list; one that sends neither keeps the single
// string above.
func TestSessionActions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		tags, ident bool
		want        string
	}{
		{"tags", true, false, `"Action": [
        "sts:AssumeRole",
        "sts:TagSession"
      ],`},
		{"source identity", false, true, `"Action": [
        "sts:AssumeRole",
        "sts:SetSourceIdentity"
      ],`},
		{"both", true, true, `"Action": [
        "sts:AssumeRole",
        "sts:SetSourceIdentity",
        "sts:TagSession"
      ],`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{BaseRoleARN: base, RoleARNs: []string{target}, ExternalID: "ext-1", TagSession: tc.tags, SetSourceIdentity: tc.ident}
			for name, doc := range map[string]Document{"base permissions": BasePermissions(c), "trust policy": TargetTrust(c)} {
				got, err := doc.JSON()
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(got), tc.want) {
					t.Errorf("%s:\n%s\nlacks:\n%s", name, got, tc.want)
				}
				var back struct{ Statement []struct{ Action []string } }
				if err := json.Unmarshal(got, &back); err != nil || len(back.Statement) != 1 || back.Statement[0].Action[0] != "sts:AssumeRole" {
					t.Errorf("%s does not read back as a list of actions: %v\n%s", name, err, got)
				}
			}
		})
	}
}
