package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The README's flag tables are generated from the flag sets themselves, so
// they cannot drift from the code: this test fails when they differ, and
// `make docs` (go test -run TestREADMEFlagTables -update) rewrites them.
var updateDocs = flag.Bool("update", false, "rewrite the generated sections of README.md")

// kiamFlags are the flags podiam keeps from KIAM with KIAM's meaning, so
// that KIAM manifests run unchanged. Every other flag is podiam's own.
var kiamFlags = map[string][]string{
	"server": {"bind", "cert", "key", "ca", "kubeconfig", "assume-role-arn", "role-base-arn",
		"role-base-arn-autodetect", "region", "session", "session-duration", "session-refresh", "sync",
		"json-log", "level", "prometheus-listen-addr", "prometheus-sync-interval",
		"disable-strict-namespace-regexp", "grpc-keepalive-time-duration", "grpc-keepalive-timeout-duration",
		"grpc-max-connection-idle-duration", "grpc-max-connection-age-duration",
		"grpc-max-connection-age-grace-duration"},
	"agent": {"port", "host", "host-interface", "iptables", "iptables-remove", "server-address", "cert", "key",
		"ca", "gateway-timeout-creation", "allow-route-regexp", "json-log", "level", "prometheus-listen-addr",
		"prometheus-sync-interval", "grpc-keepalive-time-duration", "grpc-keepalive-timeout-duration"},
	"health": {"cert", "key", "ca", "server-address", "gateway-timeout-creation", "timeout"},
}

// commandFlags builds each command's flag set as run does, with the
// environment that feeds defaults cleared so the docs do not depend on
// the machine that generates them.
func commandFlags(t *testing.T) map[string]*flag.FlagSet {
	t.Helper()
	t.Setenv("HOST_IP", "")
	t.Setenv("HOST_IPV6", "")
	sets := map[string]*flag.FlagSet{}
	for cmd, register := range map[string]func(*flag.FlagSet){
		"server": (&serverConfig{}).register,
		"agent":  (&agentConfig{}).register,
		"health": (&healthConfig{}).register,
		// check takes every server flag; the README lists its own.
		"check":      (&checkConfig{}).registerOwn,
		"iam-policy": (&iamPolicyConfig{}).register,
	} {
		fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
		register(fs)
		sets[cmd] = fs
	}
	return sets
}

func TestKIAMFlagsKept(t *testing.T) {
	for cmd, fs := range commandFlags(t) {
		for _, name := range kiamFlags[cmd] {
			if fs.Lookup(name) == nil {
				t.Errorf("podiam %s lost KIAM's --%s", cmd, name)
			}
		}
	}
}

// flagTable renders one command's flags as a Markdown table.
func flagTable(cmd string, fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("| flag | default | from | meaning |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *flag.Flag) {
		name := "`--" + f.Name + "`"
		if isBool(f) {
			name += " (also `--no-" + f.Name + "`)"
		}
		from := "podiam"
		if slices.Contains(kiamFlags[cmd], f.Name) {
			from = "KIAM"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, defaultText(f), from, strings.ReplaceAll(f.Usage, "|", `\|`))
	})
	return b.String()
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// defaultText writes durations as people do (40m, not 40m0s).
func defaultText(f *flag.Flag) string {
	v := f.DefValue
	if g, ok := f.Value.(flag.Getter); ok {
		if d, ok := g.Get().(time.Duration); ok {
			v = shortDuration(d)
		}
	}
	if v == "" {
		return ""
	}
	return "`" + v + "`"
}

func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 40 * time.Minute: "40m", 90 * time.Minute: "1h30m", 10 * time.Second: "10s",
		900 * time.Millisecond: "900ms", 0: "0s", 61 * time.Second: "1m1s",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

var generatedSection = regexp.MustCompile(`(?s)(<!-- BEGIN GENERATED: flags of podiam ([\w-]+)[^>]*-->\n).*?(<!-- END GENERATED -->)`)

func TestREADMEFlagTables(t *testing.T) {
	const path = "../../README.md"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sets := commandFlags(t)
	seen := map[string]bool{}
	out := generatedSection.ReplaceAllStringFunc(string(readme), func(section string) string {
		m := generatedSection.FindStringSubmatch(section)
		fs, ok := sets[m[2]]
		if !ok {
			t.Errorf("README has a flag section for unknown command %q", m[2])
			return section
		}
		seen[m[2]] = true
		return m[1] + flagTable(m[2], fs) + m[3]
	})
	for cmd := range sets {
		if !seen[cmd] {
			t.Errorf("README has no generated flag table for podiam %s (add <!-- BEGIN GENERATED: flags of podiam %s --> and <!-- END GENERATED -->)", cmd, cmd)
		}
	}
	if out == string(readme) {
		return
	}
	if *updateDocs {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's flag tables differ from the code; run `make docs` and commit README.md")
}
