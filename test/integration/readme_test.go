package integration

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/podiam/podiam/test/testenv"
)

var updateREADME = flag.Bool("update-readme", false, "rewrite README.md's podiam check examples from this run")

// readmeExample matches an example block README.md shows the output of a
// command in, named after BEGIN EXAMPLE.
var readmeExample = regexp.MustCompile("(?s)(<!-- BEGIN EXAMPLE: ([^>]+?) -->\n```text\n).*?(```\n<!-- END EXAMPLE -->)")

// variable is what differs between two runs of one example: durations,
// expiry times and STS request IDs.
var variable = regexp.MustCompile(`\b\d+ms\b|expires \S+Z|RequestID: [^,]*`)

// TestCheckREADME runs the README's cross-account example (account A runs
// podiam, account B owns the role and requires an External ID) and checks
// that README.md shows this output, durations and expiry aside; with
// -update-readme it writes it there.
func TestCheckREADME(t *testing.T) {
	t.Parallel()
	const (
		accountA = "111111111111"
		accountB = "222222222222"
		extID    = "tenant-7f3c"
	)
	baseRole := "arn:aws:iam::" + accountA + ":role/podiam-base"
	tenantRole := "arn:aws:iam::" + accountB + ":role/tenant-app"
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	proxy.RequireExternalID(tenantRole, extID)
	kube.CreateNamespace(t, "tenant-b", map[string]string{
		"iam.amazonaws.com/permitted":   "arn:aws:iam::" + accountB + ":role/tenant-.*",
		"iam.amazonaws.com/external-id": extID,
	})
	server := []string{"--kubeconfig=" + kube.KubeconfigPath, "--assume-role-arn=" + baseRole}
	runs := map[string]checkRun{
		"podiam check --namespace":   podiamCheck(t, viaProxy.Env(), server, "--namespace=tenant-b", "--role="+tenantRole),
		"podiam check --external-id": podiamCheck(t, viaProxy.Env(), server, "--role="+tenantRole, "--external-id=tenant-0000"),
	}
	if runs["podiam check --namespace"].Code != 0 || runs["podiam check --external-id"].Code != 1 {
		t.Fatalf("exit statuses %d and %d, want 0 and 1", runs["podiam check --namespace"].Code, runs["podiam check --external-id"].Code)
	}

	path := filepath.Join("..", "..", "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	out := readmeExample.ReplaceAllStringFunc(string(readme), func(block string) string {
		m := readmeExample.FindStringSubmatch(block)
		r, ok := runs[m[2]]
		if !ok {
			return block
		}
		seen[m[2]] = true
		got := r.Stdout
		shown := strings.TrimPrefix(strings.TrimSuffix(block, m[3]), m[1])
		if variable.ReplaceAllString(shown, "_") != variable.ReplaceAllString(got, "_") && !*updateREADME {
			t.Errorf("README.md's %q example differs from this run (go test -tags privileged -run TestCheckREADME ./test/integration -update-readme):\n%s", m[2], got)
		}
		return m[1] + got + m[3]
	})
	for name := range runs {
		if !seen[name] {
			t.Errorf("README.md has no example block %q", name)
		}
	}
	if *updateREADME && out != string(readme) {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
