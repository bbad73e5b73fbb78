package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/podiam/podiam/pkg/iampolicy"
	"github.com/podiam/podiam/pkg/server/session"
)

// iamPolicyConfig is `podiam iam-policy`: the chain to write policies for.
type iamPolicyConfig struct {
	iampolicy.Config
	// Document selects one document, printed alone for scripts; "" prints
	// both with a comment line naming each.
	Document string
	// The server's --source-identity-template, --session-tags and
	// --static-session-tag, taken as they are rather than as yes-or-no
	// flags so that the server's own values can be pasted: what they say
	// matters only in that they make the server send a SourceIdentity or
	// tags, which the policies must then allow.
	SourceIdentityTemplate string
	SessionTags            []string
	StaticSessionTags      []string
}

// Documents podiam iam-policy prints.
const (
	docBase  = "base-permissions"
	docTrust = "trust"
)

func (c *iamPolicyConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.BaseRoleARN, "base-role", "", "the base role's ARN: the server's --assume-role-arn")
	fs.Func("role", "a target role's ARN; repeatable", func(v string) error {
		if strings.TrimSpace(v) == "" {
			return errors.New("must not be empty")
		}
		c.RoleARNs = append(c.RoleARNs, v)
		return nil
	})
	fs.StringVar(&c.ExternalID, "external-id", "", "the target roles' External ID (the namespace's iam.amazonaws.com/external-id); adds an sts:ExternalId condition")
	fs.StringVar(&c.Document, "document", "", "print only this document, as bare JSON: "+docBase+" or "+docTrust)
	registerSessionSendFlags(fs, &c.SourceIdentityTemplate, &c.SessionTags, &c.StaticSessionTags)
}

// policies is the chain with the actions the session flags need.
func (c *iamPolicyConfig) policies() iampolicy.Config {
	p := c.Config
	p.SetSourceIdentity = c.SourceIdentityTemplate != ""
	p.TagSession = len(c.SessionTags)+len(c.StaticSessionTags) > 0
	return p
}

// Validate refuses what would print a policy that cannot work.
func (c *iamPolicyConfig) Validate() error {
	err := c.Config.Validate()
	// The session flags are refused as the server refuses them: a policy
	// for a command line the server would not start with helps no one.
	sessions := session.Config{SourceIdentityTemplate: c.SourceIdentityTemplate, PodTags: c.SessionTags, StaticTags: c.StaticSessionTags}
	err = errors.Join(err, sessions.Validate())
	if c.Document != "" && c.Document != docBase && c.Document != docTrust {
		err = errors.Join(err, fmt.Errorf("--document %q is neither %s nor %s", c.Document, docBase, docTrust))
	}
	return err
}

// runIAMPolicy prints the base role's permission policy and the target
// roles' trust policy.
func runIAMPolicy(cfg iamPolicyConfig, stdout io.Writer) error {
	policies := cfg.policies()
	base, err := iampolicy.BasePermissions(policies).JSON()
	if err != nil {
		return err
	}
	trust, err := iampolicy.TargetTrust(policies).JSON()
	if err != nil {
		return err
	}
	var out []byte
	switch cfg.Document {
	case docBase:
		out = base
	case docTrust:
		out = trust
	default:
		out = fmt.Appendf(nil, "# Permission policy of the base role %s:\n%s\n# Trust policy of %s:\n%s",
			cfg.BaseRoleARN, base, strings.Join(cfg.RoleARNs, ", "), trust)
	}
	_, err = stdout.Write(out)
	return err
}
