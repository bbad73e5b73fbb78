// Package httperr gives errors an HTTP status, decided where the error is
// made (the agent's server client knows what a gRPC refusal means) and read
// only at the HTTP edge, as aws/eks-pod-identity-agent does.
package httperr

import "errors"

// Error is an error that knows the HTTP status to answer a pod with.
type Error struct {
	Status int
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// New wraps err with an HTTP status.
func New(status int, err error) error { return &Error{Status: status, Err: err} }

// Status returns the HTTP status carried by err, or def when none is.
func Status(err error, def int) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return def
}
