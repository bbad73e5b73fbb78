package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// spawnShell starts sh -c script with its log in a test directory.
func spawnShell(t *testing.T, script string) *Proc {
	t.Helper()
	p, err := Spawn(ProcSpec{Name: "sh", Path: "/bin/sh", Args: []string{"-c", script},
		Log: filepath.Join(t.TempDir(), "sh.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return p
}

// waitLine waits until the process has logged line.
func waitLine(t *testing.T, p *Proc, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := WaitReady(ctx, "line "+line, func(context.Context) error {
		if !strings.Contains(p.Logs(), line+"\n") {
			return errors.New("not logged yet")
		}
		return nil
	}, p)
	if err != nil {
		t.Fatal(err)
	}
}

func TestProcStopReturnsExitStatus(t *testing.T) {
	p := spawnShell(t, `trap 'echo stopping; exit 3' TERM; echo one; echo two; echo ready; while :; do sleep 0.05; done`)
	waitLine(t, p, "ready")
	if got := p.Tail(2); got != "two\nready" {
		t.Errorf("Tail(2) = %q", got)
	}
	if gone, _ := p.Exited(); gone {
		t.Fatal("exited before Stop")
	}
	err := p.Stop(context.Background())
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("Stop = %v, want exit status 3, as a race-enabled child that found a race reports it", err)
	}
	if gone, _ := p.Exited(); !gone || !strings.HasSuffix(p.Logs(), "stopping\n") {
		t.Errorf("after Stop: exited %v, log %q", gone, p.Logs())
	}
}

func TestProcStopKillsWhenSIGTERMIsIgnored(t *testing.T) {
	p := spawnShell(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	waitLine(t, p, "ready")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := p.Stop(ctx); err == nil || !strings.Contains(err.Error(), "did not exit after SIGTERM") {
		t.Errorf("Stop = %v, want an error saying SIGTERM did not end it", err)
	}
	if gone, _ := p.Exited(); !gone {
		t.Error("still running after Stop gave up")
	}
}

func TestProcKillTakesTheGroup(t *testing.T) {
	// The background sleep is a grandchild in the same process group, like
	// the python behind a pyenv shim.
	p := spawnShell(t, `sleep 300 & echo "$!"; echo ready; wait`)
	waitLine(t, p, "ready")
	grandchild := strings.Fields(p.Logs())[0]
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	// Killed, it is gone or a zombie until init reaps it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		stat, err := os.ReadFile("/proc/" + grandchild + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %s survived Kill: %s", grandchild, stat)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWaitReadyFailsWhenTheProcessExits(t *testing.T) {
	p := spawnShell(t, `echo bye; exit 1`)
	err := WaitReady(context.Background(), "something", func(context.Context) error { return errors.New("no") }, p)
	if err == nil || !strings.Contains(err.Error(), "sh exited while waiting for something") {
		t.Errorf("WaitReady = %v, want the exit reported", err)
	}
}
