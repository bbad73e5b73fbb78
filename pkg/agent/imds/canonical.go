package imds

import (
	"net/url"
	"strings"
)

// MaxPathLen is the longest raw request path Canonical accepts. Real metadata
// paths are short; a long one is an attack or a mistake.
const MaxPathLen = 1024

// maxDecodeRounds bounds repeated percent-decoding. Each round undoes one
// layer of encoding ("%252e" -> "%2e" -> "."); deeper nesting is refused
// rather than guessed at.
const maxDecodeRounds = 4

// Canonical makes a request path canonical so that every decision (local
// route, never-proxied target, allow-list) and the proxied request itself
// see the same path, whatever encoding tricks the raw path used.
//
// Percent-escapes are decoded until none remain, because we cannot know how
// many times the real metadata service or anything in between decodes: a
// canonical path therefore never contains '%', which also makes Canonical
// idempotent. Backslashes become '/', repeated slashes are folded and dot
// segments are resolved (never above the root). A trailing slash is kept
// because the metadata service distinguishes listings by it.
//
// It returns false for a path that is unusable: longer than MaxPathLen, with
// an invalid escape, with NUL or other control characters, or not absolute.
func Canonical(raw string) (string, bool) {
	if isCanonical(raw) {
		return raw, true
	}
	return canonicalize(raw)
}

// canonicalize is Canonical for a path that is not canonical yet.
func canonicalize(raw string) (string, bool) {
	if len(raw) > MaxPathLen {
		return "", false
	}
	s := raw
	for round := 0; strings.IndexByte(s, '%') >= 0; round++ {
		if round == maxDecodeRounds {
			return "", false
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return "", false
		}
		s = d
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return "", false
		}
	}
	s = strings.ReplaceAll(s, `\`, "/")
	if !strings.HasPrefix(s, "/") {
		return "", false
	}

	parts := strings.Split(s[1:], "/")
	out := make([]string, 0, len(parts))
	trailing := false
	for _, p := range parts {
		// A path that ends in "/", "/." or "/.." names a directory, as in
		// RFC 3986 remove_dot_segments.
		trailing = p == "" || p == "." || p == ".."
		switch p {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return "/", true
	}
	c := "/" + strings.Join(out, "/")
	if trailing {
		c += "/"
	}
	return c, true
}

// isCanonical reports whether Canonical would return raw itself: an
// absolute path of at most MaxPathLen bytes without '%', '\\' or control
// characters, whose segments are neither empty (but for a trailing slash)
// nor dot segments. Every SDK sends such a path, and for it Canonical
// allocates nothing.
func isCanonical(raw string) bool {
	if raw == "" || raw[0] != '/' || len(raw) > MaxPathLen {
		return false
	}
	start := 1 // of the current segment
	for i := 1; i < len(raw); i++ {
		switch c := raw[i]; {
		case c < 0x20 || c == 0x7f || c == '%' || c == '\\':
			return false
		case c == '/':
			if !plainSegment(raw[start:i]) {
				return false
			}
			start = i + 1
		}
	}
	// The last segment may be empty: "/" or a trailing slash.
	return start == len(raw) || plainSegment(raw[start:])
}

func plainSegment(s string) bool {
	return s != "" && s != "." && s != ".."
}
