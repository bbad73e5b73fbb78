package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// undo is the LIFO list of what puts the host back. Both t.Cleanup and the
// interrupt handler run it, whichever comes first, so a Ctrl-C in the middle
// of a phase leaves the host as clean as a pass.
type undo struct {
	mu    sync.Mutex
	steps []undoStep
	done  bool
}

type undoStep struct {
	name string
	fn   func() error
}

var cleanups undo

// afterCleanup holds the checks that the host is as it was; they run after
// every cleanup step (t.Cleanup would run them before, being registered
// later).
var afterCleanup []func(t *testing.T)

// push registers fn to run at cleanup, before everything pushed earlier.
func (u *undo) push(name string, fn func() error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.steps = append(u.steps, undoStep{name, fn})
}

// run runs every step once, newest first, and returns their errors.
func (u *undo) run() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.done {
		return nil
	}
	u.done = true
	var errs []error
	for i := len(u.steps) - 1; i >= 0; i-- {
		if err := u.steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u.steps[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// TestMain runs the cleanup on SIGINT and SIGTERM too: go test passes a
// Ctrl-C to the test binary, which would otherwise die with the kubelet's
// mounts, cgroups and sysctls still in place.
func TestMain(m *testing.M) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "test/node: %v: cleaning up\n", s)
		if err := cleanups.run(); err != nil {
			fmt.Fprintf(os.Stderr, "test/node: cleanup: %v\n", err)
		}
		os.Exit(130)
	}()
	os.Exit(m.Run())
}

// kubeletSysctls are the host settings the kubelet changes at start
// (setupKernelTunables); they are global, not per network namespace.
var kubeletSysctls = []string{
	"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// saveSysctls records the kubelet's sysctls and registers their
// restoration, then a check that they are back.
func saveSysctls(t *testing.T) {
	saved := map[string]string{}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatalf("read sysctl %s: %v", k, err)
		}
		saved[k] = strings.TrimSpace(string(b))
	}
	cleanups.push("restore sysctls", func() error {
		var errs []error
		for k, v := range saved {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	afterCleanup = append(afterCleanup, func(t *testing.T) {
		for k, v := range saved {
			b, _ := os.ReadFile("/proc/sys/" + k)
			if got := strings.TrimSpace(string(b)); got != v {
				t.Errorf("cleanup check: sysctl %s is %s, was %s", k, got, v)
			}
		}
	})
}

// trackDir registers the removal of whatever appears in dir during the
// test (the directory itself if it did not exist), and a check that it is
// gone; with a prefix, only new entries named so (other users' entries in
// shared directories such as /run/netns are left alone). The kubelet and
// containerd write to fixed host paths whatever their configuration says
// (device-plugins, /var/log/containers, shim sockets, pod netns).
func trackDir(t *testing.T, dir, prefix string) {
	before := map[string]bool{}
	existed := true
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		existed = false
	case err != nil:
		t.Fatalf("track %s: %v", dir, err)
	}
	for _, e := range ents {
		before[e.Name()] = true
	}
	added := func() []string {
		ents, _ := os.ReadDir(dir)
		var out []string
		for _, e := range ents {
			if !before[e.Name()] && strings.HasPrefix(e.Name(), prefix) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
		return out
	}
	cleanups.push("remove new files in "+dir, func() error {
		if !existed {
			unmountUnder(dir)
			return os.RemoveAll(dir)
		}
		var errs []error
		for _, p := range added() {
			unmountUnder(p)
			errs = append(errs, os.RemoveAll(p))
		}
		return errors.Join(errs...)
	})
	afterCleanup = append(afterCleanup, func(t *testing.T) {
		if _, err := os.Stat(dir); !existed && err == nil {
			t.Errorf("cleanup check: %s still exists", dir)
		} else if existed {
			if a := added(); len(a) > 0 {
				t.Errorf("cleanup check: left in %s: %v", dir, a)
			}
		}
	})
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, strings.TrimSuffix(dir, "/")+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// unmountUnder detaches every mount at or below dir; the kubelet stacks
// bind mounts of its root directory, so it repeats until none is left.
func unmountUnder(dir string) {
	for range 10 {
		ms := mountsUnder(dir)
		if len(ms) == 0 {
			return
		}
		for _, m := range ms {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	}
}

// cgroupRoots lists the mounted cgroup v1 hierarchies (and a v2 one, if any).
func cgroupRoots() []string {
	var roots []string
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		p := filepath.Join("/sys/fs/cgroup", e.Name())
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			roots = append(roots, p)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		roots = append(roots, "/sys/fs/cgroup")
	}
	return roots
}

// removeCgroup removes the cgroup rel in every hierarchy, children first,
// killing whatever still runs in it.
func removeCgroup(rel string) error {
	var errs []error
	for _, root := range cgroupRoots() {
		top := filepath.Join(root, rel)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			for try := 0; ; try++ {
				killProcsIn(d)
				err := unix.Rmdir(d)
				if err == nil || errors.Is(err, unix.ENOENT) {
					break
				}
				if try == 50 {
					errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return errors.Join(errs...)
}

func killProcsIn(cgroupDir string) {
	b, _ := os.ReadFile(filepath.Join(cgroupDir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// killByCmdline SIGKILLs every process whose command line contains s (the
// run's own directory): containerd's shims outlive containerd by design.
func killByCmdline(s string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// lockRun serialises runs of this suite on the machine (other worktrees
// may run it too): the node's names and host paths are fixed so that a run
// killed with SIGKILL is swept by the next.
func lockRun(t *testing.T) {
	f, err := os.OpenFile("/run/podiam-node-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("lock: %v", err)
	}
	start := time.Now()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatalf("lock: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Logf("waited %s for another run of test/node", d.Round(time.Second))
	}
	t.Cleanup(func() { f.Close() })
}

// run executes a command and returns its combined output, failing with it.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
