package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/podiam/podiam/test/testenv"
)

// pushedIP is the address of the pod the push scenario starts, a second
// address on the reused pod's interface.
const pushedIP = "10.78.2.1"

// testPushedCredentials: the server sends a new pod's credentials to the
// agent when the pod gets its address, so its first request is answered on
// the node: no GetPodCredentials reaches the server. Changing the pod's
// role to one its namespace does not permit revokes them at once: within a
// second its requests are refused.
func testPushedCredentials(t *testing.T, e *env) {
	p := e.reused
	sh(t, e.topo.ip, "-n", p.NS, "addr", "add", pushedIP+"/32", "dev", "eth0")
	sh(t, e.topo.ip, "-n", e.topo.NodeNS, "route", "add", pushedIP+"/32", "dev", p.Veth)
	t.Cleanup(func() {
		sh(t, e.topo.ip, "-n", e.topo.NodeNS, "route", "del", pushedIP+"/32", "dev", p.Veth)
		sh(t, e.topo.ip, "-n", p.NS, "addr", "del", pushedIP+"/32", "dev", "eth0")
	})
	server := "http://" + hostPort(nodeIP, serverMetr) + "/metrics"
	agent := "http://" + hostPort(nodeIP, agentMetr) + "/metrics"
	scrape := func(url, name string, labels map[string]string) float64 {
		t.Helper()
		v, err := testenv.ScrapeMetric(context.Background(), url, name, labels)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	getPodCredentials := map[string]string{"method": "/podiam.v1.Credentials/GetPodCredentials"}
	stored := map[string]string{"result": "stored"}
	rpcs0 := scrape(server, "podiam_grpc_server_handled_total", getPodCredentials)
	stored0 := scrape(agent, "podiam_agent_cache_pushes_total", stored)

	e.kube.CreatePod(t, testenv.PodSpec{Namespace: nsApps, Name: "pushed", NodeName: nodeName,
		Annotations: map[string]string{"iam.amazonaws.com/role": "app-pushed"},
		PodIPs:      []string{pushedIP}, HostIPs: []string{nodeIP}})
	defer e.kube.DeletePod(t, nsApps, "pushed", 0)
	testenv.Eventually(t, 15*time.Second, "the agent holds the pushed credentials", func() error {
		if scrape(agent, "podiam_agent_cache_pushes_total", stored) == stored0 {
			return fmt.Errorf("nothing pushed yet")
		}
		return nil
	})

	url := "http://" + testenv.MetadataIP + testenv.CredentialsPath + "app-pushed"
	r := e.curlArgs(p, url, "--interface", pushedIP)
	if r.Code != http.StatusOK || !strings.Contains(r.Body, `"AccessKeyId"`) {
		t.Fatalf("the new pod's first request: %s", r)
	}
	if got := scrape(server, "podiam_grpc_server_handled_total", getPodCredentials) - rpcs0; got != 0 {
		t.Errorf("%v GetPodCredentials calls reached the server for a pod whose credentials were pushed, want 0", got)
	}
	if got := scrape(agent, "podiam_agent_cache_requests_total", map[string]string{"result": "pushed"}); got < 1 {
		t.Errorf("agent answered %v requests from pushed credentials, want at least 1", got)
	}

	// Revoked: a role the namespace does not permit.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods := e.kube.Client.CoreV1().Pods(nsApps)
	start := time.Now()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := pods.Get(ctx, "pushed", metav1.GetOptions{})
		if err != nil {
			return err
		}
		pod.Annotations["iam.amazonaws.com/role"] = "batch-pushed"
		_, err = pods.Update(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("change the pod's role: %v", err)
	}
	var last testenv.CurlResult
	for {
		last = e.curlArgs(p, url, "--interface", pushedIP)
		if last.Code == http.StatusForbidden || last.Code == http.StatusNotFound {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("still %s 5 s after the role was revoked", last)
		}
	}
	took := time.Since(start)
	t.Logf("revoked role refused %s after the update was sent (%d)", took.Round(time.Millisecond), last.Code)
	if took > time.Second {
		t.Errorf("revoked role refused after %s, want within 1 s", took)
	}
}
