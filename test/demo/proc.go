package main

import (
	"context"
	"path/filepath"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// startProc starts podiam with args; it is killed when the demo ends, and
// the end of its log is shown if the demo failed.
func (n *node) startProc(name string, args, env []string) *testenv.Proc {
	return testenv.StartProc(n.r, testenv.ProcSpec{Name: "podiam " + name, Path: n.podiam, Args: args, Env: env,
		Log: filepath.Join(n.dir, name+".log")})
}

// inPod runs argv inside the pod's network namespace with the pod
// environment, killing its whole process group after timeout.
func (n *node) inPod(pd *pod, timeout time.Duration, argv ...string) testenv.RunResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testenv.RunInNetNS(ctx, pd.NetNS, n.podEnv, nil, argv...)
}

// curl sends one request from the pod to the metadata address.
func (n *node) curl(pd *pod, method, path string, headers ...string) testenv.CurlResult {
	args := []string{"-X", method}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return testenv.Curl(ctx, pd.NetNS, n.podEnv, "http://"+testenv.MetadataIP+path, args...)
}
