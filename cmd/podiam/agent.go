package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
)

// agentConfig is `podiam agent`; the agent arrives with its own issue.
type agentConfig struct {
	Log logFlags
}

func (c *agentConfig) register(fs *flag.FlagSet) { c.Log.register(fs) }

func (c *agentConfig) Validate() error { return c.Log.validate() }

func runAgent(ctx context.Context, cfg agentConfig, log *slog.Logger) error {
	return errors.New("the agent is not implemented yet")
}
