package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
	// Lost means the kernel dropped changes because they came faster than
	// they were read: any identity may have ended, and each must be
	// looked up again.
	Lost bool
}

// receiveBuffer is the socket buffer asked for: pods starting and stopping
// by the hundred make bursts of neighbour and link messages, and an
// overflow costs a lookup of every cached identity.
const receiveBuffer = 4 << 20

// Watcher follows the link and neighbour changes of the agent's network
// namespace on one netlink socket.
//
// The kernel queues a change on the socket the moment it happens, and the
// change that matters most comes first by causality: a new pod behind a
// bridge sends an ARP request (which rewrites the node's neighbour entry
// for its address) before its first packet to the metadata address.
// Reading changes in the background alone would leave a window in which
// a request is answered before its change is applied; so the cache calls
// Drain before every answer, and a change that happened before a request
// is always applied before the request is answered, whichever goroutine
// reads it. Run applies changes when no request comes.
//
// Requests that arrive while a drain is under way wait for it, and one
// that began after they arrived covers them: of many connections asking
// at once, one reads the socket for all, instead of each in turn.
type Watcher struct {
	// mu makes reading a message and applying it one step: a reader that
	// holds it knows every change read so far has been applied.
	mu sync.Mutex
	// begun counts the passes that began reading (each to an empty
	// socket), finished those that ended; both change under mu only.
	// A pass numbered above begun as a caller found it began after the
	// caller arrived.
	begun    atomic.Uint64
	finished uint64
	// finishedErr is the error of the last pass that finished.
	finishedErr error
	fd          int
	file        *os.File // owns fd; waits on it through the runtime's poller
	raw         syscall.RawConn
	buf         []byte
	closed      bool
}

// NewWatcher subscribes to link and neighbour changes. Subscribe before
// anything is cached: a change that happens before it is never seen.
func NewWatcher() (*Watcher, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("sandbox: netlink socket: %w", err)
	}
	// Root may raise the buffer beyond net.core.rmem_max; others get
	// what the system allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, receiveBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, receiveBuffer)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_NEIGH}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("sandbox: subscribe to link and neighbour changes: %w", err)
	}
	file := os.NewFile(uintptr(fd), "netlink")
	raw, err := file.SyscallConn()
	if err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("sandbox: netlink socket: %w", err)
	}
	return &Watcher{fd: fd, file: file, raw: raw, buf: make([]byte, 64<<10)}, nil
}

// Drain applies every change queued so far, without waiting for more. An
// error means changes can no longer be read: cached identities cannot be
// trusted.
func (w *Watcher) Drain(apply func(Change)) error {
	arrived := w.begun.Load()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished > arrived {
		// A pass that began after this call read the socket until it was
		// empty and applied what it read: every change queued before
		// this call is applied.
		return w.finishedErr
	}
	return w.passLocked(apply)
}

// passLocked is one numbered drainLocked. w.mu must be held.
func (w *Watcher) passLocked(apply func(Change)) error {
	w.begun.Add(1)
	err := w.drainLocked(apply)
	w.finished, w.finishedErr = w.begun.Load(), err
	return err
}

// drainLocked reads and applies messages until none is queued. w.mu must
// be held.
func (w *Watcher) drainLocked(apply func(Change)) error {
	if w.closed {
		return errors.New("sandbox: watcher closed")
	}
	for {
		// read(2), not recvfrom(2): the sender is always the kernel, and
		// x/sys would allocate its address on every call. The socket is
		// non-blocking.
		n, err := unix.Read(w.fd, w.buf)
		switch {
		case err == unix.EAGAIN:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.ENOBUFS:
			apply(Change{Lost: true})
			continue
		case err != nil:
			return fmt.Errorf("sandbox: read netlink changes: %w", err)
		case n == 0:
			return nil // the kernel never sends an empty message
		}
		msgs, err := syscall.ParseNetlinkMessage(w.buf[:n])
		if err != nil {
			// The kernel never sends a malformed message; if it did, the
			// change in it is unknown, so everything is checked again.
			apply(Change{Lost: true})
			continue
		}
		for _, m := range msgs {
			if c, ok := changeOf(m); ok {
				apply(c)
			}
		}
	}
}

// Run applies changes as they come until ctx is done, then returns nil;
// Drain keeps working until Close, for the requests still being answered.
// Run returns an error when the socket fails: the caller then cannot
// trust cached identities and must stop.
func (w *Watcher) Run(ctx context.Context, apply func(Change)) error {
	stop := context.AfterFunc(ctx, func() { _ = w.file.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var drainErr error
	// The poller calls the function, and when it returns false waits until
	// the socket has something new to read and calls it again: the
	// function returns true only to stop.
	err := w.raw.Read(func(uintptr) bool {
		w.mu.Lock()
		drainErr = w.passLocked(apply)
		w.mu.Unlock()
		return drainErr != nil
	})
	if ctx.Err() != nil {
		return nil
	}
	if drainErr != nil {
		return drainErr
	}
	if err != nil {
		return fmt.Errorf("sandbox: wait for netlink changes: %w", err)
	}
	return errors.New("sandbox: netlink watch ended")
}

// Close releases the socket; Drain fails from then on.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.file.Close()
}

// changeOf turns one netlink message into a Change: interface deletions,
// and new or changed neighbour entries with a usable MAC address.
// Neighbour deletions are not changes of identity: the kernel drops idle
// entries all the time, and an address whose entry is gone is looked up
// again on the next fetch.
func changeOf(m syscall.NetlinkMessage) (Change, bool) {
	switch m.Header.Type {
	case unix.RTM_DELLINK:
		if len(m.Data) < unix.SizeofIfInfomsg {
			return Change{}, false
		}
		idx := int(nl.DeserializeIfInfomsg(m.Data).Index)
		if idx <= 0 {
			return Change{}, false
		}
		return Change{LinkGone: idx}, true
	case unix.RTM_NEWNEIGH:
		if len(m.Data) < unix.SizeofNdMsg {
			return Change{}, false
		}
		n, err := netlink.NeighDeserialize(m.Data)
		if err != nil || n.LinkIndex <= 0 {
			return Change{}, false
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			return Change{}, false
		}
		mac := usableMAC(*n)
		if mac == "" {
			return Change{}, false
		}
		return Change{Neighbour: ip.Unmap(), LinkIndex: n.LinkIndex, MAC: mac}, true
	}
	return Change{}, false
}
