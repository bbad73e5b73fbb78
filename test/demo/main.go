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
	"path/filepath"
	"strconv"
	"strings"
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
// run that is still going (testenv.StaleRun).
const nsPrefix = "podiam-demo-"

// podCount is how many pod network namespaces a run creates.
const podCount = 3

// childGrace is how long the supervisor waits for an interrupted child to
// stop its processes before it kills everything itself.
const childGrace = 20 * time.Second

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
	ns             *testenv.Supervisor
	dir            string // the run's directory, removed at the end
}

// supervise runs the demo and returns the process exit code.
func supervise(stdout, stderr io.Writer) int {
	s := &supervisor{stdout: stdout, stderr: stderr}
	if os.Geteuid() != 0 {
		return s.fail("must run as root: it creates network namespaces, veth pairs and iptables rules (all inside namespaces it deletes on exit); try: sudo make demo")
	}
	if msg := missingPrerequisites(testenv.LookPath); msg != "" {
		return s.fail("%s", msg)
	}
	root, err := testenv.RepoRoot()
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "cmd", "podiam"))
	}
	if err != nil {
		return s.fail("run me from the podiam repository: %v", err)
	}
	// Signals are caught from here on, so that an early Ctrl-C still
	// removes what exists by then.
	if s.ns, err = testenv.NewSupervisor(nsPrefix, podCount); err != nil {
		return s.fail("%v", err)
	}
	defer s.ns.Close()
	s.ns.Stdout, s.ns.Stderr = stdout, stderr

	started := time.Now()
	s.sweep()
	dir, err := os.MkdirTemp("", nsPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return s.fail("temp dir: %v", err)
	}
	s.dir = dir

	code := s.runDemo(s.ns.Context())

	fmt.Fprint(stdout, "cleaning up: processes, network namespaces with their veths and iptables rules, temp files... ")
	err = errors.Join(s.ns.Delete(), os.RemoveAll(s.dir))
	if err != nil {
		fmt.Fprintln(stdout, "FAILED")
		fmt.Fprintf(stderr, "podiam demo: cleanup: %v\n", err)
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

// interrupted returns the exit code for the signal received, if any, and
// says so when it came before the child could.
func (s *supervisor) interrupted(beforeChild bool) (int, bool) {
	sig := s.ns.Interrupted()
	if sig == nil {
		return 0, false
	}
	if beforeChild {
		fmt.Fprintf(s.stdout, "\ninterrupted (%v)\n", sig)
	}
	return exitCode(sig), true
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
	if err := testenv.BuildPodiam(ctx, podiam, false); err != nil {
		if code, ok := s.interrupted(true); ok {
			return code
		}
		fmt.Fprintln(out, "FAILED")
		return s.fail("%v", err)
	}
	fmt.Fprintf(out, "ok (%s)\n", since(t0))

	fmt.Fprint(out, "creating network namespaces for the node and three pods... ")
	if err := s.ns.Create(); err != nil {
		fmt.Fprintln(out, "FAILED")
		return s.fail("%v", err)
	}
	fmt.Fprintln(out, "ok")

	tmp := filepath.Join(s.dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return s.fail("temp dir: %v", err)
	}
	code, err := s.ns.Run(ctx, childGrace, []string{
		envNodeNS + "=" + s.ns.Node,
		envPodNS + "=" + strings.Join(s.ns.Pods, ","),
		envDir + "=" + s.dir,
		envPodiam + "=" + podiam,
		// Whatever the tools write to temporary files goes with the run.
		"TMPDIR=" + tmp,
	})
	if code, ok := s.interrupted(errors.Is(err, testenv.ErrInterrupted)); ok {
		return code
	}
	if err != nil {
		return s.fail("node process: %v", err)
	}
	return code
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
	stale, err := s.ns.Sweep()
	if len(stale) > 0 {
		fmt.Fprintf(s.stderr, "podiam demo: deleting network namespaces of killed runs: %s\n", strings.Join(stale, " "))
	}
	if err != nil {
		fmt.Fprintf(s.stderr, "podiam demo: %v\n", err)
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if e.IsDir() && testenv.StaleRun(nsPrefix, e.Name()) {
				_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
}
