package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

func TestMissingPrerequisites(t *testing.T) {
	all := func(string) (string, error) { return "/usr/bin/x", nil }
	if msg := missingPrerequisites(all); msg != "" {
		t.Fatalf("nothing missing, got %q", msg)
	}
	noKube := func(name string) (string, error) {
		if name == "kube-apiserver" || name == "moto_server" {
			return "", errors.New("not found")
		}
		return "/usr/bin/" + name, nil
	}
	msg := missingPrerequisites(noKube)
	for _, want := range []string{"make deps", "kube-apiserver", "hack/install-kube-apiserver.sh", "moto_server", "pip install"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "etcd") {
		t.Errorf("message names a program that is there:\n%s", msg)
	}
}

// buildDemo builds the demo as `make demo` runs it, once per test binary.
func buildDemo(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the demo needs root (network namespaces); run the tests as root, as CI does")
	}
	bin := filepath.Join(t.TempDir(), "podiam-demo")
	if err := testenv.GoBuild(t.Context(), bin, "./test/demo", false); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestDemoTwiceLeavesNothing runs the demo twice in a row, as a newcomer
// would, and checks that each run shows what it promises and leaves no
// network namespace, process or temporary directory behind.
func TestDemoTwiceLeavesNothing(t *testing.T) {
	bin := buildDemo(t)
	for run := 1; run <= 2; run++ {
		cmd := exec.Command(bin)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, out.String())
		}
		for _, want := range []string{
			"assumed-role/app-web/", // the permitted pod's identity
			"403 Forbidden",         // the denied pod
			"IAMRoleDenied",         // and its Event
			"200 batch-report",      // IMDSv2 with a token
			"401 Unauthorized",      // a bad or foreign token
			"cleaning up", "demo finished",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out.String())
			}
		}
		if strings.Contains(out.String(), `"SecretAccessKey": "`) {
			t.Errorf("run %d: the demo printed a secret:\n%s", run, out.String())
		}
		assertNoLeftovers(t)
	}
}

// TestDemoInterrupted sends SIGINT, as Ctrl-C does, once the installation is
// up, and checks that the demo stops promptly and removes everything.
func TestDemoInterrupted(t *testing.T) {
	bin := buildDemo(t)
	cmd := exec.Command(bin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "starting podiam agent... ok") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		rest, _ := io.ReadAll(stdout)
		seen.Write(rest)
		done <- cmd.Wait()
	}()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("the demo did not stop within a minute of SIGINT:\n%s", seen.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("an interrupted demo must exit non-zero, got %v", err)
	}
	if !strings.Contains(seen.String(), "cleaning up") {
		t.Errorf("no cleanup reported:\n%s%s", seen.String(), stderr.String())
	}
	assertNoLeftovers(t)
}

// assertNoLeftovers fails on anything of a demo run that still exists:
// a network namespace, a process (the demo's processes all carry its run
// directory or namespace names on their command lines, or run inside its
// namespaces), or a temporary directory.
func assertNoLeftovers(t *testing.T) {
	t.Helper()
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), nsPrefix) {
				t.Errorf("network namespace left behind: %s", e.Name())
			}
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"*"))
	for _, d := range tmps {
		t.Errorf("temporary directory left behind: %s", d)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(nsPrefix)) {
			continue
		}
		t.Errorf("process left behind: %s: %s", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
	}
}
