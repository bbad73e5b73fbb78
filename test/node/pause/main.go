// Command pause is the sandbox ("pause") image's process for test/node's
// containerd: the kubelet needs a local sandbox image, and the node has no
// registry to pull registry.k8s.io/pause from. Like the real one it does
// nothing until told to stop; as PID 1 of the pod's PID namespace it exits
// on SIGINT or SIGTERM, which the kernel would otherwise ignore.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
