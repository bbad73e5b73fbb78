package manifests

import (
	"os"
	"strings"
	"testing"
)

// TestKIAMFixtureIsSeedPlusMinimalFixes holds testdata/kiam.yaml to what it
// claims to be: KIAM's manifests as published, re-indented, with only the
// image swapped, spec.selector added to the DaemonSets and the master label
// renamed. Compared line by line with indentation and comments ignored.
func TestKIAMFixtureIsSeedPlusMinimalFixes(t *testing.T) {
	seed := contentLines(t, "testdata/kiam-seed.txt")
	fixture := contentLines(t, "testdata/kiam.yaml")

	fixes := strings.NewReplacer(
		"image: quay.io/uswitch/kiam:v3.2", "image: "+image,
		"node-role.kubernetes.io/master:", "node-role.kubernetes.io/control-plane:",
	)
	var want []string
	for _, l := range seed {
		if strings.HasSuffix(l, ".yaml") && !strings.Contains(l, ":") {
			continue // a file name between documents in the seed's prose
		}
		want = append(want, fixes.Replace(l))
	}

	// The added selectors: "selector:" then "matchLabels:" up to "template:".
	var got []string
	selectors := 0
	for i := 0; i < len(fixture); i++ {
		if fixture[i] == "selector:" && i+1 < len(fixture) && fixture[i+1] == "matchLabels:" {
			selectors++
			for i < len(fixture) && fixture[i] != "template:" {
				i++
			}
		}
		if i < len(fixture) {
			got = append(got, fixture[i])
		}
	}
	if selectors != 2 {
		t.Errorf("fixture adds %d selectors, want one per DaemonSet (2)", selectors)
	}
	for i := 0; i < max(len(want), len(got)); i++ {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			t.Fatalf("fixture line %d differs from the seed with the minimal fixes:\n seed+fixes: %q\n fixture:    %q", i+1, w, g)
		}
	}
}

// contentLines returns a file's lines without indentation, blank lines,
// comments and document separators (the seed lost some of those with its
// indentation, and has file names in their place).
func contentLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l == "---" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	return out
}
