package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Supervisor gives a run network namespaces of its own, a "node" and its
// "pods", runs the run's real work in a child process inside the node
// namespace, and deletes the namespaces with whatever still runs in them,
// however the child ends. The demo and the e2e test run this way, so that
// nothing they do touches the host's network and tables.
type Supervisor struct {
	Node string   // the node namespace
	Pods []string // the pod namespaces, pod1 first

	// The child's output; this process's unless set before Run.
	Stdout, Stderr io.Writer

	ip      string
	prefix  string
	created []string

	ctx    context.Context
	cancel context.CancelFunc
	sigs   chan os.Signal

	mu       sync.Mutex
	child    *os.Process
	received os.Signal // the first SIGINT or SIGTERM
}

// ErrInterrupted is Run's error when a signal came before the child could
// start.
var ErrInterrupted = errors.New("interrupted before the child started")

// NewSupervisor names a run's namespaces: prefix, then this process's pid,
// which tells a later run's Sweep whether this run is still alive, then
// -node or -pod1, -pod2 and so on. Nothing is created yet. From now until
// Close it catches SIGINT and SIGTERM, so that an early Ctrl-C still
// removes what exists by then: the first ends Context, and each is passed
// on to the child once it runs.
func NewSupervisor(prefix string, pods int) (*Supervisor, error) {
	ip, err := LookPath("ip")
	if err != nil {
		return nil, err
	}
	run := prefix + strconv.Itoa(os.Getpid())
	s := &Supervisor{Node: run + "-node", Stdout: os.Stdout, Stderr: os.Stderr,
		ip: ip, prefix: prefix, sigs: make(chan os.Signal, 4)}
	for i := 1; i <= pods; i++ {
		s.Pods = append(s.Pods, fmt.Sprintf("%s-pod%d", run, i))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	signal.Notify(s.sigs, syscall.SIGINT, syscall.SIGTERM)
	go s.relay()
	return s, nil
}

func (s *Supervisor) relay() {
	for sig := range s.sigs {
		s.mu.Lock()
		if s.received == nil {
			s.received = sig
		}
		if s.child != nil {
			_ = s.child.Signal(sig)
		}
		s.mu.Unlock()
		s.cancel()
	}
}

// Close stops catching signals.
func (s *Supervisor) Close() {
	signal.Stop(s.sigs)
	close(s.sigs)
	s.cancel()
}

// Context is done once a SIGINT or SIGTERM came.
func (s *Supervisor) Context() context.Context { return s.ctx }

// Interrupted returns the first SIGINT or SIGTERM that came, or nil.
func (s *Supervisor) Interrupted() os.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

// Sweep deletes the namespaces that runs with the same prefix left when
// they were killed before they could clean up (SIGKILL leaves no chance);
// those of runs still alive are left alone. It returns the names it
// deleted.
func (s *Supervisor) Sweep() ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil, nil // no namespaces at all
	}
	var stale []string
	for _, e := range entries {
		if StaleRun(s.prefix, e.Name()) {
			stale = append(stale, e.Name())
		}
	}
	return stale, deleteNamespaces(s.ip, stale)
}

// StaleRun reports whether name (a namespace's or a directory's) belongs
// to a run of prefix whose supervisor is gone: no live process with the
// pid in the name runs this same program.
func StaleRun(prefix, name string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	digits, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(digits)
	if !ok || err != nil || pid == os.Getpid() {
		return false
	}
	self, _ := os.ReadFile("/proc/self/comm")
	other, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err != nil || string(other) != string(self)
}

// Create adds the node and pod namespaces. Those made before an error are
// deleted by Delete like the rest.
func (s *Supervisor) Create() error {
	for _, ns := range append([]string{s.Node}, s.Pods...) {
		if out, err := exec.Command(s.ip, "netns", "add", ns).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
		}
		s.created = append(s.created, ns)
	}
	return nil
}

// Run runs this program again inside the node namespace, with args and
// with env added to this process's environment, and returns its exit code.
// The child dies with the supervisor (parent-death signal), and with it,
// by the same signal, whatever it started. Once ctx is done the child has
// grace to stop before it is killed. A child ended by a signal is an error.
func (s *Supervisor) Run(ctx context.Context, grace time.Duration, env []string, args ...string) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find my own executable: %w", err)
	}
	cmd := exec.Command(s.ip, append([]string{"netns", "exec", s.Node, exe}, args...)...)
	cmd.Stdout, cmd.Stderr = s.Stdout, s.Stderr
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Under the lock, a signal either comes before the start, and there is
	// no child, or after, and the child gets it.
	s.mu.Lock()
	if s.received != nil {
		s.mu.Unlock()
		return 0, ErrInterrupted
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("start the child in %s: %w", s.Node, err)
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
		case <-time.After(grace):
			_ = cmd.Process.Kill()
			err = <-waited
		}
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() > 0:
		return exitErr.ExitCode(), nil
	default:
		return 0, fmt.Errorf("child in %s: %w", s.Node, err)
	}
}

// Delete kills what still runs in each namespace Create made (only what
// the run started there), then deletes the namespace, which also removes
// its veths and iptables rules.
func (s *Supervisor) Delete() error {
	err := deleteNamespaces(s.ip, s.created)
	s.created = nil
	return err
}

func deleteNamespaces(ip string, names []string) error {
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
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
		// The files `ip netns exec` mounts over /etc for the namespace
		// (NetNSEtc) go with it.
		if err := os.RemoveAll(NetNSEtc(ns)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// NetNSEtc is the directory whose files `ip netns exec` bind-mounts over
// /etc's for programs it runs in ns: a hosts file there gives the
// namespace's programs names no other namespace sees.
func NetNSEtc(ns string) string { return filepath.Join("/etc/netns", ns) }

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
