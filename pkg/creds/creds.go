// Package creds holds the plain data that flows along the credential path:
// the cache key that names an STS session and the credentials it yields. It
// imports nothing of ours so that every step of the path can share it.
package creds

import (
	"errors"
	"log/slog"
	"time"
)

// Key names one STS session. Two pods share credentials only when every
// field matches, because the external ID and session name are part of what
// the target role's trust policy may check.
type Key struct {
	RoleARN     string
	ExternalID  string
	SessionName string
}

// String is used in logs and as a map key; the external ID is not secret.
func (k Key) String() string {
	return k.RoleARN + "|" + k.ExternalID + "|" + k.SessionName
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
