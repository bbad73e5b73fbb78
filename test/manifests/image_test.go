package manifests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podiam/podiam/test/testenv"
)

// TestIPTablesWrapper runs the image's iptables wrapper in fresh network
// namespaces set up as nodes of each kind, and checks that the rule it
// installs lands in the back end the node uses: a rule in the other one is
// never evaluated, and pods would reach the node's own role.
func TestIPTablesWrapper(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for network namespaces; run the tests as root, as CI does")
	}
	ip := testenv.Bin(t, "ip")
	testenv.Need(t, "iptables-legacy", "iptables-nft")
	wrapper := filepath.Join(repoRoot(t), "deploy", "image", "iptables-wrapper")

	cases := []struct {
		name  string
		setup []string // commands run in the namespace first
		env   []string
		want  string // back end the rule must land in
	}{
		{name: "empty node", want: "nft"},
		{name: "kubelet hint in legacy", setup: []string{"iptables-legacy -t mangle -N KUBE-IPTABLES-HINT"}, want: "legacy"},
		{name: "old kubelet canary in legacy", setup: []string{"iptables-legacy -t mangle -N KUBE-KUBELET-CANARY"}, want: "legacy"},
		{name: "hint in nft beats more legacy rules", setup: []string{
			"iptables-nft -t mangle -N KUBE-IPTABLES-HINT",
			"iptables-legacy -t filter -A INPUT -j ACCEPT", "iptables-legacy -t filter -A OUTPUT -j ACCEPT",
		}, want: "nft"},
		{name: "no hint, legacy has more rules", setup: []string{
			"iptables-legacy -t nat -A PREROUTING -j RETURN", "iptables-legacy -t nat -A OUTPUT -j RETURN",
			"iptables-nft -t nat -A OUTPUT -j RETURN",
		}, want: "legacy"},
		{name: "forced by environment", setup: []string{"iptables-nft -t mangle -N KUBE-IPTABLES-HINT"}, env: []string{"PODIAM_IPTABLES_MODE=legacy"}, want: "legacy"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := fmt.Sprintf("podiam-wrap-%d-%d", os.Getpid(), i)
			if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
				t.Fatalf("ip netns add: %v: %s", err, out)
			}
			t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
			in := func(env []string, argv ...string) (string, error) {
				cmd := exec.Command(ip, append([]string{"netns", "exec", ns}, argv...)...)
				cmd.Env = append(os.Environ(), env...)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			for _, s := range c.setup {
				if out, err := in(nil, strings.Fields(s)...); err != nil {
					t.Fatalf("%s: %v: %s", s, err, out)
				}
			}
			dir := t.TempDir()
			for _, n := range []string{"iptables", "iptables-save"} {
				if err := os.Symlink(wrapper, filepath.Join(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
			state := filepath.Join(dir, "state", "iptables-mode")
			env := append([]string{"PODIAM_IPTABLES_STATE=" + state}, c.env...)
			rule := "-A OUTPUT -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:8181"
			if out, err := in(env, append([]string{filepath.Join(dir, "iptables"), "-t", "nat"}, strings.Fields(rule)...)...); err != nil {
				t.Fatalf("wrapper: %v: %s", err, out)
			}
			for _, mode := range []string{"legacy", "nft"} {
				out, _ := in(nil, "iptables-"+mode+"-save", "-t", "nat")
				if has := strings.Contains(out, "--to-destination 10.0.0.1:8181"); has != (mode == c.want) {
					t.Errorf("rule in %s back end: %v, want it only in %s:\n%s", mode, has, c.want, out)
				}
			}
			// The choice is cached for the container's life: a later
			// change on the node does not split rules across back ends.
			if len(c.env) == 0 {
				if b, err := os.ReadFile(state); err != nil || strings.TrimSpace(string(b)) != c.want {
					t.Errorf("cached mode %q (%v), want %s", b, err, c.want)
				}
				other := map[string]string{"legacy": "nft", "nft": "legacy"}[c.want]
				if out, err := in(nil, "iptables-"+other, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"); err != nil && !strings.Contains(out, "exists") {
					t.Fatalf("add hint: %v: %s", err, out)
				}
				out, err := in(env, filepath.Join(dir, "iptables-save"), "-t", "nat")
				if err != nil || !strings.Contains(out, "10.0.0.1:8181") {
					t.Errorf("iptables-save through the wrapper after the node changed: %v:\n%s", err, out)
				}
			}
		})
	}

	t.Run("bad mode and unknown name fail", func(t *testing.T) {
		dir := t.TempDir()
		link := filepath.Join(dir, "iptables")
		if err := os.Symlink(wrapper, link); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(link, "-L")
		cmd.Env = append(os.Environ(), "PODIAM_IPTABLES_MODE=nftables")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "neither legacy nor nft") {
			t.Errorf("PODIAM_IPTABLES_MODE=nftables: %v: %s", err, out)
		}
		other := filepath.Join(dir, "ebtables")
		if err := os.Symlink(wrapper, other); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(other, "-L").CombinedOutput(); err == nil || !strings.Contains(string(out), "unknown name") {
			t.Errorf("called as ebtables: %v: %s", err, out)
		}
	})
}

// TestDockerfileCopiesEverythingLinked checks the build stage's COPY lines
// against the packages cmd/podiam links: a package outside them breaks the
// image build, which CI here cannot run (no registry).
func TestDockerfileCopiesEverythingLinked(t *testing.T) {
	root := repoRoot(t)
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var copied []string
	for _, l := range strings.Split(string(df), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "COPY" && strings.HasSuffix(f[1], "/") && f[1] == f[2] {
			copied = append(copied, f[1])
		}
		if len(f) >= 3 && f[0] == "COPY" && !strings.HasPrefix(f[1], "--from") {
			for _, src := range f[1 : len(f)-1] {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					t.Errorf("Dockerfile copies %s, which does not exist", src)
				}
			}
		}
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/podiam")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		rel, _ := filepath.Rel(root, dir)
		ok := false
		for _, c := range copied {
			if strings.HasPrefix(rel+"/", c) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("cmd/podiam links %s, which the Dockerfile does not copy (it copies %v)", rel, copied)
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "/podiam /kiam", "iptables-wrapper", "ENTRYPOINT [\"/podiam\"]"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
