package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// result is the outcome of a credential request, the requests metric's
// result label: a bounded set of values.
type result string

// Outcomes of a request that was answered with credentials, or that failed
// without a decision (the caller went away, or an internal error).
const (
	resultIssued result = "issued"
	resultError  result = "error"
)

// Outcomes of a refused request; each has its gRPC code in resultCodes.
const (
	resultBadRequest        result = "bad_request"
	resultNotSynced         result = "not_synced"
	resultPodIndexStale     result = "pod_index_stale"
	resultNamespaceStale    result = "namespace_stale"
	resultPodUnknown        result = "pod_unknown"
	resultIPConflict        result = "ip_conflict"
	resultWrongNode         result = "wrong_node"
	resultNoRole            result = "no_role"
	resultStaticPod         result = "static_pod"
	resultInvalidAnnotation result = "invalid_annotation"
	resultPolicyDenied      result = "policy_denied"
	resultSTSDenied         result = "sts_denied"
	resultSTSUnavailable    result = "sts_unavailable"
)

// decisionError is a refusal that knows its gRPC code. It is made where the
// decision is taken and turned into a status only at the gRPC edge.
type decisionError struct {
	code   codes.Code
	reason pb.Reason
	result result
	err    error
}

func (e *decisionError) Error() string { return e.err.Error() }
func (e *decisionError) Unwrap() error { return e.err }

var resultCodes = map[result]codes.Code{
	resultBadRequest:        codes.InvalidArgument,
	resultNotSynced:         codes.Unavailable,
	resultPodIndexStale:     codes.Unavailable,
	resultNamespaceStale:    codes.Unavailable,
	resultPodUnknown:        codes.NotFound,
	resultNoRole:            codes.NotFound,
	resultStaticPod:         codes.PermissionDenied,
	resultIPConflict:        codes.FailedPrecondition,
	resultWrongNode:         codes.PermissionDenied,
	resultInvalidAnnotation: codes.PermissionDenied,
	resultPolicyDenied:      codes.PermissionDenied,
	resultSTSDenied:         codes.PermissionDenied,
	resultSTSUnavailable:    codes.Unavailable,
}

func deny(r result, reason pb.Reason, err error) error {
	return &decisionError{code: resultCodes[r], reason: reason, result: r, err: err}
}

// toStatus converts an error into a gRPC status with an ErrorInfo, so the
// agent can tell "no role" (404) from "unknown pod" (503) though both are
// NotFound.
func toStatus(err error) error {
	var de *decisionError
	switch {
	case errors.As(err, &de):
		return refusal.Error(de.code, de.reason, de.err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
