// Package supervise runs the long-running parts of a podiam process (a
// listener, a refresh loop, a watch) under one errgroup, so that none of
// them can fail or stop without the process noticing. Before it, each part
// ran in a bare goroutine whose result was dropped: a credential cache
// whose refresher had died, or an agent whose pod watch had returned at
// once, kept serving as if nothing had happened.
//
// The agent links this package, so it must not import client-go or the AWS
// SDK.
package supervise

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sync/errgroup"
)

// ErrStopped marks a part that returned nil before it was asked to stop.
// Every part is meant to run for the life of the process, so an early
// return is a failure even when the part saw nothing wrong.
var ErrStopped = errors.New("stopped unexpectedly")

// Part is one long-running piece of a process. Run must block until ctx
// is done and then return nil (or ctx's error); any other return is a
// failure of the whole process.
type Part struct {
	// Name says which part failed, in the error Run returns.
	Name string
	Run  func(ctx context.Context) error
}

// Run runs every part until ctx is done or one of them fails. The first
// failure cancels the context the others run with, and Run returns it once
// every part has returned: nothing is left running behind the caller's
// back. A part that returns nil, or ctx's error, after the shared context
// is done has stopped as asked and is not a failure; so when ctx ends and
// every part stops cleanly, Run returns nil.
func Run(ctx context.Context, parts ...Part) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, p := range parts {
		g.Go(func() error {
			err := p.Run(gctx)
			switch {
			case gctx.Err() != nil && (err == nil || errors.Is(err, gctx.Err())):
				return nil
			case err == nil:
				return fmt.Errorf("%s: %w", p.Name, ErrStopped)
			}
			return err
		})
	}
	return g.Wait()
}
