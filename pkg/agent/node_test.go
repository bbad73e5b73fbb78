package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetSysctl(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tcp_migrate_req")
	tests := []struct {
		name    string
		content string
		changed bool
	}{
		{"off", "0\n", true},
		{"already on", "1\n", false},
		{"on without newline", "1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			changed, err := setSysctl(path, "1")
			if err != nil || changed != tc.changed {
				t.Fatalf("setSysctl: changed %v err %v, want changed %v", changed, err, tc.changed)
			}
			if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != "1" {
				t.Fatalf("file holds %q after setSysctl", b)
			}
		})
	}
	if _, err := setSysctl(filepath.Join(dir, "missing"), "1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing sysctl (kernel before 5.14): %v, want ErrNotExist", err)
	}
}
