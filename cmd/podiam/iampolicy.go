package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/podiam/podiam/pkg/iampolicy"
)

// iamPolicyConfig is `podiam iam-policy`: the chain to write policies for.
type iamPolicyConfig struct {
	iampolicy.Config
	// Document selects one document, printed alone for scripts; "" prints
	// both with a comment line naming each.
	Document string
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
}

// Validate refuses what would print a policy that cannot work.
func (c *iamPolicyConfig) Validate() error {
	err := c.Config.Validate()
	if c.Document != "" && c.Document != docBase && c.Document != docTrust {
		err = errors.Join(err, fmt.Errorf("--document %q is neither %s nor %s", c.Document, docBase, docTrust))
	}
	return err
}

// runIAMPolicy prints the base role's permission policy and the target
// roles' trust policy.
func runIAMPolicy(cfg iamPolicyConfig, stdout io.Writer) error {
	base, err := iampolicy.BasePermissions(cfg.Config).JSON()
	if err != nil {
		return err
	}
	trust, err := iampolicy.TargetTrust(cfg.Config).JSON()
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
