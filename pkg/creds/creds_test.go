package creds

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

// Tags are one canonical string whatever the order they were built in, so
// that keys with the same tags are equal and share a session.
func TestTags(t *testing.T) {
	a := NewTags(Tag{"kubernetes-namespace", "payments"}, Tag{"eks-cluster-name", "prod"}, Tag{"empty", ""})
	b := NewTags(Tag{"empty", ""}, Tag{"kubernetes-namespace", "payments"}, Tag{"eks-cluster-name", "prod"})
	if a != b {
		t.Fatalf("%q != %q", a, b)
	}
	want := []Tag{{"eks-cluster-name", "prod"}, {"empty", ""}, {"kubernetes-namespace", "payments"}}
	if got := a.All(); !slices.Equal(got, want) {
		t.Fatalf("All = %v, want %v", got, want)
	}
	if NewTags() != "" || Tags("").All() != nil {
		t.Fatal("no tags must encode as \"\" and decode as none")
	}
	// A value may hold '=' and ':' (STS allows them), and the encoding
	// must still tell key from value and one tag from the next.
	c := NewTags(Tag{"a=b", "c:d/e"}, Tag{"x", "=y="})
	if got := c.All(); !slices.Equal(got, []Tag{{"a=b", "c:d/e"}, {"x", "=y="}}) {
		t.Fatalf("All = %v", got)
	}
	if NewTags(Tag{"a", "bc"}) == NewTags(Tag{"ab", "c"}) {
		t.Fatal("the split between key and value is lost")
	}
}

// A key's string, the in-use index's key, is unchanged for keys without
// the new fields and distinct for keys that differ only in them.
func TestKeyString(t *testing.T) {
	k := Key{RoleARN: "arn:aws:iam::123456789012:role/app", ExternalID: "ext", SessionName: "kiam-kiam"}
	if got := k.String(); got != "arn:aws:iam::123456789012:role/app|ext|kiam-kiam" {
		t.Fatalf("String() = %q", got)
	}
	seen := map[string]Key{}
	for _, v := range []Key{k,
		{RoleARN: k.RoleARN, ExternalID: k.ExternalID, SessionName: k.SessionName, SourceIdentity: "si"},
		{RoleARN: k.RoleARN, ExternalID: k.ExternalID, SessionName: k.SessionName, Tags: NewTags(Tag{"t", "si"})},
		{RoleARN: k.RoleARN, ExternalID: k.ExternalID, SessionName: k.SessionName, Tags: NewTags(Tag{"t", "v"})},
		{RoleARN: k.RoleARN, ExternalID: k.ExternalID, SessionName: k.SessionName, SourceIdentity: "si", Tags: NewTags(Tag{"t", "v"})},
	} {
		if prev, ok := seen[v.String()]; ok {
			t.Fatalf("%+v and %+v print alike: %q", prev, v, v.String())
		}
		seen[v.String()] = v
	}
}

func TestTagsLogValue(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", "session_tags", NewTags(Tag{"kubernetes-namespace", "payments"}))
	if !strings.Contains(b.String(), `"session_tags":{"kubernetes-namespace":"payments"}`) {
		t.Fatalf("log line %s", b.String())
	}
}
