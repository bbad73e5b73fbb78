package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// BuildPodiam builds ./cmd/podiam into dst: the one build of the binary
// that the demo, the integration and e2e tests and the benchmarks run.
// Tests build it with the race detector (race), so that a data race under
// real traffic fails them; the demo and benchmarks run it as shipped.
func BuildPodiam(ctx context.Context, dst string, race bool) error {
	return GoBuild(ctx, dst, "./cmd/podiam", race)
}

// GoBuild builds pkg, a package path from the repository root such as
// ./test/e2e/gosdk, into dst.
func GoBuild(ctx context.Context, dst, pkg string, race bool) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	args := []string{"build"}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "-o", dst, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
