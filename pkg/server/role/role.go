// Package role turns the IAM annotations that KIAM and kube2iam users already
// put on their pods into the creds.Key that names an STS session.
//
// It is pure string logic so that every rule that decides which role a pod
// gets can be tested without Kubernetes or AWS. Validation is deliberately
// stricter than "whatever STS would accept": a role ARN ends up in IMDS URL
// paths (security-credentials/<name>) and in cache keys, so anything that could
// be read two ways (dot segments, empty segments, whitespace, control
// characters) is refused before it gets there.
package role

import (
	"errors"
	"fmt"
	"strings"

	"github.com/podiam/podiam/pkg/creds"
)

// Annotation names shared with KIAM and kube2iam; existing manifests rely on
// them, so they must never change.
const (
	AnnotationRole        = "iam.amazonaws.com/role"
	AnnotationExternalID  = "iam.amazonaws.com/external-id"
	AnnotationSessionName = "iam.amazonaws.com/session-name"
	AnnotationPermitted   = "iam.amazonaws.com/permitted" // on namespaces
	AnnotationPrefix      = "iam.amazonaws.com/"
)

// Sentinel errors; the returned errors wrap them with the offending value.
var (
	// ErrNoRole means the pod has no (or an empty) role annotation. Callers
	// answer "not found" rather than "denied": the pod never asked for a role.
	ErrNoRole = errors.New("pod has no iam.amazonaws.com/role annotation")
	// ErrInvalidRole means the role annotation or base ARN is malformed.
	ErrInvalidRole = errors.New("invalid role")
	// ErrInvalidExternalID means the external-id annotation breaks AWS's rules.
	ErrInvalidExternalID = errors.New("invalid external id")
	// ErrNoBaseARN means a bare role name was given but no base ARN is known.
	ErrNoBaseARN = errors.New("role name given but no role base arn configured")
	// ErrInvalidCallerARN means an STS caller identity ARN could not be parsed.
	ErrInvalidCallerARN = errors.New("invalid caller arn")
)

// Limits from the IAM and STS API references.
const (
	maxRoleNameLen    = 64
	maxPathLen        = 512 // the IAM path including its leading and trailing "/"
	minExternalIDLen  = 2
	maxExternalIDLen  = 1224
	maxSessionNameLen = 64
	sessionPrefix     = "kiam-" // KIAM's prefix; trust policies may match on it
	accountIDLen      = 12
	// maxQuoted bounds how much of an untrusted value lands in an error (and
	// so in a log line or Kubernetes Event).
	maxQuoted = 96
)

// Resolver resolves role annotations against an optional base ARN. It is
// immutable after construction and so safe for concurrent use.
type Resolver struct {
	base string // "" or "arn:<partition>:iam::<account>:role/<path/>"
}

// NewResolver validates baseARN (KIAM's --role-base-arn). A missing trailing
// slash is added because KIAM users write both forms. An empty baseARN is
// allowed: then only full-ARN annotations resolve.
func NewResolver(baseARN string) (*Resolver, error) {
	if baseARN == "" {
		return &Resolver{}, nil
	}
	if !strings.HasSuffix(baseARN, "/") {
		baseARN += "/"
	}
	// Validate as if a one-character role name followed; that checks
	// partition, account, path characters and path length in one place.
	if err := validateRoleARN(baseARN + "x"); err != nil {
		return nil, fmt.Errorf("role base arn %s: %w", quote(baseARN), err)
	}
	return &Resolver{base: baseARN}, nil
}

// BaseARN is the normalised base ARN, "" when none is configured.
func (r *Resolver) BaseARN() string { return r.base }

// Resolve turns an iam.amazonaws.com/role annotation into a full role ARN.
// A value starting with "arn:" must be a complete IAM role ARN; anything else
// is a role name, optionally with a path, appended to the base ARN.
func (r *Resolver) Resolve(annotation string) (string, error) {
	if annotation == "" {
		return "", fmt.Errorf("%w: empty role", ErrInvalidRole)
	}
	if strings.HasPrefix(annotation, "arn:") {
		if err := validateRoleARN(annotation); err != nil {
			return "", fmt.Errorf("role %s: %w", quote(annotation), err)
		}
		return annotation, nil
	}
	// KIAM strips one leading slash so "/path/name" and "path/name" agree.
	name := strings.TrimPrefix(annotation, "/")
	if name == "" {
		return "", fmt.Errorf("%w: role %s has no name", ErrInvalidRole, quote(annotation))
	}
	base := r.base
	if base == "" {
		// Check the name against a stand-in base first, so a malformed
		// name is reported as malformed rather than as a missing base.
		base = "arn:aws:iam::000000000000:role/"
	}
	full := base + name
	if err := validateRoleARN(full); err != nil {
		// Name the user's value; the base ARN was already validated, so the
		// reason is about the annotation.
		return "", fmt.Errorf("role %s: %w", quote(annotation), err)
	}
	if r.base == "" {
		return "", fmt.Errorf("%w: role %s", ErrNoBaseARN, quote(annotation))
	}
	return full, nil
}

// Key builds the cache key for a pod from its annotations and the server's
// --session default. An absent or empty role annotation is ErrNoRole, as in
// KIAM, which treated both as "no role requested".
func (r *Resolver) Key(annotations map[string]string, defaultSession string) (creds.Key, error) {
	ann := annotations[AnnotationRole]
	if ann == "" {
		return creds.Key{}, ErrNoRole
	}
	arn, err := r.Resolve(ann)
	if err != nil {
		return creds.Key{}, err
	}
	ext := annotations[AnnotationExternalID]
	if err := ValidateExternalID(ext); err != nil {
		return creds.Key{}, err
	}
	return creds.Key{
		RoleARN:     arn,
		ExternalID:  ext,
		SessionName: SessionName(annotations[AnnotationSessionName], defaultSession),
	}, nil
}

// Name returns the last path element of a role ARN: the name IMDS lists under
// security-credentials/. For a string without "/" it falls back to the text
// after the last ":" so that it never returns a whole ARN.
func Name(roleARN string) string {
	if i := strings.LastIndexByte(roleARN, '/'); i >= 0 {
		return roleARN[i+1:]
	}
	if i := strings.LastIndexByte(roleARN, ':'); i >= 0 {
		return roleARN[i+1:]
	}
	return roleARN
}

// ValidateExternalID checks AWS's rules for sts:ExternalId: 2-1224 characters
// of [\w+=,.@:/-]. An empty id means "no external ID" and is valid; checking
// here rather than at STS turns a bad annotation into a clear policy denial
// instead of an opaque ValidationError.
func ValidateExternalID(id string) error {
	if id == "" {
		return nil
	}
	if len(id) < minExternalIDLen || len(id) > maxExternalIDLen {
		return fmt.Errorf("%w: length %d outside %d..%d", ErrInvalidExternalID, len(id), minExternalIDLen, maxExternalIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !NameChar(c) && c != ':' && c != '/' {
			return fmt.Errorf("%w: %s contains %q at offset %d", ErrInvalidExternalID, quote(id), c, i)
		}
	}
	return nil
}

// SessionName builds the STS RoleSessionName the way KIAM did ("kiam-" plus
// the annotation, else the --session default), so trust policies that check
// sts:RoleSessionName keep matching after a migration. Characters STS would
// reject become '-' and the result is cut to STS's 64-character limit, so a
// bad annotation never turns into an STS ValidationError. The prefix makes the
// result at least 5 characters, above STS's minimum of 2.
func SessionName(annotation, defaultSession string) string {
	s := annotation
	if s == "" {
		s = defaultSession
	}
	var b strings.Builder
	b.Grow(maxSessionNameLen)
	b.WriteString(sessionPrefix)
	// Ranging over runes turns one multi-byte character (or one invalid
	// byte) into a single '-', and the output stays ASCII so a byte cut is
	// safe.
	for _, c := range s {
		if b.Len() >= maxSessionNameLen {
			break
		}
		if c < 0x80 && NameChar(byte(c)) {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

// BaseARNFromCaller derives "arn:<partition>:iam::<account>:role/" from the ARN
// STS GetCallerIdentity returns, for --role-base-arn-autodetect. Only the
// partition and account are kept: the caller's own path says nothing about
// where the target roles live, and KIAM's autodetection did the same.
func BaseARNFromCaller(callerARN string) (string, error) {
	parts := strings.SplitN(callerARN, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return "", fmt.Errorf("%w: %s is not an arn", ErrInvalidCallerARN, quote(callerARN))
	}
	partition, service, region, account, resource := parts[1], parts[2], parts[3], parts[4], parts[5]
	if !validPartition(partition) {
		return "", fmt.Errorf("%w: %s has unknown partition", ErrInvalidCallerARN, quote(callerARN))
	}
	if region != "" {
		return "", fmt.Errorf("%w: %s has a region", ErrInvalidCallerARN, quote(callerARN))
	}
	if !validAccount(account) {
		return "", fmt.Errorf("%w: %s has an invalid account", ErrInvalidCallerARN, quote(callerARN))
	}
	kind, rest, _ := strings.Cut(resource, "/")
	ok := false
	switch service {
	case "sts":
		// moto answers "arn:aws:sts::<account>:user/moto" for plain keys, so
		// the user form is accepted under sts as well as iam.
		ok = (kind == "assumed-role" || kind == "federated-user" || kind == "user") && rest != ""
	case "iam":
		switch kind {
		case "root":
			ok = rest == "" && !strings.Contains(resource, "/")
		case "user", "role", "instance-profile":
			ok = rest != ""
		}
	}
	if !ok {
		return "", fmt.Errorf("%w: %s is not a user, role or session", ErrInvalidCallerARN, quote(callerARN))
	}
	return "arn:" + partition + ":iam::" + account + ":role/", nil
}

// validateRoleARN accepts exactly arn:<partition>:iam::<account>:role/<path/>name
// and refuses every variant that could be read two ways. Its errors carry the
// reason but not the value; callers add the value they were given.
func validateRoleARN(s string) error {
	invalid := func(why string) error {
		return fmt.Errorf("%w: %s", ErrInvalidRole, why)
	}
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return invalid("not an arn")
	}
	partition, service, region, account, resource := parts[1], parts[2], parts[3], parts[4], parts[5]
	if !validPartition(partition) {
		return invalid("unknown partition")
	}
	if service != "iam" {
		return invalid("not an iam arn")
	}
	if region != "" {
		return invalid("iam arns have no region")
	}
	if !validAccount(account) {
		return invalid("account must be 12 digits")
	}
	rest, ok := strings.CutPrefix(resource, "role/")
	if !ok {
		return invalid("not a role")
	}
	segs := strings.Split(rest, "/")
	pathLen := 1 // the leading "/" of the IAM path
	for i, seg := range segs {
		if seg == "" {
			return invalid("empty path segment or name")
		}
		if seg == "." || seg == ".." {
			return invalid("dot segment")
		}
		for j := 0; j < len(seg); j++ {
			if !NameChar(seg[j]) {
				return invalid(fmt.Sprintf("invalid character %q", seg[j]))
			}
		}
		if i < len(segs)-1 {
			pathLen += len(seg) + 1
		}
	}
	name := segs[len(segs)-1]
	if len(name) > maxRoleNameLen {
		return invalid(fmt.Sprintf("role name longer than %d", maxRoleNameLen))
	}
	if pathLen > maxPathLen {
		return invalid(fmt.Sprintf("role path longer than %d", maxPathLen))
	}
	return nil
}

// validPartition accepts the partitions IAM exists in. aws-iso-<letter> is
// accepted generally because AWS adds isolated partitions by letter.
func validPartition(p string) bool {
	switch p {
	case "aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-eusc":
		return true
	}
	rest, ok := strings.CutPrefix(p, "aws-iso-")
	return ok && len(rest) == 1 && rest[0] >= 'a' && rest[0] <= 'z'
}

func validAccount(a string) bool {
	if len(a) != accountIDLen {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < '0' || a[i] > '9' {
			return false
		}
	}
	return true
}

// NameChar reports whether c is in IAM's [\w+=,.@-], with \w in its ASCII
// meaning: the characters of role names, session names and SourceIdentity.
func NameChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '_', '+', '=', ',', '.', '@', '-':
		return true
	}
	return false
}

// quote bounds an untrusted value before it goes into an error message.
func quote(s string) string {
	if len(s) > maxQuoted {
		return fmt.Sprintf("%q...(%d bytes)", s[:maxQuoted], len(s))
	}
	return fmt.Sprintf("%q", s)
}
