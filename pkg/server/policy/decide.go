package policy

import (
	"errors"
	"fmt"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/role"
)

// ExternalIDFrom says who chooses the External ID of the roles a pod
// assumes: the server's --external-id-from.
type ExternalIDFrom string

const (
	// ExternalIDFromPod takes the pod's iam.amazonaws.com/external-id, as
	// KIAM did, except where the pod's namespace has one: the namespace's
	// then applies to every pod in it, and a pod naming another is denied.
	ExternalIDFromPod ExternalIDFrom = "pod"
	// ExternalIDFromNamespace takes only the namespace's; a pod that names
	// one is denied, whatever it names, so that no manifest looks as if a
	// pod chose.
	ExternalIDFromNamespace ExternalIDFrom = "namespace"
)

// ParseExternalIDFrom reads a --external-id-from value.
func ParseExternalIDFrom(s string) (ExternalIDFrom, error) {
	switch v := ExternalIDFrom(s); v {
	case ExternalIDFromPod, ExternalIDFromNamespace:
		return v, nil
	}
	return "", fmt.Errorf("%q is neither %q nor %q", s, ExternalIDFromPod, ExternalIDFromNamespace)
}

// Source tells where the External ID of a decision came from.
type Source string

const (
	SourceNone      Source = "none" // no External ID is sent
	SourcePod       Source = "pod"
	SourceNamespace Source = "namespace"
)

// Denials of the External ID rules, returned (wrapped) by Decide. Like
// Check's errors they all mean "deny".
var (
	// ErrExternalIDMismatch: the pod names an External ID other than its
	// namespace's. Replacing it silently would hide a pod that tries to
	// act for another tenant.
	ErrExternalIDMismatch = errors.New("pod's " + role.AnnotationExternalID + " differs from its namespace's")
	// ErrExternalIDFromPod: with --external-id-from=namespace a pod names
	// an External ID at all.
	ErrExternalIDFromPod = errors.New("pods may not set " + role.AnnotationExternalID + ": this server takes External IDs from namespaces only")
	// ErrInvalidNamespaceExternalID: the namespace's annotation breaks
	// AWS's rules. Every role of the namespace is denied rather than
	// assumed without it.
	ErrInvalidNamespaceExternalID = errors.New("namespace's " + role.AnnotationExternalID + " is invalid")
)

// Namespace is what a decision reads of a namespace: its annotations.
// Build it with NamespaceOf. It is comparable: two values that are equal
// decide alike for every pod, which is how a change is detected.
type Namespace struct {
	Name string
	// Permitted is the iam.amazonaws.com/permitted expression;
	// HasPermitted says whether the annotation exists.
	Permitted    string
	HasPermitted bool
	// ExternalID is the iam.amazonaws.com/external-id annotation; empty
	// (absent or set to "") means the namespace has none, as for pods.
	ExternalID string
}

// NamespaceOf reads the annotations that decide a namespace's policy.
func NamespaceOf(name string, annotations map[string]string) Namespace {
	ns := Namespace{Name: name, ExternalID: annotations[role.AnnotationExternalID]}
	ns.Permitted, ns.HasPermitted = annotations[role.AnnotationPermitted]
	return ns
}

// Decision is what Decide allows.
type Decision struct {
	// Key is the session to assume: the pod's, with the External ID that
	// applies.
	Key creds.Key
	// ExternalIDFrom says where Key.ExternalID came from.
	ExternalIDFrom Source
}

// Decide is the one place that decides whether a pod may have a role and
// with which External ID: the gRPC service, the prefetch controller, the
// credential cache's "is this key in use" and podiam check all ask it. key
// is what the pod's annotations resolve to (role.Resolver.Key), so its
// ExternalID is the pod's own. Every error means deny.
//
// The namespace's permitted expression is checked first, then the External
// ID rules (ExternalIDFor).
func (c *Checker) Decide(ns Namespace, key creds.Key) (Decision, error) {
	if err := c.Check(ns.Permitted, ns.HasPermitted, key.RoleARN); err != nil {
		return Decision{}, err
	}
	id, src, err := ExternalIDFor(c.externalIDFrom, ns, key.ExternalID)
	if err != nil {
		return Decision{}, err
	}
	key.ExternalID = id
	return Decision{Key: key, ExternalIDFrom: src}, nil
}

// ExternalIDFor decides which External ID a pod whose annotation is podID
// ("" none) uses in namespace ns, or why it is denied:
//
//	mode       namespace's   pod's      result
//	pod        none          none       none
//	pod        none          P          P (pod)
//	pod        N             none / N   N (namespace)
//	pod        N             P != N     deny: ErrExternalIDMismatch
//	namespace  none / N      none       none / N (namespace)
//	namespace  any           P          deny: ErrExternalIDFromPod
//	any        invalid       any        deny: ErrInvalidNamespaceExternalID
//
// podID has already passed role.ValidateExternalID (role.Resolver.Key).
func ExternalIDFor(mode ExternalIDFrom, ns Namespace, podID string) (string, Source, error) {
	if err := role.ValidateExternalID(ns.ExternalID); err != nil {
		return "", "", fmt.Errorf("%w: namespace %q: %w", ErrInvalidNamespaceExternalID, ns.Name, err)
	}
	switch {
	case mode == ExternalIDFromNamespace && podID != "":
		return "", "", fmt.Errorf("%w (--external-id-from=namespace); remove the pod's annotation", ErrExternalIDFromPod)
	case ns.ExternalID != "" && podID != "" && podID != ns.ExternalID:
		// Neither value goes into the message: it ends up in an Event in
		// the tenant's namespace and in logs, and naming it helps no one
		// who may not know it already.
		return "", "", fmt.Errorf("%w: namespace %q sets one, and it applies to every role its pods assume", ErrExternalIDMismatch, ns.Name)
	case ns.ExternalID != "":
		return ns.ExternalID, SourceNamespace, nil
	case podID != "":
		return podID, SourcePod, nil
	}
	return "", SourceNone, nil
}

// Explanation is a decision with its reasons spelt out, for people
// (podiam check): what Decide answered, and the parts it was made of.
type Explanation struct {
	// RoleARN is the resolved role the decision is about.
	RoleARN string
	// Namespace is what was read of the namespace.
	Namespace Namespace
	// Expression is the permitted expression as it is matched: anchored
	// as ^(?:expr)$ in strict mode, as written otherwise; "" when the
	// namespace has none, or it is empty or invalid (PermitErr says).
	Expression string
	// Strict is false with --disable-strict-namespace-regexp.
	Strict bool
	// Permitted reports whether the expression allows RoleARN; PermitErr
	// says why not.
	Permitted bool
	PermitErr error
	// ExternalIDFrom is the server's --external-id-from; ExternalIDWhy
	// says which External ID applies and why, or why the pod's is denied.
	ExternalIDFrom ExternalIDFrom
	ExternalIDWhy  string
	// Decision and Err are exactly what Decide returns.
	Decision Decision
	Err      error
}

// Explain decides as Decide does and says why. The decision is Decide's
// own, not a second implementation of it.
func (c *Checker) Explain(ns Namespace, key creds.Key) Explanation {
	e := Explanation{RoleARN: key.RoleARN, Namespace: ns, Strict: c.strict, ExternalIDFrom: c.externalIDFrom}
	e.Decision, e.Err = c.Decide(ns, key)
	e.PermitErr = c.Check(ns.Permitted, ns.HasPermitted, key.RoleARN)
	e.Permitted = e.PermitErr == nil
	if ns.HasPermitted && ns.Permitted != "" {
		if entry := c.lookup(ns.Permitted); entry.err == nil {
			// What the anchoring means, in the form the README gives it;
			// the compiled form is the same match written by the parser.
			e.Expression = ns.Permitted
			if c.strict {
				e.Expression = "^(?:" + ns.Permitted + ")$"
			}
		}
	}
	id, src, err := ExternalIDFor(c.externalIDFrom, ns, key.ExternalID)
	e.ExternalIDWhy = externalIDWhy(c.externalIDFrom, ns, key.ExternalID, id, src, err)
	return e
}

// externalIDWhy puts ExternalIDFor's answer in words.
func externalIDWhy(mode ExternalIDFrom, ns Namespace, podID, id string, src Source, err error) string {
	switch {
	case errors.Is(err, ErrInvalidNamespaceExternalID):
		return "denied: " + err.Error()
	case errors.Is(err, ErrExternalIDFromPod):
		return "denied: the pod sets " + role.AnnotationExternalID + " and --external-id-from=namespace takes External IDs from namespaces only"
	case errors.Is(err, ErrExternalIDMismatch):
		return fmt.Sprintf("denied: the pod's %q differs from namespace %q's %q, which applies to every role its pods assume", podID, ns.Name, ns.ExternalID)
	case src == SourceNamespace && podID != "":
		return fmt.Sprintf("%q, namespace %q's %s; the pod names the same one", id, ns.Name, role.AnnotationExternalID)
	case src == SourceNamespace:
		return fmt.Sprintf("%q, namespace %q's %s, which applies to every role its pods assume", id, ns.Name, role.AnnotationExternalID)
	case src == SourcePod:
		return fmt.Sprintf("%q, the pod's own: namespace %q sets none and --external-id-from=%s", id, ns.Name, mode)
	}
	return fmt.Sprintf("none: neither namespace %q nor the pod sets one", ns.Name)
}
