package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/podiam/podiam/test/testenv"
)

// testBypasses tries the ways around the DNAT rule a pod has short of
// breaking out of its namespace: the agent's own ports on the node
// address, and another pod's source address. None gets a pod more than
// its own role.
func testBypasses(t *testing.T, e *env) {
	agent := "http://" + hostPort(nodeIP, agentPort)
	t.Run("the agent's port on the node address names the caller by its source address", func(t *testing.T) {
		if r := e.curl(e.web, http.MethodGet, agent, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
			t.Errorf("web pod, direct: %s, want its own role", r)
		}
		// The denied pod gains nothing by skipping the rule.
		for _, path := range []string{testenv.CredentialsPath, testenv.CredentialsPath + "app-web"} {
			if r := e.curl(e.intruder, http.MethodGet, agent, path); r.Code == http.StatusOK {
				t.Errorf("denied pod, direct GET %s: %s", path, r)
			}
		}
		// A forwarding header names another pod: ignored.
		r := e.curl(e.intruder, http.MethodGet, agent, testenv.CredentialsPath+"app-web",
			"X-Forwarded-For: "+e.web.IP, "X-Real-Ip: "+e.web.IP, "Forwarded: for="+e.web.IP)
		if r.Code == http.StatusOK {
			t.Errorf("denied pod with forwarding headers naming the web pod: %s", r)
		}
	})

	t.Run("the agent's metrics and health ports reveal no credentials to a pod", func(t *testing.T) {
		_, doc, _ := e.credsOf(e.web)
		if doc.AccessKeyId == "" {
			t.Fatal("the web pod holds no credentials to look for")
		}
		for _, url := range []string{"http://" + hostPort(nodeIP, agentMetr) + "/metrics", agent + "/health", agent + "/ping"} {
			r := e.curlArgs(e.intruder, url)
			if r.Exit != 0 {
				continue // not reachable from a pod: nothing to reveal
			}
			for _, secret := range []string{doc.AccessKeyId, doc.SecretAccessKey, doc.Token, e.web.IP, "arn:aws"} {
				if secret != "" && strings.Contains(r.Body, secret) {
					t.Errorf("%s from a pod reveals %.12q…", url, secret)
				}
			}
		}
	})

	t.Run("a pod spoofing another pod's address completes no handshake", func(t *testing.T) {
		// The intruder takes the web pod's address as its own source. The
		// node routes the agent's answer to the web pod, which never sent
		// the SYN, so no connection (and no credentials) results.
		sh(t, e.topo.ip, "-n", e.intruder.NS, "addr", "add", e.web.IP+"/32", "dev", "eth0")
		defer sh(t, e.topo.ip, "-n", e.intruder.NS, "addr", "del", e.web.IP+"/32", "dev", "eth0")
		for _, base := range []string{"http://" + testenv.MetadataIP, agent} {
			r := e.curlArgs(e.intruder, base+testenv.CredentialsPath+"app-web", "--interface", e.web.IP, "--max-time", "3")
			var doc credDoc
			_ = json.Unmarshal([]byte(r.Body), &doc)
			if r.Code != 0 || doc.AccessKeyId != "" {
				t.Errorf("spoofed %s from the intruder pod to %s: %s, want no connection", e.web.IP, base, r)
			}
		}
	})
	e.assertAgentUp(t)
	e.canary.assertUntouched(t)
}
