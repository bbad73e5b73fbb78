// Package session decides what the server tells STS about a pod besides its
// role: the session name, the SourceIdentity and the session tags, from
// templates and tag lists the operator sets over pod metadata; and, where
// the operator turns it on, the role itself from the pod's ServiceAccount.
// They are what CloudTrail records and what IAM policies can condition on,
// so a pod cannot choose them, except KIAM's iam.amazonaws.com/session-name
// annotation, which keeps its meaning while no name template is set.
//
// Everything it adds to a creds.Key is part of the credential cache key:
// pods that agree on all of it share one STS session, so the operator's
// choice of template and tags is also the choice of how many STS calls the
// server makes.
package session

import (
	"errors"
	"fmt"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/role"
)

// Config mirrors the server's flags; errors name them.
type Config struct {
	// DefaultSession is --session, KIAM's session name suffix for pods
	// without an iam.amazonaws.com/session-name annotation.
	DefaultSession string
	// NameTemplate is --session-name-template; "" keeps KIAM's names
	// (kiam-<annotation or --session>).
	NameTemplate string
	// SourceIdentityTemplate is --source-identity-template; "" sets none.
	SourceIdentityTemplate string
	// PodTags is --session-tags: names from PodTags.
	PodTags []string
	// StaticTags is --static-session-tag: KEY=VALUE, the same for every pod.
	StaticTags []string
}

// Validate reports what is wrong with the configuration, naming the flags.
func (c Config) Validate() error {
	_, err := newNamer(c)
	return err
}

// namer adds session name, source identity and tags to a key.
type namer struct {
	name, source *Template // nil: not set
	podTags      []podTag
	static       []creds.Tag
}

func newNamer(cfg Config) (*namer, error) {
	var errs []error
	n := &namer{}
	var err error
	if cfg.NameTemplate != "" {
		if n.name, err = ParseTemplate(cfg.NameTemplate); err != nil {
			errs = append(errs, fmt.Errorf("--session-name-template: %w", err))
		}
	}
	if cfg.SourceIdentityTemplate != "" {
		if n.source, err = ParseTemplate(cfg.SourceIdentityTemplate); err != nil {
			errs = append(errs, fmt.Errorf("--source-identity-template: %w", err))
		}
	}
	if n.podTags, err = parsePodTags(cfg.PodTags); err != nil {
		errs = append(errs, fmt.Errorf("--session-tags: %w", err))
	}
	for _, s := range cfg.StaticTags {
		t, err := ParseStaticTag(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("--static-session-tag: %w", err))
			continue
		}
		n.static = append(n.static, t)
	}
	if err := checkTagSet(n.podTags, n.static); err != nil {
		errs = append(errs, fmt.Errorf("--session-tags and --static-session-tag: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return n, nil
}

// apply sets what the templates and tag lists say for the pod f on key,
// whose role, external ID and KIAM session name are resolved.
func (n *namer) apply(key creds.Key, f Fields) (creds.Key, error) {
	var err error
	if n.name != nil {
		if key.SessionName, err = n.name.Render(f); err != nil {
			return creds.Key{}, fmt.Errorf("session name: %w", err)
		}
	}
	if n.source != nil {
		if key.SourceIdentity, err = n.source.Render(f); err != nil {
			return creds.Key{}, fmt.Errorf("source identity: %w", err)
		}
	}
	if len(n.podTags)+len(n.static) > 0 {
		tags := make([]creds.Tag, 0, len(n.podTags)+len(n.static))
		for _, t := range n.podTags {
			tag := creds.Tag{Key: t.key, Value: t.value(f)}
			// Kubernetes names are always valid tag values; this guards
			// against an API server that lets something else through.
			if err := ValidateTag(tag); err != nil {
				return creds.Key{}, fmt.Errorf("%w: %w", ErrTemplate, err)
			}
			tags = append(tags, tag)
		}
		key.Tags = creds.NewTags(append(tags, n.static...)...)
	}
	return key, nil
}

// RoleKeys resolves a pod's iam.amazonaws.com/ annotations into the key of
// its role (*role.Resolver).
type RoleKeys interface {
	Key(annotations map[string]string, defaultSession string) (creds.Key, error)
}

// ServiceAccountRoles returns the iam.amazonaws.com/role annotation of a
// ServiceAccount, "" when it has none or is not known.
type ServiceAccountRoles interface {
	Role(namespace, name string) string
}

// Deps are what Keys reads besides the pod.
type Deps struct {
	Roles RoleKeys
	// ServiceAccounts, when set, gives pods without a role annotation of
	// their own the role of their ServiceAccount. nil: only pods' own
	// annotations count, as in KIAM.
	ServiceAccounts ServiceAccountRoles
}

// Keys turns a pod into the key of the STS session it may use. It is safe
// for concurrent use.
type Keys struct {
	namer          *namer
	roles          RoleKeys
	sa             ServiceAccountRoles
	defaultSession string
}

// New checks cfg and builds Keys.
func New(cfg Config, deps Deps) (*Keys, error) {
	if deps.Roles == nil {
		return nil, errors.New("session: Roles is required")
	}
	n, err := newNamer(cfg)
	if err != nil {
		return nil, err
	}
	return &Keys{namer: n, roles: deps.Roles, sa: deps.ServiceAccounts, defaultSession: cfg.DefaultSession}, nil
}

// Key returns the pod's key. A pod's own role annotation wins; a pod
// without one (absent or empty, which KIAM read alike) takes its
// ServiceAccount's when ServiceAccount roles are on. Only the role comes
// from the account: External ID and session name stay the pod's. The
// errors are role's (role.ErrNoRole when neither names a role) or
// ErrTemplate.
func (k *Keys) Key(pod *podindex.Pod) (creds.Key, error) {
	ann := pod.GetAnnotations()
	if r := k.ServiceAccountRole(pod); r != "" {
		if ann == nil {
			ann = make(map[string]string, 1)
		}
		ann[role.AnnotationRole] = r
	}
	key, err := k.roles.Key(ann, k.defaultSession)
	if err != nil {
		return creds.Key{}, err
	}
	return k.namer.apply(key, Fields{
		Namespace:      pod.Namespace,
		ServiceAccount: pod.ServiceAccountName,
		PodName:        pod.Name,
		PodUID:         string(pod.UID),
		NodeName:       pod.NodeName,
		Role:           role.Name(key.RoleARN),
	})
}

// ServiceAccountRole is the role annotation the pod takes from its
// ServiceAccount: "" when the pod has a role annotation of its own, when
// ServiceAccount roles are off, or when the account has none.
func (k *Keys) ServiceAccountRole(pod *podindex.Pod) string {
	if k.sa == nil || pod.ServiceAccountName == "" {
		return ""
	}
	if own, _ := pod.Annotation(role.AnnotationRole); own != "" {
		return ""
	}
	return k.sa.Role(pod.Namespace, pod.ServiceAccountName)
}
