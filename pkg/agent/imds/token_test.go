package imds

import (
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"1", 1, true},
		{"21600", 21600, true},
		{"300", 300, true},
		{"00300", 300, true},
		{"0", 0, false},
		{"21601", 0, false},
		{"", 0, false},
		{"-1", 0, false},
		{"+5", 0, false},
		{" 5", 0, false},
		{"5 ", 0, false},
		{"1e3", 0, false},
		{"abc", 0, false},
		{"3.5", 0, false},
		{"99999999999999999999", 0, false},
		{"000001", 0, false}, // too long to be a sane TTL
	}
	for _, tc := range tests {
		got, ok := parseTTL(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseTTL(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestToken(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_700_000_000, 0)
	tok := mintToken(key, "10.0.0.1", now.Add(60*time.Second))

	if len(tok) != tokenLen {
		t.Fatalf("token length %d, want %d", len(tok), tokenLen)
	}
	tests := []struct {
		name string
		key  []byte
		ip   string
		tok  string
		now  time.Time
		want bool
	}{
		{"valid", key, "10.0.0.1", tok, now, true},
		{"valid until the last second", key, "10.0.0.1", tok, now.Add(59 * time.Second), true},
		{"expired at expiry", key, "10.0.0.1", tok, now.Add(60 * time.Second), false},
		{"expired after", key, "10.0.0.1", tok, now.Add(time.Hour), false},
		{"other ip", key, "10.0.0.2", tok, now, false},
		{"other ip with same prefix", key, "10.0.0.10", tok, now, false},
		{"other key", []byte("fedcba9876543210fedcba9876543210"), "10.0.0.1", tok, now, false},
		{"empty", key, "10.0.0.1", "", now, false},
		{"truncated", key, "10.0.0.1", tok[:len(tok)-1], now, false},
		{"extended", key, "10.0.0.1", tok + "A", now, false},
		{"padded base64", key, "10.0.0.1", tok[:len(tok)-2] + "==", now, false},
		{"not base64", key, "10.0.0.1", string(make([]byte, tokenLen)), now, false},
	}
	for _, tc := range tests {
		if got := validToken(tc.key, tc.ip, tc.tok, tc.now); got != tc.want {
			t.Errorf("%s: validToken = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Every single-character change to a token must invalidate it: the expiry
// is covered by the MAC, so extending one's own token is impossible too.
func TestTokenTampered(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_700_000_000, 0)
	tok := mintToken(key, "10.0.0.1", now.Add(time.Hour))
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := 0; i < len(tok); i++ {
		for _, c := range []byte(alphabet) {
			if c == tok[i] {
				continue
			}
			b := []byte(tok)
			b[i] = c
			if validToken(key, "10.0.0.1", string(b), now) {
				t.Fatalf("token with byte %d changed to %q still valid", i, c)
			}
		}
	}
}
