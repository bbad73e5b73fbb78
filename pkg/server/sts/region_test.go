package sts

import "testing"

func TestResolveRegion(t *testing.T) {
	tests := []struct {
		name, flag, env string
		wantRegion      string
		wantGlobal      bool
	}{
		{"flag wins", "eu-west-1", "us-west-2", "eu-west-1", false},
		{"env when no flag", "", "ap-south-1", "ap-south-1", false},
		{"nothing: global endpoint", "", "", "us-east-1", true},
		{"blank flag is no flag", "  ", "eu-central-1", "eu-central-1", false},
		{"blank everything", " ", "\t", "us-east-1", true},
		{"explicit us-east-1 is regional", "us-east-1", "", "us-east-1", false},
		{"env us-east-1 is regional", "", "us-east-1", "us-east-1", false},
		{"china partition", "cn-north-1", "", "cn-north-1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			region, global := ResolveRegion(tt.flag, tt.env)
			if region != tt.wantRegion || global != tt.wantGlobal {
				t.Errorf("ResolveRegion(%q, %q) = %q, %v; want %q, %v", tt.flag, tt.env, region, global, tt.wantRegion, tt.wantGlobal)
			}
		})
	}
}

func TestRegionFromEnv(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}, "eu-west-1"},
		{map[string]string{"AWS_DEFAULT_REGION": "us-west-2"}, "us-west-2"},
		{map[string]string{}, ""},
	}
	for _, tt := range tests {
		if got := regionFromEnv(mapEnv(tt.env)); got != tt.want {
			t.Errorf("regionFromEnv(%v) = %q, want %q", tt.env, got, tt.want)
		}
	}
}

func TestCustomEndpoint(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing", map[string]string{}, false},
		{"local moto for sts", map[string]string{"AWS_ENDPOINT_URL_STS": "http://127.0.0.1:5000"}, true},
		{"local moto for all services", map[string]string{"AWS_ENDPOINT_URL": "http://10.0.0.5:5000"}, true},
		{"named local host", map[string]string{"AWS_ENDPOINT_URL_STS": "https://moto.test:8443"}, true},
		{"sts-specific wins over general", map[string]string{
			"AWS_ENDPOINT_URL_STS": "https://sts.eu-west-1.amazonaws.com",
			"AWS_ENDPOINT_URL":     "http://127.0.0.1:5000",
		}, false},
		{"regional aws endpoint", map[string]string{"AWS_ENDPOINT_URL_STS": "https://sts.us-west-2.amazonaws.com"}, false},
		{"global aws endpoint", map[string]string{"AWS_ENDPOINT_URL_STS": "https://sts.amazonaws.com"}, false},
		{"fips aws endpoint, upper case", map[string]string{"AWS_ENDPOINT_URL_STS": "https://STS-FIPS.US-EAST-1.AMAZONAWS.COM"}, false},
		{"china endpoint", map[string]string{"AWS_ENDPOINT_URL": "https://sts.cn-north-1.amazonaws.com.cn"}, false},
		{"dual-stack endpoint", map[string]string{"AWS_ENDPOINT_URL_STS": "https://sts.us-east-1.api.aws"}, false},
		{"suffix lookalike is not aws", map[string]string{"AWS_ENDPOINT_URL_STS": "https://evilamazonaws.com"}, true},
		{"ignored by the sdk", map[string]string{
			"AWS_ENDPOINT_URL_STS":                "http://127.0.0.1:5000",
			"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true",
		}, false},
		{"ignore flag false", map[string]string{
			"AWS_ENDPOINT_URL_STS":                "http://127.0.0.1:5000",
			"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "false",
		}, true},
		{"blank value", map[string]string{"AWS_ENDPOINT_URL_STS": "  "}, false},
		{"not a url", map[string]string{"AWS_ENDPOINT_URL_STS": "::not a url"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CustomEndpoint(mapEnv(tt.env)); got != tt.want {
				t.Errorf("CustomEndpoint(%v) = %v, want %v", tt.env, got, tt.want)
			}
		})
	}
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}
