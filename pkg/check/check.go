// Package check is `podiam check`: it verifies a role chain the way the
// server will use it, before any pod does (a platform's "verify and save"
// when a tenant registers a role in their account). It takes the server's
// own steps with the server's own packages: STS identity and base role
// through the server's STS client, the pod's session key (session.Keys:
// its role, from the pod or, with --service-account-roles, its
// ServiceAccount, and the session name, SourceIdentity and session tags
// the server's flags make of its metadata), and, for a namespace or pod,
// the namespace policy's decision (policy.Checker), whose reasons it
// spells out. A role the policy denies is never asked of STS, as the
// server never asks; a role that is asked of STS is asked with everything
// the server sends, since a trust policy may accept sts:AssumeRole alone
// and refuse the tags or the source identity.
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
	"github.com/podiam/podiam/pkg/server/session"
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

// Cluster reads the namespace, pod and ServiceAccount a check is about.
// Each returns an error for which apierrors.IsNotFound holds when the
// object is absent.
type Cluster interface {
	Namespace(ctx context.Context, name string) (*corev1.Namespace, error)
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
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
	// The server's flags: --assume-role-arn, --role-base-arn and
	// --role-base-arn-autodetect.
	BaseRoleARN           string
	RoleBaseARN           string
	RoleBaseARNAutodetect bool
	// Session is what the server's --session, --session-name-template,
	// --source-identity-template, --session-tags and --static-session-tag
	// say (server.Config.SessionConfig). The templates and tags are
	// checked when the check runs, by the same code that checks them when
	// the server starts.
	Session session.Config
	// TransitiveSessionTags is --transitive-session-tags. The STS client
	// sends the tags as transitive; the report only says so.
	TransitiveSessionTags bool
	// ServiceAccountRoles is --service-account-roles: a --pod without a
	// role annotation of its own takes its ServiceAccount's.
	ServiceAccountRoles bool
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
	if c.Session.DefaultSession == "" {
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

// Where a role came from (Report.RoleFrom).
const (
	RoleFromFlag           = "--role"
	RoleFromPod            = "pod annotation"
	RoleFromServiceAccount = "ServiceAccount"
)

// Results of a check, and its exit statuses in podiam check.
const (
	ResultAssumed = "assumed" // every hop succeeded
	ResultDenied  = "denied"  // the policy (or the pod's annotations) refuses the role
	ResultFailed  = "failed"  // a hop failed, or the cluster could not be read
)

// Report is what a check found, hop by hop. It is printed as text or JSON.
type Report struct {
	// RoleARN is the resolved target role, once known, and RoleFrom where
	// it came from (see PolicyReport.RoleFrom).
	RoleARN  string `json:"role_arn,omitempty"`
	RoleFrom string `json:"role_from,omitempty"`
	Hops     []Hop  `json:"hops"`
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
	// RoleARN, SessionName and ExternalIDSet describe an AssumeRole; a
	// target's also SourceIdentity and Tags, as sent (TransitiveTags: all
	// of them transitive).
	RoleARN        string      `json:"role_arn,omitempty"`
	SessionName    string      `json:"session_name,omitempty"`
	ExternalIDSet  bool        `json:"external_id_set,omitempty"`
	SourceIdentity string      `json:"source_identity,omitempty"`
	Tags           []creds.Tag `json:"session_tags,omitempty"`
	TransitiveTags bool        `json:"transitive_session_tags,omitempty"`
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
	// RoleFrom says where the role came from: RoleFromFlag,
	// RoleFromPod, or RoleFromServiceAccount and the account
	// ("ServiceAccount tenant/ledger").
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
	if !r.hop(caller, err, sts.Sent{}) {
		return r
	}

	// Hop 2: the base role, as the server's STS client assumes it.
	baseIdentity := caller.Identity
	if cfg.BaseRoleARN == "" {
		r.Hops = append(r.Hops, Hop{Hop: sts.HopBase, OK: true, Skipped: true,
			Note: "no --assume-role-arn: target roles are assumed with the caller's own credentials"})
	} else {
		base := Hop{Hop: sts.HopBase, RoleARN: cfg.BaseRoleARN, SessionName: role.SessionName("", cfg.Session.DefaultSession)}
		d, err := timed(func() error {
			if err := deps.STS.CheckBase(ctx); err != nil {
				return err
			}
			id, err := deps.STS.CallerARN(ctx)
			base.Identity = id
			return err
		})
		base.DurationMS = d.Milliseconds()
		if !r.hop(base, err, sts.Sent{}) {
			return r
		}
		baseIdentity = base.Identity
	}

	// The pod's session key, built as the server builds it.
	key, pod, note, ok := r.resolve(ctx, cfg, deps, baseIdentity)
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
	target := Hop{Hop: sts.HopTarget, RoleARN: key.RoleARN, SessionName: key.SessionName, ExternalIDSet: key.ExternalID != "",
		SourceIdentity: key.SourceIdentity, Tags: key.Tags.All(), Note: note}
	target.TransitiveTags = cfg.TransitiveSessionTags && len(target.Tags) > 0
	d, err = timed(func() error {
		c, err := deps.STS.Assume(ctx, key)
		if err == nil {
			exp := c.Expiration.UTC()
			target.Expiration = &exp
		}
		return err
	})
	target.DurationMS = d.Milliseconds()
	sent := sts.Sent{ExternalID: key.ExternalID != "", SourceIdentity: key.SourceIdentity != "", Tags: key.Tags != ""}
	if r.hop(target, err, sent) {
		r.Result = ResultAssumed
	}
	return r
}

// hop records h, failed with err when err is not nil; it reports whether
// the check goes on.
func (r *Report) hop(h Hop, err error, sent sts.Sent) bool {
	if err != nil {
		h.Error = err.Error()
		cause := sts.Diagnose(err, h.Hop, sent)
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
// a pod of --namespace annotated with --role and --external-id), before
// policy. note says what the key's metadata lacks for want of a real pod.
func (r *Report) resolve(ctx context.Context, cfg Config, deps Deps, baseIdentity string) (key creds.Key, pod *podindex.Pod, note string, ok bool) {
	baseARN := cfg.RoleBaseARN
	if cfg.RoleBaseARNAutodetect {
		var err error
		if baseARN, err = role.BaseARNFromCaller(baseIdentity); err != nil {
			r.Error = fmt.Sprintf("--role-base-arn-autodetect: %v", err)
			return creds.Key{}, nil, "", false
		}
	}
	resolver, err := role.NewResolver(baseARN)
	if err != nil {
		r.Error = err.Error()
		return creds.Key{}, nil, "", false
	}
	if cfg.Pod != "" {
		ns, name, _ := strings.Cut(cfg.Pod, "/")
		if deps.Cluster == nil {
			r.Error = "no cluster to read --pod from"
			return creds.Key{}, nil, "", false
		}
		apiPod, err := deps.Cluster.Pod(ctx, ns, name)
		if err != nil {
			r.Error = fmt.Sprintf("read pod %s: %v", cfg.Pod, err)
			return creds.Key{}, nil, "", false
		}
		// The server's own view of a pod: only its iam.amazonaws.com/
		// annotations, and the metadata the templates may name.
		pod = podindex.FromAPI(apiPod)
	} else {
		// No pod: one of --namespace (or of none) whose metadata the
		// templates and tags see as empty, which the report says.
		pod = &podindex.Pod{Namespace: cfg.Namespace}
		if sessionUsesPod(cfg.Session) {
			note = fmt.Sprintf("no --pod: the session name, source identity and tags were made from namespace %q and an empty "+
				"ServiceAccount, PodName, PodUID and NodeName; --pod makes them from a real pod's", cfg.Namespace)
		}
	}
	annotations := pod.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	if cfg.Role != "" {
		annotations[role.AnnotationRole] = cfg.Role
	}
	if cfg.ExternalID != "" {
		annotations[role.AnnotationExternalID] = cfg.ExternalID
	}
	pod.SetAnnotations(annotations)

	sessionDeps := session.Deps{Roles: resolver}
	if cfg.ServiceAccountRoles {
		sa, err := serviceAccountRole(ctx, deps.Cluster, pod)
		if err != nil {
			r.Error = err.Error()
			return creds.Key{}, nil, "", false
		}
		sessionDeps.ServiceAccounts = sa
	}
	keys, err := session.New(cfg.Session, sessionDeps)
	if err != nil {
		r.Error = err.Error()
		return creds.Key{}, nil, "", false
	}
	key, err = keys.Key(pod)
	switch {
	case errors.Is(err, session.ErrTemplate):
		// The server answers an internal error: the pod did nothing wrong.
		r.Error = err.Error()
		return creds.Key{}, nil, "", false
	case err != nil:
		// What the server answers such a pod: 404 for no role, 403 for an
		// invalid annotation; either way no credentials.
		r.Result, r.Error = ResultDenied, err.Error()
		return creds.Key{}, nil, "", false
	}
	r.RoleARN = key.RoleARN
	switch {
	case cfg.Role != "":
		r.RoleFrom = RoleFromFlag
	case keys.ServiceAccountRole(pod) != "":
		r.RoleFrom = RoleFromServiceAccount + " " + pod.Namespace + "/" + pod.ServiceAccountName
	default:
		r.RoleFrom = RoleFromPod
	}
	return key, pod, note, true
}

// sessionUsesPod reports whether the session flags make anything of pod
// metadata besides the namespace. It errs towards yes: a template naming
// only .Namespace or .Role still gets the note.
func sessionUsesPod(c session.Config) bool {
	return c.NameTemplate != "" || c.SourceIdentityTemplate != "" || len(c.PodTags) > 0
}

// serviceAccountRole reads the role annotation of pod's ServiceAccount, as
// the server's ServiceAccount informer has it, when the pod may take it:
// it has no role annotation of its own (--role gives it one). A
// ServiceAccount that is absent gives no role, as in the server; one that
// cannot be read fails the check rather than decide on nothing.
func serviceAccountRole(ctx context.Context, cluster Cluster, pod *podindex.Pod) (session.ServiceAccountRoles, error) {
	var found saRole
	if own, _ := pod.Annotation(role.AnnotationRole); own != "" || pod.ServiceAccountName == "" {
		return found, nil
	}
	if cluster == nil {
		return nil, errors.New("no cluster to read the pod's ServiceAccount from")
	}
	sa, err := cluster.ServiceAccount(ctx, pod.Namespace, pod.ServiceAccountName)
	switch {
	case apierrors.IsNotFound(err):
		return found, nil
	case err != nil:
		return nil, fmt.Errorf("read serviceaccount %s/%s: %w", pod.Namespace, pod.ServiceAccountName, err)
	}
	found.namespace, found.name, found.role = sa.Namespace, sa.Name, sa.Annotations[role.AnnotationRole]
	return found, nil
}

// saRole is session.ServiceAccountRoles for the one ServiceAccount a check
// read.
type saRole struct{ namespace, name, role string }

func (s saRole) Role(namespace, name string) string {
	if namespace != s.namespace || name != s.name {
		return ""
	}
	return s.role
}

// decide explains the namespace policy's decision for key and returns the
// key with the External ID that applies.
func (r *Report) decide(ctx context.Context, cfg Config, deps Deps, namespace string, pod *podindex.Pod, key creds.Key) (creds.Key, bool) {
	p := &PolicyReport{Namespace: namespace, NamespaceFound: true, Pod: cfg.Pod, RoleARN: key.RoleARN, RoleFrom: r.RoleFrom}
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
	switch {
	case pod.Mirror:
		p.Reason, p.Error = "static_pod", "static (mirror) pods never get a role"
	case pod.HostNetwork:
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
