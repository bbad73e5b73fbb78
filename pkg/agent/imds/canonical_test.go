package imds

import (
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	tests := []struct {
		raw  string
		want string
		ok   bool
	}{
		{"/", "/", true},
		{"/latest/meta-data/", "/latest/meta-data/", true},
		{"/latest/meta-data", "/latest/meta-data", true},
		{"//latest///meta-data//", "/latest/meta-data/", true},
		{"/latest/./meta-data/.", "/latest/meta-data/", true},
		{"/latest/meta-data/..", "/latest/", true},
		{"/latest/meta-data/../user-data", "/latest/user-data", true},
		{"/../../../user-data", "/user-data", true},
		{"/..", "/", true},
		{"/latest/%2e%2e/user-data", "/user-data", true},
		{"/latest/%2E%2E/%2e/user-data", "/user-data", true},
		{"/latest/meta-data%2Fiam%2finfo", "/latest/meta-data/iam/info", true},
		{`/latest\meta-data\iam\info`, "/latest/meta-data/iam/info", true},
		{"/latest%5Cmeta-data%5c..%5Cuser-data", "/latest/user-data", true},
		{`\latest\user-data`, "/latest/user-data", true},
		{"/latest/meta-data/iam/security-credentials/../../user-data", "/latest/meta-data/user-data", true},
		{"/latest/%252e%252e/x", "/x", true},     // double-encoded dot segment
		{"/latest/%25252e%25252e/x", "/x", true}, // triple
		{"/latest/user%2ddata", "/latest/user-data", true},
		{"/latest/a+b", "/latest/a+b", true}, // '+' is not a space in a path
		{"/latest/a%20b", "/latest/a b", true},
		{"/latest/a;b", "/latest/a;b", true},
		{"/a/b/c/./../../d", "/a/d", true},
		{"/a/...", "/a/...", true}, // three dots is a name, not a dot segment
		{"/a/.b", "/a/.b", true},
		{"/a/%3F", "/a/?", true},

		{"", "", false},
		{"latest/meta-data", "", false},
		{"*", "", false},
		{"/latest/%zz", "", false},
		{"/latest/%2", "", false},
		{"/latest/%", "", false},
		{"/latest/%00", "", false},
		{"/latest/%0a", "", false},
		{"/latest/a\x00b", "", false},
		{"/latest/a\tb", "", false},
		{"/latest/%7F", "", false},
		{"/latest/%2500", "", false},       // NUL after two decodes
		{"/latest/%2525252525", "", false}, // too many rounds
		{"/latest/%25zz", "", false},       // invalid after one decode
		{"/" + strings.Repeat("a", MaxPathLen), "", false},
	}
	for _, tc := range tests {
		got, ok := Canonical(tc.raw)
		if ok != tc.ok || got != tc.want {
			t.Errorf("Canonical(%q) = %q, %v; want %q, %v", tc.raw, got, ok, tc.want, tc.ok)
		}
		if ok {
			checkCanonicalForm(t, tc.raw, got)
		}
		checkFastPaths(t, tc.raw)
	}
}

func TestCanonicalMaxLen(t *testing.T) {
	raw := "/" + strings.Repeat("a", MaxPathLen-1)
	if got, ok := Canonical(raw); !ok || got != raw {
		t.Fatalf("path of exactly MaxPathLen refused: %v", ok)
	}
	checkFastPaths(t, raw)
	checkFastPaths(t, raw+"a")
}

// TestIsCanonical: the shortcut takes exactly the paths Canonical leaves
// as they are, and no other.
func TestIsCanonical(t *testing.T) {
	for raw, want := range map[string]bool{
		"/": true, "/a": true, "/a/": true, "/latest/meta-data/iam/security-credentials/app-role": true,
		"/a/...": true, "/a/.b": true, "/a;b": true, "/a b": true, "/\u00e9": true,
		"": false, "a": false, "//": false, "/a//b": false, "/a//": false, "/.": false, "/..": false,
		"/a/./b": false, "/a/../b": false, "/a/.": false, "/a/..": false, "/a/../": false,
		"/a%2fb": false, "/a\\b": false, "/a\x00b": false, "/a\x7fb": false, "/a\tb": false,
	} {
		if got := isCanonical(raw); got != want {
			t.Errorf("isCanonical(%q) = %v, want %v", raw, got, want)
		}
		checkFastPaths(t, raw)
	}
}

// checkCanonicalForm asserts the properties every canonical path has, and
// idempotence: the rest of the package relies on both.
func checkCanonicalForm(t *testing.T, raw, c string) {
	t.Helper()
	if !strings.HasPrefix(c, "/") {
		t.Errorf("Canonical(%q) = %q: not absolute", raw, c)
	}
	if strings.ContainsAny(c, `%\`) || strings.Contains(c, "//") {
		t.Errorf("Canonical(%q) = %q: has %%, backslash or //", raw, c)
	}
	for _, seg := range strings.Split(c, "/") {
		if seg == "." || seg == ".." {
			t.Errorf("Canonical(%q) = %q: has a dot segment", raw, c)
		}
	}
	for i := 0; i < len(c); i++ {
		if c[i] < 0x20 || c[i] == 0x7f {
			t.Errorf("Canonical(%q) = %q: has a control character", raw, c)
		}
	}
	again, ok := Canonical(c)
	if !ok || again != c {
		t.Errorf("Canonical not idempotent: %q -> %q -> %q, %v", raw, c, again, ok)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		canon string
		want  route
	}{
		{"/ping", route{kind: kindPing}},
		{"/health", route{kind: kindHealth}},
		{"/ping/", route{kind: kindOther}},
		{"/latest/api/token", route{kind: kindToken}},
		{"/2021-07-15/api/token", route{kind: kindToken}},
		{"/latest/meta-data/iam/security-credentials", route{kind: kindRole}},
		{"/latest/meta-data/iam/security-credentials/", route{kind: kindRole}},
		{"/2009-04-04/meta-data/iam/security-credentials/", route{kind: kindRole}},
		{"/latest/meta-data/iam/security-credentials/r", route{kind: kindCreds, name: "r"}},
		{"/latest/meta-data/iam/security-credentials/r/", route{kind: kindCreds, name: "r"}},
		{"/latest/meta-data/iam/info", route{kind: kindInfo}},
		{"/latest/meta-data/iam/info/", route{kind: kindInfo}},

		{"/latest/meta-data/iam", route{kind: kindForbidden}},
		{"/latest/meta-data/iam/", route{kind: kindForbidden}},
		{"/latest/meta-data/iam/security-credentials/r/x", route{kind: kindForbidden}},
		{"/latest/meta-data/IAM/info", route{kind: kindForbidden}},
		{"/meta-data/iam/info", route{kind: kindForbidden}},
		{"/2021-7-15/meta-data/iam/info", route{kind: kindForbidden}},
		{"/latest/meta-data/iam;x/info", route{kind: kindForbidden}},
		{"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", route{kind: kindForbidden}},
		{"/latest/user-data", route{kind: kindForbidden}},
		{"/latest/user-data/", route{kind: kindForbidden}},
		{"/latest/User-Data", route{kind: kindForbidden}},
		{"/latest/user-data;jsessionid=1", route{kind: kindForbidden}},
		{"/user-data", route{kind: kindForbidden}},
		{"/latest/dynamic/instance-identity/pkcs7", route{kind: kindForbidden}},
		{"/latest/dynamic/instance-identity/signature", route{kind: kindForbidden}},
		{"/latest/dynamic/instance-identity/rsa2048", route{kind: kindForbidden}},
		{"/latest/dynamic/instance-identity/rsa2048 ", route{kind: kindForbidden}},
		{"/foo/api/token", route{kind: kindForbidden}},
		{"/latest/api/token/x", route{kind: kindForbidden}},

		{"/latest/meta-data/placement/..;/instance-id", route{kind: kindForbidden}},
		{"/latest/meta-data/placement/.;x/instance-id", route{kind: kindForbidden}},
		{"/latest/meta-data/;../instance-id", route{kind: kindForbidden}},
		{"/latest/x;user-data", route{kind: kindForbidden}},
		{"/latest/ user-data", route{kind: kindForbidden}},
		{"/latest/\u00a0user-data", route{kind: kindForbidden}},
		{"/latest/api;x/token", route{kind: kindForbidden}},
		{"/Api;token", route{kind: kindForbidden}},
		{"/latest/meta-data/api;Token2", route{kind: kindForbidden}},

		{"/latest/meta-data/placement/availability-zone", route{kind: kindOther}},
		{"/latest/meta-data/a;b/c", route{kind: kindOther}},
		{"/latest/meta-data/...", route{kind: kindOther}},
		{"/latest/dynamic/instance-identity/document", route{kind: kindOther}},
		{"/latest/meta-data/", route{kind: kindOther}},
		{"/", route{kind: kindOther}},
	}
	for _, tc := range tests {
		if got := classify(tc.canon); got != tc.want {
			t.Errorf("classify(%q) = %+v, want %+v", tc.canon, got, tc.want)
		}
		checkFastPaths(t, tc.canon)
	}
}

func TestIsVersion(t *testing.T) {
	for s, want := range map[string]bool{
		"latest": true, "2021-07-15": true, "1.0": false, "Latest": false,
		"2021-7-15": false, "2021-07-1a": false, "2021/07/15": false, "": false,
	} {
		if got := isVersion(s); got != want {
			t.Errorf("isVersion(%q) = %v, want %v", s, got, want)
		}
	}
}
