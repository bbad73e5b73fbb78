package sts

import (
	"errors"
	"net"
	"strings"

	"github.com/aws/smithy-go"
)

// Hop names a step of the chain the server's credentials take: its own
// identity, the base role (--assume-role-arn), a pod's target role.
type Hop string

const (
	HopCaller Hop = "caller"
	HopBase   Hop = "base"
	HopTarget Hop = "target"
)

// Cause is the likely reason an STS call failed, for people: a stable Code
// for scripts and a Text that says what to check.
type Cause struct {
	Code string `json:"code"`
	Text string `json:"text"`
}

// Cause codes.
const (
	CauseTrust        = "trust_policy" // the role does not trust the caller
	CauseTrustOrExtID = "trust_policy_or_external_id"
	// CauseSessionActions: the role is trusted, but not for sts:TagSession
	// or sts:SetSourceIdentity.
	CauseSessionActions = "trust_policy_session_actions"
	CauseDuration       = "session_duration"   // above what STS allows for the role
	CauseRoleMissing    = "role_missing"       // the role does not exist
	CauseEndpoint       = "region_or_endpoint" // STS not reachable or not enabled there
	CauseClockSkew      = "clock_skew"         // the request's time is off
	CauseCredentials    = "caller_credentials" // the caller's own keys are wrong or expired
	CauseNoCredentials  = "no_credentials"     // the SDK found none
	CauseThrottled      = "sts_unavailable"    // throttling or an STS failure: retry
	CauseInvalidRequest = "invalid_request"    // a parameter STS refused
	CauseUnknown        = "unknown"
)

// Sent is what a target AssumeRole carried besides the role and the
// session name. Each is something the target's trust policy must accept:
// an External ID its sts:ExternalId condition, a SourceIdentity the action
// sts:SetSourceIdentity, session tags the action sts:TagSession (and the
// base role's own policy must allow both actions on the target).
type Sent struct {
	ExternalID     bool
	SourceIdentity bool
	Tags           bool
}

// Diagnose names the likely cause of err, returned by the STS call of hop
// with sent. STS gives one AccessDenied for a trust policy that does not
// name the caller, an sts:ExternalId condition not met and a role that does
// not exist, so the text lists what to check rather than pretend to know
// which; only a missing sts:TagSession or sts:SetSourceIdentity does it
// name, in its message.
func Diagnose(err error, hop Hop, sent Sent) Cause {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code, msg := apiErr.ErrorCode(), apiErr.ErrorMessage()
		switch {
		case code == "AccessDenied" || code == "AccessDeniedException":
			return accessDenied(hop, sent, msg)
		case (code == "ValidationError" || code == "ValidationException") && durationMessage(msg):
			return Cause{CauseDuration, "the session duration is above what STS allows: at most 1h for a role assumed with role " +
				"credentials (role chaining, which --assume-role-arn is), and never above the role's MaxSessionDuration; lower --session-duration"}
		case code == "NoSuchEntity" || strings.Contains(msg, "cannot be found") || strings.Contains(msg, "does not exist"):
			return Cause{CauseRoleMissing, "the role does not exist: check the ARN (account, path, name) or the name against --role-base-arn"}
		case code == "RegionDisabledException":
			return Cause{CauseEndpoint, "STS is not activated in this region for the account: activate it (IAM, account settings) or choose another --region"}
		case code == "RequestExpired" || code == "RequestTimeTooSkewed" || code == "InvalidSignatureException" && skewMessage(msg) ||
			code == "SignatureDoesNotMatch" && skewMessage(msg):
			return Cause{CauseClockSkew, "the request was signed with a time too far from STS's: the clock of this machine is off; fix its time synchronisation (NTP)"}
		case code == "SignatureDoesNotMatch" || code == "InvalidClientTokenId" || code == "UnrecognizedClientException" || code == "IncompleteSignature":
			return Cause{CauseCredentials, "STS does not accept the caller's credentials: a wrong or revoked access key, a secret that does not match it, " +
				"keys of another partition, or a region the account has not enabled (--region)"}
		case code == "ExpiredToken" || code == "ExpiredTokenException":
			return Cause{CauseCredentials, "the caller's session token has expired: renew the process's credentials"}
		case unavailableCode(code):
			return Cause{CauseThrottled, "STS throttled the call or failed: retry; if it persists, check --sts-rate and the account's STS quotas"}
		case deniedCode(code):
			return Cause{CauseInvalidRequest, "STS refused a parameter of the call: " + msg}
		}
	}
	text := err.Error()
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr) || errors.As(err, &opErr) || strings.Contains(text, "no such host") || strings.Contains(text, "connection refused"):
		return Cause{CauseEndpoint, "STS could not be reached: check --region, AWS_REGION and AWS_ENDPOINT_URL_STS (a region STS is not in, " +
			"or a VPC endpoint or proxy not reachable from here)"}
	case strings.Contains(text, "failed to retrieve credentials") || strings.Contains(text, "no EC2 IMDS role found") ||
		strings.Contains(text, "failed to refresh cached credentials") || strings.Contains(text, "no valid providers") ||
		strings.Contains(text, "static credentials are empty"):
		return Cause{CauseNoCredentials, "the AWS SDK found no credentials for the process: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, " +
			"AWS_PROFILE, IRSA's AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, or run where instance metadata gives a role"}
	}
	return Cause{CauseUnknown, "see the error"}
}

func accessDenied(hop Hop, sent Sent, msg string) Cause {
	switch hop {
	case HopCaller:
		return Cause{CauseCredentials, "STS refused to say who the caller is: its credentials are restricted or wrong"}
	case HopBase:
		return Cause{CauseTrust, "the caller may not assume the base role (--assume-role-arn): the base role's trust policy must name " +
			"the caller's identity above, the caller needs sts:AssumeRole on the base role, and the role must exist"}
	}
	// STS names the action refused; for these two it is the only hint that
	// the role is trusted and only the tags or the source identity are not.
	for _, a := range []struct {
		action, why string
		other       bool   // the other of the two was sent as well
		otherText   string // and needs this
	}{
		{"sts:TagSession", "the server sends session tags (--session-tags, --static-session-tag)",
			sent.SourceIdentity, "a SourceIdentity was sent too, which needs sts:SetSourceIdentity likewise"},
		{"sts:SetSourceIdentity", "the server sets a SourceIdentity (--source-identity-template)",
			sent.Tags, "session tags were sent too, which need sts:TagSession likewise"},
	} {
		if !strings.Contains(msg, "perform: "+a.action+" ") {
			continue
		}
		text := a.why + ", and the target role's trust policy does not allow " + a.action +
			" for the base role: its Action must list " + a.action + " beside sts:AssumeRole, and the base role needs " +
			a.action + " on the target"
		if a.other {
			// STS names the first action refused only.
			text += "; " + a.otherText
		}
		return Cause{CauseSessionActions, text + " (podiam iam-policy with the same flags prints the policies that work)"}
	}
	text := "the target role does not trust the base role without an External ID: its trust policy must " +
		"name the base role as Principal, and if it has an sts:ExternalId condition, an External ID is required (set the namespace's " +
		"iam.amazonaws.com/external-id); the base role needs sts:AssumeRole on the target; and the role must exist (STS says " +
		"AccessDenied for all of these; podiam iam-policy prints the policies that work)"
	if sent.ExternalID {
		text = "the target role does not trust the base role with this External ID: its trust policy must " +
			"name the base role as Principal and its sts:ExternalId condition must equal the External ID sent; the base role needs " +
			"sts:AssumeRole on the target; and the role must exist (STS says AccessDenied for all of these; podiam iam-policy prints " +
			"the policies that work)"
	}
	var what, actions []string
	if sent.SourceIdentity {
		what, actions = append(what, "a SourceIdentity"), append(actions, "sts:SetSourceIdentity")
	}
	if sent.Tags {
		what, actions = append(what, "session tags"), append(actions, "sts:TagSession")
	}
	if len(actions) > 0 {
		// AWS names the refused action (above), but other STS endpoints
		// may say only sts:AssumeRole.
		list := strings.Join(actions, " and ")
		text += "; " + strings.Join(what, " and ") + " were sent, so the trust policy's Action must also list " + list +
			" and the base role's policy must allow " + list + " on the target"
	}
	return Cause{CauseTrustOrExtID, text}
}

// durationMessage matches STS's words for a DurationSeconds it refuses.
func durationMessage(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "durationseconds") || strings.Contains(m, "session limit") ||
		strings.Contains(m, "maxsessionduration") || strings.Contains(m, "role chaining")
}

// skewMessage matches the words of a signature refused for its time.
func skewMessage(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "signature expired") || strings.Contains(m, "not yet current") ||
		strings.Contains(m, "request has expired") || strings.Contains(m, "time too skewed")
}
