// Package refusal carries podiam's refusal reasons inside gRPC statuses. It
// is shared by the server, which sets them, and the agent, which maps them
// to HTTP statuses; it depends on gRPC only, so the agent stays free of
// client-go and the AWS SDK.
package refusal

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// Domain is the google.rpc.ErrorInfo domain of podiam's refusals.
const Domain = "podiam.io"

// Error returns a status error with code and, unless unspecified, reason.
func Error(code codes.Code, reason pb.Reason, msg string) error {
	st := status.New(code, msg)
	if reason != pb.Reason_REASON_UNSPECIFIED {
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: Domain}); err == nil {
			st = withInfo
		}
	}
	return st.Err()
}

// Reason extracts the podiam reason from a gRPC error.
func Reason(err error) pb.Reason {
	st, ok := status.FromError(err)
	if !ok {
		return pb.Reason_REASON_UNSPECIFIED
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return pb.Reason(pb.Reason_value[info.GetReason()])
		}
	}
	return pb.Reason_REASON_UNSPECIFIED
}
