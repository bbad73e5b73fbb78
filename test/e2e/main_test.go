package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

// nsPrefix starts every namespace this test creates (testenv.Supervisor).
const nsPrefix = "podiam-e2e-"

// podNamespaces is how many pod namespaces a run creates: four pods, a
// spare that takes over a deleted pod's IP in the IP reuse scenario, two
// pods of the fault scenarios, and a pod and its successor on the same
// address for the sandbox scenario, and two pods on a Linux bridge with a
// successor of one of them (bridge CNIs: one host interface for all), and
// a pod with an IPv6 address only; then the soak's second node and its
// pod namespaces (soakNamespaces).
const podNamespaces = 13 + soakNamespaces

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
	sup, err := testenv.NewSupervisor(nsPrefix, podNamespaces)
	if err != nil {
		return fail("%v (apt-get install iproute2, or run hack/install-deps.sh as root)", err)
	}
	defer sup.Close()
	stale, err := sup.Sweep()
	if len(stale) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: deleting namespaces of killed runs: %s\n", strings.Join(stale, " "))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
	}

	dir, err := os.MkdirTemp("", "podiam-e2e-bin-")
	if err != nil {
		return fail("temp dir: %v", err)
	}
	defer os.RemoveAll(dir)
	if err := build(sup.Context(), dir); err != nil {
		return fail("%v", err)
	}

	defer func() {
		if err := sup.Delete(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		}
	}()
	if err := sup.Create(); err != nil {
		return fail("%v", err)
	}
	// An interrupted run still cleans up: the child gets the signal, and
	// the deferred deletion runs here.
	code, err := sup.Run(context.Background(), 0, []string{
		envNodeNS + "=" + sup.Node,
		envPodNS + "=" + strings.Join(sup.Pods, ","),
		envBinDir + "=" + dir,
	}, os.Args[1:]...)
	if err != nil {
		return fail("child test process: %v", err)
	}
	return code
}

// build puts into dir podiam and the Go SDK client (and for benchmarks the
// yardstick server). The agent and server run race-enabled, as in the
// integration tests, so a data race under real traffic fails the run.
// Benchmarks measure the binary as shipped, without the race detector's
// cost.
func build(ctx context.Context, dir string) error {
	if err := testenv.GoBuild(ctx, filepath.Join(dir, "gosdk"), "./test/e2e/gosdk", false); err != nil {
		return err
	}
	if testenv.Benchmarking() {
		if err := testenv.GoBuild(ctx, filepath.Join(dir, "benchceiling"), "./test/e2e/benchceiling", false); err != nil {
			return err
		}
	}
	if prebuilt := os.Getenv(envPodiam); prebuilt != "" {
		fmt.Fprintf(os.Stderr, "e2e: testing %s=%s instead of building ./cmd/podiam\n", envPodiam, prebuilt)
		if err := os.Symlink(prebuilt, filepath.Join(dir, "podiam")); err != nil {
			return fmt.Errorf("%s: %w", envPodiam, err)
		}
		return nil
	}
	if testenv.Benchmarking() {
		fmt.Fprintln(os.Stderr, "e2e: benchmarking: podiam is built without -race")
	}
	return testenv.BuildPodiam(ctx, filepath.Join(dir, "podiam"), !testenv.Benchmarking())
}
