package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenReusePort opens a listener with SO_REUSEPORT, so a new agent can
// start listening before the old one stops during a rolling update and
// pods never meet a refused connection.
func listenReusePort(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return lis, nil
}

// tcpMigrateReqPath is the sysctl (Linux 5.14) that makes the kernel move
// connections queued on a closing SO_REUSEPORT listener to another listener
// of the same port instead of resetting them. Without it, a pod whose
// connection the kernel had queued for the old agent in the instant it
// closed its listener sees "connection reset" during a rolling update.
const tcpMigrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// enableTCPMigrateReq sets the sysctl at path to 1 if it is not, and logs
// what happened; failing (old kernel, read-only /proc/sys) is not fatal,
// only rolling updates lose their last few connections.
func enableTCPMigrateReq(path string, log *slog.Logger) {
	changed, err := setSysctl(path, "1")
	switch {
	case err != nil:
		log.Warn("cannot enable net.ipv4.tcp_migrate_req; a rolling update may reset a few pod connections (set it to 1 on the node, or use --no-tcp-migrate-req to silence this)", "error", err)
	case changed:
		log.Info("enabled net.ipv4.tcp_migrate_req so that a successor agent takes over queued connections")
	}
}

// setSysctl writes want to the sysctl file at path unless it already holds
// it, and reports whether it wrote.
func setSysctl(path, want string) (bool, error) {
	cur, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if strings.TrimSpace(string(cur)) == want {
		return false, nil
	}
	if err := os.WriteFile(path, []byte(want+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}
