package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// podiam iam-policy prints both documents, or one as bare JSON that
// `aws iam` takes as it is; a bad command line exits 2.
func TestIAMPolicyCommand(t *testing.T) {
	const (
		base   = "arn:aws:iam::111111111111:role/podiam-base"
		target = "arn:aws:iam::222222222222:role/tenant-app"
	)
	args := []string{"iam-policy", "--base-role=" + base, "--role=" + target, "--external-id=ext-1"}
	var stdout, stderr bytes.Buffer
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"# Permission policy of the base role " + base + ":\n{", "# Trust policy of " + target + ":\n{",
		`"Resource": [` + "\n" + `        "` + target + `"`, `"AWS": "` + base + `"`, `"sts:ExternalId": "ext-1"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for doc, want := range map[string]string{"trust": `"Principal"`, "base-permissions": `"Resource"`} {
		stdout.Reset()
		if code := run(append(args, "--document="+doc), &stdout, &stderr); code != 0 {
			t.Fatalf("--document=%s: exit %d", doc, code)
		}
		var v map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &v); err != nil || !strings.Contains(stdout.String(), want) {
			t.Fatalf("--document=%s is not the bare document: %v\n%s", doc, err, stdout.String())
		}
	}
	for _, bad := range [][]string{
		{"iam-policy", "--role=" + target},
		{"iam-policy", "--base-role=" + base},
		{"iam-policy", "--base-role=*", "--role=" + target},
		{"iam-policy", "--base-role=" + base, "--role=" + target, "--document=all"},
	} {
		stdout.Reset()
		stderr.Reset()
		if code := run(bad, &stdout, &stderr); code != 2 || stdout.Len() != 0 {
			t.Errorf("%v: exit %d, output %q; want 2 and nothing", bad, code, stdout.String())
		}
	}
}

// The server's session flags, given as the server has them, put the
// actions they need in both documents; a flag the server would refuse is
// refused.
func TestIAMPolicySessionFlags(t *testing.T) {
	const (
		base   = "arn:aws:iam::111111111111:role/podiam-base"
		target = "arn:aws:iam::222222222222:role/tenant-app"
	)
	args := []string{"iam-policy", "--base-role=" + base, "--role=" + target}
	for _, tc := range []struct {
		flags []string
		want  []string
	}{
		{nil, []string{"sts:AssumeRole"}},
		{[]string{"--session-tags=namespace,serviceaccount"}, []string{"sts:AssumeRole", "sts:TagSession"}},
		{[]string{"--static-session-tag=eks-cluster-name=prod"}, []string{"sts:AssumeRole", "sts:TagSession"}},
		{[]string{"--source-identity-template={{.Namespace}}.{{.ServiceAccount}}"}, []string{"sts:AssumeRole", "sts:SetSourceIdentity"}},
		{[]string{"--source-identity-template={{.PodName}}", "--session-tags=pod"}, []string{"sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"}},
	} {
		for _, doc := range []string{"trust", "base-permissions"} {
			var stdout, stderr bytes.Buffer
			if code := run(append(append(args, tc.flags...), "--document="+doc), &stdout, &stderr); code != 0 {
				t.Fatalf("%v: exit %d: %s", tc.flags, code, stderr.String())
			}
			var got struct{ Statement []struct{ Action any } }
			if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || len(got.Statement) != 1 {
				t.Fatalf("%v %s: %v\n%s", tc.flags, doc, err, stdout.String())
			}
			var actions []string
			switch a := got.Statement[0].Action.(type) {
			case string:
				actions = []string{a}
			case []any:
				for _, x := range a {
					actions = append(actions, x.(string))
				}
			}
			if strings.Join(actions, " ") != strings.Join(tc.want, " ") {
				t.Errorf("%v %s: Action %v, want %v", tc.flags, doc, actions, tc.want)
			}
			if _, one := got.Statement[0].Action.(string); one != (len(tc.want) == 1) {
				t.Errorf("%v %s: Action %#v: one action is a string, several a list", tc.flags, doc, got.Statement[0].Action)
			}
		}
	}
	for _, bad := range [][]string{
		{"--session-tags=pod-name"},
		{"--static-session-tag=aws:cluster=prod"},
		{"--source-identity-template={{.Namespace}}/{{.PodName}}"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(append(append([]string{}, args...), bad...), &stdout, &stderr); code != 2 || stdout.Len() != 0 {
			t.Errorf("%v: exit %d, output %q; want 2 and nothing", bad, code, stdout.String())
		}
	}
}

// The README's cross-account section shows what podiam iam-policy prints.
func TestIAMPolicyREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- BEGIN EXAMPLE: podiam iam-policy -->\n```text\n(.*?)```\n<!-- END EXAMPLE -->").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no podiam iam-policy example")
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"iam-policy", "--base-role", "arn:aws:iam::111111111111:role/podiam-base",
		"--role", "arn:aws:iam::222222222222:role/tenant-app", "--external-id", "tenant-7f3c"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if string(m[1]) != stdout.String() {
		t.Fatalf("README.md shows:\n%s\npodiam iam-policy prints:\n%s", m[1], stdout.String())
	}
}
