package sts

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
)

// isolateAWSEnv clears every variable that would make New depend on the
// machine it runs on.
func isolateAWSEnv(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_PROFILE": "", "AWS_DEFAULT_PROFILE": "",
		"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_STS": "", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "",
		"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "",
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
	} {
		t.Setenv(k, v)
	}
}

func TestNewEndpointSelection(t *testing.T) {
	tests := []struct {
		name         string
		region       string
		env          map[string]string
		wantRegion   string
		wantEndpoint string // "" means the SDK resolves it
	}{
		{"no region anywhere: global endpoint", "", nil, "us-east-1", GlobalEndpoint},
		{"flag region: regional", "eu-west-1", nil, "eu-west-1", ""},
		{"env region: regional", "", map[string]string{"AWS_REGION": "ap-southeast-2"}, "ap-southeast-2", ""},
		{"default region env", "", map[string]string{"AWS_DEFAULT_REGION": "us-west-2"}, "us-west-2", ""},
		{"endpoint from env beats global", "", map[string]string{"AWS_ENDPOINT_URL_STS": "http://127.0.0.1:5999"}, "us-east-1", "http://127.0.0.1:5999"},
		{"general endpoint from env beats global", "", map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:5998"}, "us-east-1", "http://127.0.0.1:5998"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolateAWSEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			a, err := New(t.Context(), Config{Region: tt.region}, prometheus.NewRegistry(), nil)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			opts := a.client.Options()
			if opts.Region != tt.wantRegion {
				t.Errorf("region = %q, want %q", opts.Region, tt.wantRegion)
			}
			if got := aws.ToString(opts.BaseEndpoint); got != tt.wantEndpoint {
				t.Errorf("base endpoint = %q, want %q", got, tt.wantEndpoint)
			}
			if opts.RetryMaxAttempts != DefaultMaxAttempts {
				t.Errorf("retry max attempts = %d, want %d", opts.RetryMaxAttempts, DefaultMaxAttempts)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"chained beyond an hour", Config{BaseRoleARN: "arn:aws:iam::123456789012:role/base", SessionDuration: 2 * time.Hour}, "exceeds 1h0m0s"},
		{"negative duration", Config{SessionDuration: -time.Second}, "outside"},
		{"beyond sts maximum", Config{SessionDuration: 13 * time.Hour}, "outside"},
		{"negative attempts", Config{MaxAttempts: -1}, "negative"},
		{"negative assume attempts", Config{AssumeMaxAttempts: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolateAWSEnv(t)
			_, err := New(t.Context(), tt.cfg, prometheus.NewRegistry(), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%+v) = %v, want error containing %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestNewAcceptsLongUnchainedSession(t *testing.T) {
	isolateAWSEnv(t)
	a, err := New(t.Context(), Config{SessionDuration: 6 * time.Hour, MaxAttempts: 2}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got := a.client.Options().RetryMaxAttempts; got != 2 {
		t.Errorf("retry max attempts = %d, want 2", got)
	}
}

func TestNewDuplicateRegistrationIsAnError(t *testing.T) {
	isolateAWSEnv(t)
	reg := prometheus.NewRegistry()
	if _, err := New(t.Context(), Config{}, reg, nil); err != nil {
		t.Fatalf("first New: %v", err)
	}
	if _, err := New(t.Context(), Config{}, reg, nil); err == nil {
		t.Error("second New on the same registry succeeded; metrics would be split")
	}
}
