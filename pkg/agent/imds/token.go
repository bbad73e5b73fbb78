package imds

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"time"
)

// IMDSv2 token TTL bounds, as the real metadata service enforces them.
const (
	MinTokenTTL = 1
	MaxTokenTTL = 21600
)

const (
	tokenExpiryLen = 8
	tokenRawLen    = tokenExpiryLen + sha256.Size
)

// tokenEncoding is strict so that each token has exactly one spelling.
var tokenEncoding = base64.RawURLEncoding.Strict()

// tokenLen is the length of every token we mint; anything else is refused
// before decoding.
var tokenLen = tokenEncoding.EncodedLen(tokenRawLen)

// mintToken returns a token valid until expiry for ip. Tokens are stateless
// (an HMAC over expiry and IP), so the agent keeps nothing per token and a
// flood of PUTs costs no memory. With a per-process random key an agent
// restart invalidates them; the SDKs ask for a new one on 401.
func mintToken(key []byte, ip string, expiry time.Time) string {
	raw := make([]byte, tokenExpiryLen, tokenRawLen)
	binary.BigEndian.PutUint64(raw, uint64(expiry.Unix()))
	raw = append(raw, tokenMAC(key, raw[:tokenExpiryLen], ip)...)
	return tokenEncoding.EncodeToString(raw)
}

// validToken reports whether tok was minted with key for ip and is still
// unexpired at now. Binding to the source IP means a token leaked from one pod
// (logs, a shared volume) is useless to every other pod.
func validToken(key []byte, ip, tok string, now time.Time) bool {
	if len(tok) != tokenLen {
		return false
	}
	raw, err := tokenEncoding.DecodeString(tok)
	if err != nil || len(raw) != tokenRawLen {
		return false
	}
	if !hmac.Equal(raw[tokenExpiryLen:], tokenMAC(key, raw[:tokenExpiryLen], ip)) {
		return false
	}
	expiry := int64(binary.BigEndian.Uint64(raw[:tokenExpiryLen]))
	return now.Unix() < expiry
}

func tokenMAC(key, expiry []byte, ip string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(expiry)
	m.Write([]byte(ip))
	return m.Sum(nil)
}

// parseTTL parses the X-aws-ec2-metadata-token-ttl-seconds header: decimal
// digits only (no sign, no spaces), within MinTokenTTL..MaxTokenTTL.
func parseTTL(v string) (int, bool) {
	if len(v) == 0 || len(v) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < MinTokenTTL || n > MaxTokenTTL {
		return 0, false
	}
	return n, true
}

// checkToken applies IMDSv2: a token, if sent, must be ours, for this IP and
// unexpired; without one the request is IMDSv1 and allowed unless v2 is
// required.
func (h *Handler) checkToken(w http.ResponseWriter, r *http.Request, ip string) (outcome, bool) {
	toks := r.Header.Values(headerToken)
	if len(toks) == 0 {
		if h.requireV2 {
			return h.fail(w, http.StatusUnauthorized, "imdsv2 token required"), false
		}
		return outcome{}, true
	}
	if len(toks) != 1 || !validToken(h.key, ip, toks[0], h.now()) {
		return h.fail(w, http.StatusUnauthorized, "invalid or expired imdsv2 token"), false
	}
	return outcome{}, true
}

// putToken mints an IMDSv2 token locally; token requests are never forwarded.
// A token request carrying X-Forwarded-For came through a proxy, which the
// real service refuses too (it would let the proxy's clients share a token).
func (h *Handler) putToken(w http.ResponseWriter, r *http.Request, ip string) outcome {
	if _, ok := r.Header[http.CanonicalHeaderKey("X-Forwarded-For")]; ok {
		return h.fail(w, http.StatusForbidden, "token request with x-forwarded-for")
	}
	vals := r.Header.Values(headerTokenTTL)
	if len(vals) != 1 {
		return h.fail(w, http.StatusBadRequest, "token ttl header missing or repeated")
	}
	ttl, ok := parseTTL(vals[0])
	if !ok {
		return h.fail(w, http.StatusBadRequest, "token ttl not an integer in 1..21600")
	}
	tok := mintToken(h.key, ip, h.now().Add(time.Duration(ttl)*time.Second))
	// aws-sdk-go-v2 reads the TTL back from this header and fails without it.
	w.Header().Set(headerTokenTTL, vals[0])
	return h.text(w, http.StatusOK, tok)
}
