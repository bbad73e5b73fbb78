//go:build privileged

package iptables

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Environment of the helper modes below.
const (
	helperTagEnv  = "PODIAM_IPT_HELPER_TAG"  // echo: prefix of every answer
	helperGateEnv = "PODIAM_IPT_HELPER_GATE" // echo: answer only once this file exists
)

// helperEcho answers each line on each connection with tag and the line.
// It prints "got <line>" when a line arrives and, with a gate, holds the
// answer until the gate file exists, so a test can act while the answer is
// outstanding.
func helperEcho(addr, tag, gate string) int {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out := make(chan string)
	go func() {
		for s := range out {
			fmt.Println(s)
		}
	}()
	out <- "ready"
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				line = strings.TrimSpace(line)
				out <- "got " + line
				for gate != "" {
					if _, err := os.Stat(gate); err == nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				fmt.Fprintf(c, "%s %s\n", tag, line)
			}
		}()
	}
}

// helperHold keeps one connection to addr open and, for each line on
// stdin, sends it and prints the answer, or "ERR" and why.
func helperHold(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	fmt.Println("connected")
	r := bufio.NewReader(c)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintln(c, in.Text()); err != nil {
			fmt.Println("ERR", err)
			continue
		}
		line, err := r.ReadString('\n')
		if err != nil {
			fmt.Println("ERR", err)
			continue
		}
		fmt.Print(line)
	}
	return 0
}

// helperProc is a helper mode of the test binary running in a namespace,
// with its stdin and stdout lines at hand.
type helperProc struct {
	in  io.WriteCloser
	out *bufio.Reader
}

func startHelper(t *testing.T, ns string, env ...string) *helperProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &helperProc{in: in, out: bufio.NewReader(out)}
}

// expect reads the helper's next line and fails unless it starts with want.
func (h *helperProc) expect(t *testing.T, what, want string) {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		l, err := h.out.ReadString('\n')
		if err != nil {
			l = "read: " + err.Error()
		}
		line <- strings.TrimSpace(l)
	}()
	select {
	case l := <-line:
		if !strings.HasPrefix(l, want) {
			t.Fatalf("%s: %q, want %q...", what, l, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer within 10s, want %q", what, want)
	}
}

func (h *helperProc) send(t *testing.T, line string) {
	t.Helper()
	if _, err := fmt.Fprintln(h.in, line); err != nil {
		t.Fatal(err)
	}
}

// TestConntrackFlushKeepsRedirectedConnections runs the real conntrack
// tool in a node namespace whose conntrack table holds two connections
// from a pod to the metadata address: one opened before the rule, which
// reaches the real metadata service, and one the rule sends to the agent,
// with the agent's answer outstanding. A second agent installing the rule
// (as in a rolling update) must cut the first and leave the second alone:
// with the whole address flushed, the outstanding answer left the node
// untranslated and the pod's request timed out.
func TestConntrackFlushKeepsRedirectedConnections(t *testing.T) {
	node := newTestNS(t)
	pod := newTestNS(t)
	real, err := exec.LookPath("conntrack")
	if err != nil {
		t.Fatalf("this test needs conntrack (Debian package conntrack): %v", err)
	}
	// ExecConntrackFlush runs "conntrack" from PATH: run it in the node.
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", node.name, real)
	if err := os.WriteFile(filepath.Join(dir, "conntrack"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))

	node.run(t, "ip", "link", "add", "calitest0", "type", "veth", "peer", "name", "eth0")
	node.run(t, "ip", "link", "set", "eth0", "netns", pod.name)
	node.run(t, "ip", "link", "set", "calitest0", "up")
	node.run(t, "ip", "addr", "add", "10.77.0.1/32", "dev", "lo")
	node.run(t, "ip", "addr", "add", MetadataIPv4+"/32", "dev", "lo")
	node.run(t, "ip", "route", "add", "10.78.0.2/32", "dev", "calitest0")
	pod.run(t, "ip", "addr", "add", "10.78.0.2/32", "dev", "eth0")
	pod.run(t, "ip", "link", "set", "eth0", "up")
	pod.run(t, "ip", "route", "add", "10.77.0.1/32", "dev", "eth0")
	pod.run(t, "ip", "route", "add", "default", "via", "10.77.0.1", "dev", "eth0")
	// On a node, kube-proxy and the CNI have NAT rules, so conntrack
	// tracks every connection before the agent's rule exists.
	node.run(t, node.ipt, "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-j", "MASQUERADE")

	gate := filepath.Join(t.TempDir(), "answer")
	imds := startHelper(t, node.name, helperEnv+"=echo", helperAddrEnv+"="+MetadataIPv4+":80", helperTagEnv+"=IMDS")
	imds.expect(t, "real metadata service", "ready")
	agent := startHelper(t, node.name, helperEnv+"=echo", helperAddrEnv+"=10.77.0.1:8181", helperTagEnv+"=AGENT", helperGateEnv+"="+gate)
	agent.expect(t, "agent", "ready")

	bypass := startHelper(t, pod.name, helperEnv+"=hold", helperAddrEnv+"="+MetadataIPv4+":80")
	bypass.expect(t, "connection before the rule", "connected")
	bypass.send(t, "one")
	bypass.expect(t, "before the rule", "IMDS one")

	cfg := Config{HostInterfaces: []string{"cali+"}, Host: "10.77.0.1", Port: 8181, IPTablesPath: node.ipt, IP6TablesPath: node.ip6t}
	mustInstall(t, mustNew(t, cfg, prometheus.NewRegistry()))
	redirected := startHelper(t, pod.name, helperEnv+"=hold", helperAddrEnv+"="+MetadataIPv4+":80")
	redirected.expect(t, "connection after the rule", "connected")
	redirected.send(t, "two")
	agent.expect(t, "agent receives the redirected request", "got two")

	// A second agent starts while the answer is outstanding.
	mustInstall(t, mustNew(t, cfg, prometheus.NewRegistry()))
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	redirected.expect(t, "outstanding answer after a second agent's install", "AGENT two")
	redirected.send(t, "three")
	agent.expect(t, "agent", "got three")
	redirected.expect(t, "next request on the redirected connection", "AGENT three")

	// The connection that bypassed the rule no longer reaches the real
	// metadata service: its next packet is redirected mid-stream, and the
	// agent's side knows no such connection.
	bypass.send(t, "four")
	bypass.expect(t, "connection opened before the rule, after the install", "ERR")
}
