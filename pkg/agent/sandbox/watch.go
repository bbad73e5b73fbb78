package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Change is an event that may end a sandbox identity.
type Change struct {
	// LinkGone, when not zero, is the index of an interface that was
	// deleted: every identity on it is over.
	LinkGone int
	// Neighbour, when valid, is an address whose neighbour entry on
	// interface LinkIndex now says MAC: an identity on that interface
	// with another MAC is over.
	Neighbour netip.Addr
	LinkIndex int
	MAC       string
}

// Watch calls apply for every link deletion and neighbour change in the
// agent's network namespace until ctx is done, then returns nil. It
// returns an error when a subscription fails or ends by itself: the
// caller then cannot trust cached identities and must stop.
func Watch(ctx context.Context, apply func(Change)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	links := make(chan netlink.LinkUpdate, 64)
	neighs := make(chan netlink.NeighUpdate, 256)
	subErr := make(chan error, 2)
	onErr := func(err error) {
		select {
		case subErr <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, ctx.Done(), netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("sandbox: subscribe to links: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, ctx.Done(), netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("sandbox: subscribe to neighbours: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			if ctx.Err() != nil {
				// Stopping closes the sockets, and the library reports
				// that as a receive error.
				return nil
			}
			return fmt.Errorf("sandbox: netlink subscription: %w", err)
		case u, ok := <-links:
			if !ok {
				return closed(ctx, "link")
			}
			if c, ok := linkChange(u); ok {
				apply(c)
			}
		case u, ok := <-neighs:
			if !ok {
				return closed(ctx, "neighbour")
			}
			if c, ok := neighChange(u); ok {
				apply(c)
			}
		}
	}
}

func closed(ctx context.Context, what string) error {
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("sandbox: " + what + " subscription ended")
}

// linkChange turns a link update into a Change: only deletions matter.
func linkChange(u netlink.LinkUpdate) (Change, bool) {
	if u.Header.Type != unix.RTM_DELLINK || u.Link == nil || u.Link.Attrs() == nil || u.Link.Attrs().Index <= 0 {
		return Change{}, false
	}
	return Change{LinkGone: u.Link.Attrs().Index}, true
}

// neighChange turns a neighbour update into a Change: a new or changed
// entry with a usable MAC address. Deletions are not changes of identity:
// the kernel drops idle entries all the time, and an address whose entry
// is gone is looked up again on the next fetch.
func neighChange(u netlink.NeighUpdate) (Change, bool) {
	if u.Type != unix.RTM_NEWNEIGH || u.LinkIndex <= 0 {
		return Change{}, false
	}
	ip, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return Change{}, false
	}
	mac := usableMAC(u.Neigh)
	if mac == "" {
		return Change{}, false
	}
	return Change{Neighbour: ip.Unmap(), LinkIndex: u.LinkIndex, MAC: mac}, true
}
