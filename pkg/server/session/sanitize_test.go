package session

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestSanitize(t *testing.T) {
	long := strings.Repeat("p", 253)
	tests := []struct {
		name, in string
		// want is the exact output; prefix is checked instead when want
		// is "" (the hash is pinned separately).
		want, prefix string
	}{
		{"valid kept", "payments.ledger", "payments.ledger", ""},
		{"every allowed character kept", "aZ09_+=,.@-", "aZ09_+=,.@-", ""},
		{"exactly 64 kept", strings.Repeat("x", 64), strings.Repeat("x", 64), ""},
		{"exactly 2 kept", "ab", "ab", ""},
		{"one character hashed", "a", "", "a_"},
		{"empty hashed", "", "", "_"},
		{"slash replaced", "team/app", "", "team-app_"},
		{"colon replaced", "arn:aws", "", "arn-aws_"},
		{"space replaced", "a b", "", "a-b_"},
		{"multibyte character is one dash", "café", "", "caf-_"},
		{"invalid utf-8 byte is one dash", "a\xffb", "", "a-b_"},
		{"65 cut", strings.Repeat("x", 65), "", strings.Repeat("x", 51) + "_"},
		{"pod name of 253 cut", long, "", strings.Repeat("p", 51) + "_"},
		{"valid but looks hashed is hashed", "app_abcdefghijkl", "", "app_abcdefghijkl_"},
		{"marker without base32 tail kept", "app_abcdefghijk1", "app_abcdefghijk1", ""},
		{"marker one short kept", "app_abcdefghijk", "app_abcdefghijk", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Sanitize(tc.in)
			if !Valid(got) {
				t.Fatalf("Sanitize(%q) = %q, not a valid session name", tc.in, got)
			}
			if tc.want != "" {
				if got != tc.want {
					t.Fatalf("Sanitize(%q) = %q, want %q", tc.in, got, tc.want)
				}
				return
			}
			if !strings.HasPrefix(got, tc.prefix) || len(got) != len(tc.prefix)+hashLen || !looksHashed(got) {
				t.Fatalf("Sanitize(%q) = %q, want %q and a %d-character hash", tc.in, got, tc.prefix, hashLen)
			}
		})
	}
}

// Names end up in trust policies and CloudTrail queries: a change to the
// hash would rename every session that needed one. These are pinned.
func TestSanitizeStable(t *testing.T) {
	for in, want := range map[string]string{
		"team/app":                "team-app_4rxx25dyhacp",
		strings.Repeat("x", 70):   strings.Repeat("x", 51) + "_y4n5ccjcpyru",
		"payments.ledger-7d9f8c6": "payments.ledger-7d9f8c6",
	} {
		if got := Sanitize(in); got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}

// Inputs that differ only where Sanitize replaces or cuts must still get
// different names: two pods must never share a session by accident of
// their names' length or characters.
func TestSanitizeDistinct(t *testing.T) {
	prefix := strings.Repeat("n", 60)
	inputs := []string{
		"team/app", "team:app", "team app", "team-app", "team_app", "team-app_", "teamé-app",
		prefix + "aaaaa", prefix + "aaaab", prefix + "bbbbb", prefix + "/", prefix + ":",
		"a", "b", "", "ab",
	}
	// The valid output of one input must not be another's hashed output.
	inputs = append(inputs, Sanitize("team/app"), Sanitize(prefix+"aaaaa"))
	seen := map[string]string{}
	for _, in := range inputs {
		out := Sanitize(in)
		if prev, ok := seen[out]; ok {
			t.Fatalf("%q and %q both give %q", prev, in, out)
		}
		seen[out] = in
	}
}

// A property test over many random inputs shaped like real ones: every
// output is valid, and distinct inputs give distinct outputs.
func TestSanitizeProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("abcxyz019.-_/:@=+,é ")
	seen := map[string]string{}
	for range 20000 {
		n := r.IntN(90)
		b := make([]rune, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		in := string(b)
		out := Sanitize(in)
		if !Valid(out) {
			t.Fatalf("Sanitize(%q) = %q is not valid", in, out)
		}
		if prev, ok := seen[out]; ok && prev != in {
			t.Fatalf("%q and %q both give %q", prev, in, out)
		}
		seen[out] = in
	}
}

// FuzzSanitize checks that any input gives a valid name, the same one every
// time, and that two different inputs give different names.
func FuzzSanitize(f *testing.F) {
	for _, s := range []string{"", "a", "team/app", strings.Repeat("x", 65), "app_abcdefghijkl", "\xff\xfe", "ns.sa"} {
		f.Add(s, s+"x")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		oa, ob := Sanitize(a), Sanitize(b)
		if !Valid(oa) || !Valid(ob) {
			t.Fatalf("invalid output: %q -> %q, %q -> %q", a, oa, b, ob)
		}
		if Sanitize(a) != oa {
			t.Fatalf("Sanitize(%q) is not stable", a)
		}
		if a != b && oa == ob {
			t.Fatalf("%q and %q both give %q", a, b, oa)
		}
	})
}
