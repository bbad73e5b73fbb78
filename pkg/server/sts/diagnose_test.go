package sts

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
)

func TestDiagnose(t *testing.T) {
	denied := stsError(403, "AccessDenied", "User: arn:aws:sts::111111111111:assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::222222222222:role/app")
	tests := []struct {
		name   string
		err    error
		hop    Hop
		sent   Sent
		code   string
		inText string
	}{
		{"target denied with an External ID", Classify(denied), HopTarget, Sent{ExternalID: true}, CauseTrustOrExtID, "sts:ExternalId condition must equal the External ID sent"},
		{"target denied without one", Classify(denied), HopTarget, Sent{}, CauseTrustOrExtID, "an External ID is required"},
		{"target denied with tags and a source identity", Classify(denied), HopTarget, Sent{SourceIdentity: true, Tags: true}, CauseTrustOrExtID,
			"a SourceIdentity and session tags were sent, so the trust policy's Action must also list sts:SetSourceIdentity and sts:TagSession"},
		{"trust lacks sts:TagSession", Classify(stsError(403, "AccessDenied", "User: arn:aws:sts::111111111111:assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:TagSession on resource: arn:aws:iam::222222222222:role/app")),
			HopTarget, Sent{Tags: true}, CauseSessionActions, "on the target (podiam iam-policy"},
		{"trust lacks sts:SetSourceIdentity", Classify(stsError(403, "AccessDenied", "User: arn:aws:sts::111111111111:assumed-role/podiam-base/kiam-kiam is not authorized to perform: sts:SetSourceIdentity on resource: arn:aws:iam::222222222222:role/app")),
			HopTarget, Sent{SourceIdentity: true, Tags: true}, CauseSessionActions, "on the target; session tags were sent too, which need sts:TagSession likewise"},
		{"base denied", fmt.Errorf("base credentials: %w", Classify(fmt.Errorf("failed to refresh cached credentials, %w", denied))), HopBase, Sent{}, CauseTrust, "base role's trust policy"},
		{"caller denied", denied, HopCaller, Sent{}, CauseCredentials, "restricted"},
		{"chained duration", stsError(400, "ValidationError", "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."), HopTarget, Sent{}, CauseDuration, "at most 1h"},
		{"max session duration", stsError(400, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."), HopTarget, Sent{}, CauseDuration, "MaxSessionDuration"},
		{"other validation", stsError(400, "ValidationError", "1 validation error detected: Value at 'roleSessionName' failed"), HopTarget, Sent{}, CauseInvalidRequest, "roleSessionName"},
		{"role missing", stsError(404, "NoSuchEntity", "The role with name app cannot be found."), HopTarget, Sent{}, CauseRoleMissing, "does not exist"},
		{"region disabled", stsError(403, "RegionDisabledException", "STS is not activated in this region for account:111111111111."), HopCaller, Sent{}, CauseEndpoint, "not activated"},
		{"clock skew", stsError(403, "SignatureDoesNotMatch", "Signature expired: 20240101T000000Z is now earlier than 20240101T000500Z (20240101T001000Z - 5 min.)"), HopCaller, Sent{}, CauseClockSkew, "clock"},
		{"request expired", stsError(400, "RequestExpired", "Request has expired."), HopTarget, Sent{}, CauseClockSkew, "clock"},
		{"wrong secret", stsError(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."), HopCaller, Sent{}, CauseCredentials, "secret"},
		{"unknown key", stsError(403, "InvalidClientTokenId", "The security token included in the request is invalid."), HopCaller, Sent{}, CauseCredentials, "access key"},
		{"expired token", stsError(400, "ExpiredToken", "The security token included in the request is expired"), HopCaller, Sent{}, CauseCredentials, "expired"},
		{"throttled", stsError(400, "Throttling", "Rate exceeded"), HopTarget, Sent{}, CauseThrottled, "retry"},
		{"no such host", Classify(&url.Error{Op: "Post", URL: "https://sts.eu-nowhere-1.amazonaws.com/", Err: &net.DNSError{Err: "no such host", Name: "sts.eu-nowhere-1.amazonaws.com", IsNotFound: true}}), HopCaller, Sent{}, CauseEndpoint, "--region"},
		{"connection refused", Classify(&url.Error{Op: "Post", URL: "http://127.0.0.1:1/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}), HopCaller, Sent{}, CauseEndpoint, "AWS_ENDPOINT_URL_STS"},
		{"no credentials", errors.New("get identity: get credentials: failed to refresh cached credentials, no EC2 IMDS role found, operation error ec2imds"), HopCaller, Sent{}, CauseNoCredentials, "AWS_ACCESS_KEY_ID"},
		{"something else", errors.New("boom"), HopTarget, Sent{}, CauseUnknown, "see the error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Diagnose(tt.err, tt.hop, tt.sent)
			if got.Code != tt.code || !strings.Contains(got.Text, tt.inText) {
				t.Fatalf("Diagnose = %+v, want code %q with %q", got, tt.code, tt.inText)
			}
			// Nothing sent but the role: the cause must not send people
			// to permissions the call did not need.
			if tt.sent == (Sent{}) && strings.Contains(got.Text, "sts:TagSession") {
				t.Fatalf("Diagnose = %+v names sts:TagSession for a call without tags", got)
			}
		})
	}
}
