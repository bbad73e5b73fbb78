// Package testenv starts the real parts that podiam's integration and e2e
// tests run against: etcd and kube-apiserver, moto as STS, and a small PKI
// for mutual TLS. Fakes are not evidence that the system works, so these
// helpers fail the test (never skip it) when a binary is missing, pointing at
// hack/install-deps.sh.
//
// Every process runs in its own process group with a parent-death signal, and
// the group is killed and reaped in t.Cleanup, so nothing outlives the test
// binary even when a test fails half way.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// installHint tells the reader of a failed test how to get a missing binary.
func installHint(name string) string {
	switch name {
	case "kube-apiserver":
		return "run hack/install-kube-apiserver.sh (or hack/install-deps.sh)"
	case "etcd":
		return "apt-get install etcd-server, or run hack/install-deps.sh as root"
	case "moto_server":
		return "pip install 'moto[server]', or run hack/install-deps.sh as root"
	case "aws":
		return "pip install awscli, or run hack/install-deps.sh as root"
	case "ip":
		return "apt-get install iproute2, or run hack/install-deps.sh as root"
	case "iptables", "wrk", "curl":
		return "apt-get install " + name + ", or run hack/install-deps.sh as root"
	case "protoc":
		return "apt-get install protobuf-compiler, or run hack/install-deps.sh as root"
	default:
		return "run hack/install-deps.sh as root"
	}
}

// sbinDirs are searched after PATH because tests may run as a user whose PATH
// lacks them while iptables and ip live there on Debian.
func sbinDirs() []string { return []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} }

// BinDir returns <repo>/bin, where hack scripts cache built tools such as
// kube-apiserver. The repository root is the first directory holding go.mod
// above the working directory (go test runs in the package directory).
func BinDir() string {
	if wd, err := os.Getwd(); err == nil {
		if root, ok := findRoot(wd); ok {
			return filepath.Join(root, "bin")
		}
	}
	// A test binary run from elsewhere still knows where its source was,
	// unless it was built with -trimpath.
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if root, ok := findRoot(filepath.Dir(file)); ok {
			return filepath.Join(root, "bin")
		}
	}
	return "bin"
}

func findRoot(dir string) (string, bool) {
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// LookPath finds a binary in BinDir, then PATH, then the sbin directories.
func LookPath(name string) (string, error) {
	candidate := filepath.Join(BinDir(), name)
	if isExecutable(candidate) {
		return candidate, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range sbinDirs() {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in %s, PATH or %s", name, BinDir(), strings.Join(sbinDirs(), ":"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Need fails the test with an install hint when a binary is missing. It
// never skips: a test that silently skips on CI proves nothing.
func Need(t testing.TB, binaries ...string) {
	t.Helper()
	var missing []string
	for _, name := range binaries {
		if _, err := LookPath(name); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", name, installHint(name)))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("testenv: required binaries missing: %s", strings.Join(missing, "; "))
	}
}

// Bin is Need for one binary that also returns its path.
func Bin(t testing.TB, name string) string {
	t.Helper()
	Need(t, name)
	p, err := LookPath(name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(t testing.TB) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

// bindAddr is where a part listens: addr, which must be an IP address, or
// 127.0.0.1 when addr is empty.
func bindAddr(t testing.TB, option, addr string) string {
	t.Helper()
	if addr == "" {
		return "127.0.0.1"
	}
	if net.ParseIP(addr) == nil {
		t.Fatalf("testenv: %s %q is not an IP address", option, addr)
	}
	return addr
}

// freePorts holds every listener open until all ports are chosen, so that one
// call never returns the same port twice.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: find free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// runCommand runs a short helper command and returns its combined output.
func runCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// logTailLines is how much of a process's output a failed test prints.
const logTailLines = 50

// process is a started child whose whole process group dies in t.Cleanup.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once Wait returned
	waitErr error         // valid after done is closed
}

// startProcess starts bin with args, inside network namespace netns when set,
// with output to dir/name.log. env is added to the test's environment.
func startProcess(t testing.TB, dir, name, netns, bin string, args, env []string) *process {
	t.Helper()
	p := spawnProcess(t, dir, name, netns, bin, args, env)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// spawnProcess is startProcess for a caller that ends the process itself,
// e.g. one restarted during the test; the output is appended to the same log.
func spawnProcess(t testing.TB, dir, name, netns, bin string, args, env []string) *process {
	t.Helper()
	argv := append([]string{bin}, args...)
	if netns != "" {
		// ip netns exec execs the command in place, so the pid, the process
		// group and the parent-death signal carry over.
		argv = append([]string{Bin(t, "ip"), "netns", "exec", netns}, argv...)
	}
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("testenv: create %s log: %v", name, err)
	}
	defer logFile.Close() // the child holds its own copy of the descriptor

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start %s: %v", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p
}

// stop kills the process and, if the test failed, shows the end of its log.
func (p *process) stop(t testing.TB) {
	t.Helper()
	p.kill(t)
	if t.Failed() {
		t.Logf("testenv: last %d lines of %s (%s):\n%s", logTailLines, p.name, p.logPath, tail(p.logPath, logTailLines))
	}
}

// kill kills the whole process group, which also catches grandchildren such
// as the python behind a pyenv shim, and waits for the leader.
func (p *process) kill(t testing.TB) {
	t.Helper()
	pid := p.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Errorf("testenv: kill %s process group %d: %v", p.name, pid, err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("testenv: %s (pid %d) did not exit after SIGKILL", p.name, pid)
	}
}

// exited reports whether the process is gone, and how it ended.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// waitFor polls ready until it returns nil, a process exits, or timeout
// passes; it fails the test with the last error in the two latter cases.
func waitFor(t testing.TB, what string, timeout time.Duration, procs []*process, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, p := range procs {
			if gone, err := p.exited(); gone {
				t.Fatalf("testenv: %s exited while waiting for %s: %v (log %s)", p.name, what, err, p.logPath)
			}
		}
		if last = ready(); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s not ready after %s: %v", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// etcdArchEnv is the environment Debian's etcd 3.4 needs to start on
// anything but amd64.
func etcdArchEnv() []string {
	if runtime.GOARCH != "amd64" {
		return []string{"ETCD_UNSUPPORTED_ARCH=" + runtime.GOARCH}
	}
	return nil
}
