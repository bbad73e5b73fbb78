package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// runResult is what a command run in a pod did.
type runResult struct {
	Stdout, Stderr string
	Err            error
}

// inPod runs argv inside the pod's network namespace with the pod
// environment, killing its whole process group after timeout.
func (n *node) inPod(pd *pod, timeout time.Duration, argv ...string) runResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.ip, append([]string{"netns", "exec", pd.NetNS}, argv...)...)
	cmd.Env = n.podEnv
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return runResult{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
}

// curlResult is one HTTP exchange made with curl from a pod.
type curlResult struct {
	Exit int // curl's exit code
	Code int // HTTP status, 0 without a response
	Body string
	Err  string
}

func (r curlResult) String() string {
	return fmt.Sprintf("curl exit %d, HTTP %d, body %q %s", r.Exit, r.Code, r.Body, strings.TrimSpace(r.Err))
}

// curl sends one request from the pod to the metadata address.
func (n *node) curl(pd *pod, method, path string, headers ...string) curlResult {
	const codeMark = "\n@@podiam-demo-http-code@@"
	argv := []string{"curl", "-sS", "--max-time", "5", "-X", method, "-w", codeMark + "%{http_code}"}
	for _, h := range headers {
		argv = append(argv, "-H", h)
	}
	argv = append(argv, "http://"+metadataIP+path)
	r := n.inPod(pd, 15*time.Second, argv...)
	res := curlResult{Err: r.Stderr}
	var exitErr *exec.ExitError
	if errors.As(r.Err, &exitErr) {
		res.Exit = exitErr.ExitCode()
	} else if r.Err != nil {
		res.Exit = -1
		res.Err += r.Err.Error()
	}
	if body, code, ok := strings.Cut(r.Stdout, codeMark); ok {
		res.Body = body
		res.Code, _ = strconv.Atoi(strings.TrimSpace(code))
	}
	return res
}
