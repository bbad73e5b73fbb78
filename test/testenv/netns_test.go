package testenv

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

func TestStaleRun(t *testing.T) {
	// A pid that is surely free: a child that has exited and been reaped.
	gone := exec.Command("/bin/true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := strconv.Itoa(gone.ProcessState.Pid())
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name  string
		stale bool
	}{
		{"podiam-x-" + dead + "-node", true},        // its supervisor is gone
		{"podiam-x-1-pod3", true},                   // pid 1 runs another program
		{"podiam-x-" + self + "-node", false},       // this run's own
		{"podiam-x-bin-123", false},                 // not a run's name
		{"podiam-y-" + dead + "-node", false},       // another prefix
		{"other-podiam-x-" + dead + "-node", false}, // not at the start
	} {
		if got := StaleRun("podiam-x-", tc.name); got != tc.stale {
			t.Errorf("StaleRun(%q) = %v, want %v", tc.name, got, tc.stale)
		}
	}
}
