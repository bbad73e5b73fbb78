// Package policy decides whether a namespace permits a role, from the
// regular expression in its iam.amazonaws.com/permitted annotation, as KIAM's
// namespace policy did, and which External ID the role is assumed with: the
// namespace's iam.amazonaws.com/external-id, when it has one, is the
// tenant's, and a pod may not pick another (Decide).
//
// The server runs this on every credential request, so compiled expressions
// are cached: the hot path is an LRU lookup and a match, never a compile. The
// package knows nothing of Kubernetes; callers pass the annotation value.
package policy

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/podiam/podiam/pkg/server/role"
)

// Sentinel errors returned (wrapped) by Check. All of them mean "deny".
var (
	ErrNoAnnotation      = errors.New("namespace has no " + role.AnnotationPermitted + " annotation")
	ErrInvalidExpression = errors.New("invalid " + role.AnnotationPermitted + " expression")
	ErrNotPermitted      = errors.New("role not permitted in namespace")
)

// defaultCacheSize comfortably exceeds the number of distinct expressions a
// cluster has (one per namespace at most), so misses are rare.
const defaultCacheSize = 1024

// maxQuoted bounds how much of an expression goes into an error message, and
// so into logs and Kubernetes Events.
const maxQuoted = 128

// Config tunes a Checker.
type Config struct {
	// DisableStrictRegexp reproduces KIAM's --disable-strict-namespace-regexp:
	// the expression is matched unanchored.
	DisableStrictRegexp bool
	// CacheSize bounds the compiled-expression cache; 0 means 1024.
	CacheSize int
	// ExternalIDFrom is --external-id-from; "" means ExternalIDFromPod.
	ExternalIDFrom ExternalIDFrom
}

// compiled is a cache entry. Failures are cached too so that a namespace with
// a broken expression does not cost a compile on every request.
type compiled struct {
	re  *regexp.Regexp
	err error
}

// Checker evaluates namespace policies. It is safe for concurrent use.
type Checker struct {
	strict         bool
	externalIDFrom ExternalIDFrom
	// The mode is fixed per Checker, so keying by expression alone is keying
	// by (expression, mode).
	cache *lru.Cache[string, compiled]
	// missMu serialises compiles so that concurrent requests for one new
	// expression compile it once rather than once each.
	missMu sync.Mutex
	// compiles counts cache misses; tests use it to prove reuse.
	compiles atomic.Int64
}

// New builds a Checker.
func New(cfg Config) (*Checker, error) {
	size := cfg.CacheSize
	if size < 0 {
		return nil, fmt.Errorf("policy cache size %d is negative", size)
	}
	if size == 0 {
		size = defaultCacheSize
	}
	from := cfg.ExternalIDFrom
	if from == "" {
		from = ExternalIDFromPod
	}
	if _, err := ParseExternalIDFrom(string(from)); err != nil {
		return nil, fmt.Errorf("policy external id source: %w", err)
	}
	cache, err := lru.New[string, compiled](size)
	if err != nil {
		return nil, fmt.Errorf("policy cache: %w", err)
	}
	return &Checker{strict: !cfg.DisableStrictRegexp, externalIDFrom: from, cache: cache}, nil
}

// Check decides whether a namespace whose iam.amazonaws.com/permitted
// annotation is expr (present says whether the annotation exists) allows
// roleARN. nil means allowed; every error means deny.
//
// In strict mode the expression is anchored as ^(?:expr)$: KIAM's ^expr$ let
// "a|b" match "a-anything" and "anything-b". An empty expression denies in
// both modes; unanchored it would match every role, and KIAM denied it too.
func (c *Checker) Check(expr string, present bool, roleARN string) error {
	if !present {
		return ErrNoAnnotation
	}
	if expr == "" {
		return fmt.Errorf("%w: role %q, expression is empty", ErrNotPermitted, roleARN)
	}
	entry := c.lookup(expr)
	if entry.err != nil {
		return entry.err
	}
	if !entry.re.MatchString(roleARN) {
		return fmt.Errorf("%w: role %q does not match %s", ErrNotPermitted, roleARN, quote(expr))
	}
	return nil
}

// lookup returns the cached compile result for expr, compiling on a miss.
func (c *Checker) lookup(expr string) compiled {
	if e, ok := c.cache.Get(expr); ok {
		return e
	}
	c.missMu.Lock()
	defer c.missMu.Unlock()
	if e, ok := c.cache.Get(expr); ok {
		return e
	}
	e := c.compile(expr)
	c.cache.Add(expr, e)
	return e
}

func (c *Checker) compile(expr string) compiled {
	c.compiles.Add(1)
	invalid := func(err error) compiled {
		// The regexp error quotes the expression verbatim; cut it so that an
		// annotation of any size gives a short log line and Event.
		var se *syntax.Error
		if errors.As(err, &se) && len(se.Expr) > maxQuoted {
			err = &syntax.Error{Code: se.Code, Expr: strings.ToValidUTF8(se.Expr[:maxQuoted], "") + "..."}
		}
		return compiled{err: fmt.Errorf("%w %s: %w", ErrInvalidExpression, quote(expr), err)}
	}
	if !c.strict {
		re, err := regexp.Compile(expr)
		if err != nil {
			return invalid(err)
		}
		return compiled{re: re}
	}
	// Anchor on the parsed tree rather than by pasting "^(?:" and ")$"
	// around the text: an unterminated \Q in expr would swallow the closing
	// ")$", and parsing first makes the error name what the user wrote.
	// regexp.Compile parses with syntax.Perl, so this accepts exactly what
	// KIAM's regexp.Compile accepted.
	tree, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return invalid(err)
	}
	anchored := &syntax.Regexp{Op: syntax.OpConcat, Sub: []*syntax.Regexp{
		{Op: syntax.OpBeginText}, tree, {Op: syntax.OpEndText},
	}}
	re, err := regexp.Compile(anchored.String())
	if err != nil {
		return invalid(err)
	}
	return compiled{re: re}
}

// Reason maps a Check or Decide error to a bounded label for metrics and
// Events. Errors that did not come from them map to "other".
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrNoAnnotation):
		return "no_annotation"
	case errors.Is(err, ErrInvalidExpression):
		return "invalid_expression"
	case errors.Is(err, ErrNotPermitted):
		return "not_permitted"
	case errors.Is(err, ErrExternalIDMismatch):
		return "external_id_mismatch"
	case errors.Is(err, ErrExternalIDFromPod):
		return "external_id_from_pod"
	case errors.Is(err, ErrInvalidNamespaceExternalID):
		return "invalid_namespace_external_id"
	default:
		return "other"
	}
}

func quote(s string) string {
	if len(s) > maxQuoted {
		return fmt.Sprintf("%q...(%d bytes)", strings.ToValidUTF8(s[:maxQuoted], ""), len(s))
	}
	return fmt.Sprintf("%q", s)
}
