package iptables

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseInterfaces(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []iface
		wantErr string
	}{
		{name: "wildcard", in: []string{"cali+"}, want: []iface{{name: "cali+"}}},
		{name: "negation", in: []string{"!eth0"}, want: []iface{{name: "eth0", negate: true}}},
		{name: "negation with space", in: []string{"! eth0"}, want: []iface{{name: "eth0", negate: true}}},
		{name: "comma split values are trimmed", in: strings.Split("cali+, !eth0 ,eni+", ","),
			want: []iface{{name: "cali+"}, {name: "eth0", negate: true}, {name: "eni+"}}},
		{name: "duplicates kept once", in: []string{"cali+", "cali+", "!cali+"},
			want: []iface{{name: "cali+"}, {name: "cali+", negate: true}}},
		{name: "fifteen characters", in: []string{"abcdefghijklmno"}, want: []iface{{name: "abcdefghijklmno"}}},
		{name: "none", in: nil, wantErr: "no host interfaces"},
		{name: "empty value", in: []string{"cali+", ""}, wantErr: `host interface "": empty interface name`},
		{name: "bare negation", in: []string{"!"}, wantErr: `host interface "!": empty interface name`},
		{name: "double negation", in: []string{"!!eth0"}, wantErr: `character '!'`},
		{name: "too long", in: []string{"abcdefghijklmnop"}, wantErr: "longer than 15"},
		{name: "space inside", in: []string{"eth 0"}, wantErr: `character ' '`},
		{name: "slash", in: []string{"eth/0"}, wantErr: `character '/'`},
		{name: "colon alias", in: []string{"eth0:1"}, wantErr: `character ':'`},
		{name: "dot", in: []string{"."}, wantErr: "not a valid interface name"},
		{name: "quote", in: []string{`eth"0`}, wantErr: "character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseInterfaces(tt.in)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidConfig containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseHost(t *testing.T) {
	tests := []struct {
		in      string
		v6      bool
		want    string
		wantErr string
	}{
		{in: "10.0.0.1", want: "10.0.0.1"},
		{in: " 10.0.0.1 ", want: "10.0.0.1"},
		{in: "::ffff:10.0.0.1", want: "10.0.0.1"},
		{in: "fd00::1", v6: true, want: "fd00::1"},
		{in: "", wantErr: "is not an IP address"},
		{in: "node-1.example", wantErr: "is not an IP address"},
		{in: "10.0.0.1:8181", wantErr: "is not an IP address"},
		{in: "fd00::1", wantErr: "is IPv6"},
		{in: "10.0.0.1", v6: true, wantErr: "is not an IPv6 address"},
		{in: "::ffff:10.0.0.1", v6: true, wantErr: "is not an IPv6 address"},
		{in: "fe80::1%eth0", v6: true, wantErr: "zone"},
		{in: "127.0.0.1", wantErr: "loopback"},
		{in: "::1", v6: true, wantErr: "loopback"},
		{in: "0.0.0.0", wantErr: "cannot be a DNAT target"},
		{in: "224.0.0.1", wantErr: "cannot be a DNAT target"},
		{in: "255.255.255.255", wantErr: "cannot be a DNAT target"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseHost("host", tt.in, tt.v6)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidConfig containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCheckChain(t *testing.T) {
	for _, ok := range []string{"PODIAM", "podiam-test", strings.Repeat("A", 28)} {
		if err := checkChain(ok); err != nil {
			t.Errorf("checkChain(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("A", 29), "-X", "!A", "PREROUTING", "accept", "A B", `A"B`} {
		if err := checkChain(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("checkChain(%q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
}

func TestBuildRules(t *testing.T) {
	v4 := buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "cali+"}, {name: "eth0", negate: true}}, dnatTo(netip.MustParseAddr("10.0.0.1"), 8181))
	if len(v4) != 2 {
		t.Fatalf("got %d rules, want 2", len(v4))
	}
	want := [][]string{
		{"-d", "169.254.169.254/32", "-i", "cali+", "-p", "tcp", "-m", "tcp", "--dport", "80",
			"-m", "comment", "--comment", "podiam:" + v4[0].id, "-j", "DNAT", "--to-destination", "10.0.0.1:8181"},
		{"-d", "169.254.169.254/32", "!", "-i", "eth0", "-p", "tcp", "-m", "tcp", "--dport", "80",
			"-m", "comment", "--comment", "podiam:" + v4[1].id, "-j", "DNAT", "--to-destination", "10.0.0.1:8181"},
	}
	for i := range want {
		if !reflect.DeepEqual(v4[i].spec, want[i]) {
			t.Errorf("rule %d = %q, want %q", i, v4[i].spec, want[i])
		}
		if len(v4[i].id) != 12 {
			t.Errorf("rule %d id %q, want 12 hex digits", i, v4[i].id)
		}
	}

	v6 := buildRules(netip.MustParseAddr(MetadataIPv6), []iface{{name: "cali+"}}, dnatTo(netip.MustParseAddr("fd00::1"), 8181))
	wantV6 := []string{"-d", "fd00:ec2::254/128", "-i", "cali+", "-p", "tcp", "-m", "tcp", "--dport", "80",
		"-m", "comment", "--comment", "podiam:" + v6[0].id, "-j", "DNAT", "--to-destination", "[fd00::1]:8181"}
	if !reflect.DeepEqual(v6[0].spec, wantV6) {
		t.Errorf("ipv6 rule = %q, want %q", v6[0].spec, wantV6)
	}

	// The id must follow every part of the rule, or a changed target would
	// be taken for the current rule and never replaced.
	ids := map[string]string{}
	for name, r := range map[string]rule{
		"base":         v4[0],
		"negated":      v4[1],
		"other port":   buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "cali+"}}, dnatTo(netip.MustParseAddr("10.0.0.1"), 8182))[0],
		"other host":   buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "cali+"}}, dnatTo(netip.MustParseAddr("10.0.0.2"), 8181))[0],
		"other iface":  buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "eni+"}}, dnatTo(netip.MustParseAddr("10.0.0.1"), 8181))[0],
		"other family": v6[0],
		"reject":       buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "cali+"}}, rejectAction)[0],
	} {
		if prev, dup := ids[r.id]; dup {
			t.Errorf("%s and %s share id %s", name, prev, r.id)
		}
		ids[r.id] = name
	}
	rej := buildRules(netip.MustParseAddr(MetadataIPv6), []iface{{name: "cali+"}}, rejectAction)
	wantRej := []string{"-d", "fd00:ec2::254/128", "-i", "cali+", "-p", "tcp", "-m", "tcp", "--dport", "80",
		"-m", "comment", "--comment", "podiam:" + rej[0].id, "-j", "REJECT", "--reject-with", "tcp-reset"}
	if !slices.Equal(rej[0].spec, wantRej) {
		t.Errorf("reject rule = %q, want %q", rej[0].spec, wantRej)
	}
	again := buildRules(netip.MustParseAddr(MetadataIPv4), []iface{{name: "cali+"}}, dnatTo(netip.MustParseAddr("10.0.0.1"), 8181))
	if again[0].id != v4[0].id {
		t.Errorf("id not stable across calls: %s != %s", again[0].id, v4[0].id)
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "-A PODIAM -j DNAT", want: []string{"-A", "PODIAM", "-j", "DNAT"}},
		{in: `-A X -m comment --comment "podiam:abc" -j RETURN`, want: []string{"-A", "X", "-m", "comment", "--comment", "podiam:abc", "-j", "RETURN"}},
		{in: `-A X --comment "two  words" -j RETURN`, want: []string{"-A", "X", "--comment", "two  words", "-j", "RETURN"}},
		{in: `-A X --comment "say \"hi\" \\ ok"`, want: []string{"-A", "X", "--comment", `say "hi" \ ok`}},
		{in: `-A X --comment ""`, want: []string{"-A", "X", "--comment", ""}},
		{in: "  -N   X  ", want: []string{"-N", "X"}},
		{in: "", want: nil},
		{in: `-A X --comment "open`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("splitRule(%q) = %q, want error", tt.in, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestStaleRules(t *testing.T) {
	listing := []string{
		"-N PODIAM",
		`-A PODIAM -d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -m comment --comment "podiam:aaaaaaaaaaaa" -j DNAT --to-destination 10.0.0.1:8181`,
		`-A PODIAM -d 169.254.169.254/32 -i eth1 -p tcp -m tcp --dport 80 -m comment --comment "podiam:bbbbbbbbbbbb" -j DNAT --to-destination 10.0.0.9:8181`,
		`-A PODIAM -d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -m comment --comment "podiam:aaaaaaaaaaaa" -j DNAT --to-destination 10.0.0.1:8181`,
		`-A PODIAM -s 10.1.0.0/16 -m comment --comment "someone else" -j RETURN`,
		`-A PODIAM -d 169.254.169.254/32 -m comment --comment podiam:cccccccccccc -j DNAT --to-destination 10.0.0.1:8181`,
	}
	got, err := staleRules(listing, "PODIAM", map[string]bool{"aaaaaaaaaaaa": true, "cccccccccccc": true})
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"-d", "169.254.169.254/32", "-i", "eth1", "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "podiam:bbbbbbbbbbbb", "-j", "DNAT", "--to-destination", "10.0.0.9:8181"},
		{"-d", "169.254.169.254/32", "-i", "cali+", "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", "podiam:aaaaaaaaaaaa", "-j", "DNAT", "--to-destination", "10.0.0.1:8181"},
		{"-s", "10.1.0.0/16", "-m", "comment", "--comment", "someone else", "-j", "RETURN"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stale =\n%q\nwant\n%q", got, want)
	}

	if _, err := staleRules([]string{`-A PODIAM --comment "x`}, "PODIAM", nil); err == nil {
		t.Fatal("unparsable listing: want error")
	}
}

// fakeConntrack puts a conntrack script that records its arguments and
// exits as told first in PATH.
func fakeConntrack(t *testing.T, output string, status int) (argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" > " + argsFile + "\necho '" + output + "' >&2\nexit " + strconv.Itoa(status) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "conntrack"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return argsFile
}

func TestExecConntrackFlush(t *testing.T) {
	tests := []struct {
		name     string
		addr     string
		output   string
		status   int
		wantArgs string
		wantErr  string
	}{
		{name: "deleted", addr: MetadataIPv4, output: "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.",
			wantArgs: "-D -f ipv4 -d 169.254.169.254 --reply-src 169.254.169.254"},
		{name: "nothing to delete", addr: MetadataIPv4, status: 1,
			output:   "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.",
			wantArgs: "-D -f ipv4 -d 169.254.169.254 --reply-src 169.254.169.254"},
		{name: "ipv6", addr: MetadataIPv6, output: "0 flow entries have been deleted.", status: 1,
			wantArgs: "-D -f ipv6 -d fd00:ec2::254 --reply-src fd00:ec2::254"},
		{name: "failure", addr: MetadataIPv4, status: 1, output: "Operation not permitted",
			wantArgs: "-D -f ipv4 -d 169.254.169.254 --reply-src 169.254.169.254", wantErr: "Operation not permitted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			argsFile := fakeConntrack(t, tt.output, tt.status)
			err := ExecConntrackFlush(context.Background(), tt.addr)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			args, rerr := os.ReadFile(argsFile)
			if rerr != nil {
				t.Fatalf("conntrack not run: %v", rerr)
			}
			if got := strings.TrimSpace(string(args)); got != tt.wantArgs {
				t.Fatalf("conntrack %s, want conntrack %s", got, tt.wantArgs)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if err := ExecConntrackFlush(context.Background(), MetadataIPv4); !errors.Is(err, ErrConntrackMissing) {
			t.Fatalf("err = %v, want ErrConntrackMissing", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		if err := ExecConntrackFlush(context.Background(), "metadata"); err == nil {
			t.Fatal("want error")
		}
	})
}
