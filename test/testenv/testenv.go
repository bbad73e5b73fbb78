// Package testenv is the one harness of podiam's demo, integration and e2e
// tests and benchmarks. It starts the real parts they run against (etcd and
// kube-apiserver, moto as STS, a small PKI for mutual TLS) and podiam
// itself: BuildPodiam is the one build of the binary, Proc the one child
// process type (start, logs, readiness, SIGTERM then SIGKILL, or kill -9
// for fault tests), Supervisor the one keeper of a run's network
// namespaces, and the metadata constants are shared. Fakes are not evidence
// that the system works, so these helpers fail the test (never skip it)
// when a binary is missing, pointing at hack/install-deps.sh.
//
// Every process runs in its own process group with a parent-death signal,
// and the processes testenv starts for a test are killed and reaped in
// t.Cleanup, so nothing outlives the test binary even when a test fails
// half way.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
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
// kube-apiserver, or "bin" when the repository is not found.
func BinDir() string {
	if root, err := RepoRoot(); err == nil {
		return filepath.Join(root, "bin")
	}
	return "bin"
}

// RepoRoot returns the repository root: the first directory holding go.mod
// above the working directory (go test runs in the package directory).
func RepoRoot() (string, error) {
	if wd, err := os.Getwd(); err == nil {
		if root, ok := findRoot(wd); ok {
			return root, nil
		}
	}
	// A binary run from elsewhere still knows where its source was, unless
	// it was built with -trimpath.
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if root, ok := findRoot(filepath.Dir(file)); ok {
			return root, nil
		}
	}
	return "", errors.New("no go.mod above the working directory: run from the podiam repository")
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

// etcdArchEnv is the environment Debian's etcd 3.4 needs to start on
// anything but amd64.
func etcdArchEnv() []string {
	if runtime.GOARCH != "amd64" {
		return []string{"ETCD_UNSUPPORTED_ARCH=" + runtime.GOARCH}
	}
	return nil
}

// Eventually polls cond until it returns nil or timeout passes, then fails
// the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
