// Command podiam-demo (`make demo`) brings up a complete local podiam
// installation from real parts and shows it at work: etcd, kube-apiserver,
// moto as STS, `podiam server` and `podiam agent` with its iptables rule in
// a "node" network namespace, and three "pod" network namespaces joined to
// the node by veth pairs. It creates namespaces and pods through the API,
// then shows a permitted pod getting its role with the AWS CLI, a denied pod
// refused (with the reason and the Kubernetes Event), and an IMDSv2
// exchange. It needs root.
//
// Like the end-to-end test, the program supervises itself: the supervisor
// builds podiam, creates the network namespaces and re-executes itself
// inside the node namespace, where every process of the installation runs.
// Whatever happens to that child (a failure, Ctrl-C, SIGTERM, SIGKILL), the
// supervisor then kills what still runs in the namespaces, deletes them
// (their iptables rules and veths go with them) and removes the run's
// temporary directory. The host's own network and tables are never touched.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// The supervisor hands the child these through its environment.
const (
	envNodeNS = "PODIAM_DEMO_NODE_NS" // set only in the child, inside the node namespace
	envPodNS  = "PODIAM_DEMO_POD_NS"  // comma-separated pod namespaces
	envDir    = "PODIAM_DEMO_DIR"     // the run's directory, removed by the supervisor
	envPodiam = "PODIAM_DEMO_PODIAM"  // the podiam binary the supervisor built
)

// nsPrefix starts every network namespace and temporary directory the demo
// creates; the supervisor's pid follows, so that a later run can tell
// leftovers of a killed run (SIGKILL leaves no chance to clean up) from a
// run that is still going.
const nsPrefix = "podiam-demo-"

// podCount is how many pod network namespaces a run creates.
const podCount = 3

// childGrace is how long the supervisor waits for an interrupted child to
// stop its processes before it kills everything itself.
const childGrace = 20 * time.Second

var leftoverRE = regexp.MustCompile(`^` + regexp.QuoteMeta(nsPrefix) + `(\d+)-`)

func main() {
	if os.Getenv(envNodeNS) != "" {
		os.Exit(runNode(os.Stdout, os.Stderr))
	}
	os.Exit(supervise(os.Stdout, os.Stderr))
}

// prerequisite is a program the demo runs, with how to get it.
type prerequisite struct{ name, hint string }

func prerequisites() []prerequisite {
	return []prerequisite{
		{"go", "install Go from https://go.dev/dl/"},
		{"ip", "apt-get install iproute2"},
		{"iptables", "apt-get install iptables"},
		{"curl", "apt-get install curl"},
		{"etcd", "apt-get install etcd-server"},
		{"kube-apiserver", "hack/install-kube-apiserver.sh builds it into bin/"},
		{"moto_server", "pip install 'moto[server]'"},
		{"aws", "pip install awscli"},
	}
}

// missingPrerequisites returns a message naming every missing program, or
// "" when all are there.
func missingPrerequisites(lookPath func(string) (string, error)) string {
	var missing []string
	for _, p := range prerequisites() {
		if _, err := lookPath(p.name); err != nil {
			missing = append(missing, fmt.Sprintf("  %-15s %s", p.name, p.hint))
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "missing prerequisites (make deps, as root, installs all of them):\n" + strings.Join(missing, "\n")
}

// supervisor prepares a run, starts the child in the node namespace and
// removes everything afterwards.
type supervisor struct {
	stdout, stderr io.Writer
	ip             string // the ip(8) binary
	root           string // the repository
	run            string // this run's id: the supervisor's pid
	dir            string // the run's directory, removed at the end
	namespaces     []string

	mu       sync.Mutex
	child    *os.Process
	received os.Signal // the first SIGINT or SIGTERM
}

// supervise runs the demo and returns the process exit code.
func supervise(stdout, stderr io.Writer) int {
	s := &supervisor{stdout: stdout, stderr: stderr, run: strconv.Itoa(os.Getpid())}
	if os.Geteuid() != 0 {
		return s.fail("must run as root: it creates network namespaces, veth pairs and iptables rules (all inside namespaces it deletes on exit); try: sudo make demo")
	}
	if msg := missingPrerequisites(testenv.LookPath); msg != "" {
		return s.fail("%s", msg)
	}
	s.ip, _ = testenv.LookPath("ip")
	s.root = filepath.Dir(testenv.BinDir())
	if _, err := os.Stat(filepath.Join(s.root, "cmd", "podiam")); err != nil {
		return s.fail("run me from the podiam repository (no cmd/podiam under %s)", s.root)
	}

	// Signals are caught from the start so that an early Ctrl-C still
	// removes what exists by then.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for sig := range sigs {
			s.signal(sig)
			cancel()
		}
	}()

	started := time.Now()
	s.sweep()
	dir, err := os.MkdirTemp("", nsPrefix+s.run+"-")
	if err != nil {
		return s.fail("temp dir: %v", err)
	}
	s.dir = dir

	code := s.runDemo(ctx)

	fmt.Fprint(stdout, "cleaning up: processes, network namespaces with their veths and iptables rules, temp files... ")
	errs := deleteNamespaces(s.ip, s.namespaces)
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		fmt.Fprintln(stdout, "FAILED")
		for _, err := range errs {
			fmt.Fprintf(stderr, "podiam demo: cleanup: %v\n", err)
		}
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	if code == 0 {
		fmt.Fprintf(stdout, "demo finished in %s\n", since(started))
	}
	return code
}

func (s *supervisor) fail(format string, args ...any) int {
	fmt.Fprintf(s.stderr, "podiam demo: %s\n", fmt.Sprintf(format, args...))
	return 1
}

// signal records the first signal and passes every one to the child. On
// Ctrl-C the terminal signals the child too; it stops once either way.
func (s *supervisor) signal(sig os.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.received == nil {
		s.received = sig
		if s.child == nil {
			fmt.Fprintf(s.stdout, "\ninterrupted (%v)\n", sig)
		}
	}
	if s.child != nil {
		_ = s.child.Signal(sig)
	}
}

// interrupted returns the exit code for the signal received, if any.
func (s *supervisor) interrupted() (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.received == nil {
		return 0, false
	}
	return exitCode(s.received), true
}

// runDemo builds podiam, creates the namespaces and runs the child in the
// node namespace until it exits.
func (s *supervisor) runDemo(ctx context.Context) int {
	out := s.stdout
	fmt.Fprintln(out, "podiam demo: one node and three pods in network namespaces, with real etcd,")
	fmt.Fprintln(out, "kube-apiserver, moto (as STS), podiam server and podiam agent. Nothing outside")
	fmt.Fprintln(out, "the namespaces it creates is touched, and they are deleted on exit.")
	fmt.Fprintln(out)

	fmt.Fprint(out, "building podiam... ")
	t0 := time.Now()
	podiam := filepath.Join(s.dir, "podiam")
	build := exec.CommandContext(ctx, "go", "build", "-o", podiam, "./cmd/podiam")
	build.Dir = s.root
	if b, err := build.CombinedOutput(); err != nil {
		if code, ok := s.interrupted(); ok {
			return code
		}
		fmt.Fprintln(out, "FAILED")
		return s.fail("go build ./cmd/podiam: %v\n%s", err, b)
	}
	fmt.Fprintf(out, "ok (%s)\n", since(t0))

	fmt.Fprint(out, "creating network namespaces for the node and three pods... ")
	nodeNS := nsPrefix + s.run + "-node"
	var pods []string
	for i := 1; i <= podCount; i++ {
		pods = append(pods, fmt.Sprintf("%s%s-pod%d", nsPrefix, s.run, i))
	}
	for _, ns := range append([]string{nodeNS}, pods...) {
		if b, err := exec.Command(s.ip, "netns", "add", ns).CombinedOutput(); err != nil {
			fmt.Fprintln(out, "FAILED")
			return s.fail("ip netns add %s: %v: %s", ns, err, b)
		}
		s.namespaces = append(s.namespaces, ns)
	}
	fmt.Fprintln(out, "ok")

	exe, err := os.Executable()
	if err != nil {
		return s.fail("find my own executable: %v", err)
	}
	tmp := filepath.Join(s.dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return s.fail("temp dir: %v", err)
	}
	cmd := exec.Command(s.ip, "netns", "exec", nodeNS, exe)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, s.stdout, s.stderr
	cmd.Env = append(os.Environ(),
		envNodeNS+"="+nodeNS,
		envPodNS+"="+strings.Join(pods, ","),
		envDir+"="+s.dir,
		envPodiam+"="+podiam,
		// Whatever the tools write to temporary files goes with the run.
		"TMPDIR="+tmp,
	)
	// If the supervisor is killed outright, the child goes too, and with it
	// (by the same signal) every process it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s.mu.Lock()
	if s.received != nil {
		s.mu.Unlock()
		return exitCode(s.received)
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return s.fail("start the node: %v", err)
	}
	s.child = cmd.Process
	s.mu.Unlock()

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-ctx.Done():
		select {
		case err = <-waited:
		case <-time.After(childGrace):
			_ = cmd.Process.Kill()
			err = <-waited
		}
	}
	if code, ok := s.interrupted(); ok {
		return code
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr) && exitErr.ExitCode() > 0:
		return exitErr.ExitCode()
	default:
		return s.fail("node process: %v", err)
	}
}

// exitCode is the shell's convention for a process ended by a signal.
func exitCode(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 1
}

func since(t time.Time) string {
	return time.Since(t).Round(100 * time.Millisecond).String()
}

// sweep deletes network namespaces and temporary directories left by demo
// runs that were killed before they could clean up. Those of a run that is
// still alive are left alone.
func (s *supervisor) sweep() {
	var stale []string
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if isStale(e.Name()) {
				stale = append(stale, e.Name())
			}
		}
	}
	if len(stale) > 0 {
		fmt.Fprintf(s.stderr, "podiam demo: deleting network namespaces of killed runs: %s\n", strings.Join(stale, " "))
		for _, err := range deleteNamespaces(s.ip, stale) {
			fmt.Fprintf(s.stderr, "podiam demo: %v\n", err)
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && isStale(e.Name()) {
				_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
}

// isStale reports whether name belongs to a demo run whose supervisor is
// gone: no live process with that pid runs this same program.
func isStale(name string) bool {
	m := leftoverRE.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid == os.Getpid() {
		return false
	}
	self, _ := os.ReadFile("/proc/self/comm")
	other, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err != nil || string(other) != string(self)
}

// deleteNamespaces kills what still runs inside each namespace (only what
// the demo started there), then deletes it, which also removes its veths
// and iptables rules.
func deleteNamespaces(ip string, names []string) []error {
	var errs []error
	for _, ns := range names {
		pids := netnsPids(ip, ns)
		for _, pid := range pids {
			if pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(pids) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			pids = netnsPids(ip, ns)
		}
		if len(pids) > 0 {
			errs = append(errs, fmt.Errorf("processes %v in network namespace %s survived SIGKILL", pids, ns))
		}
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	return errs
}

func netnsPids(ip, ns string) []int {
	out, _ := exec.Command(ip, "netns", "pids", ns).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
