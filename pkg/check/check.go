// Package check is `podiam check`: it verifies a role chain the way the
// server will use it, before any pod does (a platform's "verify and save"
// when a tenant registers a role in their account). It takes the server's
// own steps with the server's own packages: STS identity and base role
// through the server's STS client, role resolution (role), and, for a
// namespace or pod, the namespace policy's decision (policy.Checker), whose
// reasons it spells out. A role the policy denies is never asked of STS,
// as the server never asks.
//
// The report holds no secret: credentials obtained are used for their
// expiry only and dropped.
package check

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/sts"
)

// STS is what a check needs of the server's STS client (*sts.Assumer).
type STS interface {
	// SourceIdentity is the identity of the process's own credentials.
	SourceIdentity(ctx context.Context) (string, error)
	// CheckBase assumes the base role (when one is configured).
	CheckBase(ctx context.Context) error
	// CallerARN is the identity behind the base credentials.
	CallerARN(ctx context.Context) (string, error)
	Assume(ctx context.Context, key creds.Key) (creds.Credentials, error)
}

// Policy explains the namespace policy's decision (*policy.Checker).
type Policy interface {
	Explain(ns policy.Namespace, key creds.Key) policy.Explanation
}

// Cluster reads the namespace and pod a check is about. Both return an
// error for which apierrors.IsNotFound holds when the object is absent.
type Cluster interface {
	Namespace(ctx context.Context, name string) (*corev1.Namespace, error)
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// Config is what a check is asked, with the server's flags it uses.
type Config struct {
	// Role is --role: a role ARN or a name resolved as the server resolves
	// annotations; "" takes the pod's iam.amazonaws.com/role.
	Role string
	// ExternalID is --external-id: what a pod's annotation would say; ""
	// takes the pod's, if any.
	ExternalID string
	// Namespace (--namespace) and Pod (--pod, "namespace/name") select the
	// policy to explain; neither means no policy is checked.
	Namespace string
	Pod       string
	// The server's flags: --assume-role-arn, --role-base-arn,
	// --role-base-arn-autodetect and --session.
	BaseRoleARN           string
	RoleBaseARN           string
	RoleBaseARNAutodetect bool
	Session               string
}

// Validate refuses a check that cannot be run, naming the flags.
func (c Config) Validate() error {
	var errs []error
	if c.Role == "" && c.Pod == "" {
		errs = append(errs, errors.New("--role or --pod is required"))
	}
	if c.Pod != "" {
		ns, name, ok := strings.Cut(c.Pod, "/")
		switch {
		case !ok || ns == "" || name == "" || strings.Contains(name, "/"):
			errs = append(errs, fmt.Errorf("--pod %q must be namespace/name", c.Pod))
		case c.Namespace != "" && c.Namespace != ns:
			errs = append(errs, fmt.Errorf("--namespace %q differs from --pod's namespace %q", c.Namespace, ns))
		}
	}
	if err := role.ValidateExternalID(c.ExternalID); err != nil {
		errs = append(errs, fmt.Errorf("--external-id: %w", err))
	}
	if c.Session == "" {
		errs = append(errs, errors.New("--session must not be empty"))
	}
	return errors.Join(errs...)
}

// namespace is the namespace the policy is checked in, "" for none.
func (c Config) namespace() string {
	if ns, _, ok := strings.Cut(c.Pod, "/"); ok {
		return ns
	}
	return c.Namespace
}

// Deps are what a check calls. Cluster may be nil when the Config names no
// namespace or pod.
type Deps struct {
	STS     STS
	Policy  Policy
	Cluster Cluster
	// Now is the clock for durations; nil means time.Now.
	Now func() time.Time
}

// Results of a check, and its exit statuses in podiam check.
const (
	ResultAssumed = "assumed" // every hop succeeded
	ResultDenied  = "denied"  // the policy (or the pod's annotations) refuses the role
	ResultFailed  = "failed"  // a hop failed, or the cluster could not be read
)

// Report is what a check found, hop by hop. It is printed as text or JSON.
type Report struct {
	// RoleARN is the resolved target role, once known.
	RoleARN string `json:"role_arn,omitempty"`
	Hops    []Hop  `json:"hops"`
	// Policy is the namespace policy's decision, when a namespace or pod
	// was named.
	Policy *PolicyReport `json:"policy,omitempty"`
	Result string        `json:"result"`
	// Error says why a check without a failed hop failed or was denied
	// (cluster unreadable, pod without a role, invalid annotation).
	Error string `json:"error,omitempty"`
}

// Hop is one STS step.
type Hop struct {
	Hop sts.Hop `json:"hop"`
	OK  bool    `json:"ok"`
	// Skipped: the step does not apply (no base role).
	Skipped bool `json:"skipped,omitempty"`
	// Identity is who the step's credentials are, when STS said.
	Identity string `json:"identity,omitempty"`
	// RoleARN, SessionName and ExternalIDSet describe an AssumeRole.
	RoleARN       string `json:"role_arn,omitempty"`
	SessionName   string `json:"session_name,omitempty"`
	ExternalIDSet bool   `json:"external_id_set,omitempty"`
	// Expiration of the credentials a target AssumeRole returned.
	Expiration *time.Time `json:"expiration,omitempty"`
	DurationMS int64      `json:"duration_ms"`
	Error      string     `json:"error,omitempty"`
	Cause      *sts.Cause `json:"cause,omitempty"`
	Note       string     `json:"note,omitempty"`
}

// PolicyReport is policy.Explanation for people and scripts.
type PolicyReport struct {
	Namespace string `json:"namespace"`
	// NamespaceFound is false for a namespace the API server does not
	// have: the server decides it as one without annotations (deny).
	NamespaceFound bool   `json:"namespace_found"`
	Pod            string `json:"pod,omitempty"`
	RoleARN        string `json:"role_arn"`
	// RoleFrom says where the role came from: "--role" or "pod
	// annotation".
	RoleFrom string `json:"role_from"`
	// Permitted is the namespace's iam.amazonaws.com/permitted as written
	// (nil: no annotation); Expression is how it is matched.
	Permitted  *string `json:"permitted"`
	Expression string  `json:"expression,omitempty"`
	Match      bool    `json:"match"`
	// ExternalIDMode is --external-id-from; ExternalID is the one that
	// applies ("" none) and ExternalIDWhy says why, or why it is denied.
	ExternalIDMode string `json:"external_id_from"`
	ExternalID     string `json:"external_id,omitempty"`
	ExternalIDWhy  string `json:"external_id_why"`
	Allowed        bool   `json:"allowed"`
	// Reason is the server's denial reason label, Error its message.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Run checks the chain and reports. It never returns credentials; the
// report's Result says how it ended.
func Run(ctx context.Context, cfg Config, deps Deps) Report {
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	r := Report{Result: ResultFailed}
	timed := func(f func() error) (time.Duration, error) {
		start := now()
		err := f()
		return now().Sub(start), err
	}

	// Hop 1: who the process is.
	caller := Hop{Hop: sts.HopCaller}
	d, err := timed(func() (err error) { caller.Identity, err = deps.STS.SourceIdentity(ctx); return err })
	caller.DurationMS = d.Milliseconds()
	if !r.hop(caller, err, false) {
		return r
	}

	// Hop 2: the base role, as the server's STS client assumes it.
	baseIdentity := caller.Identity
	if cfg.BaseRoleARN == "" {
		r.Hops = append(r.Hops, Hop{Hop: sts.HopBase, OK: true, Skipped: true,
			Note: "no --assume-role-arn: target roles are assumed with the caller's own credentials"})
	} else {
		base := Hop{Hop: sts.HopBase, RoleARN: cfg.BaseRoleARN, SessionName: role.SessionName("", cfg.Session)}
		d, err := timed(func() error {
			if err := deps.STS.CheckBase(ctx); err != nil {
				return err
			}
			id, err := deps.STS.CallerARN(ctx)
			base.Identity = id
			return err
		})
		base.DurationMS = d.Milliseconds()
		if !r.hop(base, err, false) {
			return r
		}
		baseIdentity = base.Identity
	}

	// The role, resolved as the server resolves annotations.
	key, pod, ok := r.resolve(ctx, cfg, deps, baseIdentity)
	if !ok {
		return r
	}

	// The policy: a denied role is not asked of STS.
	if ns := cfg.namespace(); ns != "" {
		decided, ok := r.decide(ctx, cfg, deps, ns, pod, key)
		if !ok {
			return r
		}
		key = decided
	}

	// Hop 3: the target role.
	target := Hop{Hop: sts.HopTarget, RoleARN: key.RoleARN, SessionName: key.SessionName, ExternalIDSet: key.ExternalID != ""}
	d, err = timed(func() error {
		c, err := deps.STS.Assume(ctx, key)
		if err == nil {
			exp := c.Expiration.UTC()
			target.Expiration = &exp
		}
		return err
	})
	target.DurationMS = d.Milliseconds()
	if r.hop(target, err, key.ExternalID != "") {
		r.Result = ResultAssumed
	}
	return r
}

// hop records h, failed with err when err is not nil; it reports whether
// the check goes on.
func (r *Report) hop(h Hop, err error, externalIDSent bool) bool {
	if err != nil {
		h.Error = err.Error()
		cause := sts.Diagnose(err, h.Hop, externalIDSent)
		h.Cause = &cause
		r.Hops = append(r.Hops, h)
		r.Result = ResultFailed
		return false
	}
	h.OK = true
	r.Hops = append(r.Hops, h)
	return true
}

// resolve builds the session key the server would use for the pod (or for
// a pod annotated with --role and --external-id), before policy.
func (r *Report) resolve(ctx context.Context, cfg Config, deps Deps, baseIdentity string) (creds.Key, *corev1.Pod, bool) {
	baseARN := cfg.RoleBaseARN
	if cfg.RoleBaseARNAutodetect {
		var err error
		if baseARN, err = role.BaseARNFromCaller(baseIdentity); err != nil {
			r.Error = fmt.Sprintf("--role-base-arn-autodetect: %v", err)
			return creds.Key{}, nil, false
		}
	}
	resolver, err := role.NewResolver(baseARN)
	if err != nil {
		r.Error = err.Error()
		return creds.Key{}, nil, false
	}
	annotations := map[string]string{}
	var pod *corev1.Pod
	if cfg.Pod != "" {
		ns, name, _ := strings.Cut(cfg.Pod, "/")
		if deps.Cluster == nil {
			r.Error = "no cluster to read --pod from"
			return creds.Key{}, nil, false
		}
		pod, err = deps.Cluster.Pod(ctx, ns, name)
		if err != nil {
			r.Error = fmt.Sprintf("read pod %s: %v", cfg.Pod, err)
			return creds.Key{}, nil, false
		}
		for k, v := range pod.Annotations {
			if strings.HasPrefix(k, role.AnnotationPrefix) {
				annotations[k] = v
			}
		}
	}
	if cfg.Role != "" {
		annotations[role.AnnotationRole] = cfg.Role
	}
	if cfg.ExternalID != "" {
		annotations[role.AnnotationExternalID] = cfg.ExternalID
	}
	key, err := resolver.Key(annotations, cfg.Session)
	if err != nil {
		// What the server answers such a pod: 404 for no role, 403 for an
		// invalid annotation; either way no credentials.
		r.Result, r.Error = ResultDenied, err.Error()
		return creds.Key{}, nil, false
	}
	r.RoleARN = key.RoleARN
	return key, pod, true
}

// decide explains the namespace policy's decision for key and returns the
// key with the External ID that applies.
func (r *Report) decide(ctx context.Context, cfg Config, deps Deps, namespace string, pod *corev1.Pod, key creds.Key) (creds.Key, bool) {
	p := &PolicyReport{Namespace: namespace, NamespaceFound: true, Pod: cfg.Pod, RoleARN: key.RoleARN, RoleFrom: "--role"}
	if cfg.Role == "" {
		p.RoleFrom = "pod annotation"
	}
	if deps.Cluster == nil {
		r.Error = "no cluster to read --namespace from"
		return creds.Key{}, false
	}
	ns, err := deps.Cluster.Namespace(ctx, namespace)
	switch {
	case apierrors.IsNotFound(err):
		// As the server: a namespace it does not know has no annotations.
		p.NamespaceFound, ns = false, nil
	case err != nil:
		r.Error = fmt.Sprintf("read namespace %s: %v", namespace, err)
		return creds.Key{}, false
	}
	var annotations map[string]string
	if ns != nil {
		annotations = ns.Annotations
	}
	r.Policy = p
	e := deps.Policy.Explain(policy.NamespaceOf(namespace, annotations), key)
	if e.Namespace.HasPermitted {
		permitted := e.Namespace.Permitted
		p.Permitted = &permitted
	}
	p.Expression, p.Match = e.Expression, e.Permitted
	p.ExternalIDMode, p.ExternalIDWhy = string(e.ExternalIDFrom), e.ExternalIDWhy
	// The service refuses static and hostNetwork pods before it asks the
	// policy; the reasons are its denial labels.
	var slim *podindex.Pod
	if pod != nil {
		slim = podindex.FromAPI(pod)
	}
	switch {
	case slim != nil && slim.Mirror:
		p.Reason, p.Error = "static_pod", "static (mirror) pods never get a role"
	case slim != nil && slim.HostNetwork:
		p.Reason, p.Error = "host_network", "hostNetwork pods share the node's address and never get a role"
	case e.Err != nil:
		p.Reason, p.Error = policy.Reason(e.Err), e.Err.Error()
	}
	if p.Error != "" {
		r.Result = ResultDenied
		return creds.Key{}, false
	}
	p.Allowed = true
	p.ExternalID = e.Decision.Key.ExternalID
	return e.Decision.Key, true
}
