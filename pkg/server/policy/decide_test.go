package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/role"
)

func TestExternalIDFor(t *testing.T) {
	const (
		nsID  = "tenant-42"
		podID = "tenant-7"
	)
	ns := func(id string) Namespace { return Namespace{Name: "team", ExternalID: id} }
	tests := []struct {
		name    string
		mode    ExternalIDFrom
		ns      Namespace
		pod     string
		want    string
		source  Source
		wantErr error
	}{
		{name: "pod mode, neither", mode: ExternalIDFromPod, ns: ns(""), want: "", source: SourceNone},
		{name: "pod mode, pod only (KIAM)", mode: ExternalIDFromPod, ns: ns(""), pod: podID, want: podID, source: SourcePod},
		{name: "pod mode, namespace only", mode: ExternalIDFromPod, ns: ns(nsID), want: nsID, source: SourceNamespace},
		{name: "pod mode, both the same", mode: ExternalIDFromPod, ns: ns(nsID), pod: nsID, want: nsID, source: SourceNamespace},
		{name: "pod mode, pod differs", mode: ExternalIDFromPod, ns: ns(nsID), pod: podID, wantErr: ErrExternalIDMismatch},
		{name: "pod mode, pod differs only in case", mode: ExternalIDFromPod, ns: ns(nsID), pod: strings.ToUpper(nsID), wantErr: ErrExternalIDMismatch},
		{name: "pod mode, pod is a prefix", mode: ExternalIDFromPod, ns: ns(nsID), pod: nsID[:len(nsID)-1], wantErr: ErrExternalIDMismatch},
		{name: "namespace mode, neither", mode: ExternalIDFromNamespace, ns: ns(""), want: "", source: SourceNone},
		{name: "namespace mode, namespace only", mode: ExternalIDFromNamespace, ns: ns(nsID), want: nsID, source: SourceNamespace},
		{name: "namespace mode, pod sets the same", mode: ExternalIDFromNamespace, ns: ns(nsID), pod: nsID, wantErr: ErrExternalIDFromPod},
		{name: "namespace mode, pod sets another", mode: ExternalIDFromNamespace, ns: ns(nsID), pod: podID, wantErr: ErrExternalIDFromPod},
		{name: "namespace mode, pod sets one, namespace none", mode: ExternalIDFromNamespace, ns: ns(""), pod: podID, wantErr: ErrExternalIDFromPod},
		{name: "invalid namespace value, pod none", mode: ExternalIDFromPod, ns: ns("x"), wantErr: ErrInvalidNamespaceExternalID},
		{name: "invalid namespace value, pod the same", mode: ExternalIDFromPod, ns: ns("bad id"), pod: "bad id", wantErr: ErrInvalidNamespaceExternalID},
		{name: "invalid namespace value, namespace mode", mode: ExternalIDFromNamespace, ns: ns(strings.Repeat("a", 1225)), wantErr: ErrInvalidNamespaceExternalID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, src, err := ExternalIDFor(tt.mode, tt.ns, tt.pod)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || got != "" || src != "" {
					t.Fatalf("ExternalIDFor = %q, %q, %v; want a denial %v", got, src, err, tt.wantErr)
				}
				// Events and logs carry the message: a mismatch names no
				// value (an invalid one is quoted, so that it can be fixed).
				if tt.wantErr == ErrInvalidNamespaceExternalID {
					return
				}
				if tt.pod != "" && strings.Contains(err.Error(), tt.pod) || tt.ns.ExternalID != "" && strings.Contains(err.Error(), tt.ns.ExternalID) {
					t.Fatalf("denial %q names an External ID", err)
				}
				return
			}
			if err != nil || got != tt.want || src != tt.source {
				t.Fatalf("ExternalIDFor = %q, %q, %v; want %q from %q", got, src, err, tt.want, tt.source)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	const nsID = "tenant-42"
	key := creds.Key{RoleARN: roleA, SessionName: "kiam-kiam"}
	withID := func(k creds.Key, id string) creds.Key { k.ExternalID = id; return k }
	open := func(id string) Namespace {
		return NamespaceOf("team", map[string]string{role.AnnotationPermitted: ".*", role.AnnotationExternalID: id})
	}
	tests := []struct {
		name    string
		mode    ExternalIDFrom
		ns      Namespace
		key     creds.Key
		want    Decision
		wantErr error
	}{
		{name: "no annotation beats every External ID rule", ns: NamespaceOf("team", map[string]string{role.AnnotationExternalID: nsID}),
			key: withID(key, "other"), wantErr: ErrNoAnnotation},
		{name: "not permitted comes before a mismatch", ns: NamespaceOf("team", map[string]string{role.AnnotationPermitted: roleB, role.AnnotationExternalID: nsID}),
			key: withID(key, "other"), wantErr: ErrNotPermitted},
		{name: "namespace's applies", ns: open(nsID), key: key,
			want: Decision{Key: withID(key, nsID), ExternalIDFrom: SourceNamespace}},
		{name: "pod's same one", ns: open(nsID), key: withID(key, nsID),
			want: Decision{Key: withID(key, nsID), ExternalIDFrom: SourceNamespace}},
		{name: "pod's other one", ns: open(nsID), key: withID(key, "other"), wantErr: ErrExternalIDMismatch},
		{name: "pod's own without a namespace one", ns: open(""), key: withID(key, "own"),
			want: Decision{Key: withID(key, "own"), ExternalIDFrom: SourcePod}},
		{name: "none at all", ns: open(""), key: key, want: Decision{Key: key, ExternalIDFrom: SourceNone}},
		{name: "namespace mode refuses the pod's", mode: ExternalIDFromNamespace, ns: open(""), key: withID(key, "own"), wantErr: ErrExternalIDFromPod},
		{name: "namespace mode applies the namespace's", mode: ExternalIDFromNamespace, ns: open(nsID), key: key,
			want: Decision{Key: withID(key, nsID), ExternalIDFrom: SourceNamespace}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, Config{ExternalIDFrom: tt.mode})
			got, err := c.Decide(tt.ns, tt.key)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Decide = %+v, %v; want %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Decide = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// Two namespaces with different External IDs get different keys for one
// role, so the credential cache (keyed by creds.Key) holds two sessions.
func TestDecideSeparatesNamespaces(t *testing.T) {
	c := mustNew(t, Config{})
	key := creds.Key{RoleARN: roleA, SessionName: "kiam-kiam"}
	a, errA := c.Decide(NamespaceOf("a", map[string]string{role.AnnotationPermitted: ".*", role.AnnotationExternalID: "tenant-a"}), key)
	b, errB := c.Decide(NamespaceOf("b", map[string]string{role.AnnotationPermitted: ".*", role.AnnotationExternalID: "tenant-b"}), key)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if a.Key == b.Key || a.Key.String() == b.Key.String() {
		t.Fatalf("one key %v for two namespaces with different External IDs", a.Key)
	}
}

func TestNamespaceOf(t *testing.T) {
	got := NamespaceOf("n", map[string]string{role.AnnotationPermitted: "", role.AnnotationExternalID: "x1", "other": "y"})
	if got != (Namespace{Name: "n", Permitted: "", HasPermitted: true, ExternalID: "x1"}) {
		t.Fatalf("NamespaceOf = %+v", got)
	}
	if got := NamespaceOf("n", nil); got != (Namespace{Name: "n"}) {
		t.Fatalf("NamespaceOf(nil) = %+v", got)
	}
}

func TestParseExternalIDFrom(t *testing.T) {
	for s, want := range map[string]ExternalIDFrom{"pod": ExternalIDFromPod, "namespace": ExternalIDFromNamespace} {
		if got, err := ParseExternalIDFrom(s); err != nil || got != want {
			t.Errorf("ParseExternalIDFrom(%q) = %q, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "Pod", "ns", "both"} {
		if _, err := ParseExternalIDFrom(s); err == nil {
			t.Errorf("ParseExternalIDFrom(%q) accepted", s)
		}
	}
	if _, err := New(Config{ExternalIDFrom: "both"}); err == nil {
		t.Error("New accepted an unknown External ID source")
	}
}

// Explain's decision is Decide's, and its parts say why.
func TestExplain(t *testing.T) {
	key := creds.Key{RoleARN: roleA, SessionName: "kiam-kiam"}
	withID := func(id string) creds.Key { k := key; k.ExternalID = id; return k }
	ns := func(permitted, id string) Namespace {
		ann := map[string]string{role.AnnotationExternalID: id}
		if permitted != "-" {
			ann[role.AnnotationPermitted] = permitted
		}
		return NamespaceOf("team", ann)
	}
	tests := []struct {
		name       string
		cfg        Config
		ns         Namespace
		key        creds.Key
		expression string
		permitted  bool
		why        string
		wantErr    error
	}{
		{name: "allowed, namespace's External ID", ns: ns("a|b", "ext-1"), key: key,
			expression: `^(?:a|b)$`, permitted: false, why: "namespace", wantErr: ErrNotPermitted},
		{name: "role matches", ns: ns(`arn:aws:iam::123456789012:role/.*`, "ext-1"), key: key,
			expression: `^(?:arn:aws:iam::123456789012:role/.*)$`, permitted: true, why: `"ext-1", namespace "team"'s`},
		{name: "unanchored", cfg: Config{DisableStrictRegexp: true}, ns: ns("role/a", ""), key: withID("own"),
			expression: "role/a", permitted: true, why: `"own", the pod's own`},
		{name: "no annotation", ns: ns("-", ""), key: key, permitted: false, why: "none: neither", wantErr: ErrNoAnnotation},
		{name: "invalid expression", ns: ns("(", ""), key: key, permitted: false, wantErr: ErrInvalidExpression, why: "none"},
		{name: "mismatch", ns: ns(".*", "ext-1"), key: withID("ext-2"), expression: `^(?:.*)$`, permitted: true,
			why: `denied: the pod's "ext-2" differs from namespace "team"'s "ext-1"`, wantErr: ErrExternalIDMismatch},
		{name: "from pod in namespace mode", cfg: Config{ExternalIDFrom: ExternalIDFromNamespace}, ns: ns(".*", "ext-1"), key: withID("ext-1"),
			expression: `^(?:.*)$`, permitted: true, why: "--external-id-from=namespace", wantErr: ErrExternalIDFromPod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustNew(t, tt.cfg)
			e := c.Explain(tt.ns, tt.key)
			d, err := c.Decide(tt.ns, tt.key)
			if e.Decision != d || !errors.Is(e.Err, tt.wantErr) || (err == nil) != (e.Err == nil) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Explain decided %+v, %v; Decide %+v, %v; want error %v", e.Decision, e.Err, d, err, tt.wantErr)
			}
			if e.Expression != tt.expression || e.Permitted != tt.permitted || !strings.Contains(e.ExternalIDWhy, tt.why) {
				t.Fatalf("Explain = expression %q permitted %v why %q; want %q %v %q", e.Expression, e.Permitted, e.ExternalIDWhy, tt.expression, tt.permitted, tt.why)
			}
			if e.RoleARN != roleA || e.Strict == tt.cfg.DisableStrictRegexp {
				t.Fatalf("Explain = %+v", e)
			}
		})
	}
}
