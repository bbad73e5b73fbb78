package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// PodEnv is the environment of an AWS client run in a pod namespace: this
// process's own minus anything AWS or proxy related and the variables
// starting with one of dropPrefixes (a harness's own), plus the region in
// both spellings (botocore reads only AWS_DEFAULT_REGION), the STS endpoint
// (moto) and the CA bundle. AWS_EC2_METADATA_DISABLED is absent on purpose,
// and the AWS config and credentials files point at an empty file, so that
// a developer's ~/.aws cannot satisfy the credential chain: the SDKs can
// only find credentials where they would on EC2, at 169.254.169.254.
func PodEnv(t testing.TB, stsEndpoint string, dropPrefixes ...string) []string {
	t.Helper()
	empty := filepath.Join(t.TempDir(), "empty-aws-config")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	ca := os.Getenv("AWS_CA_BUNDLE")
	if ca == "" {
		ca = "/etc/ssl/certs/ca-certificates.crt"
	}
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		up := strings.ToUpper(k)
		if strings.HasPrefix(up, "AWS_") || strings.HasSuffix(up, "_PROXY") || hasAnyPrefix(k, dropPrefixes) {
			continue
		}
		out = append(out, kv)
	}
	return append(out,
		"AWS_REGION="+MotoRegion,
		"AWS_DEFAULT_REGION="+MotoRegion,
		"AWS_ENDPOINT_URL_STS="+stsEndpoint,
		"AWS_CA_BUNDLE="+ca,
		"AWS_CONFIG_FILE="+empty,
		"AWS_SHARED_CREDENTIALS_FILE="+empty,
		"AWS_PAGER=",
	)
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
