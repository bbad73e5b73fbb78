package imds

import (
	"strings"
)

// kind is what a canonical path asks for.
type kind int

const (
	kindOther     kind = iota // not served locally; may be proxied if allowed
	kindPing                  // GET /ping
	kindHealth                // GET /health
	kindToken                 // PUT /{version}/api/token
	kindRole                  // .../meta-data/iam/security-credentials[/]
	kindCreds                 // .../meta-data/iam/security-credentials/<name>[/]
	kindInfo                  // .../meta-data/iam/info[/]
	kindForbidden             // never proxied, whatever the allow-list says
)

// route is the routing decision for one canonical path.
type route struct {
	kind kind
	name string // the role name asked for, for kindCreds
}

// requestClass is what a request asked for, as the metrics' and the log's
// class label: a fixed set, so that labels stay bounded.
type requestClass string

const (
	classCredentials requestClass = "credentials"
	classRole        requestClass = "role"
	classInfo        requestClass = "info"
	classToken       requestClass = "token"
	classProxy       requestClass = "proxy"
	classHealth      requestClass = "health"
	classOther       requestClass = "other"
)

var allClasses = []requestClass{classCredentials, classRole, classInfo, classToken, classProxy, classHealth, classOther}

// classify decides what a canonical path (as returned by Canonical) asks
// for. Local routes are matched exactly; everything that touches a
// never-proxied target in any spelling is kindForbidden.
func classify(canon string) route {
	switch canon {
	case "/ping":
		return route{kind: kindPing}
	case "/health":
		return route{kind: kindHealth}
	}
	segs := strings.Split(strings.Trim(canon, "/"), "/")
	if len(segs) >= 3 && isVersion(segs[0]) {
		rest := segs[1:]
		switch {
		case len(rest) == 2 && rest[0] == "api" && rest[1] == "token":
			return route{kind: kindToken}
		case len(rest) == 3 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "security-credentials":
			return route{kind: kindRole}
		case len(rest) == 4 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "security-credentials":
			return route{kind: kindCreds, name: rest[3]}
		case len(rest) == 3 && rest[0] == "meta-data" && rest[1] == "iam" && rest[2] == "info":
			return route{kind: kindInfo}
		}
	}
	if neverProxied(segs) {
		return route{kind: kindForbidden}
	}
	return route{kind: kindOther}
}

// forbiddenPrefixes are segment prefixes that are never proxied: the node's
// role (iam/), its identity credentials, user data (often holds secrets), the
// signed identity documents (they log a pod in to Vault's EC2 auth as the
// node) and the token endpoint. They are matched case-insensitively, as
// prefixes of any segment at any depth and of every ';'-separated piece of a
// segment, ignoring spaces around it — wider than the real service's paths on
// purpose: we cannot know how the upstream (or anything in between) treats
// case, matrix parameters ("..;/" is a known traversal) or trailing junk, and
// refusing a harmless path costs far less than leaking the node's role.
var forbiddenPrefixes = []string{"iam", "identity-credentials", "user-data", "pkcs7", "signature", "rsa2048"}

func neverProxied(segs []string) bool {
	prevAPI := false
	for _, seg := range segs {
		api := false
		for _, s := range strings.Split(strings.ToLower(seg), ";") {
			s = strings.TrimSpace(s)
			// A dot segment hidden behind a parameter could climb out of an
			// allowed prefix on a server that strips parameters.
			if s == "." || s == ".." {
				return true
			}
			for _, p := range forbiddenPrefixes {
				if strings.HasPrefix(s, p) {
					return true
				}
			}
			// "api" then "token", whether as segments or as ';' pieces
			// of one segment ("/api;token" found by FuzzRouter).
			if (prevAPI || api) && strings.HasPrefix(s, "token") {
				return true
			}
			api = api || s == "api"
		}
		prevAPI = api
	}
	return false
}

// isVersion reports whether s is an IMDS API version: "latest" or YYYY-MM-DD.
func isVersion(s string) bool {
	if s == "latest" {
		return true
	}
	if len(s) != 10 || s[4] != '-' || s[7] != '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if i == 4 || i == 7 {
			continue
		}
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
