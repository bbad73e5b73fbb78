package integration

import (
	"context"
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/podiam/podiam/pkg/creds"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// sessionPod is a pod of TestSessionParameters and what it must get.
type sessionPod struct {
	ns, name, sa, ip string
	ann              map[string]string
	session          string // the session name STS must see
	source           string // the SourceIdentity STS must see
}

// TestSessionParameters runs the server with session names, source
// identities and session tags from pod metadata and checks, at a proxy in
// front of moto, what reaches STS: the exact parameters of every
// AssumeRole, one call per distinct session however many pods share it,
// and the same values in GetCallerIdentity and the audit log.
func TestSessionParameters(t *testing.T) {
	t.Parallel()
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	sp := startServer(t, kube, viaProxy,
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		"--session-name-template={{.Namespace}}.{{.ServiceAccount}}",
		"--source-identity-template={{.ServiceAccount}}@{{.Namespace}}",
		"--session-tags=namespace,serviceaccount",
		"--static-session-tag=eks-cluster-name=it-cluster",
		"--transitive-session-tags",
		"--pod-wait=3s")
	client := credsClient(t, sp)
	permitted := map[string]string{"iam.amazonaws.com/permitted": roleARN("app-.*")}
	kube.CreateNamespace(t, "team-a", permitted)
	kube.CreateNamespace(t, "team-b", permitted)

	pods := []sessionPod{
		{"team-a", "api-1", "api", "10.4.0.1", nil, "team-a.api", "api@team-a"},
		// The annotation no longer names the session once a template does:
		// the pod shares its account's session.
		{"team-a", "api-2", "api", "10.4.0.2", map[string]string{"iam.amazonaws.com/session-name": "other"}, "team-a.api", "api@team-a"},
		{"team-a", "worker-1", "worker", "10.4.0.3", nil, "team-a.worker", "worker@team-a"},
		{"team-b", "api-1", "api", "10.4.0.4", nil, "team-b.api", "api@team-b"},
	}
	role := roleARN("app-shared")
	keyIDs := map[string]string{} // session name -> access key id
	uids := map[string]string{}   // pod address -> pod UID
	for _, p := range pods {
		ann := map[string]string{"iam.amazonaws.com/role": "app-shared"}
		for k, v := range p.ann {
			ann[k] = v
		}
		created := kube.CreatePod(t, testenv.PodSpec{Namespace: p.ns, Name: p.name, ServiceAccount: p.sa, Annotations: ann,
			PodIPs: []string{p.ip}, HostIPs: []string{node}})
		uids[p.ip] = string(created.UID)
	}
	for _, p := range pods {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: p.ip})
		cancel()
		if err != nil {
			t.Fatalf("%s/%s: %v", p.ns, p.name, err)
		}
		c := resp.GetCredentials()
		arn, err := moto.CallerIdentity(context.Background(), creds.Credentials{
			AccessKeyID: c.GetAccessKeyId(), SecretAccessKey: c.GetSecretAccessKey(), SessionToken: c.GetSessionToken()})
		if err != nil {
			t.Fatal(err)
		}
		if want := "arn:aws:sts::" + account + ":assumed-role/app-shared/" + p.session; arn != want {
			t.Errorf("%s/%s: caller identity %q, want %q", p.ns, p.name, arn, want)
		}
		if prev, ok := keyIDs[p.session]; ok && prev != c.GetAccessKeyId() {
			t.Errorf("%s/%s: access key %s, but session %s was issued %s: pods of one session must share it",
				p.ns, p.name, c.GetAccessKeyId(), p.session, prev)
		}
		keyIDs[p.session] = c.GetAccessKeyId()
	}

	// One AssumeRole per distinct session, each with its name and source
	// identity.
	calls := proxy.AssumeRoles(role)
	sent := map[string]int{}
	sources := map[string]string{}
	tags := map[string]url.Values{} // session name -> the tag parameters sent
	for _, a := range calls {
		name := a.Form.Get("RoleSessionName")
		sent[name]++
		sources[name] = a.Form.Get("SourceIdentity")
		tags[name] = url.Values{}
		for k, v := range a.Form {
			if strings.HasPrefix(k, "Tags.") || strings.HasPrefix(k, "TransitiveTagKeys.") {
				tags[name][k] = v
			}
		}
	}
	if len(calls) != len(keyIDs) || len(sent) != len(keyIDs) {
		t.Fatalf("%d AssumeRole calls for %s with session names %v; want one for each of %d sessions",
			len(calls), role, sent, len(keyIDs))
	}
	for name := range keyIDs {
		if sent[name] != 1 {
			t.Errorf("session %s: %d AssumeRole calls, want 1 (sent: %v)", name, sent[name], sent)
		}
	}

	for _, p := range pods {
		if sources[p.session] != p.source {
			t.Errorf("session %s: SourceIdentity %q sent, want %q", p.session, sources[p.session], p.source)
		}
		// Exactly these, sorted by key, every one transitive: the EKS
		// Pod Identity keys ABAC policies are written against.
		want := url.Values{
			"Tags.member.1.Key": {"eks-cluster-name"}, "Tags.member.1.Value": {"it-cluster"},
			"Tags.member.2.Key": {"kubernetes-namespace"}, "Tags.member.2.Value": {p.ns},
			"Tags.member.3.Key": {"kubernetes-service-account"}, "Tags.member.3.Value": {p.sa},
			"TransitiveTagKeys.member.1": {"eks-cluster-name"},
			"TransitiveTagKeys.member.2": {"kubernetes-namespace"},
			"TransitiveTagKeys.member.3": {"kubernetes-service-account"},
		}
		if !reflect.DeepEqual(tags[p.session], want) {
			t.Errorf("session %s: tags sent %v, want %v", p.session, tags[p.session], want)
		}
	}

	// The audit line names the session, so a CloudTrail event joins to
	// it by session name as well as by access key.
	lines := auditLines(t, sp.Logs())
	for _, p := range pods {
		l, ok := lines[p.ns+"/"+p.name]
		if !ok {
			t.Fatalf("no credentials issued line for %s/%s", p.ns, p.name)
		}
		if l["session_name"] != p.session || l["source_identity"] != p.source ||
			l["access_key_id"] != keyIDs[p.session] || l["role_arn"] != role {
			t.Errorf("%s/%s: audit line %v", p.ns, p.name, l)
		}
		wantTags := map[string]any{"eks-cluster-name": "it-cluster", "kubernetes-namespace": p.ns, "kubernetes-service-account": p.sa}
		if !reflect.DeepEqual(l["session_tags"], wantTags) {
			t.Errorf("%s/%s: audit line tags %v, want %v", p.ns, p.name, l["session_tags"], wantTags)
		}
	}

	// A second server on the same cluster, tagging each pod with its UID:
	// every pod is a session of its own, and each costs exactly one call.
	t.Run("per-pod tags mean one session per pod", func(t *testing.T) {
		proxy, viaProxy := testenv.BehindProxy(t, moto)
		sp := startServer(t, kube, viaProxy,
			"--assume-role-arn="+roleARN("podiam-server"),
			"--role-base-arn="+roleARN(""),
			"--session-tags=pod-uid",
			"--pod-wait=3s")
		client := credsClient(t, sp)
		issued := map[string]bool{}
		for _, p := range pods {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: p.ip})
			cancel()
			if err != nil {
				t.Fatalf("%s/%s: %v", p.ns, p.name, err)
			}
			issued[resp.GetCredentials().GetAccessKeyId()] = true
		}
		calls := proxy.AssumeRoles(role)
		if len(calls) != len(pods) || len(issued) != len(pods) {
			t.Fatalf("%d AssumeRole calls and %d distinct credentials for %d pods with per-pod tags", len(calls), len(issued), len(pods))
		}
		// KIAM's names (without a template the pod's session-name
		// annotation counts again), the tag alone telling pods apart.
		wantName := map[string]string{}
		for _, p := range pods {
			wantName[uids[p.ip]] = "kiam-kiam"
			if v := p.ann["iam.amazonaws.com/session-name"]; v != "" {
				wantName[uids[p.ip]] = "kiam-" + v
			}
		}
		for _, a := range calls {
			uid := a.Form.Get("Tags.member.1.Value")
			name, ok := wantName[uid]
			if !ok || a.Form.Get("RoleSessionName") != name || a.Form.Get("Tags.member.1.Key") != "kubernetes-pod-uid" ||
				a.Form.Has("Tags.member.2.Key") || a.Form.Has("TransitiveTagKeys.member.1") || a.Form.Has("SourceIdentity") {
				t.Errorf("AssumeRole parameters %v", a.Form)
			}
			delete(wantName, uid)
		}
		if len(wantName) != 0 {
			t.Errorf("pods never sent: %v", wantName)
		}
	})
}

// auditLines returns the last "credentials issued" line of each pod
// (namespace/name) in a JSON log.
func auditLines(t *testing.T, logs string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"credentials issued"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out[m["namespace"].(string)+"/"+m["pod"].(string)] = m
	}
	return out
}
