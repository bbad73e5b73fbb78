package testenv

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
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RunResult is what a command run by RunInNetNS did.
type RunResult struct {
	Stdout, Stderr string
	Err            error
	Took           time.Duration
}

func (r RunResult) String() string {
	return fmt.Sprintf("err=%v took=%s\nstdout: %s\nstderr: %s", r.Err, r.Took.Round(time.Millisecond),
		strings.TrimSpace(r.Stdout), strings.TrimSpace(r.Stderr))
}

// RunInNetNS runs argv inside network namespace ns, as a program in a pod
// runs, with env as its whole environment and stdin, if not nil, as its
// input. When ctx ends its whole process group is killed: a client that
// hangs must not outlive the test.
func RunInNetNS(ctx context.Context, ns string, env []string, stdin io.Reader, argv ...string) RunResult {
	ip, err := LookPath("ip")
	if err != nil {
		return RunResult{Err: err}
	}
	cmd := exec.CommandContext(ctx, ip, append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdin = stdin
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	return RunResult{Stdout: stdout.String(), Stderr: stderr.String(), Err: err, Took: time.Since(start)}
}

// CurlResult is one HTTP exchange made with Curl.
type CurlResult struct {
	Exit   int // curl's exit code: 0, 7 (refused), 28 (timeout), 52 (empty reply) ...
	Code   int // HTTP status, 0 without a response
	Header http.Header
	Body   string
	Stderr string
}

func (r CurlResult) String() string {
	return fmt.Sprintf("curl exit %d, HTTP %d, body %q, stderr %q", r.Exit, r.Code, r.Body, strings.TrimSpace(r.Stderr))
}

// Curl sends one request to url with curl from inside network namespace
// ns, with env as curl's environment and args as more of its arguments
// (method, headers, body). The path goes on the wire exactly as given
// (--path-as-is: dot segments, backslashes and percent escapes are not
// touched).
func Curl(ctx context.Context, ns string, env []string, url string, args ...string) CurlResult {
	hdr, err := os.CreateTemp("", "podiam-curl-*.headers")
	if err != nil {
		return CurlResult{Exit: -1, Stderr: err.Error()}
	}
	hdr.Close()
	defer os.Remove(hdr.Name())
	const codeMark = "\n@@podiam-curl-http-code@@"
	argv := []string{"curl", "-sS", "--path-as-is", "--max-time", "5",
		"-D", hdr.Name(), "-w", codeMark + "%{http_code}", "-o", "-"}
	argv = append(append(argv, args...), url)
	r := RunInNetNS(ctx, ns, env, nil, argv...)
	res := CurlResult{Stderr: r.Stderr}
	var exitErr *exec.ExitError
	if errors.As(r.Err, &exitErr) {
		res.Exit = exitErr.ExitCode()
	} else if r.Err != nil {
		res.Exit = -1
		res.Stderr += r.Err.Error()
	}
	if body, code, ok := strings.Cut(r.Stdout, codeMark); ok {
		res.Body = body
		res.Code, _ = strconv.Atoi(strings.TrimSpace(code))
	}
	res.Header = readHeaders(hdr.Name())
	return res
}

// readHeaders reads the response headers curl -D wrote.
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
