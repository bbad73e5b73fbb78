package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/podiam/podiam/pkg/creds"
)

// motoStartTimeout covers python's start-up on a loaded two-core machine.
const motoStartTimeout = time.Minute

// Moto values match moto's defaults: it accepts any credentials and any role
// in its default account.
const (
	MotoAccountID       = "123456789012"
	MotoRegion          = "us-east-1"
	MotoAccessKeyID     = "testing"
	MotoSecretAccessKey = "testing"
)

// Moto is a running moto_server used as STS. It implements AssumeRole with
// role chaining, and GetCallerIdentity returns the assumed-role ARN.
type Moto struct {
	Endpoint string // http://addr:port

	proc *Proc
}

// MotoOptions places moto_server, like KubeOptions.
type MotoOptions struct {
	Addr  string // bind address; default 127.0.0.1
	NetNS string // if set, moto_server runs via `ip netns exec NetNS`
}

// StartMoto runs moto_server on a free port and waits until it answers.
func StartMoto(t testing.TB, opts MotoOptions) *Moto {
	t.Helper()
	bin := Bin(t, "moto_server")
	addr := bindAddr(t, "MotoOptions.Addr", opts.Addr)
	dir := t.TempDir()
	port := FreePort(t)
	p := StartProc(t, ProcSpec{Name: "moto_server", Path: bin, Args: []string{"-H", addr, "-p", strconv.Itoa(port)},
		Dir: dir, NetNS: opts.NetNS, Log: filepath.Join(dir, "moto_server.log")})
	m := &Moto{Endpoint: "http://" + net.JoinHostPort(addr, strconv.Itoa(port)), proc: p}

	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	Ready(t, motoStartTimeout, "moto_server", func(context.Context) error {
		// Any HTTP answer means the server loop runs; the dashboard path
		// exists in every moto 5 release.
		resp, err := client.Get(m.Endpoint + "/moto-api/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("moto-api: %s", resp.Status)
		}
		return nil
	}, p)
	return m
}

// Env returns the environment a process needs to use this moto as STS.
// Instance metadata is disabled so a process that finds no credentials fails
// instead of reaching for the host's role.
func (m *Moto) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL_STS=" + m.Endpoint,
		"AWS_REGION=" + MotoRegion,
		"AWS_ACCESS_KEY_ID=" + MotoAccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + MotoSecretAccessKey,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// STSClient returns an STS client for this moto with the given static
// credentials, independent of the process environment.
func (m *Moto) STSClient(c creds.Credentials) *sts.Client {
	return sts.New(sts.Options{
		Region:       MotoRegion,
		BaseEndpoint: aws.String(m.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken),
	})
}

// RootCredentials are the long-term credentials moto accepts for its default
// account, the starting point for AssumeRole in tests.
func (m *Moto) RootCredentials() creds.Credentials {
	return creds.Credentials{AccessKeyID: MotoAccessKeyID, SecretAccessKey: MotoSecretAccessKey}
}

// CallerIdentity runs GetCallerIdentity with the given credentials and
// returns the ARN, which for assumed-role credentials names role and session.
func (m *Moto) CallerIdentity(ctx context.Context, c creds.Credentials) (string, error) {
	out, err := m.STSClient(c).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return "", fmt.Errorf("get caller identity: %w", err)
	}
	return aws.ToString(out.Arn), nil
}
