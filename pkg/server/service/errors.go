package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// Bounded metric values for the outcome of a credential request.
const (
	resultBadRequest        = "bad_request"
	resultNotSynced         = "not_synced"
	resultPodIndexStale     = "pod_index_stale"
	resultPodUnknown        = "pod_unknown"
	resultIPConflict        = "ip_conflict"
	resultWrongNode         = "wrong_node"
	resultNoRole            = "no_role"
	resultStaticPod         = "static_pod"
	resultInvalidAnnotation = "invalid_annotation"
	resultPolicyDenied      = "policy_denied"
	resultSTSDenied         = "sts_denied"
	resultSTSUnavailable    = "sts_unavailable"
)

// decisionError is a refusal that knows its gRPC code. It is made where the
// decision is taken and turned into a status only at the gRPC edge.
type decisionError struct {
	code   codes.Code
	reason pb.Reason
	result string
	err    error
}

func (e *decisionError) Error() string { return e.err.Error() }
func (e *decisionError) Unwrap() error { return e.err }

var resultCodes = map[string]codes.Code{
	resultBadRequest:        codes.InvalidArgument,
	resultNotSynced:         codes.Unavailable,
	resultPodIndexStale:     codes.Unavailable,
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

func deny(result string, reason pb.Reason, err error) error {
	return &decisionError{code: resultCodes[result], reason: reason, result: result, err: err}
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
