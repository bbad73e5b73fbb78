package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/podiam/podiam/test/testenv"
)

// setAccountRole creates the ServiceAccount namespace/name or sets its
// iam.amazonaws.com/role annotation.
func (e *env) setAccountRole(t *testing.T, namespace, name, role string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	accounts := e.kube.Client.CoreV1().ServiceAccounts(namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sa, err := accounts.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = accounts.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
				Annotations: map[string]string{"iam.amazonaws.com/role": role}}}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if sa.Annotations == nil {
			sa.Annotations = map[string]string{}
		}
		sa.Annotations["iam.amazonaws.com/role"] = role
		_, err = accounts.Update(ctx, sa, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set role of serviceaccount %s/%s: %v", namespace, name, err)
	}
}

// replacePod deletes namespace/old (if named) and creates a pod on p's
// interface, as a new pod on a reused address.
func (e *env) replacePod(t *testing.T, oldNS, old string, spec testenv.PodSpec, p *podNet) {
	t.Helper()
	if old != "" {
		e.kube.DeletePod(t, oldNS, old, 0)
		e.waitPodGone(t, oldNS, old)
	}
	spec.NodeName, spec.PodIPs, spec.HostIPs = nodeName, []string{p.IP}, []string{nodeIP}
	e.kube.CreatePod(t, spec)
}

// waitListing waits until the pod's security-credentials listing answers
// code with body (body ignored for errors).
func (e *env) waitListing(t *testing.T, p *podNet, code int, body string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, fmt.Sprintf("listing %d %s", code, body), func() error {
		l := e.imds(p, http.MethodGet, testenv.CredentialsPath)
		if l.Code != code || (code == http.StatusOK && l.Body != body) {
			return fmt.Errorf("listing %s", l)
		}
		return nil
	})
}

// testServiceAccountRoles: a pod that names no role gets its
// ServiceAccount's through an unmodified SDK; changing the account's
// annotation switches the role the SDK gets; a pod's own annotation wins;
// and the namespace policy refuses an account's role it does not permit.
func testServiceAccountRoles(t *testing.T, e *env) {
	p := e.reused
	if p == nil {
		t.Fatal("needs the interface the IP reuse scenario leaves wired")
	}
	e.setAccountRole(t, nsApps, "ledger", "app-ledger")
	e.replacePod(t, nsApps, "newer", testenv.PodSpec{Namespace: nsApps, Name: "ledger", ServiceAccount: "ledger"}, p)
	e.waitListing(t, p, http.StatusOK, "app-ledger")
	if r := e.runSDK(p, sdkByName("aws-sdk-go-v2")); strings.TrimSpace(r.Stdout) != assumedARN("app-ledger") {
		t.Errorf("aws-sdk-go-v2 in a pod of an annotated account: %s, want %s", r, assumedARN("app-ledger"))
	}

	// The account's role changes: the agent is told to forget, and the
	// next request gets the new role.
	changed := time.Now()
	e.setAccountRole(t, nsApps, "ledger", "app-ledger-v2")
	e.waitListing(t, p, http.StatusOK, "app-ledger-v2")
	t.Logf("new role served %s after the account changed", time.Since(changed).Round(time.Millisecond))
	if r := e.runSDK(p, sdkByName("aws-cli-imdsv2")); strings.TrimSpace(r.Stdout) != assumedARN("app-ledger-v2") {
		t.Errorf("aws cli after the account changed: %s, want %s", r, assumedARN("app-ledger-v2"))
	}

	// A pod's own annotation wins over its account's.
	e.replacePod(t, nsApps, "ledger", testenv.PodSpec{Namespace: nsApps, Name: "ledger-own", ServiceAccount: "ledger",
		Annotations: map[string]string{"iam.amazonaws.com/role": "app-own"}}, p)
	e.waitListing(t, p, http.StatusOK, "app-own")
	if r := e.runSDK(p, sdkByName("boto3-imdsv1")); strings.TrimSpace(r.Stdout) != assumedARN("app-own") {
		t.Errorf("boto3 in an annotated pod of an annotated account: %s, want %s", r, assumedARN("app-own"))
	}

	// An account cannot grant what its namespace does not permit.
	e.setAccountRole(t, nsRestricted, "ledger", "app-web")
	e.replacePod(t, nsApps, "ledger-own", testenv.PodSpec{Namespace: nsRestricted, Name: "ledger", ServiceAccount: "ledger"}, p)
	e.waitListing(t, p, http.StatusForbidden, "")
	if r := e.runSDK(p, sdkByName("aws-cli-imdsv2")); r.Err == nil || !strings.Contains(r.Stderr, "Unable to locate credentials") {
		t.Errorf("aws cli in a pod whose account's role the namespace does not permit: %s, want no credentials", r)
	}
	e.canary.assertUntouched(t)
}
