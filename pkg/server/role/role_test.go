package role

import (
	"errors"
	"strings"
	"testing"

	"github.com/podiam/podiam/pkg/creds"
)

const acct = "123456789012"

func TestNewResolver(t *testing.T) {
	tests := []struct {
		name    string
		base    string
		want    string
		wantErr error
	}{
		{name: "empty allowed", base: "", want: ""},
		{name: "aws", base: "arn:aws:iam::123456789012:role/", want: "arn:aws:iam::123456789012:role/"},
		{name: "slash added", base: "arn:aws:iam::123456789012:role", want: "arn:aws:iam::123456789012:role/"},
		{name: "path", base: "arn:aws-cn:iam::123456789012:role/some/path/", want: "arn:aws-cn:iam::123456789012:role/some/path/"},
		{name: "path slash added", base: "arn:aws-us-gov:iam::123456789012:role/some/path", want: "arn:aws-us-gov:iam::123456789012:role/some/path/"},
		{name: "iso-f", base: "arn:aws-iso-f:iam::123456789012:role/", want: "arn:aws-iso-f:iam::123456789012:role/"},
		{name: "path of 511 chars (with slashes) ok", base: "arn:aws:iam::123456789012:role/" + strings.Repeat("p", 509) + "/", want: "arn:aws:iam::123456789012:role/" + strings.Repeat("p", 509) + "/"},
		{name: "path over 512", base: "arn:aws:iam::123456789012:role/" + strings.Repeat("p", 511) + "/", wantErr: ErrInvalidRole},
		{name: "not an arn", base: "123456789012", wantErr: ErrInvalidRole},
		{name: "bad partition", base: "arn:aws-mars:iam::123456789012:role/", wantErr: ErrInvalidRole},
		{name: "short account", base: "arn:aws:iam::12345678901:role/", wantErr: ErrInvalidRole},
		{name: "not role", base: "arn:aws:iam::123456789012:user/", wantErr: ErrInvalidRole},
		{name: "double slash", base: "arn:aws:iam::123456789012:role//", wantErr: ErrInvalidRole},
		{name: "dot dot path", base: "arn:aws:iam::123456789012:role/../", wantErr: ErrInvalidRole},
		{name: "sts service", base: "arn:aws:sts::123456789012:role/", wantErr: ErrInvalidRole},
		{name: "region", base: "arn:aws:iam:us-east-1:123456789012:role/", wantErr: ErrInvalidRole},
		{name: "whitespace", base: " arn:aws:iam::123456789012:role/", wantErr: ErrInvalidRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewResolver(tt.base)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("NewResolver(%q) error = %v, want %v", tt.base, err, tt.wantErr)
				}
				if r != nil {
					t.Fatalf("NewResolver(%q) returned a resolver with an error", tt.base)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewResolver(%q) unexpected error: %v", tt.base, err)
			}
			if got := r.BaseARN(); got != tt.want {
				t.Fatalf("BaseARN() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestResolveFullARNPartitions(t *testing.T) {
	// An empty base proves full ARNs never need one.
	r := mustResolver(t, "")
	valid := []string{"aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc", "aws-iso-z"}
	for _, p := range valid {
		t.Run(p, func(t *testing.T) {
			arn := "arn:" + p + ":iam::" + acct + ":role/app"
			got, err := r.Resolve(arn)
			if err != nil || got != arn {
				t.Fatalf("Resolve(%q) = %q, %v; want it unchanged", arn, got, err)
			}
		})
	}
	invalid := []string{"", "aws-", "aws-iso-", "aws-iso-bb", "aws-iso-B", "aws-iso-1", "AWS", "aws-us", "aws-cn-north", "azure", "aws-eu"}
	for _, p := range invalid {
		t.Run("invalid "+p, func(t *testing.T) {
			arn := "arn:" + p + ":iam::" + acct + ":role/app"
			if got, err := r.Resolve(arn); !errors.Is(err, ErrInvalidRole) {
				t.Fatalf("Resolve(%q) = %q, %v; want ErrInvalidRole", arn, got, err)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	base := "arn:aws:iam::123456789012:role/"
	pathBase := "arn:aws-cn:iam::123456789012:role/some/path/"
	name64 := strings.Repeat("n", 64)
	tests := []struct {
		name       string
		base       string
		annotation string
		want       string
		wantErr    error
	}{
		// Names resolved against the base.
		{name: "plain name", base: base, annotation: "app", want: base + "app"},
		{name: "all allowed chars", base: base, annotation: "a_Z9+=,.@-", want: base + "a_Z9+=,.@-"},
		{name: "name with path", base: base, annotation: "team/app", want: base + "team/app"},
		{name: "name with deep path", base: base, annotation: "a/b/c/app", want: base + "a/b/c/app"},
		{name: "leading slash stripped", base: base, annotation: "/app", want: base + "app"},
		{name: "leading slash with path", base: base, annotation: "/team/app", want: base + "team/app"},
		{name: "base with path", base: pathBase, annotation: "app", want: pathBase + "app"},
		{name: "base with path and name path", base: pathBase, annotation: "/x/app", want: pathBase + "x/app"},
		{name: "64-char name", base: base, annotation: name64, want: base + name64},
		{name: "single dots inside name ok", base: base, annotation: "my.app..v2", want: base + "my.app..v2"},
		{name: "path at 512", base: base, annotation: strings.Repeat("p", 510) + "/app", want: base + strings.Repeat("p", 510) + "/app"},

		// Full ARNs are taken as they are, whatever the base.
		{name: "full arn ignores base", base: pathBase, annotation: "arn:aws:iam::210987654321:role/other", want: "arn:aws:iam::210987654321:role/other"},
		{name: "full arn with path", base: base, annotation: "arn:aws:iam::123456789012:role/p/q/app", want: "arn:aws:iam::123456789012:role/p/q/app"},
		{name: "full arn no base", base: "", annotation: "arn:aws-us-gov:iam::123456789012:role/app", want: "arn:aws-us-gov:iam::123456789012:role/app"},

		// No base for a name.
		{name: "name without base", base: "", annotation: "app", wantErr: ErrNoBaseARN},
		{name: "path name without base", base: "", annotation: "/team/app", wantErr: ErrNoBaseARN},
		{name: "empty without base is invalid not missing base", base: "", annotation: "", wantErr: ErrInvalidRole},
		{name: "bad name without base is invalid not missing base", base: "", annotation: "bad name", wantErr: ErrInvalidRole},
		{name: "dot dot without base is invalid", base: "", annotation: "a/..", wantErr: ErrInvalidRole},

		// Invalid names.
		{name: "empty", base: base, annotation: "", wantErr: ErrInvalidRole},
		{name: "only slash", base: base, annotation: "/", wantErr: ErrInvalidRole},
		{name: "space", base: base, annotation: " ", wantErr: ErrInvalidRole},
		{name: "leading space", base: base, annotation: " app", wantErr: ErrInvalidRole},
		{name: "trailing newline", base: base, annotation: "app\n", wantErr: ErrInvalidRole},
		{name: "inner space", base: base, annotation: "my app", wantErr: ErrInvalidRole},
		{name: "tab", base: base, annotation: "my\tapp", wantErr: ErrInvalidRole},
		{name: "nul", base: base, annotation: "app\x00", wantErr: ErrInvalidRole},
		{name: "del", base: base, annotation: "app\x7f", wantErr: ErrInvalidRole},
		{name: "non ascii", base: base, annotation: "äpp", wantErr: ErrInvalidRole},
		{name: "invalid utf8", base: base, annotation: "app\xff", wantErr: ErrInvalidRole},
		{name: "colon", base: base, annotation: "a:b", wantErr: ErrInvalidRole},
		{name: "star", base: base, annotation: "app*", wantErr: ErrInvalidRole},
		{name: "percent", base: base, annotation: "app%2f", wantErr: ErrInvalidRole},
		{name: "question mark", base: base, annotation: "app?x", wantErr: ErrInvalidRole},
		{name: "backslash", base: base, annotation: `a\b`, wantErr: ErrInvalidRole},
		{name: "dot dot", base: base, annotation: "..", wantErr: ErrInvalidRole},
		{name: "dot", base: base, annotation: ".", wantErr: ErrInvalidRole},
		{name: "dot dot segment", base: base, annotation: "../app", wantErr: ErrInvalidRole},
		{name: "dot dot name", base: base, annotation: "team/..", wantErr: ErrInvalidRole},
		{name: "dot segment", base: base, annotation: "team/./app", wantErr: ErrInvalidRole},
		{name: "double slash", base: base, annotation: "team//app", wantErr: ErrInvalidRole},
		{name: "double leading slash", base: base, annotation: "//app", wantErr: ErrInvalidRole},
		{name: "trailing slash", base: base, annotation: "app/", wantErr: ErrInvalidRole},
		{name: "65-char name", base: base, annotation: name64 + "n", wantErr: ErrInvalidRole},
		{name: "65-char name with path", base: base, annotation: "team/" + name64 + "n", wantErr: ErrInvalidRole},
		{name: "path over 512", base: base, annotation: strings.Repeat("p", 511) + "/app", wantErr: ErrInvalidRole},
		{name: "path at 512 with base path", base: pathBase, annotation: strings.Repeat("p", 500) + "/app", want: pathBase + strings.Repeat("p", 500) + "/app"},
		{name: "path over 512 with base path", base: pathBase, annotation: strings.Repeat("p", 501) + "/app", wantErr: ErrInvalidRole},
		{name: "uppercase ARN prefix is a name", base: base, annotation: "ARN:aws:iam::123456789012:role/app", wantErr: ErrInvalidRole},

		// Invalid full ARNs.
		{name: "arn only", base: base, annotation: "arn:", wantErr: ErrInvalidRole},
		{name: "arn too few parts", base: base, annotation: "arn:aws:iam::123456789012", wantErr: ErrInvalidRole},
		{name: "11-digit account", base: base, annotation: "arn:aws:iam::12345678901:role/app", wantErr: ErrInvalidRole},
		{name: "13-digit account", base: base, annotation: "arn:aws:iam::1234567890123:role/app", wantErr: ErrInvalidRole},
		{name: "letter in account", base: base, annotation: "arn:aws:iam::12345678901a:role/app", wantErr: ErrInvalidRole},
		{name: "empty account", base: base, annotation: "arn:aws:iam:::role/app", wantErr: ErrInvalidRole},
		{name: "account with dashes", base: base, annotation: "arn:aws:iam::1234-5678-9012:role/app", wantErr: ErrInvalidRole},
		{name: "region set", base: base, annotation: "arn:aws:iam:us-east-1:123456789012:role/app", wantErr: ErrInvalidRole},
		{name: "sts service", base: base, annotation: "arn:aws:sts::123456789012:assumed-role/app/s", wantErr: ErrInvalidRole},
		{name: "user resource", base: base, annotation: "arn:aws:iam::123456789012:user/app", wantErr: ErrInvalidRole},
		{name: "role without name", base: base, annotation: "arn:aws:iam::123456789012:role/", wantErr: ErrInvalidRole},
		{name: "role without slash", base: base, annotation: "arn:aws:iam::123456789012:role", wantErr: ErrInvalidRole},
		{name: "role colon form", base: base, annotation: "arn:aws:iam::123456789012:role:app", wantErr: ErrInvalidRole},
		{name: "arn trailing slash", base: base, annotation: "arn:aws:iam::123456789012:role/app/", wantErr: ErrInvalidRole},
		{name: "arn double slash", base: base, annotation: "arn:aws:iam::123456789012:role//app", wantErr: ErrInvalidRole},
		{name: "arn dot dot", base: base, annotation: "arn:aws:iam::123456789012:role/../app", wantErr: ErrInvalidRole},
		{name: "arn extra colon in name", base: base, annotation: "arn:aws:iam::123456789012:role/a:b", wantErr: ErrInvalidRole},
		{name: "arn trailing space", base: base, annotation: "arn:aws:iam::123456789012:role/app ", wantErr: ErrInvalidRole},
		{name: "arn 65-char name", base: base, annotation: "arn:aws:iam::123456789012:role/" + name64 + "x", wantErr: ErrInvalidRole},
		{name: "arn wildcard", base: base, annotation: "arn:aws:iam::123456789012:role/*", wantErr: ErrInvalidRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustResolver(t, tt.base)
			got, err := r.Resolve(tt.annotation)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%q) = %q, %v; want error %v", tt.annotation, got, err, tt.wantErr)
				}
				if got != "" {
					t.Fatalf("Resolve(%q) returned %q with an error", tt.annotation, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q) unexpected error: %v", tt.annotation, err)
			}
			if got != tt.want {
				t.Fatalf("Resolve(%q) = %q, want %q", tt.annotation, got, tt.want)
			}
		})
	}
}

func TestResolveErrorIsBounded(t *testing.T) {
	r := mustResolver(t, "arn:aws:iam::123456789012:role/")
	_, err := r.Resolve(strings.Repeat("x", 100000) + "!")
	if !errors.Is(err, ErrInvalidRole) {
		t.Fatalf("error = %v, want ErrInvalidRole", err)
	}
	if n := len(err.Error()); n > 400 {
		t.Fatalf("error message is %d bytes; untrusted values must be cut", n)
	}
}

func TestName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"arn:aws:iam::123456789012:role/app", "app"},
		{"arn:aws:iam::123456789012:role/a/b/app", "app"},
		{"arn:aws-cn:iam::123456789012:role/x.y@z", "x.y@z"},
		{"arn:aws:iam::123456789012:root", "root"},
		{"app", "app"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Name(tt.in); got != tt.want {
			t.Errorf("Name(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestValidateExternalID(t *testing.T) {
	tests := []struct {
		name  string
		id    string
		valid bool
	}{
		{name: "empty means none", id: "", valid: true},
		{name: "1 char", id: "a", valid: false},
		{name: "2 chars", id: "ab", valid: true},
		{name: "1224 chars", id: strings.Repeat("e", 1224), valid: true},
		{name: "1225 chars", id: strings.Repeat("e", 1225), valid: false},
		{name: "all allowed chars", id: "aZ09_+=,.@:/-", valid: true},
		{name: "uuid", id: "4f8a7c1e-6b7d-4e1c-9a2b-2c3d4e5f6a7b", valid: true},
		{name: "space", id: "my id", valid: false},
		{name: "leading space", id: " abc", valid: false},
		{name: "newline", id: "abc\n", valid: false},
		{name: "nul", id: "ab\x00", valid: false},
		{name: "star", id: "abc*", valid: false},
		{name: "quote", id: `ab"c`, valid: false},
		{name: "non ascii", id: "äbc", valid: false},
		{name: "2 bytes one rune", id: "é", valid: false},
		{name: "invalid char at the limit", id: strings.Repeat("e", 1223) + "!", valid: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateExternalID(tt.id)
			if tt.valid && err != nil {
				t.Fatalf("ValidateExternalID(%q) = %v, want nil", tt.id, err)
			}
			if !tt.valid && !errors.Is(err, ErrInvalidExternalID) {
				t.Fatalf("ValidateExternalID(%q) = %v, want ErrInvalidExternalID", tt.id, err)
			}
		})
	}
}

func TestSessionName(t *testing.T) {
	tests := []struct {
		name, annotation, def, want string
	}{
		{name: "default", annotation: "", def: "kiam", want: "kiam-kiam"},
		{name: "annotation wins", annotation: "payments", def: "kiam", want: "kiam-payments"},
		{name: "both empty", annotation: "", def: "", want: "kiam-"},
		{name: "one char", annotation: "x", def: "kiam", want: "kiam-x"},
		{name: "allowed chars kept", annotation: "a_Z9+=,.@-", def: "", want: "kiam-a_Z9+=,.@-"},
		{name: "space", annotation: "my app", def: "", want: "kiam-my-app"},
		{name: "slash and colon", annotation: "ns/pod:1", def: "", want: "kiam-ns-pod-1"},
		{name: "control chars", annotation: "a\x00b\nc", def: "", want: "kiam-a-b-c"},
		{name: "multibyte rune is one dash", annotation: "äb", def: "", want: "kiam--b"},
		{name: "emoji is one dash", annotation: "a😀b", def: "", want: "kiam-a-b"},
		{name: "invalid utf8 byte", annotation: "a\xffb", def: "", want: "kiam-a-b"},
		{name: "default sanitised", annotation: "", def: "my session", want: "kiam-my-session"},
		{name: "59 chars fits exactly", annotation: strings.Repeat("s", 59), def: "", want: "kiam-" + strings.Repeat("s", 59)},
		{name: "60 chars truncated", annotation: strings.Repeat("s", 60), def: "", want: "kiam-" + strings.Repeat("s", 59)},
		{name: "long truncated", annotation: strings.Repeat("s", 1000), def: "", want: "kiam-" + strings.Repeat("s", 59)},
		{name: "long multibyte truncated", annotation: strings.Repeat("ä", 100), def: "", want: "kiam-" + strings.Repeat("-", 59)},
		{name: "long default truncated", annotation: "", def: strings.Repeat("d", 80), want: "kiam-" + strings.Repeat("d", 59)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SessionName(tt.annotation, tt.def)
			if got != tt.want {
				t.Fatalf("SessionName(%q, %q) = %q, want %q", tt.annotation, tt.def, got, tt.want)
			}
			assertValidSessionName(t, got)
		})
	}
}

func FuzzSessionName(f *testing.F) {
	f.Add("", "")
	f.Add("app", "kiam")
	f.Add("ä\x00/", strings.Repeat("x", 70))
	f.Fuzz(func(t *testing.T, annotation, def string) {
		assertValidSessionName(t, SessionName(annotation, def))
	})
}

// assertValidSessionName checks STS's RoleSessionName rules and KIAM's prefix.
func assertValidSessionName(t *testing.T, s string) {
	t.Helper()
	if len(s) < 2 || len(s) > 64 {
		t.Fatalf("session name %q has length %d, want 2..64", s, len(s))
	}
	if !strings.HasPrefix(s, "kiam-") {
		t.Fatalf("session name %q lacks the kiam- prefix", s)
	}
	for i := 0; i < len(s); i++ {
		if !NameChar(s[i]) {
			t.Fatalf("session name %q has invalid byte %q", s, s[i])
		}
	}
}

func TestBaseARNFromCaller(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "assumed role", in: "arn:aws:sts::123456789012:assumed-role/node-role/i-0abc", want: "arn:aws:iam::123456789012:role/"},
		{name: "assumed role with path is dropped", in: "arn:aws:sts::123456789012:assumed-role/kiam-server/session", want: "arn:aws:iam::123456789012:role/"},
		{name: "user", in: "arn:aws:iam::123456789012:user/alice", want: "arn:aws:iam::123456789012:role/"},
		{name: "user with path", in: "arn:aws:iam::123456789012:user/division/alice", want: "arn:aws:iam::123456789012:role/"},
		{name: "role", in: "arn:aws:iam::123456789012:role/path/app", want: "arn:aws:iam::123456789012:role/"},
		{name: "root", in: "arn:aws:iam::123456789012:root", want: "arn:aws:iam::123456789012:role/"},
		{name: "federated user", in: "arn:aws:sts::123456789012:federated-user/bob", want: "arn:aws:iam::123456789012:role/"},
		{name: "instance profile", in: "arn:aws:iam::123456789012:instance-profile/nodes", want: "arn:aws:iam::123456789012:role/"},
		{name: "china", in: "arn:aws-cn:sts::123456789012:assumed-role/r/s", want: "arn:aws-cn:iam::123456789012:role/"},
		{name: "govcloud", in: "arn:aws-us-gov:sts::123456789012:assumed-role/r/s", want: "arn:aws-us-gov:iam::123456789012:role/"},
		{name: "iso-b", in: "arn:aws-iso-b:iam::123456789012:user/u", want: "arn:aws-iso-b:iam::123456789012:role/"},
		{name: "eusc", in: "arn:aws-eusc:sts::123456789012:assumed-role/r/s", want: "arn:aws-eusc:iam::123456789012:role/"},
		{name: "moto user", in: "arn:aws:sts::123456789012:user/moto", want: "arn:aws:iam::123456789012:role/"},

		{name: "empty", in: ""},
		{name: "garbage", in: "not-an-arn"},
		{name: "bad partition", in: "arn:aws-moon:sts::123456789012:assumed-role/r/s"},
		{name: "short account", in: "arn:aws:sts::12345678901:assumed-role/r/s"},
		{name: "region", in: "arn:aws:sts:us-east-1:123456789012:assumed-role/r/s"},
		{name: "assumed role without name", in: "arn:aws:sts::123456789012:assumed-role/"},
		{name: "root with suffix", in: "arn:aws:iam::123456789012:root/x"},
		{name: "user without name", in: "arn:aws:iam::123456789012:user"},
		{name: "other service", in: "arn:aws:s3:::bucket"},
		{name: "group", in: "arn:aws:iam::123456789012:group/admins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BaseARNFromCaller(tt.in)
			if tt.want == "" {
				if !errors.Is(err, ErrInvalidCallerARN) {
					t.Fatalf("BaseARNFromCaller(%q) = %q, %v; want ErrInvalidCallerARN", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("BaseARNFromCaller(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			// What autodetection yields must be usable as a base.
			r, err := NewResolver(got)
			if err != nil {
				t.Fatalf("NewResolver(%q): %v", got, err)
			}
			if _, err := r.Resolve("app"); err != nil {
				t.Fatalf("Resolve against detected base: %v", err)
			}
		})
	}
}

func TestKey(t *testing.T) {
	const base = "arn:aws:iam::123456789012:role/"
	tests := []struct {
		name        string
		annotations map[string]string
		want        creds.Key
		wantErr     error
	}{
		{name: "nil map", annotations: nil, wantErr: ErrNoRole},
		{name: "no role", annotations: map[string]string{"other": "x"}, wantErr: ErrNoRole},
		{name: "empty role", annotations: map[string]string{AnnotationRole: ""}, wantErr: ErrNoRole},
		{name: "external id without role", annotations: map[string]string{AnnotationExternalID: "ext-1"}, wantErr: ErrNoRole},
		{
			name:        "role only",
			annotations: map[string]string{AnnotationRole: "app"},
			want:        creds.Key{RoleARN: base + "app", SessionName: "kiam-kiam"},
		},
		{
			name:        "full arn role",
			annotations: map[string]string{AnnotationRole: "arn:aws-cn:iam::210987654321:role/p/app"},
			want:        creds.Key{RoleARN: "arn:aws-cn:iam::210987654321:role/p/app", SessionName: "kiam-kiam"},
		},
		{
			name:        "role and external id",
			annotations: map[string]string{AnnotationRole: "app", AnnotationExternalID: "ext-1"},
			want:        creds.Key{RoleARN: base + "app", ExternalID: "ext-1", SessionName: "kiam-kiam"},
		},
		{
			name:        "role and session name",
			annotations: map[string]string{AnnotationRole: "app", AnnotationSessionName: "payments"},
			want:        creds.Key{RoleARN: base + "app", SessionName: "kiam-payments"},
		},
		{
			name:        "all three",
			annotations: map[string]string{AnnotationRole: "/team/app", AnnotationExternalID: "ext:1/2", AnnotationSessionName: "pay ments"},
			want:        creds.Key{RoleARN: base + "team/app", ExternalID: "ext:1/2", SessionName: "kiam-pay-ments"},
		},
		{
			name:        "empty external id and session are absent",
			annotations: map[string]string{AnnotationRole: "app", AnnotationExternalID: "", AnnotationSessionName: ""},
			want:        creds.Key{RoleARN: base + "app", SessionName: "kiam-kiam"},
		},
		{name: "invalid role", annotations: map[string]string{AnnotationRole: "bad role"}, wantErr: ErrInvalidRole},
		{name: "invalid role with valid extras", annotations: map[string]string{AnnotationRole: "..", AnnotationExternalID: "ext-1"}, wantErr: ErrInvalidRole},
		{name: "invalid external id", annotations: map[string]string{AnnotationRole: "app", AnnotationExternalID: "x"}, wantErr: ErrInvalidExternalID},
		{name: "invalid external id chars", annotations: map[string]string{AnnotationRole: "app", AnnotationExternalID: "ext id"}, wantErr: ErrInvalidExternalID},
	}
	r := mustResolver(t, base)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Key(tt.annotations, "kiam")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Key(%v) = %+v, %v; want error %v", tt.annotations, got, err, tt.wantErr)
				}
				if got != (creds.Key{}) {
					t.Fatalf("Key(%v) returned %+v with an error", tt.annotations, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Key(%v) unexpected error: %v", tt.annotations, err)
			}
			if got != tt.want {
				t.Fatalf("Key(%v) = %+v, want %+v", tt.annotations, got, tt.want)
			}
		})
	}
}

func TestKeyWithoutBaseARN(t *testing.T) {
	r := mustResolver(t, "")
	if _, err := r.Key(map[string]string{AnnotationRole: "app"}, "kiam"); !errors.Is(err, ErrNoBaseARN) {
		t.Fatalf("Key with name and no base: %v, want ErrNoBaseARN", err)
	}
}

func FuzzResolve(f *testing.F) {
	seeds := []string{
		"app", "/app", "team/app", "/a/b/c", "..", "a//b", "app/", " ", "",
		"arn:aws:iam::123456789012:role/app",
		"arn:aws-iso-b:iam::123456789012:role/p/app",
		"arn:aws:iam::123456789012:role/",
		"arn:aws:sts::123456789012:assumed-role/r/s",
		strings.Repeat("x", 65),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	resolvers := []*Resolver{
		mustResolver(f, ""),
		mustResolver(f, "arn:aws:iam::123456789012:role/"),
		mustResolver(f, "arn:aws-cn:iam::123456789012:role/some/path/"),
	}
	f.Fuzz(func(t *testing.T, annotation string) {
		for _, r := range resolvers {
			arn, err := r.Resolve(annotation)
			if err != nil {
				if arn != "" {
					t.Fatalf("Resolve(%q) returned %q with error %v", annotation, arn, err)
				}
				continue
			}
			again, err := r.Resolve(arn)
			if err != nil || again != arn {
				t.Fatalf("Resolve(%q) = %q, but Resolve of that = %q, %v", annotation, arn, again, err)
			}
			// Any resolver must accept a resolved ARN, base or not.
			if again, err := resolvers[0].Resolve(arn); err != nil || again != arn {
				t.Fatalf("baseless Resolve(%q) = %q, %v", arn, again, err)
			}
			name := Name(arn)
			if name == "" || len(name) > 64 || name == "." || name == ".." {
				t.Fatalf("Name(%q) = %q", arn, name)
			}
		}
	})
}

func mustResolver(tb testing.TB, base string) *Resolver {
	tb.Helper()
	r, err := NewResolver(base)
	if err != nil {
		tb.Fatalf("NewResolver(%q): %v", base, err)
	}
	return r
}
