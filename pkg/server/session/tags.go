package session

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/podiam/podiam/pkg/creds"
)

// PodTags maps the names --session-tags accepts to the session tag keys the
// EKS Pod Identity agent sets, so that ABAC policies written for EKS
// (aws:PrincipalTag/kubernetes-namespace and so on) work unchanged.
var PodTags = map[string]string{
	"namespace":      "kubernetes-namespace",
	"serviceaccount": "kubernetes-service-account",
	"pod":            "kubernetes-pod-name",
	"pod-uid":        "kubernetes-pod-uid",
}

// STS limits on session tags.
const (
	maxTags        = 50
	maxTagKeyLen   = 128
	maxTagValueLen = 256
)

// podTag is one tag whose value comes from the pod.
type podTag struct {
	key   string
	value func(Fields) string
}

func podTagValue(name string) func(Fields) string {
	switch name {
	case "namespace":
		return func(f Fields) string { return f.Namespace }
	case "serviceaccount":
		return func(f Fields) string { return f.ServiceAccount }
	case "pod":
		return func(f Fields) string { return f.PodName }
	case "pod-uid":
		return func(f Fields) string { return f.PodUID }
	}
	return nil
}

// parsePodTags checks --session-tags names. Repeating one is an error: it
// is a typo more likely than an intent.
func parsePodTags(names []string) ([]podTag, error) {
	var out []podTag
	seen := map[string]bool{}
	for _, n := range names {
		value := podTagValue(n)
		if value == nil {
			known := make([]string, 0, len(PodTags))
			for k := range PodTags {
				known = append(known, k)
			}
			slices.Sort(known)
			return nil, fmt.Errorf("unknown tag %q; known: %s", n, strings.Join(known, ", "))
		}
		if seen[n] {
			return nil, fmt.Errorf("tag %q named twice", n)
		}
		seen[n] = true
		out = append(out, podTag{key: PodTags[n], value: value})
	}
	return out, nil
}

// ParseStaticTag parses one --static-session-tag KEY=VALUE.
func ParseStaticTag(s string) (creds.Tag, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return creds.Tag{}, fmt.Errorf("%q is not KEY=VALUE", s)
	}
	t := creds.Tag{Key: k, Value: v}
	if err := ValidateTag(t); err != nil {
		return creds.Tag{}, err
	}
	return t, nil
}

// ValidateTag applies STS's rules for one session tag: a key of 1 to 128
// and a value of up to 256 letters, digits, spaces and _.:/=+-@, and no key
// in the aws: namespace.
func ValidateTag(t creds.Tag) error {
	switch n := len(t.Key); {
	case n == 0 || n > maxTagKeyLen:
		return fmt.Errorf("tag key %q: length %d outside 1..%d", t.Key, n, maxTagKeyLen)
	case strings.HasPrefix(strings.ToLower(t.Key), "aws:"):
		return fmt.Errorf("tag key %q: the aws: prefix is reserved", t.Key)
	case !tagText(t.Key):
		return fmt.Errorf("tag key %q: only letters, digits, spaces and _.:/=+-@ are allowed", t.Key)
	case len(t.Value) > maxTagValueLen:
		return fmt.Errorf("tag %q: value longer than %d", t.Key, maxTagValueLen)
	case !tagText(t.Value):
		return fmt.Errorf("tag %q: value %q: only letters, digits, spaces and _.:/=+-@ are allowed", t.Key, t.Value)
	}
	return nil
}

// tagText is STS's [\p{L}\p{Z}\p{N}_.:/=+\-@]*.
func tagText(s string) bool {
	for _, r := range s {
		if unicode.IsLetter(r) || unicode.In(r, unicode.Z) || unicode.IsNumber(r) || strings.ContainsRune("_.:/=+-@", r) {
			continue
		}
		return false
	}
	return true
}

// checkTagSet refuses keys that STS would see as duplicates (it compares
// them without case) and more tags than it accepts.
func checkTagSet(pod []podTag, static []creds.Tag) error {
	if n := len(pod) + len(static); n > maxTags {
		return fmt.Errorf("%d session tags; STS accepts at most %d", n, maxTags)
	}
	seen := map[string]bool{}
	var errs []error
	add := func(k string) {
		if l := strings.ToLower(k); seen[l] {
			errs = append(errs, fmt.Errorf("tag key %q set twice (STS compares tag keys without case)", k))
		} else {
			seen[l] = true
		}
	}
	for _, t := range pod {
		add(t.key)
	}
	for _, t := range static {
		add(t.Key)
	}
	return errors.Join(errs...)
}
