package sts

import (
	"net/url"
	"strings"
)

// DefaultRegion is used when neither --region nor the environment names one.
const DefaultRegion = "us-east-1"

// GlobalEndpoint is STS's global endpoint, which KIAM used when no region was
// given. The SDK would otherwise pick the regional us-east-1 endpoint, whose
// session tokens are valid in fewer regions by default.
const GlobalEndpoint = "https://sts.amazonaws.com"

// ResolveRegion applies KIAM's rule: the --region flag, else the region from
// the environment, else us-east-1 through the global endpoint.
func ResolveRegion(flag, env string) (region string, global bool) {
	if r := strings.TrimSpace(flag); r != "" {
		return r, false
	}
	if r := strings.TrimSpace(env); r != "" {
		return r, false
	}
	return DefaultRegion, true
}

// regionFromEnv is the region the environment names, as the SDK reads it.
func regionFromEnv(getenv func(string) string) string {
	if r := getenv("AWS_REGION"); r != "" {
		return r
	}
	return getenv("AWS_DEFAULT_REGION")
}

// configuredEndpoint is the STS endpoint URL the SDK takes from the
// environment, or "" when it resolves endpoints itself.
func configuredEndpoint(getenv func(string) string) string {
	if strings.EqualFold(strings.TrimSpace(getenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")), "true") {
		return ""
	}
	if u := strings.TrimSpace(getenv("AWS_ENDPOINT_URL_STS")); u != "" {
		return u
	}
	return strings.TrimSpace(getenv("AWS_ENDPOINT_URL"))
}

// CustomEndpoint reports whether the environment points STS at something
// that is not AWS (a local moto in tests). Only then may sessions be shorter
// than STS's 900 s minimum, so an AWS host given through the same variables
// does not count.
func CustomEndpoint(getenv func(string) string) bool {
	raw := configuredEndpoint(getenv)
	if raw == "" {
		return false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Hostname() == "" {
		// The SDK will refuse it anyway; it is certainly not AWS.
		return true
	}
	return !isAWSHost(u.Hostname())
}

// isAWSHost matches the DNS suffixes of AWS partitions' endpoints.
func isAWSHost(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, suffix := range []string{
		"amazonaws.com", "amazonaws.com.cn", "api.aws", "c2s.ic.gov", "sc2s.sgov.gov",
		"cloud.adc-e.uk", "csp.hci.ic.gov", "amazonaws.eu",
	} {
		if host == suffix || strings.HasSuffix(host, "."+suffix) {
			return true
		}
	}
	return false
}
