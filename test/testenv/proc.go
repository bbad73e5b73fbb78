package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ProcSpec is a child process to start: the parts of the installation
// (etcd, kube-apiserver, moto, podiam server and agent) and the harnesses'
// own helpers.
type ProcSpec struct {
	Name  string   // for messages
	Path  string   // the executable
	Args  []string // its arguments
	Env   []string // added to this process's environment
	Dir   string   // working directory; empty: this process's
	NetNS string   // if set, it runs in this network namespace (ip netns exec)
	Log   string   // file that takes its stdout and stderr, appended to
}

// Proc is a started child. It leads a process group of its own and dies
// with this process (parent-death signal), so that neither it nor anything
// it forks outlives a harness that is killed outright. Its caller stops it:
// Spawn registers no cleanup, since the demo has no testing.T and the e2e
// test hands processes from one scenario to the next.
type Proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once Wait returned
	waitErr error         // valid once done is closed
}

// killWait bounds the wait for a process to exit after SIGKILL, which it
// cannot refuse: only a process stuck in the kernel takes longer.
const killWait = 30 * time.Second

// Spawn starts spec.
func Spawn(spec ProcSpec) (*Proc, error) {
	argv := append([]string{spec.Path}, spec.Args...)
	if spec.NetNS != "" {
		ip, err := LookPath("ip")
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Name, err)
		}
		// ip netns exec execs the command in place, so the pid, the process
		// group and the parent-death signal carry over.
		argv = append([]string{ip, "netns", "exec", spec.NetNS}, argv...)
	}
	logFile, err := os.OpenFile(spec.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s log: %w", spec.Name, err)
	}
	defer logFile.Close() // the child holds its own copy of the descriptor

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Proc{name: spec.Name, logPath: spec.Log, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Name is the spec's name.
func (p *Proc) Name() string { return p.name }

// LogPath is the file that takes the process's output.
func (p *Proc) LogPath() string { return p.logPath }

// Pid is the process id, which is also its process group id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Logs returns everything the process wrote so far.
func (p *Proc) Logs() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.logPath, err)
	}
	return string(b)
}

// Tail returns the last n lines of the log, for failure messages.
func (p *Proc) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Logs(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Exited reports whether the process ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, as a kubelet stops a container, and waits for the
// process to exit; it returns how the process ended, so that a
// race-enabled child that found a data race (exit status 66) fails the
// test. When ctx ends first, the process group is killed.
func (p *Proc) Stop(ctx context.Context) error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: SIGTERM: %w", p.name, err)
	}
	select {
	case <-p.done:
		if p.waitErr != nil {
			return fmt.Errorf("%s: %w", p.name, p.waitErr)
		}
		return nil
	case <-ctx.Done():
		if err := p.Kill(); err != nil {
			return err
		}
		return fmt.Errorf("%s did not exit after SIGTERM: %w", p.name, context.Cause(ctx))
	}
}

// Kill kills the whole process group with SIGKILL, as a crash or the OOM
// killer ends a process: no chance to clean up. The group also takes
// grandchildren such as the python behind a pyenv shim. It returns once
// the process has exited.
func (p *Proc) Kill() error {
	pid := p.Pid()
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s process group %d: %w", p.name, pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("%s (pid %d) did not exit within %s of SIGKILL", p.name, pid, killWait)
	}
}

// pollInterval is how often WaitReady asks.
const pollInterval = 200 * time.Millisecond

// WaitReady polls ready until it returns nil. It fails when one of procs
// exits first, since waiting longer is pointless then, or when ctx ends,
// with ready's last error.
func WaitReady(ctx context.Context, what string, ready func(context.Context) error, procs ...*Proc) error {
	for {
		for _, p := range procs {
			if gone, err := p.Exited(); gone {
				return fmt.Errorf("%s exited while waiting for %s: %v", p.name, what, err)
			}
		}
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %w)", what, context.Cause(ctx), err)
		case <-time.After(pollInterval):
		}
	}
}

// failTail is how much of a process's log a failed test shows.
const failTail = 60

// StartProc is Spawn for a test (or the demo's runner): it fails t when the
// process does not start, and in t's cleanup kills the process group and,
// if t failed, shows the end of the log.
func StartProc(t testing.TB, spec ProcSpec) *Proc {
	t.Helper()
	p, err := Spawn(spec)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { killProc(t, p) })
	return p
}

// killProc kills p for a test that is ending or restarting it, and shows
// the end of its log if the test failed.
func killProc(t testing.TB, p *Proc) {
	t.Helper()
	if err := p.Kill(); err != nil {
		t.Errorf("testenv: %v", err)
	}
	LogTails(t, p)
}

// Ready is WaitReady for a test: it waits up to timeout and fails t, with
// the end of each process's log, when the wait fails.
func Ready(t testing.TB, timeout time.Duration, what string, ready func(context.Context) error, procs ...*Proc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := WaitReady(ctx, what, ready, procs...); err != nil {
		var b strings.Builder
		for _, p := range procs {
			fmt.Fprintf(&b, "\nlast lines of %s (%s):\n%s", p.name, p.logPath, p.Tail(failTail))
		}
		t.Fatalf("testenv: %v%s", err, b.String())
	}
}

// LogTails shows the end of each process's log when t has failed.
func LogTails(t testing.TB, procs ...*Proc) {
	t.Helper()
	if !t.Failed() {
		return
	}
	for _, p := range procs {
		if p != nil {
			t.Logf("last lines of %s (%s):\n%s", p.name, p.logPath, p.Tail(failTail))
		}
	}
}
