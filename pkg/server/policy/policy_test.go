package policy

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

const (
	roleA = "arn:aws:iam::123456789012:role/a"
	roleB = "arn:aws:iam::123456789012:role/b"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		strict  bool
		expr    string
		present bool
		role    string
		wantErr error // nil means allowed
	}{
		{name: "missing annotation", strict: true, present: false, role: roleA, wantErr: ErrNoAnnotation},
		{name: "missing annotation ignores expr", strict: true, expr: ".*", present: false, role: roleA, wantErr: ErrNoAnnotation},
		{name: "missing annotation non-strict", strict: false, present: false, role: roleA, wantErr: ErrNoAnnotation},
		{name: "empty annotation", strict: true, expr: "", present: true, role: roleA, wantErr: ErrNotPermitted},
		{name: "empty annotation empty role", strict: true, expr: "", present: true, role: "", wantErr: ErrNotPermitted},
		{name: "empty annotation non-strict", strict: false, expr: "", present: true, role: roleA, wantErr: ErrNotPermitted},

		{name: "exact", strict: true, expr: roleA, present: true, role: roleA},
		{name: "exact other role", strict: true, expr: roleA, present: true, role: roleB, wantErr: ErrNotPermitted},
		{name: "match all", strict: true, expr: ".*", present: true, role: roleA},
		{name: "prefix pattern", strict: true, expr: `arn:aws:iam::123456789012:role/.*`, present: true, role: roleB},
		{name: "strict needs whole match", strict: true, expr: "role/a", present: true, role: roleA, wantErr: ErrNotPermitted},
		{name: "strict suffix does not match", strict: true, expr: roleA, present: true, role: roleA + "dmin", wantErr: ErrNotPermitted},
		{name: "strict prefix does not match", strict: true, expr: roleA, present: true, role: "x" + roleA, wantErr: ErrNotPermitted},

		// KIAM's ^a|b$ let "a..." and "...b" through; ^(?:a|b)$ does not.
		{name: "a|b matches a", strict: true, expr: "a|b", present: true, role: "a"},
		{name: "a|b matches b", strict: true, expr: "a|b", present: true, role: "b"},
		{name: "a|b rejects xa", strict: true, expr: "a|b", present: true, role: "xa", wantErr: ErrNotPermitted},
		{name: "a|b rejects bx", strict: true, expr: "a|b", present: true, role: "bx", wantErr: ErrNotPermitted},
		{name: "a|b rejects ax", strict: true, expr: "a|b", present: true, role: "ax", wantErr: ErrNotPermitted},
		{name: "a|b rejects xb", strict: true, expr: "a|b", present: true, role: "xb", wantErr: ErrNotPermitted},
		{name: "role alternation", strict: true, expr: roleA + "|" + roleB, present: true, role: roleB},
		{name: "role alternation rejects extension", strict: true, expr: roleA + "|" + roleB, present: true, role: roleA + "dmin", wantErr: ErrNotPermitted},
		{name: "user anchors still work", strict: true, expr: "^" + roleA + "$", present: true, role: roleA},
		{name: "multiline flag cannot unanchor", strict: true, expr: "(?m)a$", present: true, role: "a\nb", wantErr: ErrNotPermitted},
		{name: "case-insensitive flag", strict: true, expr: "(?i)ARN:AWS:IAM::123456789012:ROLE/A", present: true, role: roleA},
		{name: "case-insensitive flag scoped", strict: true, expr: "(?i)x|y", present: true, role: "Y"},
		{name: "unterminated quote literal", strict: true, expr: `\Q` + roleA, present: true, role: roleA},
		{name: "unterminated quote is literal", strict: true, expr: `\Qa.c`, present: true, role: "abc", wantErr: ErrNotPermitted},
		{name: "quote then alternation", strict: true, expr: `\Qa\E|b`, present: true, role: "b"},
		{name: "quote then alternation rejects", strict: true, expr: `\Qa\E|b`, present: true, role: "ab", wantErr: ErrNotPermitted},

		// Invalid expressions deny in both modes.
		{name: "invalid unclosed group", strict: true, expr: "(", present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid closing group", strict: true, expr: "a)(b", present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid class", strict: true, expr: "[a-", present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid repeat", strict: true, expr: "*", present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid perl lookahead", strict: true, expr: "(?=a)", present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid trailing backslash", strict: true, expr: `a\`, present: true, role: roleA, wantErr: ErrInvalidExpression},
		{name: "invalid non-strict", strict: false, expr: "(", present: true, role: roleA, wantErr: ErrInvalidExpression},

		// KIAM's --disable-strict-namespace-regexp: unanchored.
		{name: "non-strict substring", strict: false, expr: "role/a", present: true, role: roleA},
		{name: "non-strict a|b matches xa", strict: false, expr: "a|b", present: true, role: "xa"},
		{name: "non-strict a|b matches bx", strict: false, expr: "a|b", present: true, role: "bx"},
		{name: "non-strict no match", strict: false, expr: "role/c", present: true, role: roleA, wantErr: ErrNotPermitted},
		{name: "non-strict user anchors", strict: false, expr: "^role/a$", present: true, role: roleA, wantErr: ErrNotPermitted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, Config{DisableStrictRegexp: !tt.strict})
			// Twice: the cached result must agree with the first.
			for i := range 2 {
				err := c.Check(tt.expr, tt.present, tt.role)
				if tt.wantErr == nil {
					if err != nil {
						t.Fatalf("call %d: Check(%q, %v, %q) = %v, want allowed", i, tt.expr, tt.present, tt.role, err)
					}
					continue
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("call %d: Check(%q, %v, %q) = %v, want %v", i, tt.expr, tt.present, tt.role, err, tt.wantErr)
				}
			}
		})
	}
}

func TestInvalidExpressionMessage(t *testing.T) {
	c := mustNew(t, Config{})
	err := c.Check("a(b", true, roleA)
	if !errors.Is(err, ErrInvalidExpression) {
		t.Fatalf("err = %v, want ErrInvalidExpression", err)
	}
	_, syntaxErr := regexp.Compile("a(b")
	if syntaxErr == nil {
		t.Fatal("a(b compiled")
	}
	// The compile error text is what an operator needs to fix the
	// annotation, and it must name the user's text, not our anchored form.
	if !strings.Contains(err.Error(), syntaxErr.Error()) {
		t.Fatalf("err %q does not include the compile error %q", err, syntaxErr)
	}
	if strings.Contains(err.Error(), "(?:") {
		t.Fatalf("err %q leaks the anchoring wrapper", err)
	}
}

func TestErrorMessagesBounded(t *testing.T) {
	c := mustNew(t, Config{})
	long := strings.Repeat("x", 100000)
	tests := []struct {
		expr string
		want error
	}{
		{long, ErrNotPermitted},
		{long + "(", ErrInvalidExpression}, // the regexp error quotes the whole expression
		{"(" + long, ErrInvalidExpression}, // and here only the tail
		{strings.Repeat("ä", 1000) + "(", ErrInvalidExpression},
	}
	for _, tt := range tests {
		err := c.Check(tt.expr, true, roleA)
		if !errors.Is(err, tt.want) {
			t.Fatalf("err = %v, want %v", err, tt.want)
		}
		if n := len(err.Error()); n > 600 {
			t.Fatalf("error message is %d bytes; untrusted text must be cut", n)
		}
		if !utf8.ValidString(err.Error()) {
			t.Fatalf("error message is not valid UTF-8: %q", err.Error())
		}
	}
	var se *syntax.Error
	if err := c.Check(long+"(", true, roleA); !errors.As(err, &se) || se.Code != syntax.ErrMissingParen {
		t.Fatalf("err = %v, want a *syntax.Error with the compile error code", err)
	}
}

func TestCacheReuse(t *testing.T) {
	c := mustNew(t, Config{})
	for range 5 {
		_ = c.Check("a|b", true, "a")
		_ = c.Check("a|b", true, "xa")
		_ = c.Check("(", true, "a")  // failures are cached too
		_ = c.Check("", true, "a")   // never compiled
		_ = c.Check("x", false, "a") // never compiled
	}
	if got := c.compiles.Load(); got != 2 {
		t.Fatalf("compiles = %d, want 2 (one per distinct expression)", got)
	}
	if got := c.cache.Len(); got != 2 {
		t.Fatalf("cache length = %d, want 2", got)
	}
}

func TestCacheBounded(t *testing.T) {
	c := mustNew(t, Config{CacheSize: 2})
	for _, e := range []string{"a", "b", "c"} {
		if err := c.Check(e, true, e); err != nil {
			t.Fatalf("Check(%q): %v", e, err)
		}
	}
	if got := c.cache.Len(); got != 2 {
		t.Fatalf("cache length = %d, want 2", got)
	}
	// "a" was evicted, so it compiles again, and still answers correctly.
	if err := c.Check("a", true, "a"); err != nil {
		t.Fatalf("Check after eviction: %v", err)
	}
	if got := c.compiles.Load(); got != 4 {
		t.Fatalf("compiles = %d, want 4", got)
	}
}

func TestNew(t *testing.T) {
	if _, err := New(Config{CacheSize: -1}); err == nil {
		t.Fatal("negative cache size accepted")
	}
	c := mustNew(t, Config{})
	// The default must hold more than a handful of expressions.
	for i := range 100 {
		_ = c.Check(fmt.Sprintf("r%d", i), true, roleA)
	}
	if got := c.cache.Len(); got != 100 {
		t.Fatalf("default cache holds %d, want 100", got)
	}
}

func TestConcurrentCheck(t *testing.T) {
	c := mustNew(t, Config{CacheSize: 8})
	exprs := []string{"a|b", roleA, ".*", "(", `arn:aws:iam::\d{12}:role/.*`}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				expr := exprs[(g+i)%len(exprs)]
				err := c.Check(expr, true, roleA)
				var want error
				switch expr {
				case "a|b":
					want = ErrNotPermitted
				case "(":
					want = ErrInvalidExpression
				}
				if (want == nil && err != nil) || (want != nil && !errors.Is(err, want)) {
					select {
					case errs <- fmt.Errorf("Check(%q) = %v, want %v", expr, err, want):
					default:
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The cache is larger than the expression set, so each compiled once
	// even though 16 goroutines raced for every one of them.
	if got := c.compiles.Load(); got != int64(len(exprs)) {
		t.Fatalf("compiles = %d, want %d", got, len(exprs))
	}
}

func TestReason(t *testing.T) {
	c := mustNew(t, Config{})
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{c.Check("", false, roleA), "no_annotation"},
		{c.Check("(", true, roleA), "invalid_expression"},
		{c.Check("x", true, roleA), "not_permitted"},
		{c.Check("", true, roleA), "not_permitted"},
		{c.Check(".*", true, roleA), ""},
		{fmt.Errorf("wrapped: %w", ErrNotPermitted), "not_permitted"},
		{fmt.Errorf("wrapped: %w", ErrExternalIDMismatch), "external_id_mismatch"},
		{fmt.Errorf("wrapped: %w", ErrExternalIDFromPod), "external_id_from_pod"},
		{fmt.Errorf("wrapped: %w", ErrInvalidNamespaceExternalID), "invalid_namespace_external_id"},
		{errors.New("something else"), "other"},
	}
	for _, tt := range tests {
		if got := Reason(tt.err); got != tt.want {
			t.Errorf("Reason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// FuzzStrictAnchoring checks that anchoring on the parse tree means exactly
// ^(?:expr)$ for every expression where pasting text is unambiguous (no \Q).
func FuzzStrictAnchoring(f *testing.F) {
	for _, s := range [][2]string{
		{"a|b", "xa"}, {"(?i)a|B", "b"}, {"(?s).", "\n"}, {"(?m)^a$", "a"}, {"a*?", "aaa"},
		{"(?U)a+", "aa"}, {`[^a]|\w`, "é"}, {`(a)(?P<n>b)\1?`, "ab"}, {`\pL+`, "日本"}, {"x{2,3}", "xxxx"},
	} {
		f.Add(s[0], s[1])
	}
	c := mustNew(f, Config{CacheSize: 64})
	f.Fuzz(func(t *testing.T, expr, s string) {
		if expr == "" || strings.Contains(expr, `\Q`) {
			return
		}
		naive, err := regexp.Compile("^(?:" + expr + ")$")
		got := c.Check(expr, true, s)
		if _, exprErr := regexp.Compile(expr); exprErr != nil || err != nil {
			if exprErr != nil && !errors.Is(got, ErrInvalidExpression) {
				t.Fatalf("Check(%q) = %v for an invalid expression", expr, got)
			}
			return
		}
		if want := naive.MatchString(s); want != (got == nil) {
			t.Fatalf("Check(%q, %q) = %v, naive anchored match = %v", expr, s, got, want)
		}
	})
}

func mustNew(tb testing.TB, cfg Config) *Checker {
	tb.Helper()
	c, err := New(cfg)
	if err != nil {
		tb.Fatalf("New(%+v): %v", cfg, err)
	}
	return c
}
