package sts

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/podiam/podiam/pkg/creds"
)

func TestValidateKey(t *testing.T) {
	const role = "arn:aws:iam::123456789012:role/app"
	tests := []struct {
		name string
		key  creds.Key
		ok   bool
	}{
		{"plain", creds.Key{RoleARN: role, SessionName: "kiam-web"}, true},
		{"all allowed session characters", creds.Key{RoleARN: role, SessionName: "a_Z9+=,.@-"}, true},
		{"external id with colon and slash", creds.Key{RoleARN: role, SessionName: "kiam-x", ExternalID: "urn:corp/ext-1"}, true},
		{"64-char session", creds.Key{RoleARN: role, SessionName: strings.Repeat("s", 64)}, true},
		{"empty session", creds.Key{RoleARN: role}, false},
		{"one-char session", creds.Key{RoleARN: role, SessionName: "s"}, false},
		{"65-char session", creds.Key{RoleARN: role, SessionName: strings.Repeat("s", 65)}, false},
		{"space in session", creds.Key{RoleARN: role, SessionName: "kiam web"}, false},
		{"slash in session", creds.Key{RoleARN: role, SessionName: "kiam/web"}, false},
		{"non-ascii session", creds.Key{RoleARN: role, SessionName: "kiam-wéb"}, false},
		{"empty role", creds.Key{SessionName: "kiam-web"}, false},
		{"short role", creds.Key{RoleARN: "arn:aws:iam::1:r", SessionName: "kiam-web"}, false},
		{"one-char external id", creds.Key{RoleARN: role, SessionName: "kiam-web", ExternalID: "x"}, false},
		{"source identity", creds.Key{RoleARN: role, SessionName: "kiam-web", SourceIdentity: "payments.ledger@x"}, true},
		{"one-char source identity", creds.Key{RoleARN: role, SessionName: "kiam-web", SourceIdentity: "x"}, false},
		{"65-char source identity", creds.Key{RoleARN: role, SessionName: "kiam-web", SourceIdentity: strings.Repeat("s", 65)}, false},
		{"colon in source identity", creds.Key{RoleARN: role, SessionName: "kiam-web", SourceIdentity: "aws:x"}, false},
		{"tags", creds.Key{RoleARN: role, SessionName: "kiam-web", Tags: creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "payments"})}, true},
		{"tag with empty key", creds.Key{RoleARN: role, SessionName: "kiam-web", Tags: creds.NewTags(creds.Tag{Key: "", Value: "x"})}, false},
		{"tag value of 257", creds.Key{RoleARN: role, SessionName: "kiam-web", Tags: creds.NewTags(creds.Tag{Key: "k", Value: strings.Repeat("v", 257)})}, false},
		{"51 tags", creds.Key{RoleARN: role, SessionName: "kiam-web", Tags: manyTags(51)}, false},
		{"50 tags", creds.Key{RoleARN: role, SessionName: "kiam-web", Tags: manyTags(50)}, true},
		{"space in external id", creds.Key{RoleARN: role, SessionName: "kiam-web", ExternalID: "ext 1"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateKey(tt.key)
			if tt.ok && err != nil {
				t.Errorf("validateKey(%v) = %v, want nil", tt.key, err)
			}
			if !tt.ok && !errors.Is(err, creds.ErrDenied) {
				t.Errorf("validateKey(%v) = %v, want ErrDenied", tt.key, err)
			}
		})
	}
}

func manyTags(n int) creds.Tags {
	tags := make([]creds.Tag, n)
	for i := range tags {
		tags[i] = creds.Tag{Key: fmt.Sprintf("k%d", i), Value: "v"}
	}
	return creds.NewTags(tags...)
}
