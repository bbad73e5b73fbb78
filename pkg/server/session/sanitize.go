package session

import (
	"crypto/sha256"
	"encoding/base32"

	"github.com/podiam/podiam/pkg/server/role"
)

// STS's rules for RoleSessionName and SourceIdentity: 2 to 64 characters of
// [\w+=,.@-], \w in its ASCII meaning.
const (
	MinNameLen = 2
	MaxNameLen = 64
)

// A name that had to be changed ends in hashMarker and hashLen characters
// of a hash of what the template rendered. 60 bits: pods would need about a
// billion distinct names before two collided by chance, and finding a pod
// name that collides with a given one takes 2^60 hashes. The marker is a
// character no Kubernetes name contains, so names built from pod metadata
// alone are never mistaken for hashed ones.
const (
	hashMarker = '_'
	hashLen    = 12
)

// hashEncoding is base32 in lower case: only characters STS allows, and
// none that read as a Kubernetes name part would.
var hashEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Sanitize turns what a template rendered into a valid session name or
// source identity. A value that is already valid is kept as it is, so
// CloudTrail shows what the template says. Any other value (a character STS
// refuses, too short, too long) becomes its valid characters, each other
// character replaced by '-', cut to leave room for '_' and a hash of the
// whole value; a valid value that merely looks like such a result is hashed
// too. So kept and hashed names never coincide, and two different values
// give two different names unless their 60-bit hashes collide.
//
// It is a pure function of its input, so a pod's name is the same on every
// refresh and on every server replica.
func Sanitize(s string) string {
	if Valid(s) && !looksHashed(s) {
		return s
	}
	b := make([]byte, 0, MaxNameLen)
	// Ranging over runes turns one multi-byte character (or one invalid
	// byte) into one '-'.
	for _, r := range s {
		if len(b) == MaxNameLen-hashLen-1 {
			break
		}
		if r < 0x80 && role.NameChar(byte(r)) {
			b = append(b, byte(r))
		} else {
			b = append(b, '-')
		}
	}
	sum := sha256.Sum256([]byte(s))
	b = append(b, hashMarker)
	b = append(b, hashEncoding.EncodeToString(sum[:8])[:hashLen]...)
	return string(b)
}

// Valid reports whether s meets STS's rules for a session name or source
// identity.
func Valid(s string) bool {
	if len(s) < MinNameLen || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !role.NameChar(s[i]) {
			return false
		}
	}
	return true
}

// looksHashed reports whether s ends the way Sanitize ends a changed value.
func looksHashed(s string) bool {
	if len(s) < hashLen+1 || s[len(s)-hashLen-1] != hashMarker {
		return false
	}
	for i := len(s) - hashLen; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
