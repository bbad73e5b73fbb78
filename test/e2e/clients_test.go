package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runResult is what a command run in a pod namespace did.
type runResult struct {
	Stdout, Stderr string
	Err            error
	Took           time.Duration
}

func (r runResult) String() string {
	return fmt.Sprintf("err=%v took=%s\nstdout: %s\nstderr: %s", r.Err, r.Took.Round(time.Millisecond),
		strings.TrimSpace(r.Stdout), strings.TrimSpace(r.Stderr))
}

// inPod runs argv inside the pod's network namespace with the pod
// environment, killing its whole process group after timeout.
func (e *env) inPod(p *podNet, timeout time.Duration, argv ...string) runResult {
	return e.inPodStdin(p, timeout, nil, argv...)
}

// inPodStdin is inPod with stdin as the command's standard input.
func (e *env) inPodStdin(p *podNet, timeout time.Duration, stdin io.Reader, argv ...string) runResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.topo.ip, append([]string{"netns", "exec", p.NS}, argv...)...)
	cmd.Stdin = stdin
	cmd.Env = e.podEnv
	cmd.Dir = e.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	return runResult{Stdout: stdout.String(), Stderr: stderr.String(), Err: err, Took: time.Since(start)}
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
func (e *env) runSDK(p *podNet, c sdkClient) runResult {
	return e.inPod(p, 60*time.Second, c.argv(e)...)
}

// curlResult is one HTTP exchange made with curl from a pod namespace.
type curlResult struct {
	Exit   int // curl's exit code: 0, 7 (refused), 28 (timeout), 52 (empty reply) ...
	Code   int // HTTP status, 0 without a response
	Header http.Header
	Body   string
	Stderr string
}

func (r curlResult) String() string {
	return fmt.Sprintf("curl exit %d, HTTP %d, body %q, stderr %q", r.Exit, r.Code, r.Body, strings.TrimSpace(r.Stderr))
}

// curl sends one request from the pod to base+path. The path goes on the
// wire exactly as given (--path-as-is: dot segments, backslashes and
// percent escapes are not touched). headers are "Name: value" strings.
func (e *env) curl(p *podNet, method, base, path string, headers ...string) curlResult {
	args := []string{"-X", method}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	return e.curlArgs(p, base+path, args...)
}

// curlArgs is curl with arbitrary extra arguments (bodies, methods).
func (e *env) curlArgs(p *podNet, url string, args ...string) curlResult {
	hdrFile := filepath.Join(e.tmp, fmt.Sprintf("curl-%d.headers", e.seq.Add(1)))
	const codeMark = "\n@@podiam-e2e-http-code@@"
	argv := []string{"curl", "-sS", "--path-as-is", "--max-time", "5",
		"-D", hdrFile, "-w", codeMark + "%{http_code}", "-o", "-"}
	argv = append(append(argv, args...), url)
	r := e.inPod(p, 15*time.Second, argv...)
	res := curlResult{Stderr: r.Stderr}
	var exitErr *exec.ExitError
	if errors.As(r.Err, &exitErr) {
		res.Exit = exitErr.ExitCode()
	} else if r.Err != nil {
		res.Exit = -1
		res.Stderr += r.Err.Error()
	}
	body, code, ok := strings.Cut(r.Stdout, codeMark)
	if ok {
		res.Body = body
		res.Code, _ = strconv.Atoi(strings.TrimSpace(code))
	}
	res.Header = readHeaders(hdrFile)
	return res
}

// imds sends a request to the metadata address, as SDKs do.
func (e *env) imds(p *podNet, method, path string, headers ...string) curlResult {
	return e.curl(p, method, "http://"+metadataIP, path, headers...)
}

func readHeaders(path string) http.Header {
	data, err := os.ReadFile(path)
	if err != nil {
		return http.Header{}
	}
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(data)))
	if _, err := r.ReadLine(); err != nil { // status line
		return http.Header{}
	}
	h, _ := r.ReadMIMEHeader()
	return http.Header(h)
}
