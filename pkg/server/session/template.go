package session

import (
	"errors"
	"fmt"
	"strings"
	"text/template"

	"github.com/podiam/podiam/pkg/server/role"
)

// ErrTemplate is a template that failed to render for a pod. Templates are
// checked at start-up against the shortest and longest metadata Kubernetes
// allows, so this means a template that depends on values in ways the check
// could not see; the server answers with an internal error, not a denial,
// because the pod did nothing wrong.
var ErrTemplate = errors.New("session template failed")

// Fields are what a template may name: the pod's metadata and its role.
type Fields struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string
	// Role is the role's name, the last element of its ARN: the whole ARN
	// would spend most of the 64 characters on "arn:aws:iam::" and the
	// account.
	Role string
}

// Template renders a session name or source identity from Fields.
type Template struct {
	t *template.Template
}

// Samples that bound what Kubernetes allows: one-character names, and the
// longest names (DNS subdomains of 253 characters, a namespace of 63, a role
// name of 64). A UID is always 36 characters.
var (
	shortest = Fields{Namespace: "a", ServiceAccount: "a", PodName: "a",
		PodUID: "00000000-0000-0000-0000-000000000000", NodeName: "a", Role: "a"}
	longest = Fields{Namespace: strings.Repeat("n", 63), ServiceAccount: strings.Repeat("s", 253),
		PodName: strings.Repeat("p", 253), PodUID: "ffffffff-ffff-ffff-ffff-ffffffffffff",
		NodeName: strings.Repeat("o", 253), Role: strings.Repeat("r", 64)}
)

// ParseTemplate parses a text/template over Fields and checks that it can
// name sessions: it must render for the shortest and longest metadata, and
// for the shortest it must give 1 to 64 characters STS allows. A template
// that breaks those rules would break them for every pod (its own text has
// a character STS refuses, or it is too long whatever the pod), so it is
// refused here rather than turned into hashes for every pod. Longer
// metadata may still make a name too long; Render cuts it then.
func ParseTemplate(text string) (*Template, error) {
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("template is empty")
	}
	t, err := template.New("session").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	tpl := &Template{t: t}
	short, err := tpl.execute(shortest)
	if err != nil {
		return nil, err
	}
	if _, err := tpl.execute(longest); err != nil {
		return nil, err
	}
	switch {
	case short == "":
		return nil, fmt.Errorf("template %q renders nothing", text)
	case len(short) > MaxNameLen:
		return nil, fmt.Errorf("template %q renders %d characters even for one-character names (%q); STS allows %d",
			text, len(short), short, MaxNameLen)
	}
	for i := 0; i < len(short); i++ {
		if !role.NameChar(short[i]) {
			return nil, fmt.Errorf("template %q renders %q, and STS allows only letters, digits and _+=,.@- (not %q)",
				text, short, short[i])
		}
	}
	return tpl, nil
}

// Render renders the template for f and makes the result valid
// (Sanitize).
func (t *Template) Render(f Fields) (string, error) {
	s, err := t.execute(f)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	return Sanitize(s), nil
}

func (t *Template) execute(f Fields) (string, error) {
	var b strings.Builder
	if err := t.t.Execute(&b, f); err != nil {
		return "", err
	}
	return b.String(), nil
}
