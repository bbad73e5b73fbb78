package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// Names of the IPv6-only node scenario.
const (
	nodeName6  = "node-v6"
	podIP6Only = "fd7a::2"
)

// testIPv6OnlyNode: a node known by its IPv6 address only (HOST_IP from
// status.hostIPs is IPv6), whose agent reaches the server over IPv6, and a
// pod with no IPv4 address. Unmodified SDKs in the pod, told to use the
// IPv6 metadata endpoint as on an IPv6-only EC2 instance, get the pod's
// own role; the node's IPv6 canary is never reached. The caller stops
// the node's usual agent before and starts it again after.
func testIPv6OnlyNode(t *testing.T, e *env, track func(*testenv.Proc) *testenv.Proc) {
	pod := e.topo.wirePod6(t, e.topo.PodNS[12], "pdm13", podIP6Only)
	e.kube.CreatePod(t, testenv.PodSpec{Namespace: nsApps, Name: "v6only",
		Annotations: map[string]string{"iam.amazonaws.com/role": "app-v6"},
		NodeName:    nodeName6, PodIPs: []string{podIP6Only}, HostIPs: []string{nodeIP6}})

	agent := track(e.startAgent6(t))
	defer func() {
		if err := stop(context.Background(), agent); err != nil {
			t.Errorf("IPv6 agent stop: %v", err)
		}
	}()

	base := "http://[" + metadataIPv6 + "]"
	testenv.Eventually(t, 15*time.Second, "the IPv6-only pod lists its role", func() error {
		r := e.curl(pod, http.MethodGet, base, testenv.CredentialsPath, "-g")
		if r.Code != http.StatusOK || r.Body != "app-v6" {
			return fmt.Errorf("%s", r)
		}
		return nil
	})

	// The pod has no IPv4 route to STS: it reaches moto through a relay
	// on the node's IPv6 address, as it would reach STS's dual-stack
	// endpoint.
	sts := relay(t, net.JoinHostPort(nodeIP6, "0"), strings.TrimPrefix(e.moto.Endpoint, "http://"))
	env := make([]string, 0, len(e.podEnv)+1)
	for _, kv := range e.podEnv {
		if !strings.HasPrefix(kv, "AWS_ENDPOINT_URL_STS=") {
			env = append(env, kv)
		}
	}
	env = append(env, "AWS_ENDPOINT_URL_STS=http://"+sts, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6")
	for _, name := range []string{"aws-cli-imdsv2", "aws-sdk-go-v2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		r := testenv.RunInNetNS(ctx, pod.NS, env, nil, sdkByName(name).argv(e)...)
		cancel()
		if got := strings.TrimSpace(r.Stdout); r.Err != nil || got != assumedARN("app-v6") {
			t.Errorf("%s in the IPv6-only pod printed %q, want %q\n%s", name, got, assumedARN("app-v6"), r)
		}
	}
	e.canary6.assertUntouched(t)
}

// startAgent6 runs the agent of an IPv6-only node: its only address is
// nodeIP6, and it talks to the server over IPv6. It waits for /ping on
// that address.
func (e *env) startAgent6(t *testing.T) *testenv.Proc {
	t.Helper()
	p := e.startProc(t, "agent6", e.agentArgs(nodeIP6), nil)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	testenv.Ready(t, 60*time.Second, "IPv6 agent /ping", func(context.Context) error {
		status, body, err := get(client, "http://"+hostPort(nodeIP6, agentPort)+"/ping")
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("/ping: %d %q %v", status, body, err)
		}
		return nil
	}, p)
	return p
}

// relay forwards TCP connections from listen to target until the test
// ends, and returns the address it listens on.
func relay(t *testing.T, listen, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer in.Close()
				out, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{})
				go func() {
					_, _ = io.Copy(out, in)
					_ = out.(*net.TCPConn).CloseWrite()
					close(done)
				}()
				_, _ = io.Copy(in, out)
				_ = in.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}
