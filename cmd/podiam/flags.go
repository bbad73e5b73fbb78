package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/podiam/podiam/pkg/agent"
	"github.com/podiam/podiam/pkg/tlsconfig"
)

// errUsage marks errors in the command line; main exits 2 for them.
var errUsage = errors.New("usage")

// parseFlags parses args into fs, accepting the three boolean spellings
// KIAM's kingpin parser accepted: --x, --x=false and --no-x (its Helm chart
// passes --no-iptables-remove). Single and double dashes both work.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	rewritten := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			rewritten = append(rewritten, args[i:]...)
			break
		}
		rewritten = append(rewritten, rewriteNegatedBool(fs, a))
	}
	if err := fs.Parse(rewritten); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fs.PrintDefaults()
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

// rewriteNegatedBool turns --no-NAME into --NAME=false when NAME is a
// boolean flag and no flag is literally called no-NAME.
func rewriteNegatedBool(fs *flag.FlagSet, arg string) string {
	name, ok := strings.CutPrefix(strings.TrimLeft(arg, "-"), "no-")
	if !ok || !strings.HasPrefix(arg, "-") || strings.Contains(name, "=") {
		return arg
	}
	if fs.Lookup("no-"+name) != nil {
		return arg
	}
	f := fs.Lookup(name)
	if f == nil {
		return arg
	}
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
		return "--" + name + "=false"
	}
	return arg
}

// logFlags are the logging flags every subcommand shares.
type logFlags struct {
	JSON  bool
	Level string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&l.JSON, "json-log", false, "log as JSON")
	fs.StringVar(&l.Level, "level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) validate() error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		return fmt.Errorf("--level: %q is not one of debug, info, warn, error", l.Level)
	}
	return nil
}

func (l *logFlags) logger(w io.Writer) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(l.Level))
	opts := &slog.HandlerOptions{Level: lv}
	if l.JSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// tlsFlags are the mutual TLS files of every subcommand.
type tlsFlags struct {
	Cert, Key, CA string
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.Cert, "cert", "", "certificate (PEM) for mutual TLS, which is always on; re-read when the file changes")
	fs.StringVar(&t.Key, "key", "", "private key (PEM) of --cert; re-read when the file changes")
	fs.StringVar(&t.CA, "ca", "", "CA bundle (PEM) peers' certificates must chain to; may hold the old and the new CA during a rotation")
}

func (t *tlsFlags) validate() error {
	var missing []string
	for name, v := range map[string]string{"--cert": t.Cert, "--key": t.Key, "--ca": t.CA} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("mutual TLS is always on: %s required", strings.Join(slices.Sorted(slices.Values(missing)), ", "))
	}
	return nil
}

// client builds the mutual TLS configuration for dialing serverAddress.
func (t *tlsFlags) client(serverAddress string, log *slog.Logger) (*tls.Config, error) {
	cfg, err := agent.ClientTLS(tlsconfig.Files{Cert: t.Cert, Key: t.Key, CA: t.CA}, serverAddress, log)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return cfg, nil
}
