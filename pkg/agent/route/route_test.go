package route

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseRouteGet(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    string
		wantErr error
	}{
		{name: "pod on a veth", out: "10.1.2.3 dev cali1234abcd src 10.0.0.1 uid 0 \\    cache \n", want: "cali1234abcd"},
		{name: "via a gateway", out: "10.9.9.9 via 10.0.0.254 dev eth0 src 10.0.0.1 uid 0 \\    cache \n", want: "eth0"},
		{name: "local address", out: "local 127.0.0.1 dev lo src 127.0.0.1 uid 0 \\    cache <local> \n", want: "lo"},
		{name: "ipv6", out: "fd00::5 from :: dev veth0a1b proto kernel src fd00::1 metric 256 pref medium\n", want: "veth0a1b"},
		{name: "first of several lines", out: "10.1.2.3 dev vethA src 10.0.0.1\n10.1.2.3 dev vethB src 10.0.0.1\n", want: "vethA"},
		{name: "fifteen characters", out: "10.1.2.3 dev abcdefghijklmno src 10.0.0.1", want: "abcdefghijklmno"},
		{name: "unreachable", out: "unreachable 10.1.2.3 uid 0 \\    cache <unreachable>\n", wantErr: ErrNoDevice},
		{name: "empty", out: "", wantErr: ErrNoDevice},
		{name: "dev without name", out: "10.1.2.3 dev", wantErr: ErrNoDevice},
		{name: "path traversal", out: "10.1.2.3 dev ../../etc src 10.0.0.1"},
		{name: "dot dot", out: "10.1.2.3 dev .. src 10.0.0.1"},
		{name: "too long", out: "10.1.2.3 dev abcdefghijklmnop src 10.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRouteGet(tt.out)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("parseRouteGet = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("parseRouteGet = %q, want an error", got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestInterfaceLoopback(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("iproute2 not installed")
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skipf("no lo interface: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, ip := range []string{"127.0.0.1", "::ffff:127.0.0.1"} {
		got, err := Interface(ctx, ip)
		if err != nil {
			t.Fatalf("Interface(%s): %v", ip, err)
		}
		if want := "lo/" + strconv.Itoa(lo.Index); got != want {
			t.Errorf("Interface(%s) = %q, want %q", ip, got, want)
		}
	}
}

func TestInterfaceRejectsBadAddress(t *testing.T) {
	for _, ip := range []string{"", "-h", "10.0.0.1 dev lo", "not-an-ip"} {
		_, err := Interface(t.Context(), ip)
		if err == nil || !strings.Contains(err.Error(), "invalid address") {
			t.Errorf("Interface(%q) error = %v, want invalid address", ip, err)
		}
	}
}
