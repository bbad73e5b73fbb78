// Package iampolicy writes the two IAM policy documents a role chain needs,
// for exact ARNs, so that users paste real policies instead of editing
// examples: the base role's permission policy, allowing sts:AssumeRole on
// the target roles and nothing else, and a target role's trust policy,
// trusting the base role alone (never "*"), with an sts:ExternalId
// condition when the target lives in another account and its owner gave
// one. A server that sends session tags or a SourceIdentity needs
// sts:TagSession and sts:SetSourceIdentity in both documents too: STS
// refuses the whole AssumeRole without them.
package iampolicy

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/podiam/podiam/pkg/server/role"
)

// Version is the IAM policy language version every document states.
const Version = "2012-10-17"

// Config names the chain.
type Config struct {
	// BaseRoleARN is the server's --assume-role-arn.
	BaseRoleARN string
	// RoleARNs are the target roles pods assume.
	RoleARNs []string
	// ExternalID is the target roles' sts:ExternalId, "" for none.
	ExternalID string
	// TagSession and SetSourceIdentity say that the server sends session
	// tags and a SourceIdentity: both documents then allow
	// sts:TagSession and sts:SetSourceIdentity besides sts:AssumeRole.
	TagSession        bool
	SetSourceIdentity bool
}

// actions are what the base role does to the target roles.
func (c Config) actions() Actions {
	a := Actions{"sts:AssumeRole"}
	if c.SetSourceIdentity {
		a = append(a, "sts:SetSourceIdentity")
	}
	if c.TagSession {
		a = append(a, "sts:TagSession")
	}
	return a
}

// Validate accepts full IAM role ARNs of one partition (a role cannot
// trust a principal of another) and a valid External ID.
func (c Config) Validate() error {
	var errs []error
	partition := ""
	check := func(flag, arn string) {
		if !strings.HasPrefix(arn, "arn:") {
			errs = append(errs, fmt.Errorf("%s %q must be a full role ARN", flag, arn))
			return
		}
		if _, err := (&role.Resolver{}).Resolve(arn); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
			return
		}
		p := strings.SplitN(arn, ":", 3)[1]
		switch {
		case partition == "":
			partition = p
		case p != partition:
			errs = append(errs, fmt.Errorf("%s %q is in partition %s, the base role in %s: a role cannot trust another partition", flag, arn, p, partition))
		}
	}
	check("--base-role", c.BaseRoleARN)
	if len(c.RoleARNs) == 0 {
		errs = append(errs, errors.New("--role is required"))
	}
	for _, arn := range c.RoleARNs {
		check("--role", arn)
	}
	if err := role.ValidateExternalID(c.ExternalID); err != nil {
		errs = append(errs, fmt.Errorf("--external-id: %w", err))
	}
	return errors.Join(errs...)
}

// Document is an IAM policy document.
type Document struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement; fields are in the order IAM's console shows.
type Statement struct {
	Sid       string     `json:"Sid,omitempty"`
	Effect    string     `json:"Effect"`
	Principal *Principal `json:"Principal,omitempty"`
	Action    Actions    `json:"Action"`
	Resource  []string   `json:"Resource,omitempty"`
	// Condition maps an operator to keys and values, as IAM writes it.
	Condition map[string]map[string]string `json:"Condition,omitempty"`
}

// Actions is a statement's Action. IAM takes a string or a list; one
// action is written as a string, as IAM's console writes it and as
// policies podiam printed before it had more than one.
type Actions []string

// MarshalJSON implements json.Marshaler.
func (a Actions) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

// Principal names who a trust policy trusts: one role, never "*".
type Principal struct {
	AWS string `json:"AWS"`
}

// BasePermissions is the base role's permission policy: sts:AssumeRole
// (and sts:TagSession, sts:SetSourceIdentity when asked) on exactly the
// target roles.
func BasePermissions(c Config) Document {
	roles := slices.Clone(c.RoleARNs)
	slices.Sort(roles)
	roles = slices.Compact(roles)
	return Document{Version: Version, Statement: []Statement{{
		Sid:      "PodiamAssumePodRoles",
		Effect:   "Allow",
		Action:   c.actions(),
		Resource: roles,
	}}}
}

// TargetTrust is a target role's trust policy: the base role may assume
// it, with the External ID when one is given, and tag the session and set
// its source identity when asked.
func TargetTrust(c Config) Document {
	s := Statement{
		Sid:       "PodiamBaseRole",
		Effect:    "Allow",
		Principal: &Principal{AWS: c.BaseRoleARN},
		Action:    c.actions(),
	}
	if c.ExternalID != "" {
		s.Condition = map[string]map[string]string{"StringEquals": {"sts:ExternalId": c.ExternalID}}
	}
	return Document{Version: Version, Statement: []Statement{s}}
}

// JSON is d indented as IAM's console shows it, with a final newline.
func (d Document) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode policy: %w", err)
	}
	return append(b, '\n'), nil
}
