// Command podiam serves AWS IAM roles to Kubernetes pods through the EC2
// metadata address. One binary holds every role (server, agent, health) so
// that KIAM manifests, which call the same binary with a subcommand, run
// with only the image changed. Flags are parsed here and nowhere else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/podiam/podiam/pkg/server"
)

const usage = `usage: podiam <command> [flags]

commands:
  server      run the credential server (control plane)
  agent       run the metadata agent (every node)
  health      check a server's health over mutual TLS (with a client
              certificate, e.g. an agent's)
  check       verify a role chain as the server would use it (the server's flags, plus --role, --pod, --namespace)
  iam-policy  print the base role's permission policy and a target role's trust policy for exact ARNs

Run "podiam <command> --help" for the command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run returns the process exit code: 0 success, 1 runtime failure, 2 bad
// command line.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("podiam "+cmd, flag.ContinueOnError)
	var err error
	switch cmd {
	case "server":
		cfg := serverConfig{Config: server.Config{CustomSTSEndpoint: getenvSTSCustom()}}
		cfg.register(fs)
		if err = parseAndValidate(fs, args, cfg.Validate); err == nil {
			err = runServer(ctx, cfg, cfg.Log.logger(stderr))
		}
	case "agent":
		var cfg agentConfig
		cfg.register(fs)
		if err = parseAndValidate(fs, args, cfg.Validate); err == nil {
			err = runAgent(ctx, cfg, cfg.Log.logger(stderr))
		}
	case "health":
		var cfg healthConfig
		cfg.register(fs)
		if err = parseAndValidate(fs, args, cfg.Validate); err == nil {
			err = runHealth(ctx, cfg, stdout)
		}
	case "check":
		cfg := checkConfig{serverConfig: serverConfig{Config: server.Config{CustomSTSEndpoint: getenvSTSCustom()}}}
		cfg.register(fs)
		if err = parseAndValidate(fs, args, cfg.Validate); err == nil {
			err = runCheck(ctx, cfg, stdout, cfg.Log.logger(stderr))
		}
	case "iam-policy":
		var cfg iamPolicyConfig
		cfg.register(fs)
		if err = parseAndValidate(fs, args, cfg.Validate); err == nil {
			err = runIAMPolicy(cfg, stdout)
		}
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "podiam: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errNotAssumed):
		return 1 // the report on stdout says why
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "podiam %s: %v\n", cmd, err)
		return 2
	}
	fmt.Fprintf(stderr, "podiam %s: %v\n", cmd, err)
	return 1
}

func parseAndValidate(fs *flag.FlagSet, args []string, validate func() error) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := validate(); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return nil
}
