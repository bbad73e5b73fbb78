package main

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podiam/podiam/pkg/server/policy"
)

func TestParseFlagsBoolForms(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{nil, true}, // default below
		{[]string{"--iptables-remove"}, true},
		{[]string{"-iptables-remove"}, true},
		{[]string{"--iptables-remove=true"}, true},
		{[]string{"--iptables-remove=false"}, false},
		{[]string{"--no-iptables-remove"}, false},
		{[]string{"-no-iptables-remove"}, false},
		{[]string{"--no-iptables-remove", "--iptables-remove"}, true},
	}
	for _, tc := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		v := fs.Bool("iptables-remove", true, "")
		if err := parseFlags(fs, tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if *v != tc.want {
			t.Errorf("%v: got %v, want %v", tc.args, *v, tc.want)
		}
	}
}

func TestParseFlagsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown flag", []string{"--nope"}},
		{"no- of a non-bool flag", []string{"--no-port"}},
		{"no- with a value", []string{"--no-iptables=1"}},
		{"bad duration", []string{"--wait=soon"}},
		{"positional argument", []string{"extra"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.Bool("iptables", false, "")
			fs.Int("port", 1, "")
			fs.Duration("wait", time.Second, "")
			if err := parseFlags(fs, tc.args); !errors.Is(err, errUsage) {
				t.Fatalf("err = %v, want a usage error", err)
			}
		})
	}
}

func TestParseFlagsLiteralNoFlag(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	x := fs.Bool("x", true, "")
	noX := fs.Bool("no-x", false, "")
	if err := parseFlags(fs, []string{"--no-x"}); err != nil {
		t.Fatal(err)
	}
	if !*x || !*noX {
		t.Fatal("a flag literally named no-x must win over negation")
	}
}

func validServer() serverConfig {
	var c serverConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.register(fs)
	if err := parseFlags(fs, []string{"--cert=c", "--key=k", "--ca=a"}); err != nil {
		panic(err)
	}
	return c
}

func TestServerConfigDefaults(t *testing.T) {
	c := validServer()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.SessionDuration != time.Hour || c.SessionRefresh != 40*time.Minute || c.PodWait != 900*time.Millisecond || c.Session != "kiam" ||
		c.ExternalIDFrom != policy.ExternalIDFromPod {
		t.Fatalf("defaults drifted from KIAM's (README, Migrating from KIAM): %+v", c)
	}
}

// Prefetch is on unless asked otherwise, in each of KIAM's boolean spellings.
func TestServerPrefetchFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--prefetch=false"}, false},
		{[]string{"--no-prefetch"}, false},
		{[]string{"--no-prefetch", "--prefetch"}, true},
	} {
		var c serverConfig
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		c.register(fs)
		if err := parseFlags(fs, append([]string{"--cert=c", "--key=k", "--ca=a"}, tc.args...)); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.Prefetch != tc.want {
			t.Errorf("%v: Prefetch = %v, want %v", tc.args, c.Prefetch, tc.want)
		}
	}
}

// Session tags are a comma-separated list, which may also be repeated;
// static tags repeat.
func TestServerSessionTagFlags(t *testing.T) {
	var c serverConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.register(fs)
	if err := parseFlags(fs, []string{"--cert=c", "--key=k", "--ca=a", "--session-tags=namespace, serviceaccount",
		"--session-tags=pod", "--static-session-tag=eks-cluster-name=prod", "--static-session-tag=team=a=b",
		"--transitive-session-tags"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.SessionTags, []string{"namespace", "serviceaccount", "pod"}) ||
		!slices.Equal(c.StaticSessionTags, []string{"eks-cluster-name=prod", "team=a=b"}) || !c.TransitiveSessionTags {
		t.Fatalf("parsed %q %q %v", c.SessionTags, c.StaticSessionTags, c.TransitiveSessionTags)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestServerConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*serverConfig)
		want   string
	}{
		{"no tls", func(c *serverConfig) { c.TLS = tlsFlags{} }, "mutual TLS is always on"},
		{"refresh not below duration", func(c *serverConfig) { c.SessionRefresh = time.Hour }, "--session-refresh"},
		{"zero refresh", func(c *serverConfig) { c.SessionRefresh = 0 }, "--session-refresh"},
		{"short session against AWS", func(c *serverConfig) { c.SessionDuration = time.Minute; c.SessionRefresh = 30 * time.Second }, "below STS's minimum"},
		{"too long session", func(c *serverConfig) { c.SessionDuration = 13 * time.Hour }, "maximum"},
		{"both base ARN flags", func(c *serverConfig) {
			c.RoleBaseARN = "arn:aws:iam::123456789012:role/"
			c.RoleBaseARNAutodetect = true
		}, "exclusive"},
		{"bad base ARN", func(c *serverConfig) { c.RoleBaseARN = "arn:aws:iam::12:role/" }, "--role-base-arn"},
		{"bad assume role", func(c *serverConfig) { c.AssumeRoleARN = "kiam-server" }, "--assume-role-arn"},
		{"bad level", func(c *serverConfig) { c.Log.Level = "loud" }, "--level"},
		{"bad bind", func(c *serverConfig) { c.Bind = "nowhere" }, "--bind"},
		{"negative keepalive", func(c *serverConfig) { c.GRPCKeepaliveTime = -time.Second }, "--grpc-keepalive-time-duration"},
		{"zero pod wait", func(c *serverConfig) { c.PodWait = 0 }, "--pod-wait"},
		{"unknown External ID source", func(c *serverConfig) { c.ExternalIDFrom = "tenant" }, "--external-id-from"},
		{"session name template with a character STS refuses", func(c *serverConfig) { c.SessionNameTemplate = "{{.Namespace}}/{{.PodName}}" },
			"--session-name-template"},
		{"source identity template with a character STS refuses", func(c *serverConfig) { c.SourceIdentityTemplate = "{{.Namespace}}:{{.PodName}}" },
			"--source-identity-template"},
		{"unknown session tag", func(c *serverConfig) { c.SessionTags = []string{"namespace", "node"} }, "--session-tags"},
		{"static tag without a value", func(c *serverConfig) { c.StaticSessionTags = []string{"eks-cluster-name"} }, "--static-session-tag"},
		{"transitive without tags", func(c *serverConfig) { c.TransitiveSessionTags = true }, "--transitive-session-tags"},
		{"session name template always too long", func(c *serverConfig) { c.SessionNameTemplate = strings.Repeat("x", 65) },
			"--session-name-template"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validServer()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
	c := validServer()
	c.CustomSTSEndpoint = true
	c.SessionDuration, c.SessionRefresh = 20*time.Second, 10*time.Second
	if err := c.Validate(); err != nil {
		t.Fatalf("short sessions against a local STS: %v", err)
	}
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"server", "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"server"}, 2, "--ca, --cert, --key required"},
		{[]string{"server", "--cert=a", "--key=b", "--ca=c", "--session-duration=banana"}, 2, "invalid value"},
		{[]string{"server", "--cert=a", "--key=b", "--ca=c", "--external-id-from=both"}, 2, "--external-id-from"},
		{[]string{"health", "--cert=a", "--key=b", "--ca=c", "--server-address=nohost"}, 2, "--server-address"},
		{[]string{"help"}, 0, "usage"},
		{[]string{"check"}, 2, "--role or --pod is required"},
		{[]string{"check", "--pod=app"}, 2, "namespace/name"},
		{[]string{"check", "--role=app", "-o", "yaml"}, 2, "neither text nor json"},
		{[]string{"check", "--role=app", "--external-id=x"}, 2, "--external-id"},
		{[]string{"check", "--role=app", "--assume-role-arn=arn:aws:iam::123456789012:role/base", "--session-duration=2h"}, 2, "exceeds 1h0m0s, STS's limit for roles chained"},
		{[]string{"check", "--role=app", "--external-id-from=tenant"}, 2, "--external-id-from"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String()+stderr.String(), tc.out) {
			t.Errorf("%v: code %d output %q; want %d containing %q", tc.args, code, stdout.String()+stderr.String(), tc.code, tc.out)
		}
	}
}

func validAgent(args ...string) agentConfig {
	var c agentConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.register(fs)
	if err := parseFlags(fs, append([]string{"--cert=c", "--key=k", "--ca=a"}, args...)); err != nil {
		panic(err)
	}
	return c
}

func TestAgentConfigDefaults(t *testing.T) {
	c := validAgent()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.CredentialRefresh != 35*time.Minute || c.CredentialMinServe != 5*time.Minute || !c.TCPMigrateReq || c.IPTablesRemove {
		t.Fatalf("defaults drifted from the README's flag tables: %+v", c)
	}
	// Short cache windows, for sessions shorter than STS's minimum
	// against a local STS in tests.
	c = validAgent("--credential-refresh=10s", "--credential-min-serve=4s", "--no-tcp-migrate-req")
	if err := c.Validate(); err != nil || c.CredentialMinServe != 4*time.Second || c.TCPMigrateReq {
		t.Fatalf("short windows: %v %+v", err, c)
	}
}

func TestAgentConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"min serve not below refresh", []string{"--credential-refresh=5m", "--credential-min-serve=5m"}, "--credential-refresh 5m0s must be above --credential-min-serve 5m0s"},
		{"refresh below default min serve", []string{"--credential-refresh=1m"}, "must be above --credential-min-serve"},
		{"zero min serve", []string{"--credential-min-serve=0s"}, "--credential-min-serve must be positive"},
		{"negative min serve", []string{"--credential-min-serve=-1s"}, "--credential-min-serve must be positive"},
		{"bad port", []string{"--port=0"}, "--port"},
		{"iptables without host", []string{"--iptables", "--host="}, "--iptables needs --host"},
		{"bad allow route", []string{"--allow-route-regexp=("}, "--allow-route-regexp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validAgent(tc.args...)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
}
