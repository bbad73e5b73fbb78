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
	if rt, ok := localRoute(strings.Trim(canon, "/")); ok {
		return rt
	}
	if neverProxied(strings.Split(strings.Trim(canon, "/"), "/")) {
		return route{kind: kindForbidden}
	}
	return route{kind: kindOther}
}

// localRoute matches p, a path without its leading and trailing slashes,
// against the routes served from the Provider: the same decisions as
// comparing p's segments one by one, without splitting p, since every
// credential request comes this way.
func localRoute(p string) (route, bool) {
	version, rest, ok := strings.Cut(p, "/")
	if !ok || !isVersion(version) {
		return route{}, false
	}
	switch rest {
	case "api/token":
		return route{kind: kindToken}, true
	case "meta-data/iam/security-credentials":
		return route{kind: kindRole}, true
	case "meta-data/iam/info":
		return route{kind: kindInfo}, true
	}
	if name, ok := strings.CutPrefix(rest, "meta-data/iam/security-credentials/"); ok && name != "" && strings.IndexByte(name, '/') < 0 {
		return route{kind: kindCreds, name: name}, true
	}
	return route{}, false
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
