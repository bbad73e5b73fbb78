// Package iampolicy writes the two IAM policy documents a role chain needs,
// for exact ARNs, so that users paste real policies instead of editing
// examples: the base role's permission policy, allowing sts:AssumeRole on
// the target roles and nothing else, and a target role's trust policy,
// trusting the base role alone (never "*"), with an sts:ExternalId
// condition when the target lives in another account and its owner gave
// one.
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
	Action    string     `json:"Action"`
	Resource  []string   `json:"Resource,omitempty"`
	// Condition maps an operator to keys and values, as IAM writes it.
	Condition map[string]map[string]string `json:"Condition,omitempty"`
}

// Principal names who a trust policy trusts: one role, never "*".
type Principal struct {
	AWS string `json:"AWS"`
}

// BasePermissions is the base role's permission policy: sts:AssumeRole on
// exactly the target roles.
func BasePermissions(c Config) Document {
	roles := slices.Clone(c.RoleARNs)
	slices.Sort(roles)
	roles = slices.Compact(roles)
	return Document{Version: Version, Statement: []Statement{{
		Sid:      "PodiamAssumePodRoles",
		Effect:   "Allow",
		Action:   "sts:AssumeRole",
		Resource: roles,
	}}}
}

// TargetTrust is a target role's trust policy: the base role may assume
// it, with the External ID when one is given.
func TargetTrust(c Config) Document {
	s := Statement{
		Sid:       "PodiamBaseRole",
		Effect:    "Allow",
		Principal: &Principal{AWS: c.BaseRoleARN},
		Action:    "sts:AssumeRole",
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
