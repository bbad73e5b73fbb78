package e2e

import (
	"context"
	"io"
	"path/filepath"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// inPod runs argv inside the pod's network namespace with the pod
// environment, killing its whole process group after timeout.
func (e *env) inPod(p *podNet, timeout time.Duration, argv ...string) testenv.RunResult {
	return e.inPodStdin(p, timeout, nil, argv...)
}

// inPodStdin is inPod with stdin as the command's standard input.
func (e *env) inPodStdin(p *podNet, timeout time.Duration, stdin io.Reader, argv ...string) testenv.RunResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testenv.RunInNetNS(ctx, p.NS, e.podEnv, stdin, argv...)
}

// sdkClient is one unmodified AWS SDK that prints the caller's ARN.
type sdkClient struct {
	Name string
	argv func(e *env) []string
}

// sdkClients are the four SDKs the issue names. They run with the SDKs' own
// IMDS defaults (1 s and no retry for botocore and JavaScript).
var sdkClients = []sdkClient{
	{"aws-cli-imdsv2", func(e *env) []string {
		return []string{"aws", "sts", "get-caller-identity", "--output", "text", "--query", "Arn"}
	}},
	{"boto3-imdsv1", func(e *env) []string {
		return []string{"python3", filepath.Join(e.dir, "py", "imdsv1.py")}
	}},
	{"aws-sdk-go-v2", func(e *env) []string { return []string{e.gosdk} }},
	{"js-sdk-v3-default-chain", func(e *env) []string {
		return []string{"node", filepath.Join(e.dir, "js", "sts.mjs"), "chain"}
	}},
	{"js-sdk-v3-fromInstanceMetadata", func(e *env) []string {
		return []string{"node", filepath.Join(e.dir, "js", "sts.mjs"), "imds"}
	}},
}

func sdkByName(name string) sdkClient {
	for _, c := range sdkClients {
		if c.Name == name {
			return c
		}
	}
	panic("unknown sdk client " + name) // a typo in the test itself
}

// runSDK runs an SDK client in the pod and returns its result; the ARN is
// its trimmed stdout.
func (e *env) runSDK(p *podNet, c sdkClient) testenv.RunResult {
	return e.inPod(p, 60*time.Second, c.argv(e)...)
}

// curl sends one request from the pod to base+path. The path goes on the
// wire exactly as given. headers are "Name: value" strings.
func (e *env) curl(p *podNet, method, base, path string, headers ...string) testenv.CurlResult {
	args := []string{"-X", method}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	return e.curlArgs(p, base+path, args...)
}

// curlArgs is curl with arbitrary extra arguments (bodies, methods).
func (e *env) curlArgs(p *podNet, url string, args ...string) testenv.CurlResult {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return testenv.Curl(ctx, p.NS, e.podEnv, url, args...)
}

// imds sends a request to the metadata address, as SDKs do.
func (e *env) imds(p *podNet, method, path string, headers ...string) testenv.CurlResult {
	return e.curl(p, method, "http://"+testenv.MetadataIP, path, headers...)
}
