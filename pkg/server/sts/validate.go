package sts

import (
	"fmt"
	"strings"

	"github.com/podiam/podiam/pkg/creds"
)

// validateKey applies STS's own AssumeRole parameter rules before any call.
// STS would answer ValidationError anyway; checking here spares the call and
// makes a local STS that is less strict (moto) behave like AWS.
func validateKey(key creds.Key) error {
	if len(key.RoleARN) < 20 || len(key.RoleARN) > 2048 {
		return fmt.Errorf("%w: role arn %q: length must be 20..2048", creds.ErrDenied, key.RoleARN)
	}
	if n := len(key.SessionName); n < 2 || n > 64 {
		return fmt.Errorf("%w: session name %q: length must be 2..64", creds.ErrDenied, key.SessionName)
	}
	if !allRunes(key.SessionName, "+=,.@-") {
		return fmt.Errorf("%w: session name %q: only letters, digits and +=,.@- are allowed", creds.ErrDenied, key.SessionName)
	}
	if key.SourceIdentity != "" {
		if n := len(key.SourceIdentity); n < 2 || n > 64 {
			return fmt.Errorf("%w: source identity %q: length must be 2..64", creds.ErrDenied, key.SourceIdentity)
		}
		if !allRunes(key.SourceIdentity, "+=,.@-") {
			return fmt.Errorf("%w: source identity %q: only letters, digits and +=,.@- are allowed", creds.ErrDenied, key.SourceIdentity)
		}
	}
	tags := key.Tags.All()
	if len(tags) > 50 {
		return fmt.Errorf("%w: %d session tags: at most 50 are allowed", creds.ErrDenied, len(tags))
	}
	for _, t := range tags {
		if n := len(t.Key); n < 1 || n > 128 || len(t.Value) > 256 {
			return fmt.Errorf("%w: session tag %q: key must be 1..128 and value at most 256 characters", creds.ErrDenied, t.Key)
		}
	}
	if key.ExternalID != "" {
		if n := len(key.ExternalID); n < 2 || n > 1224 {
			return fmt.Errorf("%w: external id: length must be 2..1224", creds.ErrDenied)
		}
		if !allRunes(key.ExternalID, "+=,.@:/-") {
			return fmt.Errorf("%w: external id: only letters, digits and +=,.@:/- are allowed", creds.ErrDenied)
		}
	}
	return nil
}

// allRunes reports whether s has only ASCII letters, digits, '_' and bytes
// from extra: STS's [\w...] patterns.
func allRunes(s, extra string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		word := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
		if !word && strings.IndexByte(extra, c) < 0 {
			return false
		}
	}
	return true
}
