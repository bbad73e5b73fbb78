package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// proc is a podiam process in the node namespace (this process's own), in
// its own process group so that stopping it also stops anything it forked.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // valid once done is closed
}

// startProc starts podiam with args; failures end t, and the process is
// killed when TestE2E ends, not t: a scenario that restarts the agent hands
// the new one to the scenarios after it.
func (e *env) startProc(t testing.TB, name string, args, env []string) *proc {
	t.Helper()
	return e.startExe(t, e.podiam, name, args, env)
}

// startExe is startProc for any executable.
func (e *env) startExe(t testing.TB, exe, name string, args, env []string) *proc {
	t.Helper()
	logPath := filepath.Join(e.logDir, fmt.Sprintf("%s-%d.log", name, e.seq.Add(1)))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create %s log: %v", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(append(os.Environ(), raceEnv()), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	e.root.Cleanup(func() { p.kill() })
	return p
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

// Logs returns everything the process wrote.
func (p *proc) Logs() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	return string(b)
}

// Tail returns the last n lines of the log.
func (p *proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Logs(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Exited reports whether the process ended, and how.
func (p *proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends sig to the leader and waits up to timeout for it to exit.
func (p *proc) Stop(sig syscall.Signal, timeout time.Duration) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not exit within %s of %v", p.name, timeout, sig)
	}
}

func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
	}
}

// failWithLogs prints the tail of every process log when the test failed.
func failWithLogs(t testing.TB, procs ...*proc) {
	t.Helper()
	if !t.Failed() {
		return
	}
	for _, p := range procs {
		if p != nil {
			t.Logf("last lines of %s (%s):\n%s", p.name, p.logPath, p.Tail(80))
		}
	}
}

// startServer runs `podiam server` on the node IP against the run's
// kube-apiserver and moto, and waits until `podiam health` says SERVING.
// extra flags come last, so they override the defaults here.
func (e *env) startServer(t testing.TB, extra ...string) *proc {
	t.Helper()
	addr := hostPort(nodeIP, serverPort)
	p := e.startProc(t, "server", append([]string{"server",
		"--json-log", "--level=debug",
		"--bind=" + addr,
		"--cert=" + e.pki.ServerCert, "--key=" + e.pki.ServerKey, "--ca=" + e.pki.CA,
		"--kubeconfig=" + e.kube.KubeconfigPath,
		"--prometheus-listen-addr=" + hostPort(nodeIP, serverMetr),
		"--role-base-arn-autodetect",
		"--session-duration=15m", "--session-refresh=5m",
		"--drain-time=0s",
	}, extra...), e.moto.Env())
	deadline := time.Now().Add(90 * time.Second)
	for {
		if gone, err := p.Exited(); gone {
			t.Fatalf("server exited during start: %v\n%s", err, p.Tail(60))
		}
		out, err := exec.Command(e.podiam, "health",
			"--cert="+e.pki.AgentCert, "--key="+e.pki.AgentKey, "--ca="+e.pki.CA,
			"--server-address="+addr, "--timeout=2s").CombinedOutput()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy after 90s: %v: %s\n%s", err, out, p.Tail(60))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// startAgent runs `podiam agent` with the command line the DaemonSet uses
// plus extra flags, and waits until it answers /ping and its DNAT rule is in
// the node's nat table.
func (e *env) startAgent(t testing.TB, extra ...string) *proc {
	t.Helper()
	args := append([]string{"agent",
		"--json-log", "--level=debug",
		"--port=" + strconv.Itoa(agentPort),
		"--host=" + nodeIP,
		"--host-interface=" + hostIfWild,
		"--iptables", "--no-iptables-remove",
		"--server-address=" + hostPort(nodeIP, serverPort),
		"--cert=" + e.pki.AgentCert, "--key=" + e.pki.AgentKey, "--ca=" + e.pki.CA,
		"--gateway-timeout-creation=1s",
		"--prometheus-listen-addr=" + hostPort(nodeIP, agentMetr),
	}, extra...)
	p := e.startProc(t, "agent", args, nil)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if gone, err := p.Exited(); gone {
			t.Fatalf("agent exited during start: %v\n%s", err, p.Tail(60))
		}
		status, body, err := get(client, fmt.Sprintf("http://%s/ping", hostPort(nodeIP, agentPort)))
		if err == nil && status == http.StatusOK && ruleInstalled(natRules(t)) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 60s (/ping: %d %q %v; nat rules:\n%s)\n%s",
				status, body, err, natRules(t), p.Tail(60))
		}
		time.Sleep(200 * time.Millisecond)
	}
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

func hostPort(host string, port int) string { return host + ":" + strconv.Itoa(port) }

// needBinaries fails the run with install hints for every missing tool.
func needBinaries(t testing.TB) {
	t.Helper()
	testenv.Need(t, "ip", "iptables", "curl", "etcd", "kube-apiserver", "moto_server", "aws", "python3", "node")
}
