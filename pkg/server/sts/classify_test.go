package sts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/podiam/podiam/pkg/creds"
)

// stsError builds an error shaped like the one the SDK returns for an STS
// error response: OperationError > awshttp.ResponseError > GenericAPIError.
func stsError(status int, code, msg string) error {
	return &smithy.OperationError{
		ServiceID:     "STS",
		OperationName: "AssumeRole",
		Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{
				Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
				Err:      &smithy.GenericAPIError{Code: code, Message: msg, Fault: smithy.FaultClient},
			},
			RequestID: "req-1",
		},
	}
}

// statusOnly is a response error without a parsed API error, e.g. an HTML
// page from a proxy.
func statusOnly(status int) error {
	return &smithy.OperationError{
		ServiceID:     "STS",
		OperationName: "AssumeRole",
		Err: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      errors.New("unexpected response"),
		},
	}
}

func TestClassify(t *testing.T) {
	netErr := &smithy.OperationError{
		ServiceID:     "STS",
		OperationName: "AssumeRole",
		Err: &smithyhttp.RequestSendError{Err: &url.Error{Op: "Post", URL: "https://sts.amazonaws.com/",
			Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}}},
	}
	tests := []struct {
		name string
		err  error
		want error // creds.ErrDenied or creds.ErrUnavailable
	}{
		{"access denied", stsError(403, "AccessDenied", "User is not authorized to perform: sts:AssumeRole"), creds.ErrDenied},
		{"validation error", stsError(400, "ValidationError", "1 validation error detected"), creds.ErrDenied},
		{"malformed policy", stsError(400, "MalformedPolicyDocument", "bad policy"), creds.ErrDenied},
		{"packed policy too large", stsError(400, "PackedPolicyTooLarge", "too large"), creds.ErrDenied},
		{"region disabled", stsError(403, "RegionDisabledException", "STS is not activated"), creds.ErrDenied},
		{"invalid client token", stsError(403, "InvalidClientTokenId", "The security token included in the request is invalid"), creds.ErrDenied},
		{"expired token", stsError(400, "ExpiredToken", "The security token included in the request is expired"), creds.ErrDenied},
		{"throttling", stsError(400, "Throttling", "Rate exceeded"), creds.ErrUnavailable},
		{"throttling exception", stsError(400, "ThrottlingException", "Rate exceeded"), creds.ErrUnavailable},
		{"request limit exceeded", stsError(503, "RequestLimitExceeded", "Request limit exceeded"), creds.ErrUnavailable},
		{"service unavailable code", stsError(503, "ServiceUnavailable", "try later"), creds.ErrUnavailable},
		{"internal failure", stsError(500, "InternalFailure", "oops"), creds.ErrUnavailable},
		{"unknown code with 5xx", stsError(502, "SomethingNew", "bad gateway"), creds.ErrUnavailable},
		{"unknown code with 4xx", stsError(400, "SomethingNew", "bad request"), creds.ErrDenied},
		{"bare 503", statusOnly(503), creds.ErrUnavailable},
		{"bare 500", statusOnly(500), creds.ErrUnavailable},
		{"bare 429", statusOnly(429), creds.ErrUnavailable},
		{"bare 408", statusOnly(408), creds.ErrUnavailable},
		{"bare 403", statusOnly(403), creds.ErrDenied},
		{"awshttp 503 directly", &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 503}}, Err: errors.New("x")}}, creds.ErrUnavailable},
		{"api error without status", &smithy.GenericAPIError{Code: "AccessDenied", Message: "no"}, creds.ErrDenied},
		{"connection refused", netErr, creds.ErrUnavailable},
		{"retries exhausted on throttling", &retry.MaxAttemptsError{Attempt: 5, Err: stsError(400, "Throttling", "Rate exceeded")}, creds.ErrUnavailable},
		{"retries exhausted on 5xx", &retry.MaxAttemptsError{Attempt: 5, Err: statusOnly(500)}, creds.ErrUnavailable},
		{"deadline", fmt.Errorf("operation error STS: AssumeRole: %w", context.DeadlineExceeded), creds.ErrUnavailable},
		{"deadline while reading 4xx", fmt.Errorf("%w: %w", context.DeadlineExceeded, statusOnly(400)), creds.ErrUnavailable},
		{"canceled", context.Canceled, creds.ErrUnavailable},
		{"net timeout", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("i/o timeout")}, creds.ErrUnavailable},
		{"missing parameter (client-side)", &smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRole",
			Err: func() error {
				e := smithy.InvalidParamsError{Context: "AssumeRoleInput"}
				e.Add(smithy.NewErrParamRequired("RoleSessionName"))
				return e
			}()}, creds.ErrDenied},
		{"unknown error", errors.New("something odd"), creds.ErrUnavailable},
		{"already denied", fmt.Errorf("%w: earlier", creds.ErrDenied), creds.ErrDenied},
		{"already unavailable", fmt.Errorf("wrapped: %w", fmt.Errorf("%w: earlier", creds.ErrUnavailable)), creds.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Classify(tt.err)
			if !errors.Is(got, tt.want) {
				t.Fatalf("Classify(%v) = %v, want it to wrap %v", tt.err, got, tt.want)
			}
			other := creds.ErrUnavailable
			if tt.want == creds.ErrUnavailable {
				other = creds.ErrDenied
			}
			if errors.Is(got, other) {
				t.Errorf("Classify(%v) = %v wraps both classes", tt.err, got)
			}
			if !strings.Contains(got.Error(), tt.err.Error()) {
				t.Errorf("Classify lost the original text: %q does not contain %q", got.Error(), tt.err.Error())
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("Classify(%v) broke the error chain", tt.err)
			}
		})
	}
}

func TestClassifyKeepsAPIError(t *testing.T) {
	err := Classify(stsError(403, "AccessDenied", "not authorized"))
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDenied" {
		t.Errorf("errors.As(APIError) on %v: got %v", err, apiErr)
	}
	var respErr *awshttp.ResponseError
	if !errors.As(err, &respErr) || respErr.ServiceRequestID() != "req-1" {
		t.Errorf("request ID lost from %v", err)
	}
}

func TestClassifyNil(t *testing.T) {
	if err := Classify(nil); err != nil {
		t.Errorf("Classify(nil) = %v", err)
	}
}
