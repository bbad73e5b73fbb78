package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// proc is a podiam process on the node, in its own process group so that
// stopping it stops anything it forked.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // valid once done is closed
}

// startProc starts podiam with args; it is killed when the demo ends.
func (n *node) startProc(name string, args, env []string) *proc {
	logPath := filepath.Join(n.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		n.r.Fatalf("create %s log: %v", name, err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd := exec.Command(n.podiam, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.r.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	n.r.Cleanup(func() {
		p.kill()
		if n.r.Failed() {
			n.r.Logf("last lines of podiam %s (%s):\n%s", name, logPath, p.tail(30))
		}
	})
	return p
}

func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
	}
}

func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

func (p *proc) logs() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	return string(b)
}

func (p *proc) tail(lines int) string {
	l := strings.Split(strings.TrimRight(p.logs(), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// inPod runs argv inside the pod's network namespace with the pod
// environment, killing its whole process group after timeout.
func (n *node) inPod(pd *pod, timeout time.Duration, argv ...string) testenv.RunResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testenv.RunInNetNS(ctx, pd.NetNS, n.podEnv, nil, argv...)
}

// curl sends one request from the pod to the metadata address.
func (n *node) curl(pd *pod, method, path string, headers ...string) testenv.CurlResult {
	args := []string{"-X", method}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return testenv.Curl(ctx, pd.NetNS, n.podEnv, "http://"+testenv.MetadataIP+path, args...)
}
