// Package manifests checks what users apply to a cluster: the manifests in
// deploy/, the Helm chart rendered with the values people change, and KIAM's
// own manifests with only the image swapped. Each object goes through a real
// kube-apiserver (server-side dry run, strict field validation, cert-manager's
// published CRDs installed), and every flag a container passes to podiam must
// be one `podiam <command> --help` lists.
package manifests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/podiam/podiam/test/testenv"
)

// certManagerModule holds the CRDs cert-manager publishes; the Go module
// proxy is the one place these machines can fetch them from, and
// hack/install-deps.sh downloads this version ahead of the tests.
const certManagerModule = "github.com/cert-manager/cert-manager@v1.19.1"

// image is what every manifest and the KIAM fixture must run.
const image = "ghcr.io/podiam/podiam:v0.1.0"

func repoRoot(t *testing.T) string {
	t.Helper()
	return filepath.Dir(testenv.BinDir())
}

// decode splits a multi-document YAML stream into objects, skipping empty
// documents (comment-only files, Helm's blank templates).
func decode(t *testing.T, name string, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for i := 0; ; i++ {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", name, i, err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

func readYAMLFiles(t *testing.T, glob string) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(glob)
	if err != nil || len(files) == 0 {
		t.Fatalf("no files match %s (%v)", glob, err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, decode(t, f, b)...)
	}
	return objs
}

// helmCases are the chart's renderings that are checked: the defaults, and
// each choice that switches templates or flags on and off.
var helmCases = []struct {
	name string
	set  []string
}{
	{"defaults", nil},
	{"server-deployment", []string{"server.kind=Deployment", "server.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/podiam-server"}},
	{"cert-manager-own-ca", []string{"tls.certManager.enabled=true"}},
	{"cert-manager-issuer", []string{"tls.certManager.enabled=true", "tls.certManager.issuerRef.name=corp-ca", "tls.certManager.issuerRef.kind=ClusterIssuer"}},
	{"everything-set", []string{
		"server.assumeRoleArn=arn:aws:iam::111122223333:role/podiam-base",
		"server.roleBaseArnAutodetect=false", "server.roleBaseArn=arn:aws:iam::111122223333:role/",
		"server.region=eu-west-1", "server.disableStrictNamespaceRegexp=true", "server.disableNodeBinding=true",
		"server.externalIdFrom=namespace",
		"server.metrics.enabled=false", "server.log.json=false", "server.log.level=debug",
		"server.grpc.maxConnectionAge=10m", "server.assumeRoleSecrets.enabled=true",
		// helm --set reads a value starting with "{" as a list.
		"server.sessionNameTemplate=k8s.{{.Namespace}}.{{.ServiceAccount}}", "server.sourceIdentityTemplate=k8s@{{.PodName}}",
		"server.sessionTags={namespace,serviceaccount}", "server.staticSessionTags.eks-cluster-name=prod",
		"server.transitiveSessionTags=true", "server.serviceAccountRoles=true",
		"agent.iptables=false", "agent.iptablesRemove=true", "agent.hostInterface=eni+",
		"agent.allowRouteRegexp=^/latest/meta-data/placement/.*", "agent.requireIMDSv2=true",
		"agent.metrics.enabled=false", "agent.serverAddress=podiam.example:9610",
	}},
}

func helm(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(testenv.Bin(t, "helm"), args...)
	cmd.Dir = repoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

func renderChart(t *testing.T, set []string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "podiam", "deploy/helm/podiam", "--namespace", "podiam-system"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return decode(t, "helm template", helm(t, args...))
}

func TestHelmLint(t *testing.T) {
	out := helm(t, "lint", "--strict", "deploy/helm/podiam")
	if !bytes.Contains(out, []byte("0 chart(s) failed")) {
		t.Fatalf("helm lint:\n%s", out)
	}
}

// TestManifests sends every object through a real kube-apiserver with a
// server-side dry run and strict field validation: an unknown or misspelt
// field, a missing required one or an invalid value fails the test.
func TestManifests(t *testing.T) {
	root := repoRoot(t)
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	dyn, err := dynamic.NewForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	installCertManagerCRDs(t, dyn)
	disco, err := discovery.NewDiscoveryClientForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disco))

	sources := map[string][]*unstructured.Unstructured{
		"deploy/manifests":    readYAMLFiles(t, filepath.Join(root, "deploy/manifests/*.yaml")),
		"deploy/cert-manager": readYAMLFiles(t, filepath.Join(root, "deploy/cert-manager/*.yaml")),
		"kiam fixture":        readYAMLFiles(t, "testdata/kiam.yaml"),
	}
	for _, c := range helmCases {
		sources["helm/"+c.name] = renderChart(t, c.set)
	}
	help := podiamFlags(t)

	// Namespaces are created for real: a dry-run namespace does not exist
	// for the dry runs of the objects inside it.
	for _, objs := range sources {
		for _, o := range objs {
			if ns := o.GetNamespace(); ns != "" {
				ensureNamespace(t, dyn, ns)
			}
		}
	}

	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range sources {
			if !yield(k) {
				return
			}
		}
	}) {
		objs := sources[name]
		t.Run(name, func(t *testing.T) {
			if len(objs) == 0 {
				t.Fatal("no objects")
			}
			kinds := map[string]bool{}
			for _, o := range objs {
				kinds[o.GetKind()] = true
				dryRunCreate(t, dyn, mapper, o)
				checkPodSpec(t, o, help)
			}
			t.Logf("%d objects: %s", len(objs), strings.Join(slices.Sorted(func(yield func(string) bool) {
				for k := range kinds {
					if !yield(k) {
						return
					}
				}
			}), ", "))
		})
	}

	t.Run("required kinds", func(t *testing.T) {
		want := map[string][]string{
			"deploy/manifests": {"DaemonSet/podiam-server", "Deployment/podiam-server", "DaemonSet/podiam-agent",
				"Service/podiam-server", "ServiceAccount/podiam-server", "ServiceAccount/podiam-agent",
				"ClusterRole/podiam-server", "ClusterRoleBinding/podiam-server"},
			"deploy/cert-manager": {"Certificate/podiam-server", "Certificate/podiam-agent"},
		}
		for src, names := range want {
			have := map[string]bool{}
			for _, o := range sources[src] {
				have[o.GetKind()+"/"+o.GetName()] = true
			}
			for _, n := range names {
				if !have[n] {
					t.Errorf("%s has no %s (has %v)", src, n, have)
				}
			}
		}
	})

	t.Run("agent daemonset shape", func(t *testing.T) {
		for _, src := range []string{"deploy/manifests", "helm/defaults", "helm/everything-set"} {
			n := 0
			for _, o := range sources[src] {
				if o.GetKind() == "DaemonSet" && strings.Contains(o.GetName(), "agent") {
					n++
					checkAgentShape(t, src, o)
				}
			}
			if n != 1 {
				t.Errorf("%s: %d agent DaemonSets, want 1", src, n)
			}
		}
	})

	t.Run("server readiness probe is plain HTTP", func(t *testing.T) {
		for _, src := range []string{"deploy/manifests", "helm/defaults", "helm/server-deployment", "helm/everything-set"} {
			n := 0
			for _, o := range sources[src] {
				if (o.GetKind() == "DaemonSet" || o.GetKind() == "Deployment") && strings.HasSuffix(o.GetName(), "-server") {
					n++
					checkServerProbes(t, src+" "+o.GetKind()+"/"+o.GetName(), o)
				}
			}
			if n == 0 {
				t.Errorf("%s: no server workload", src)
			}
		}
	})

	// The server's certificate must not be able to act as an agent, or
	// as any client; agents' certificates are client certificates.
	t.Run("server certificates are for server auth only", func(t *testing.T) {
		for _, src := range []string{"deploy/cert-manager", "helm/cert-manager-own-ca", "helm/cert-manager-issuer"} {
			var servers, agents int
			for _, o := range sources[src] {
				if o.GetKind() != "Certificate" {
					continue
				}
				usages, _, _ := unstructured.NestedStringSlice(o.Object, "spec", "usages")
				switch {
				case strings.HasSuffix(o.GetName(), "-server"):
					servers++
					if !slices.Contains(usages, "server auth") || slices.Contains(usages, "client auth") {
						t.Errorf("%s: server Certificate %s has usages %q, want server auth and no client auth", src, o.GetName(), usages)
					}
				case strings.HasSuffix(o.GetName(), "-agent"):
					agents++
					if !slices.Contains(usages, "client auth") || slices.Contains(usages, "server auth") {
						t.Errorf("%s: agent Certificate %s has usages %q, want client auth only", src, o.GetName(), usages)
					}
				}
			}
			if servers != 1 || agents != 1 {
				t.Errorf("%s: %d server and %d agent Certificates, want 1 and 1", src, servers, agents)
			}
		}
	})

	t.Run("rbac is least privilege", func(t *testing.T) { checkRBAC(t, kube.RESTConfig, dyn, mapper, root) })

	// cert-manager must write the Secrets the workloads mount.
	t.Run("certificates fill the mounted secrets", func(t *testing.T) {
		pairs := [][2]string{
			{"deploy/manifests", "deploy/cert-manager"},
			{"helm/cert-manager-own-ca", "helm/cert-manager-own-ca"},
			{"helm/cert-manager-issuer", "helm/cert-manager-issuer"},
		}
		for _, p := range pairs {
			written := certificateSecrets(sources[p[1]])
			for _, s := range mountedSecrets(sources[p[0]]) {
				if !written[s] {
					t.Errorf("%s mounts Secret %s, which no Certificate in %s writes (they write %v)", p[0], s, p[1], written)
				}
			}
		}
	})
}

func certificateSecrets(objs []*unstructured.Unstructured) map[string]bool {
	out := map[string]bool{}
	for _, o := range objs {
		if o.GetKind() == "Certificate" {
			name, _, _ := unstructured.NestedString(o.Object, "spec", "secretName")
			out[o.GetNamespace()+"/"+name] = true
		}
	}
	return out
}

func mountedSecrets(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		vols, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
		for _, v := range vols {
			if name, ok, _ := unstructured.NestedString(v.(map[string]any), "secret", "secretName"); ok {
				out = append(out, o.GetNamespace()+"/"+name)
			}
		}
	}
	return out
}

func ensureNamespace(t *testing.T, dyn dynamic.Interface, name string) {
	t.Helper()
	ns := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name},
	}}
	_, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).
		Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

func dryRunCreate(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured) {
	t.Helper()
	gvk := o.GroupVersionKind()
	what := gvk.Kind + "/" + o.GetName()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Errorf("%s: the API server does not serve %s: %v", what, gvk, err)
		return
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := o.GetNamespace()
		if ns == "" {
			t.Errorf("%s: namespaced but names no namespace, so it lands wherever kubectl points", what)
			return
		}
		ri = dyn.Resource(m.Resource).Namespace(ns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = ri.Create(ctx, o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
	if err != nil {
		t.Errorf("%s: rejected by kube-apiserver: %v", what, err)
	}
}

// installCertManagerCRDs creates cert-manager's CRDs, as published in its
// release, and waits until they are served.
func installCertManagerCRDs(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", certManagerModule).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			out = append(out, ee.Stderr...)
		}
		t.Fatalf("go mod download %s (hack/install-deps.sh fetches it): %v\n%s", certManagerModule, err, out)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download -json: %v: %s", err, out)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	for _, f := range []string{"cert-manager.io_certificates.yaml", "cert-manager.io_issuers.yaml", "cert-manager.io_clusterissuers.yaml"} {
		b, err := os.ReadFile(filepath.Join(mod.Dir, "deploy", "crds", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, crd := range decode(t, f, b) {
			if _, err := dyn.Resource(crdGVR).Create(context.Background(), crd, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create CRD %s: %v", crd.GetName(), err)
			}
			names = append(names, crd.GetName())
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, n := range names {
		for {
			crd, err := dyn.Resource(crdGVR).Get(context.Background(), n, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established after a minute: %v", n, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// podiamFlags maps each podiam command to the flags its --help lists, with
// true for boolean flags (which also take the --no- form).
func podiamFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "podiam")
	if err := testenv.BuildPodiam(t.Context(), bin, false); err != nil {
		t.Fatal(err)
	}
	flags := map[string]map[string]bool{}
	for _, cmd := range []string{"server", "agent", "health"} {
		c := exec.Command(bin, cmd, "--help")
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		if err := c.Run(); err != nil {
			t.Fatalf("podiam %s --help: %v\n%s", cmd, err, out.String())
		}
		flags[cmd] = parseHelp(out.String())
		if len(flags[cmd]) < 3 {
			t.Fatalf("podiam %s --help lists too few flags:\n%s", cmd, out.String())
		}
	}
	return flags
}

// parseHelp reads Go's flag.PrintDefaults output: "  -name type" lines, or
// "  -name" alone for a boolean.
func parseHelp(help string) map[string]bool {
	flags := map[string]bool{}
	for _, line := range strings.Split(help, "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue
		}
		fields := strings.Fields(line)
		name := strings.TrimPrefix(fields[0], "-")
		flags[name] = len(fields) == 1
	}
	return flags
}

// checkPodSpec checks the podiam command lines of a workload: the image,
// and that every flag exists for its command.
func checkPodSpec(t *testing.T, o *unstructured.Unstructured, help map[string]map[string]bool) {
	t.Helper()
	containers, found, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if !found {
		return
	}
	what := o.GetKind() + "/" + o.GetName()
	for _, c := range containers {
		m, _ := c.(map[string]any)
		if img, _ := m["image"].(string); img != image {
			t.Errorf("%s: image %q, want %q", what, img, image)
		}
		argv := append(stringSlice(m["command"]), stringSlice(m["args"])...)
		checkArgv(t, what, argv, help)
		for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
			if cmd, ok, _ := unstructured.NestedStringSlice(m, probe, "exec", "command"); ok {
				checkArgv(t, what+" "+probe, cmd, help)
			}
		}
	}
}

func checkArgv(t *testing.T, what string, argv []string, help map[string]map[string]bool) {
	t.Helper()
	if len(argv) < 2 {
		t.Errorf("%s: command line %q names no podiam command", what, argv)
		return
	}
	if bin := filepath.Base(argv[0]); bin != "podiam" && bin != "kiam" {
		t.Errorf("%s: runs %q, not /podiam or /kiam", what, argv[0])
		return
	}
	flags, ok := help[argv[1]]
	if !ok {
		t.Errorf("%s: podiam has no command %q", what, argv[1])
		return
	}
	for _, a := range argv[2:] {
		if err := checkFlag(a, flags); err != nil {
			t.Errorf("%s: podiam %s: %v", what, argv[1], err)
		}
	}
}

// checkFlag accepts --name, --name=value and, for booleans, --no-name.
func checkFlag(arg string, flags map[string]bool) error {
	if !strings.HasPrefix(arg, "--") {
		return fmt.Errorf("argument %q is not a --flag", arg)
	}
	name, _, hasValue := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
	if isBool, ok := flags[name]; ok {
		if !isBool && !hasValue {
			return fmt.Errorf("--%s needs a value (write --%s=value: a separate argument is ambiguous in a manifest)", name, name)
		}
		return nil
	}
	if base, ok := strings.CutPrefix(name, "no-"); ok && flags[base] && !hasValue {
		return nil
	}
	return fmt.Errorf("unknown flag --%s", name)
}

func stringSlice(v any) []string {
	items, _ := v.([]any)
	out := make([]string, 0, len(items))
	for _, i := range items {
		s, _ := i.(string)
		out = append(out, s)
	}
	return out
}

// checkAgentShape holds the agent DaemonSet to what the agent needs to be
// safe: host network, NET_ADMIN, the node's xtables lock, no API token,
// liveness on /ping and readiness on /health, and a surge rollout so pods
// never meet a node without a listener.
func checkAgentShape(t *testing.T, src string, o *unstructured.Unstructured) {
	t.Helper()
	get := func(fields ...string) any {
		v, _, _ := unstructured.NestedFieldNoCopy(o.Object, fields...)
		return v
	}
	want := map[string]any{
		"spec.template.spec.hostNetwork":                   true,
		"spec.template.spec.automountServiceAccountToken":  false,
		"spec.updateStrategy.type":                         "RollingUpdate",
		"spec.updateStrategy.rollingUpdate.maxSurge":       int64(1),
		"spec.updateStrategy.rollingUpdate.maxUnavailable": int64(0),
	}
	for path, w := range want {
		if got := get(strings.Split(path, ".")...); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("%s: %s = %v, want %v", src, path, got, w)
		}
	}
	containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(containers) != 1 {
		t.Fatalf("%s: %d containers", src, len(containers))
	}
	c := containers[0].(map[string]any)
	caps, _, _ := unstructured.NestedStringSlice(c, "securityContext", "capabilities", "add")
	if !slices.Contains(caps, "NET_ADMIN") {
		t.Errorf("%s: capabilities %v lack NET_ADMIN", src, caps)
	}
	for probe, path := range map[string]string{"livenessProbe": "/ping", "readinessProbe": "/health"} {
		if p, _, _ := unstructured.NestedString(c, probe, "httpGet", "path"); p != path {
			t.Errorf("%s: %s path %q, want %q", src, probe, p, path)
		}
	}
	mounts, _, _ := unstructured.NestedSlice(c, "volumeMounts")
	lock := false
	for _, m := range mounts {
		if m.(map[string]any)["mountPath"] == "/run/xtables.lock" {
			lock = true
		}
	}
	if !lock {
		t.Errorf("%s: /run/xtables.lock not mounted", src)
	}
}

// checkServerProbes holds a server workload to probes that need no client
// certificate, which is what lets the server's own certificate be for
// server auth only: readiness is GET /readyz on the port the server's
// --prometheus-listen-addr listens on, and no probe runs a command (such
// as `podiam health`, which needs one).
func checkServerProbes(t *testing.T, what string, o *unstructured.Unstructured) {
	t.Helper()
	containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(containers) != 1 {
		t.Fatalf("%s: %d containers", what, len(containers))
	}
	c := containers[0].(map[string]any)
	listen := ""
	for _, a := range stringSlice(c["args"]) {
		if v, ok := strings.CutPrefix(a, "--prometheus-listen-addr="); ok {
			listen = v
		}
	}
	_, listenPort, _ := strings.Cut(listen, ":")
	if listenPort == "" {
		t.Errorf("%s: --prometheus-listen-addr=%q: /readyz would not be served", what, listen)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
		if _, ok, _ := unstructured.NestedFieldNoCopy(c, probe, "exec"); ok {
			t.Errorf("%s: %s runs a command; server probes must need no client certificate", what, probe)
		}
	}
	path, _, _ := unstructured.NestedString(c, "readinessProbe", "httpGet", "path")
	if path != "/readyz" {
		t.Errorf("%s: readinessProbe httpGet path %q, want /readyz", what, path)
	}
	if scheme, _, _ := unstructured.NestedString(c, "readinessProbe", "httpGet", "scheme"); scheme != "" && scheme != "HTTP" {
		t.Errorf("%s: readinessProbe scheme %q, want HTTP", what, scheme)
	}
	// The probe's port, by name or number, must be the listener's.
	port, _, _ := unstructured.NestedFieldNoCopy(c, "readinessProbe", "httpGet", "port")
	resolved := fmt.Sprint(port)
	if name, ok := port.(string); ok {
		resolved = ""
		ports, _, _ := unstructured.NestedSlice(c, "ports")
		for _, p := range ports {
			if m := p.(map[string]any); m["name"] == name {
				resolved = fmt.Sprint(m["containerPort"])
			}
		}
	}
	if resolved != listenPort {
		t.Errorf("%s: readinessProbe port %v (%q) is not the --prometheus-listen-addr port %q", what, port, resolved, listenPort)
	}
}
