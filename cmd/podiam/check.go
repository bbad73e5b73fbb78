package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/podiam/podiam/pkg/check"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/sts"
)

// checkConfig is `podiam check`: every flag of `podiam server`, so that it
// runs with the server's own command line (kubectl exec into a server pod,
// or locally with a kubeconfig and AWS credentials), and what to check.
// The server's TLS and listening flags are accepted and unused.
type checkConfig struct {
	serverConfig
	Role       string
	ExternalID string
	Namespace  string
	Pod        string
	Output     string
}

// errNotAssumed is a check that ran and reported a denial or a failure:
// exit status 1, the report being the message.
var errNotAssumed = errors.New("role not assumed")

// checkTimeout bounds a whole check: a few STS calls and three reads.
const checkTimeout = time.Minute

func (c *checkConfig) register(fs *flag.FlagSet) {
	c.serverConfig.register(fs)
	c.registerOwn(fs)
}

// registerOwn registers the flags check adds to the server's.
func (c *checkConfig) registerOwn(fs *flag.FlagSet) {
	fs.StringVar(&c.Role, "role", "", "role ARN, or name resolved as the server resolves annotations, to check; default: the --pod's iam.amazonaws.com/role, or with --service-account-roles its ServiceAccount's")
	fs.StringVar(&c.ExternalID, "external-id", "", "External ID a pod would name; default: the --pod's iam.amazonaws.com/external-id")
	fs.StringVar(&c.Namespace, "namespace", "", "explain the policy of this namespace for the role, as for a pod in it")
	fs.StringVar(&c.Pod, "pod", "", "namespace/name: explain the policy for this pod, with its annotations, and make the session name, source identity and tags from its metadata")
	fs.StringVar(&c.Output, "output", "text", "report format: text or json")
	fs.StringVar(&c.Output, "o", "text", "short for --output")
}

func (c *checkConfig) check() check.Config {
	return check.Config{
		Role: c.Role, ExternalID: c.ExternalID, Namespace: c.Namespace, Pod: c.Pod,
		BaseRoleARN: c.AssumeRoleARN, RoleBaseARN: c.RoleBaseARN, RoleBaseARNAutodetect: c.RoleBaseARNAutodetect,
		Session: c.SessionConfig(), TransitiveSessionTags: c.TransitiveSessionTags, ServiceAccountRoles: c.ServiceAccountRoles,
	}
}

// Validate refuses a check that cannot run, with the reason. Mutual TLS
// is not needed: a check talks to STS and the API server only.
func (c *checkConfig) Validate() error {
	errs := []error{c.Log.validate(), c.Config.Validate(), c.check().Validate()}
	if c.Output != "text" && c.Output != "json" {
		errs = append(errs, fmt.Errorf("--output %q is neither text nor json", c.Output))
	}
	if c.AssumeRoleARN != "" && c.SessionDuration > sts.MaxChainedSessionDuration {
		// The server refuses to start with it; STS would refuse the call.
		errs = append(errs, fmt.Errorf("--session-duration %s exceeds %s, STS's limit for roles chained from --assume-role-arn",
			c.SessionDuration, sts.MaxChainedSessionDuration))
	}
	return errors.Join(errs...)
}

// runCheck builds the server's STS client and policy, and a Kubernetes
// client when a namespace or pod is named (a pod's ServiceAccount is read
// through it too, with --service-account-roles), runs the check and
// writes its report. A check that did not end with the role assumed is
// errNotAssumed.
func runCheck(ctx context.Context, cfg checkConfig, stdout io.Writer, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	stsClient, err := sts.New(ctx, cfg.sts(), nil, log.With("component", "sts"))
	if err != nil {
		return fmt.Errorf("sts client: %w", err)
	}
	checker, err := policy.New(cfg.Config.Policy())
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	deps := check.Deps{STS: stsClient, Policy: checker}
	if cfg.Namespace != "" || cfg.Pod != "" {
		restCfg, err := kubeConfig(cfg.Kubeconfig, "podiam-check")
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		deps.Cluster = check.KubeCluster{Client: client}
	}
	report := check.Run(ctx, cfg.check(), deps)
	write := report.WriteText
	if cfg.Output == "json" {
		write = report.WriteJSON
	}
	if err := write(stdout); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if report.Result != check.ResultAssumed {
		return errNotAssumed
	}
	return nil
}
