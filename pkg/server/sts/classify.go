package sts

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/smithy-go"

	"github.com/podiam/podiam/pkg/creds"
)

// Error codes STS (and the SDK's credential chain) returns for requests that a
// retry will not fix. Denials are cached briefly by the server, so a code is
// listed here only when retrying soon is pointless.
func deniedCode(code string) bool {
	switch code {
	case "AccessDenied", "AccessDeniedException",
		"ValidationError", "ValidationException",
		"MalformedPolicyDocument", "MalformedPolicyDocumentException",
		"PackedPolicyTooLarge", "PackedPolicyTooLargeException",
		"RegionDisabledException",
		"InvalidClientTokenId", "UnrecognizedClientException",
		"ExpiredToken", "ExpiredTokenException",
		"InvalidParameterValue", "InvalidParameterCombination", "MissingParameter",
		"SignatureDoesNotMatch", "IncompleteSignature",
		"InvalidAction", "OptInRequired", "InvalidIdentityToken":
		return true
	}
	return false
}

// Error codes that mean "try again later".
func unavailableCode(code string) bool {
	switch code {
	case "Throttling", "ThrottlingException", "ThrottledException",
		"RequestLimitExceeded", "RequestThrottled", "RequestThrottledException",
		"TooManyRequestsException", "SlowDown", "PriorRequestNotComplete",
		"ServiceUnavailable", "InternalFailure", "InternalError", "InternalServerError",
		"IDPCommunicationError", "RequestTimeout", "RequestTimeoutException":
		return true
	}
	return false
}

// httpStatusError is what smithyhttp.ResponseError and awshttp.ResponseError
// have in common.
type httpStatusError interface {
	HTTPStatusCode() int
}

// Classify wraps err in creds.ErrDenied or creds.ErrUnavailable, keeping
// its text and its chain for errors.As. Anything unrecognised counts as
// unavailable: it is not cached as a denial, and a pod still gets nothing.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, creds.ErrDenied) || errors.Is(err, creds.ErrUnavailable) {
		return err
	}
	if denied(err) {
		return fmt.Errorf("%w: %w", creds.ErrDenied, err)
	}
	return fmt.Errorf("%w: %w", creds.ErrUnavailable, err)
}

func denied(err error) bool {
	// Timeouts and cancellations first: a deadline hit while reading a 4xx
	// body is still a timeout.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		switch {
		case deniedCode(code):
			return true
		case unavailableCode(code):
			return false
		}
	}
	var statusErr httpStatusError
	if errors.As(err, &statusErr) {
		status := statusErr.HTTPStatusCode()
		// 4xx other than throttling and timeouts: the request itself is wrong.
		return status >= 400 && status < 500 &&
			status != http.StatusTooManyRequests && status != http.StatusRequestTimeout
	}
	// The SDK validates required fields before sending (e.g. an empty role
	// ARN or session name); sending it again will not help.
	var paramsErr smithy.InvalidParamsError
	var paramsErrPtr *smithy.InvalidParamsError
	if errors.As(err, &paramsErr) || errors.As(err, &paramsErrPtr) {
		return true
	}
	return false
}
