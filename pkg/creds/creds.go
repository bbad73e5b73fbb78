// Package creds holds the plain data that flows along the credential path:
// the cache key that names an STS session and the credentials it yields. It
// imports nothing of ours so that every step of the path can share it.
package creds

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Key names one STS session. Two pods share credentials only when every
// field matches, because the external ID and session name are part of what
// the target role's trust policy may check.
type Key struct {
	RoleARN     string
	ExternalID  string
	SessionName string
	// SourceIdentity is set on the AssumeRole call when not empty. It is part
	// of the key because STS records it in CloudTrail and keeps it through
	// any further role chaining: two pods that must be told apart there
	// cannot share a session.
	SourceIdentity string
	// Tags are the session tags, in the canonical form NewTags makes, so
	// that a Key stays comparable and two pods with the same tags share one
	// session whatever order the tags were built in.
	Tags Tags
}

// String is used in logs and as a map key; the external ID is not secret.
// A key without source identity or tags prints as it always has.
func (k Key) String() string {
	s := k.RoleARN + "|" + k.ExternalID + "|" + k.SessionName
	if k.SourceIdentity != "" || k.Tags != "" {
		// Neither '|' nor the tag separators are allowed in any of the
		// fields, so the form is unambiguous.
		s += "|" + k.SourceIdentity + "|" + string(k.Tags)
	}
	return s
}

// Tag is one STS session tag.
type Tag struct {
	Key, Value string
}

// Tags is a set of session tags encoded in one string: sorted by key, each
// key and value separated by tagKV and each pair ended by tagEnd. Neither
// separator is allowed in STS tag keys or values. "" is no tags.
type Tags string

const (
	tagKV  = "\x1f"
	tagEnd = "\x1e"
)

// NewTags returns the canonical encoding of tags. Callers validate keys
// and values; duplicates keep their order after sorting by key.
func NewTags(tags ...Tag) Tags {
	if len(tags) == 0 {
		return ""
	}
	sorted := slices.Clone(tags)
	slices.SortStableFunc(sorted, func(a, b Tag) int { return strings.Compare(a.Key, b.Key) })
	var b strings.Builder
	for _, t := range sorted {
		b.WriteString(t.Key)
		b.WriteString(tagKV)
		b.WriteString(t.Value)
		b.WriteString(tagEnd)
	}
	return Tags(b.String())
}

// All decodes the tags, sorted by key.
func (t Tags) All() []Tag {
	var out []Tag
	rest := string(t)
	for rest != "" {
		pair, tail, _ := strings.Cut(rest, tagEnd)
		k, v, _ := strings.Cut(pair, tagKV)
		out = append(out, Tag{Key: k, Value: v})
		rest = tail
	}
	return out
}

// LogValue shows the tags as a group of key = value in log lines.
func (t Tags) LogValue() slog.Value {
	all := t.All()
	attrs := make([]slog.Attr, 0, len(all))
	for _, tag := range all {
		attrs = append(attrs, slog.String(tag.Key, tag.Value))
	}
	return slog.GroupValue(attrs...)
}

// Credentials are temporary AWS credentials for one Key.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	LastUpdated     time.Time
}

// LogValue keeps the secret and the token out of every log line, even when a
// whole Credentials value is logged by mistake.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("access_key_id", c.AccessKeyID),
		slog.Time("expiration", c.Expiration),
	)
}

// Remaining is how long the credentials stay valid after now.
func (c Credentials) Remaining(now time.Time) time.Duration {
	return c.Expiration.Sub(now)
}

// Error classes for failures to obtain credentials. Callers test them with
// errors.Is; the gRPC and HTTP edges map them to codes.
var (
	// ErrDenied means STS refused for reasons a retry will not fix
	// (AccessDenied, ValidationError, a malformed request).
	ErrDenied = errors.New("sts denied the request")
	// ErrUnavailable means STS could not be reached, failed, or throttled.
	ErrUnavailable = errors.New("sts unavailable")
)

// PodCredentials is what an agent learns about the pod at one address in
// one answer from the server.
type PodCredentials struct {
	PodUID      string
	Namespace   string
	Name        string
	RoleARN     string
	Credentials Credentials
}
