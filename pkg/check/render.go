package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteJSON writes the report as one JSON document, for scripts.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for people: one line per hop (a target's
// session tags and notes on lines of their own), and one for the policy
// where the server decides it (between the base role and the target), each
// failure followed by STS's error and its likely cause, and the result
// last.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	line := func(name, status, text string) {
		b.WriteString(strings.TrimRight(fmt.Sprintf("%-8s %-8s %s", name, status, text), " "))
		b.WriteByte('\n')
	}
	policyDone := false
	for _, h := range r.Hops {
		if h.Hop == "target" {
			r.writePolicy(line)
			policyDone = true
		}
		status := "ok"
		switch {
		case h.Skipped:
			status = "skipped"
		case !h.OK:
			status = "FAILED"
		}
		line(string(h.Hop), status, h.describe())
		if len(h.Tags) > 0 {
			line("", "", h.tags())
		}
		if h.Note != "" && !h.Skipped {
			line("", "", h.Note)
		}
		if !h.OK {
			line("", "", "error: "+h.Error)
			if h.Cause != nil {
				line("", "", "likely cause ("+h.Cause.Code+"): "+h.Cause.Text)
			}
		}
	}
	if !policyDone && r.Policy != nil {
		r.writePolicy(line) // denied: no target hop follows
	}
	if r.Error != "" {
		line("error", "", r.Error)
	}
	line("result", r.Result, "")
	_, err := io.WriteString(w, b.String())
	return err
}

// writePolicy writes the policy line and its reasons, once.
func (r Report) writePolicy(line func(name, status, text string)) {
	p := r.Policy
	if p == nil {
		// Nothing was decided: say so, so that no one reads "assumed" as
		// "a pod would get it".
		line("policy", "skipped", "no --namespace or --pod: the namespace's permitted expression and External ID are not checked")
		return
	}
	status := "allowed"
	if !p.Allowed {
		status = "DENIED"
	}
	who := "namespace " + p.Namespace
	if p.Pod != "" {
		who = "pod " + p.Pod
	}
	if !p.NamespaceFound {
		who += " (namespace not found: decided as one without annotations, as the server does)"
	}
	line("policy", status, who+", role "+p.RoleARN+" (from "+p.RoleFrom+")")
	switch {
	case p.Permitted == nil:
		line("", "", "permitted: no iam.amazonaws.com/permitted annotation")
	case p.Expression == "":
		line("", "", fmt.Sprintf("permitted: %q does not allow it", *p.Permitted))
	default:
		match := "matches"
		if !p.Match {
			match = "does not match"
		}
		line("", "", fmt.Sprintf("permitted: %q, matched as %s: %s", *p.Permitted, p.Expression, match))
	}
	line("", "", "external ID (--external-id-from="+p.ExternalIDMode+"): "+p.ExternalIDWhy)
	if !p.Allowed {
		line("", "", "denied ("+p.Reason+"): "+p.Error+"; STS was not called for the role")
	}
}

// describe is a hop's line after its status.
func (h Hop) describe() string {
	var parts []string
	switch {
	case h.Skipped:
		return h.Note
	case h.RoleARN != "":
		parts = append(parts, h.RoleARN)
		if h.SessionName != "" {
			parts = append(parts, "session "+h.SessionName)
		}
		if h.SourceIdentity != "" {
			parts = append(parts, "source identity "+h.SourceIdentity)
		}
	}
	switch {
	case h.Identity != "" && h.RoleARN != "":
		parts = append(parts, "as "+h.Identity)
	case h.Identity != "":
		parts = append(parts, h.Identity)
	}
	if h.Hop == "target" {
		if h.ExternalIDSet {
			parts = append(parts, "External ID sent")
		} else {
			parts = append(parts, "no External ID")
		}
	}
	if h.Expiration != nil {
		parts = append(parts, "expires "+h.Expiration.Format(time.RFC3339))
	}
	parts = append(parts, fmt.Sprintf("%dms", h.DurationMS))
	return strings.Join(parts, ", ")
}

// tags is the line listing the session tags a hop sent, quoted because a
// value may hold spaces and commas.
func (h Hop) tags() string {
	parts := make([]string, 0, len(h.Tags))
	for _, t := range h.Tags {
		parts = append(parts, fmt.Sprintf("%s=%q", t.Key, t.Value))
	}
	kind := "session tags"
	if h.TransitiveTags {
		kind = "transitive session tags"
	}
	return kind + ": " + strings.Join(parts, ", ")
}
