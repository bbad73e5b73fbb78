package e2e

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// The supervisor hands the child these through its environment.
const (
	envNodeNS = "PODIAM_E2E_NODE_NS" // set only in the child, inside the node namespace
	envPodNS  = "PODIAM_E2E_POD_NS"  // comma-separated pod namespaces, pod1 first
	envBinDir = "PODIAM_E2E_BIN"     // holds podiam and gosdk

	// envPodiam, when set by whoever runs the test, names a prebuilt podiam
	// binary to test instead of building ./cmd/podiam, e.g. a release.
	envPodiam = "PODIAM_E2E_PODIAM"
)

// nsPrefix starts every namespace this test creates; the pid that follows
// tells the sweep whether the run that made it is still alive.
const nsPrefix = "podiam-e2e-"

// podNamespaces is how many pod namespaces a run creates: four pods, a
// spare that takes over a deleted pod's IP in the IP reuse scenario, and
// two pods of the fault scenarios.
const podNamespaces = 7

var nsNameRE = regexp.MustCompile(`^` + regexp.QuoteMeta(nsPrefix) + `(\d+)-`)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(envNodeNS) != "" {
		os.Exit(m.Run()) // the child, already inside the node namespace
	}
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	os.Exit(supervise())
}

// fail reports a supervisor failure loudly: there is no *testing.T yet, and
// a missing prerequisite must fail the run, never skip it.
func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "--- FAIL: e2e supervisor: %s\nFAIL\n", fmt.Sprintf(format, args...))
	return 1
}

// supervise prepares namespaces and binaries, runs the tests in a child
// inside the node namespace, and deletes the namespaces whatever happened.
func supervise() int {
	if os.Geteuid() != 0 {
		return fail("the end-to-end test needs root for network namespaces and iptables (CI runs as root); run it as root")
	}
	ip, err := testenv.LookPath("ip")
	if err != nil {
		return fail("%v (apt-get install iproute2, or run hack/install-deps.sh as root)", err)
	}
	sweep(ip)

	dir, err := os.MkdirTemp("", "podiam-e2e-bin-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	defer os.RemoveAll(dir)
	// The agent and server run race-enabled, as in the integration tests, so
	// a data race under real traffic fails the run. Benchmarks measure the
	// binary as shipped, without the race detector's cost.
	builds := [][]string{{"build", "-o", filepath.Join(dir, "gosdk"), "./gosdk"}}
	if testenv.Benchmarking() {
		builds = append(builds, []string{"build", "-o", filepath.Join(dir, "benchceiling"), "./benchceiling"})
	}
	if prebuilt := os.Getenv(envPodiam); prebuilt != "" {
		if err := os.Symlink(prebuilt, filepath.Join(dir, "podiam")); err != nil {
			return fail("%s: %v", envPodiam, err)
		}
		fmt.Fprintf(os.Stderr, "e2e: testing %s=%s instead of building ./cmd/podiam\n", envPodiam, prebuilt)
	} else if testenv.Benchmarking() {
		fmt.Fprintln(os.Stderr, "e2e: benchmarking: podiam is built without -race")
		builds = append(builds, []string{"build", "-o", filepath.Join(dir, "podiam"), "../../cmd/podiam"})
	} else {
		builds = append(builds, []string{"build", "-race", "-o", filepath.Join(dir, "podiam"), "../../cmd/podiam"})
	}
	for _, args := range builds {
		cmd := exec.Command("go", args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fail("go %s: %v", strings.Join(args, " "), err)
		}
	}

	run := strconv.Itoa(os.Getpid())
	nodeNS := nsPrefix + run + "-node"
	var pods []string
	for i := 1; i <= podNamespaces; i++ {
		pods = append(pods, fmt.Sprintf("%s%s-pod%d", nsPrefix, run, i))
	}
	created := []string{}
	defer func() { deleteNamespaces(ip, created) }()
	for _, ns := range append([]string{nodeNS}, pods...) {
		if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
			return fail("ip netns add %s: %v: %s", ns, err, out)
		}
		created = append(created, ns)
	}

	exe, err := os.Executable()
	if err != nil {
		return fail("find test binary: %v", err)
	}
	child := exec.Command(ip, append([]string{"netns", "exec", nodeNS, exe}, os.Args[1:]...)...)
	child.Stdin, child.Stdout, child.Stderr = nil, os.Stdout, os.Stderr
	child.Env = append(os.Environ(),
		envNodeNS+"="+nodeNS,
		envPodNS+"="+strings.Join(pods, ","),
		envBinDir+"="+dir,
	)
	child.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := child.Start(); err != nil {
		return fail("start child in %s: %v", nodeNS, err)
	}
	// An interrupted run still cleans up: the child gets the signal, ends
	// its tests' cleanups, and the deferred deletion runs here.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			_ = child.Process.Signal(s)
		}
	}()
	err = child.Wait()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr) && exitErr.ExitCode() > 0:
		return exitErr.ExitCode()
	default:
		return fail("child test process: %v", err)
	}
}

// sweep deletes namespaces left behind by runs that were killed before they
// could clean up. Namespaces of a run that is still alive are left alone.
func sweep(ip string) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return // no namespaces at all
	}
	var stale []string
	for _, e := range entries {
		m := nsNameRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid != os.Getpid() && runAlive(pid) {
			continue
		}
		stale = append(stale, e.Name())
	}
	if len(stale) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: deleting namespaces of killed runs: %s\n", strings.Join(stale, " "))
		deleteNamespaces(ip, stale)
	}
}

// runAlive reports whether pid is a live e2e test binary.
func runAlive(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(comm)) == "e2e.test"
}

// deleteNamespaces kills what still runs inside each namespace (only
// processes this test started there: etcd, moto, podiam, SDK clients), then
// deletes it, which also removes its veths and iptables rules.
func deleteNamespaces(ip string, names []string) {
	for _, ns := range names {
		out, _ := exec.Command(ip, "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(pids) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			out, _ := exec.Command(ip, "netns", "pids", ns).Output()
			pids = strings.Fields(string(out))
		}
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: ip netns del %s: %v: %s\n", ns, err, out)
		}
	}
}
