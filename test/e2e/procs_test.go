package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// startProc starts podiam with args; failures end t, and the process is
// killed when TestE2E ends, not t: a scenario that restarts the agent hands
// the new one to the scenarios after it.
func (e *env) startProc(t testing.TB, name string, args, env []string) *testenv.Proc {
	t.Helper()
	return e.startExe(t, e.podiam, name, args, env)
}

// startExe is startProc for any executable.
func (e *env) startExe(t testing.TB, exe, name string, args, env []string) *testenv.Proc {
	t.Helper()
	return e.startExeIn(t, "", exe, name, args, env)
}

// startExeIn is startExe in network namespace ns ("" is this process's).
func (e *env) startExeIn(t testing.TB, ns, exe, name string, args, env []string) *testenv.Proc {
	t.Helper()
	p, err := testenv.Spawn(testenv.ProcSpec{Name: name, Path: exe, Args: args, NetNS: ns,
		Env: append([]string{raceEnv()}, env...),
		Log: filepath.Join(e.logDir, fmt.Sprintf("%s-%d.log", name, e.seq.Add(1)))})
	if err != nil {
		t.Fatal(err)
	}
	e.root.Cleanup(func() { _ = p.Kill() })
	return p
}

// stopTimeout is how long podiam gets to exit after SIGTERM.
const stopTimeout = 20 * time.Second

// stop stops p with SIGTERM, as a kubelet stops a container.
func stop(ctx context.Context, p *testenv.Proc) error {
	ctx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	return p.Stop(ctx)
}

// raceEnv keeps the race detector's options but drops its default
// one-second sleep before exit (atexit_sleep_ms), which every stop of the
// race-enabled podiam would otherwise cost: the fault scenarios stop the
// agent dozens of times. Races are still reported as they are detected.
func raceEnv() string {
	opts := os.Getenv("GORACE")
	if !strings.Contains(opts, "atexit_sleep_ms") {
		opts = strings.TrimSpace(opts + " atexit_sleep_ms=0")
	}
	return "GORACE=" + opts
}

// startServer runs `podiam server` on the node IP against the run's
// kube-apiserver and moto, and waits until `podiam health` says SERVING.
// extra flags come last, so they override the defaults here.
func (e *env) startServer(t testing.TB, extra ...string) *testenv.Proc {
	t.Helper()
	return e.startServerAt(t, serverPlace{host: nodeIP, kubeconfig: e.kube.KubeconfigPath, sts: e.moto}, extra...)
}

// serverPlace is where a server runs and what it talks to.
type serverPlace struct {
	name       string // for logs; default "server"
	netns      string // "" is this process's (the node's)
	host       string // its address: gRPC and metrics listen there
	kubeconfig string
	sts        *testenv.Moto // moto, or a proxy in front of it
}

// startServerAt is startServer at place.
func (e *env) startServerAt(t testing.TB, place serverPlace, extra ...string) *testenv.Proc {
	t.Helper()
	addr := hostPort(place.host, serverPort)
	name := place.name
	if name == "" {
		name = "server"
	}
	p := e.startExeIn(t, place.netns, e.podiam, name, append([]string{"server",
		"--json-log", "--level=debug",
		"--bind=" + addr,
		"--cert=" + e.pki.ServerCert, "--key=" + e.pki.ServerKey, "--ca=" + e.pki.CA,
		"--kubeconfig=" + place.kubeconfig,
		"--prometheus-listen-addr=" + hostPort(place.host, serverMetr),
		"--role-base-arn-autodetect",
		"--session-duration=15m", "--session-refresh=5m",
		"--drain-time=0s",
		"--agent-identity=podiam-agent",
		// Pods with their own role annotation, all but one scenario's,
		// are served as without it.
		"--service-account-roles",
	}, extra...), place.sts.Env())
	testenv.Ready(t, 90*time.Second, "podiam health", func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, e.podiam, "health",
			"--cert="+e.pki.AgentCert, "--key="+e.pki.AgentKey, "--ca="+e.pki.CA,
			"--server-address="+addr, "--timeout=2s").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}, p)
	return p
}

// agentArgs is the command line the DaemonSet uses, for a node whose
// address is host; the agent reaches the server at host too.
func (e *env) agentArgs(host string) []string {
	return []string{"agent",
		"--json-log", "--level=debug",
		"--port=" + strconv.Itoa(agentPort),
		"--host=" + host,
		"--host-interface=" + hostIfWild,
		"--iptables", "--no-iptables-remove",
		"--server-address=" + hostPort(host, serverPort),
		"--cert=" + e.pki.AgentCert, "--key=" + e.pki.AgentKey, "--ca=" + e.pki.CA,
		"--gateway-timeout-creation=1s",
		"--prometheus-listen-addr=" + hostPort(host, agentMetr),
	}
}

// startAgent runs `podiam agent` with the command line the DaemonSet uses
// plus extra flags, and waits until it answers /ping and its DNAT rule is in
// the node's nat table.
func (e *env) startAgent(t testing.TB, extra ...string) *testenv.Proc {
	t.Helper()
	return e.startAgentAt(t, "agent", "", nodeIP, extra...)
}

// startAgentAt is startAgent for the node in network namespace ns ("" is
// this process's) whose address is host.
func (e *env) startAgentAt(t testing.TB, name, ns, host string, extra ...string) *testenv.Proc {
	t.Helper()
	p := e.startExeIn(t, ns, e.podiam, name, append(e.agentArgs(host), extra...), nil)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	testenv.Ready(t, 60*time.Second, name+" /ping and DNAT rule", func(context.Context) error {
		status, body, err := get(client, fmt.Sprintf("http://%s/ping", hostPort(host, agentPort)))
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("/ping: %d %q %v", status, body, err)
		}
		rules := natRules(t)
		if ns != "" {
			rules = natRulesIn(t, ns)
		}
		if !ruleInstalledFor(rules, host) {
			return fmt.Errorf("no DNAT rule for the agent; nat rules:\n%s", rules)
		}
		return nil
	}, p)
	return p
}

// get fetches url from this (the node) namespace.
func get(client *http.Client, url string) (int, string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String(), err
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// needBinaries fails the run with install hints for every missing tool.
func needBinaries(t testing.TB) {
	t.Helper()
	testenv.Need(t, "ip", "iptables", "curl", "etcd", "kube-apiserver", "moto_server", "aws", "python3", "node")
}
