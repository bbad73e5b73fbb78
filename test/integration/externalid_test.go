package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// agentProc is a running `podiam agent` without its DNAT rule: pods are
// played by connections from loopback addresses (127.0.1.x), which the
// agent serves as it serves pod addresses.
type agentProc struct {
	*testenv.Proc
	Addr string
}

// startAgent runs the agent against sp for the node at 127.0.0.1 and
// waits until it has the node's pod list, so that pod events reach its
// cache.
func startAgent(t *testing.T, sp *serverProc) *agentProc {
	t.Helper()
	dir := t.TempDir()
	port, mport := testenv.FreePort(t), testenv.FreePort(t)
	ap := &agentProc{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	p, err := testenv.Spawn(testenv.ProcSpec{Name: "agent", Path: podiamBin, Args: []string{"agent",
		"--json-log", "--level=debug",
		fmt.Sprintf("--port=%d", port),
		"--host=" + node,
		"--server-address=" + sp.Addr,
		"--cert=" + sp.PKI.AgentCert, "--key=" + sp.PKI.AgentKey, "--ca=" + sp.PKI.CA,
		fmt.Sprintf("--prometheus-listen-addr=127.0.0.1:%d", mport),
		// The host's sysctl is not the test's to change.
		"--no-tcp-migrate-req",
		"--gateway-timeout-creation=3s",
		// 15-minute sessions: refresh well inside them.
		"--credential-refresh=8m", "--credential-min-serve=2m",
	}, Log: filepath.Join(dir, "agent.log")})
	if err != nil {
		t.Fatal(err)
	}
	ap.Proc = p
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("agent stop: %v", err)
		}
		testenv.LogTails(t, p)
	})
	testenv.Ready(t, 60*time.Second, "agent has the node's pods", func(context.Context) error {
		if !strings.Contains(p.Logs(), "pod list synced from server") {
			return fmt.Errorf("pod stream not synced yet")
		}
		return nil
	}, p)
	return ap
}

// imdsAnswer is what a pod at one address got from the agent.
type imdsAnswer struct {
	Status int
	Body   string
	Doc    struct {
		AccessKeyID     string `json:"AccessKeyId"`
		SecretAccessKey string `json:"SecretAccessKey"`
		Token           string `json:"Token"`
	}
}

// credentials asks the agent for the pod's credentials as an SDK does: the
// role name, then its document, from the pod's address.
func (a *agentProc) credentials(t testing.TB, podIP string) imdsAnswer {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podIP)}}).DialContext,
	}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://" + a.Addr + path)
		if err != nil {
			t.Fatalf("agent request from %s: %v", podIP, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	const base = "/latest/meta-data/iam/security-credentials/"
	var ans imdsAnswer
	ans.Status, ans.Body = get(base)
	if ans.Status != http.StatusOK {
		return ans
	}
	ans.Status, ans.Body = get(base + ans.Body)
	if ans.Status == http.StatusOK {
		if err := json.Unmarshal([]byte(ans.Body), &ans.Doc); err != nil {
			t.Fatalf("credentials document %q: %v", ans.Body, err)
		}
	}
	return ans
}

// TestNamespaceExternalID: a namespace's iam.amazonaws.com/external-id is
// the one every role of its pods is assumed with; a pod cannot pick
// another, nor, with --external-id-from=namespace, any; two namespaces
// sharing a role get separate sessions; and a change of the annotation
// reaches the agents within a second, which then never serve the
// credentials assumed under the old one. STS is moto behind the fault
// proxy, which plays the target roles' trust policies and their
// sts:ExternalId conditions.
func TestNamespaceExternalID(t *testing.T) {
	t.Parallel()
	const (
		extA    = "ext-A-4711"
		extB    = "ext-B-0815"
		extOld  = "ext-old-1"
		extNew  = "ext-new-2"
		session = "kiam-kiam"
	)
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	serverArgs := []string{
		"--assume-role-arn=" + roleARN("podiam-server"),
		"--role-base-arn=" + roleARN(""),
		"--session-duration=15m", "--session-refresh=5m",
		"--agent-identity=podiam-agent",
		"--pod-wait=3s",
	}
	sp := startServer(t, kube, viaProxy, serverArgs...)
	client := credsClient(t, sp)

	// Account B's roles: each trusts the base role only with the
	// External IDs listed.
	proxy.RequireExternalID(roleARN("a-app"), extA)
	proxy.RequireExternalID(roleARN("shared"), extA, extB)
	proxy.RequireExternalID(roleARN("rot-app"), extOld, extNew)

	kube.CreateNamespace(t, "tenant-a", map[string]string{
		"iam.amazonaws.com/permitted":   roleARN("a-.*") + "|" + roleARN("shared"),
		"iam.amazonaws.com/external-id": extA,
	})
	kube.CreateNamespace(t, "tenant-b", map[string]string{
		"iam.amazonaws.com/permitted":   roleARN("shared"),
		"iam.amazonaws.com/external-id": extB,
	})
	kube.CreateNamespace(t, "rotating", map[string]string{
		"iam.amazonaws.com/permitted":   roleARN("rot-app"),
		"iam.amazonaws.com/external-id": extOld,
	})
	ag := startAgent(t, sp)

	pod := func(ns, name, ip, roleName, externalID string) {
		t.Helper()
		ann := map[string]string{"iam.amazonaws.com/role": roleName}
		if externalID != "" {
			ann["iam.amazonaws.com/external-id"] = externalID
		}
		kube.CreatePod(t, testenv.PodSpec{Namespace: ns, Name: name, Annotations: ann, NodeName: "n1",
			PodIPs: []string{ip}, HostIPs: []string{node}})
	}
	// assumed lists the External IDs the proxy saw for role, with "!" for
	// those it refused.
	assumed := func(role string) []string {
		var out []string
		for _, a := range proxy.Attempts() {
			if a.Action == "AssumeRole" && a.RoleARN == roleARN(role) {
				id := a.ExternalID
				if a.Fault != 0 {
					id = "!" + id
				}
				if !slices.Contains(out, id) {
					out = append(out, id)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	identity := func(t *testing.T, ans imdsAnswer) string {
		t.Helper()
		arn, err := moto.CallerIdentity(context.Background(), creds.Credentials{
			AccessKeyID: ans.Doc.AccessKeyID, SecretAccessKey: ans.Doc.SecretAccessKey, SessionToken: ans.Doc.Token})
		if err != nil {
			t.Fatal(err)
		}
		return arn
	}
	var appKey string

	t.Run("the namespace's External ID is used for a pod without one", func(t *testing.T) {
		pod("tenant-a", "app", "127.0.1.1", "a-app", "")
		ans := ag.credentials(t, "127.0.1.1")
		if ans.Status != http.StatusOK {
			t.Fatalf("agent answered %d %s", ans.Status, ans.Body)
		}
		if arn := identity(t, ans); arn != "arn:aws:sts::"+account+":assumed-role/a-app/"+session {
			t.Fatalf("credentials are for %s", arn)
		}
		if got := assumed("a-app"); !slices.Equal(got, []string{extA}) {
			t.Fatalf("a-app assumed with External IDs %v, want only the namespace's", got)
		}
		appKey = ans.Doc.AccessKeyID
	})

	t.Run("a pod naming the namespace's External ID shares its session", func(t *testing.T) {
		pod("tenant-a", "same", "127.0.1.2", "a-app", extA)
		ans := ag.credentials(t, "127.0.1.2")
		if ans.Status != http.StatusOK || ans.Doc.AccessKeyID != appKey {
			t.Fatalf("agent answered %d with key %q, want 200 with the first pod's %q", ans.Status, ans.Doc.AccessKeyID, appKey)
		}
	})

	t.Run("a pod naming another External ID is denied: 403, Event, metric", func(t *testing.T) {
		// "shared" trusts tenant B's External ID: were the pod's value
		// used, STS would hand tenant A's pod tenant B's access.
		pod("tenant-a", "rogue", "127.0.1.3", "shared", extB)
		ans := ag.credentials(t, "127.0.1.3")
		if ans.Status != http.StatusForbidden {
			t.Fatalf("agent answered %d %s, want 403", ans.Status, ans.Body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "127.0.1.3"})
		if status.Code(err) != codes.PermissionDenied || refusal.Reason(err) != pb.Reason_REASON_POLICY_DENIED {
			t.Fatalf("server answered %v (reason %v), want PermissionDenied, policy denied", err, refusal.Reason(err))
		}
		if got := assumed("shared"); len(got) != 0 {
			t.Fatalf("STS was asked for shared with %v for a denied pod", got)
		}
		if n := metric(t, sp, "podiam_server_denials_total", map[string]string{"reason": "external_id_mismatch"}); n < 2 {
			t.Errorf("denials{reason=external_id_mismatch} = %v, want 2", n)
		}
		testenv.Eventually(t, 10*time.Second, "an Event on the denied pod", func() error {
			evs, err := kube.Client.CoreV1().Events("tenant-a").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=rogue"})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.Type == corev1.EventTypeWarning && ev.Reason == "IAMRoleDenied" && strings.Contains(ev.Message, "iam.amazonaws.com/external-id differs") {
					if strings.Contains(ev.Message, extA) || strings.Contains(ev.Message, extB) {
						return fmt.Errorf("the Event names an External ID: %q", ev.Message)
					}
					return nil
				}
			}
			return fmt.Errorf("events %v", evs.Items)
		})
	})

	t.Run("two namespaces with one role and different External IDs get separate sessions", func(t *testing.T) {
		pod("tenant-a", "shared-a", "127.0.1.4", "shared", "")
		pod("tenant-b", "shared-b", "127.0.1.5", "shared", "")
		a, b := ag.credentials(t, "127.0.1.4"), ag.credentials(t, "127.0.1.5")
		if a.Status != http.StatusOK || b.Status != http.StatusOK {
			t.Fatalf("agent answered %d %s and %d %s", a.Status, a.Body, b.Status, b.Body)
		}
		if a.Doc.AccessKeyID == b.Doc.AccessKeyID {
			t.Fatalf("both namespaces got the session %s", a.Doc.AccessKeyID)
		}
		if got := assumed("shared"); !slices.Equal(got, []string{extA, extB}) {
			t.Fatalf("shared assumed with %v, want once with each namespace's External ID", got)
		}
		// Asked again, each namespace gets its own session back from the
		// server's cache, not the other's.
		for ip, want := range map[string]string{"127.0.1.4": a.Doc.AccessKeyID, "127.0.1.5": b.Doc.AccessKeyID} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
			cancel()
			if err != nil || resp.GetCredentials().GetAccessKeyId() != want {
				t.Fatalf("%s: %v %v, want key %s", ip, resp.GetCredentials().GetAccessKeyId(), err, want)
			}
		}
		if n := len(proxyAssumes(proxy, roleARN("shared"))); n != 2 {
			t.Fatalf("%d AssumeRole calls for shared, want 2", n)
		}
	})

	t.Run("--external-id-from=namespace denies a pod that sets one", func(t *testing.T) {
		strict := startServer(t, kube, viaProxy, append(serverArgs, "--external-id-from=namespace")...)
		strictClient := credsClient(t, strict)
		pod("tenant-a", "named", "10.9.0.1", "a-app", extA) // even the namespace's own
		pod("tenant-a", "plain", "10.9.0.2", "a-app", "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := strictClient.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.9.0.1"})
		if status.Code(err) != codes.PermissionDenied || refusal.Reason(err) != pb.Reason_REASON_POLICY_DENIED {
			t.Fatalf("a pod setting an External ID: %v (reason %v), want PermissionDenied, policy denied", err, refusal.Reason(err))
		}
		if n := metric(t, strict, "podiam_server_denials_total", map[string]string{"reason": "external_id_from_pod"}); n != 1 {
			t.Errorf("denials{reason=external_id_from_pod} = %v, want 1", n)
		}
		resp, err := strictClient.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "10.9.0.2"})
		if err != nil {
			t.Fatalf("a pod without one: %v", err)
		}
		c := resp.GetCredentials()
		arn, err := moto.CallerIdentity(ctx, creds.Credentials{AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()})
		if err != nil || arn != "arn:aws:sts::"+account+":assumed-role/a-app/"+session {
			t.Fatalf("credentials are for %s (%v)", arn, err)
		}
		if got := assumed("a-app"); !slices.Equal(got, []string{extA}) {
			t.Fatalf("a-app assumed with %v, want only the namespace's External ID", got)
		}
		testenv.Eventually(t, 10*time.Second, "an Event on the pod that set one", func() error {
			evs, err := kube.Client.CoreV1().Events("tenant-a").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=named"})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.Reason == "IAMRoleDenied" && strings.Contains(ev.Message, "namespaces only") {
					return nil
				}
			}
			return fmt.Errorf("events %v", evs.Items)
		})
	})

	t.Run("a changed External ID applies within 1s and the old credentials are not served again", func(t *testing.T) {
		pod("rotating", "app", "127.0.1.6", "rot-app", "")
		first := ag.credentials(t, "127.0.1.6")
		if first.Status != http.StatusOK {
			t.Fatalf("agent answered %d %s", first.Status, first.Body)
		}
		oldKey := first.Doc.AccessKeyID
		// The agent serves it from its cache now.
		if again := ag.credentials(t, "127.0.1.6"); again.Doc.AccessKeyID != oldKey {
			t.Fatalf("second answer %q, want the cached %q", again.Doc.AccessKeyID, oldKey)
		}

		// The customer rotates: the role now trusts only the new External
		// ID, and the cluster admin sets it on the namespace.
		proxy.RequireExternalID(roleARN("rot-app"), extNew)
		changed := setNamespaceExternalID(t, kube, "rotating", extNew)
		newKey := waitNewKey(t, ag, "127.0.1.6", oldKey, changed)
		if got := assumed("rot-app"); !slices.Equal(got, []string{extNew, extOld}) {
			t.Fatalf("rot-app assumed with %v, want the old then the new External ID", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: "127.0.1.6"}); err != nil ||
			resp.GetCredentials().GetAccessKeyId() != newKey {
			t.Fatalf("server answered %v, %v; want the new key %s", resp.GetCredentials().GetAccessKeyId(), err, newKey)
		}

		// The annotation is removed: the role trusts no request without an
		// External ID, so the pod is refused within a second, and never
		// gets the credentials it held.
		removed := setNamespaceExternalID(t, kube, "rotating", "")
		deadline := removed.Add(time.Second)
		for {
			ans := ag.credentials(t, "127.0.1.6")
			if ans.Status == http.StatusForbidden {
				break
			}
			if ans.Doc.AccessKeyID != newKey || time.Now().After(deadline) {
				t.Fatalf("%s after the removal: %d %s", time.Since(removed), ans.Status, ans.Doc.AccessKeyID)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("removal applied after %s", time.Since(removed).Round(time.Millisecond))
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if ans := ag.credentials(t, "127.0.1.6"); ans.Status != http.StatusForbidden {
				t.Fatalf("after the removal the agent answered %d %s", ans.Status, ans.Doc.AccessKeyID)
			}
		}
		if got := assumed("rot-app"); !slices.Equal(got, []string{"!", extNew, extOld}) {
			t.Fatalf("rot-app assumed with %v, want a refused attempt without an External ID", got)
		}
	})

	t.Run("no External ID is written to the logs", func(t *testing.T) {
		for _, id := range []string{extA, extB, extOld, extNew} {
			if strings.Contains(sp.Logs(), id) || strings.Contains(ag.Logs(), id) {
				t.Errorf("%s is in the server's or the agent's log", id)
			}
		}
	})
}

// waitNewKey polls the agent as the pod at ip until it answers with a key
// other than oldKey, which must happen within a second of since, and then
// checks for two more seconds that oldKey never comes back.
func waitNewKey(t *testing.T, ag *agentProc, ip, oldKey string, since time.Time) string {
	t.Helper()
	var newKey string
	for {
		ans := ag.credentials(t, ip)
		elapsed := time.Since(since)
		if ans.Status == http.StatusOK && ans.Doc.AccessKeyID != oldKey {
			newKey = ans.Doc.AccessKeyID
			t.Logf("new credentials after %s", elapsed.Round(time.Millisecond))
			if elapsed > time.Second {
				t.Fatalf("the change took %s to apply, want at most 1s", elapsed)
			}
			break
		}
		if elapsed > time.Second {
			t.Fatalf("%s after the change the agent still answers %d %s", elapsed, ans.Status, ans.Doc.AccessKeyID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if ans := ag.credentials(t, ip); ans.Status != http.StatusOK || ans.Doc.AccessKeyID != newKey {
			t.Fatalf("after the change the agent answered %d %q, want the new key %s", ans.Status, ans.Doc.AccessKeyID, newKey)
		}
	}
	return newKey
}

// setNamespaceExternalID sets (or, with "", removes) a namespace's
// External ID annotation and returns when the API server took it.
func setNamespaceExternalID(t *testing.T, kube *testenv.Kube, name, id string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ns, err := kube.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if id == "" {
		delete(ns.Annotations, "iam.amazonaws.com/external-id")
	} else {
		ns.Annotations["iam.amazonaws.com/external-id"] = id
	}
	if _, err := kube.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// proxyAssumes returns the AssumeRole calls the proxy saw for roleARN.
func proxyAssumes(p *testenv.STSFaultProxy, roleARN string) []testenv.STSAttempt {
	var out []testenv.STSAttempt
	for _, a := range p.Attempts() {
		if a.Action == "AssumeRole" && a.RoleARN == roleARN {
			out = append(out, a)
		}
	}
	return out
}

// TestNamespaceExternalIDAcrossReconnect: the namespace's External ID
// changes while the only server is down, so no pod event can tell the
// agent. Once a server is back and the agent's pod stream has resynced,
// the agent checks what it holds again and never serves the credentials
// assumed under the old External ID, fresh as they are.
func TestNamespaceExternalIDAcrossReconnect(t *testing.T) {
	t.Parallel()
	const extOld, extNew = "ext-before-9", "ext-after-9"
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	args := []string{
		"--assume-role-arn=" + roleARN("podiam-server"),
		"--role-base-arn=" + roleARN(""),
		"--session-duration=15m", "--session-refresh=5m",
		"--pod-wait=3s",
	}
	sp := startServer(t, kube, viaProxy, args...)
	proxy.RequireExternalID(roleARN("rot-app"), extOld)
	kube.CreateNamespace(t, "rotating", map[string]string{
		"iam.amazonaws.com/permitted":   roleARN("rot-app"),
		"iam.amazonaws.com/external-id": extOld,
	})
	ag := startAgent(t, sp)
	kube.CreatePod(t, testenv.PodSpec{Namespace: "rotating", Name: "app", NodeName: "n1",
		Annotations: map[string]string{"iam.amazonaws.com/role": "rot-app"},
		PodIPs:      []string{"127.0.1.9"}, HostIPs: []string{node}})
	first := ag.credentials(t, "127.0.1.9")
	if first.Status != http.StatusOK {
		t.Fatalf("agent answered %d %s", first.Status, first.Body)
	}
	oldKey := first.Doc.AccessKeyID

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := sp.Stop(ctx); err != nil {
		t.Fatalf("server stop: %v", err)
	}
	// Through the outage the agent serves what it holds, as it must.
	if ans := ag.credentials(t, "127.0.1.9"); ans.Status != http.StatusOK || ans.Doc.AccessKeyID != oldKey {
		t.Fatalf("during the outage: %d %q, want the held %s", ans.Status, ans.Doc.AccessKeyID, oldKey)
	}
	proxy.RequireExternalID(roleARN("rot-app"), extNew)
	setNamespaceExternalID(t, kube, "rotating", extNew)

	restartServer(t, kube, viaProxy, sp, args...)
	back := time.Now()
	var newKey string
	for newKey == "" {
		ans := ag.credentials(t, "127.0.1.9")
		switch {
		case ans.Status == http.StatusOK && ans.Doc.AccessKeyID != oldKey:
			newKey = ans.Doc.AccessKeyID
			t.Logf("new credentials %s after the server was back", time.Since(back).Round(time.Millisecond))
		case time.Since(back) > 5*time.Second:
			t.Fatalf("%s after the server was back the agent answers %d %s", time.Since(back), ans.Status, ans.Doc.AccessKeyID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if ans := ag.credentials(t, "127.0.1.9"); ans.Status != http.StatusOK || ans.Doc.AccessKeyID != newKey {
			t.Fatalf("after the resync the agent answered %d %q, want %s", ans.Status, ans.Doc.AccessKeyID, newKey)
		}
	}
	var ids []string
	for _, a := range proxyAssumes(proxy, roleARN("rot-app")) {
		if a.Fault == 0 {
			ids = append(ids, a.ExternalID)
		}
	}
	if !slices.Contains(ids, extNew) {
		t.Fatalf("rot-app assumed with %v, want the new External ID", ids)
	}
}
