package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	clientcmdlatest "k8s.io/client-go/tools/clientcmd/api/latest"
	"sigs.k8s.io/yaml"
)

// ServiceAccountKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount namespace/name with a bound token, so that a process run
// with it has exactly the permissions RBAC gives that account, as in a
// cluster. The ServiceAccount must exist.
func (k *Kube) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	expiry := int64(3600)
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("testenv: token for %s/%s: %v", namespace, name, err)
	}
	admin, err := os.ReadFile(k.KubeconfigPath)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	obj, err := runtime.Decode(clientcmdlatest.Codec, admin)
	if err != nil {
		t.Fatalf("testenv: read kubeconfig: %v", err)
	}
	cfg := obj.(*clientcmdapi.Config)
	for _, ctx := range cfg.Contexts {
		cfg.AuthInfos[ctx.AuthInfo] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	}
	out, err := runtime.Encode(clientcmdlatest.Codec, cfg)
	if err != nil {
		t.Fatalf("testenv: encode kubeconfig: %v", err)
	}
	if out, err = yaml.JSONToYAML(out); err != nil {
		t.Fatalf("testenv: encode kubeconfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), namespace+"-"+name+".kubeconfig")
	writeFile(t, path, out, 0o600)
	return path
}
