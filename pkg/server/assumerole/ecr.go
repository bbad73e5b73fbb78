package assumerole

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"

	"github.com/podiam/podiam/pkg/creds"
)

// ErrInvalidECRURL means ecrRepositoryUrl does not name an ECR registry.
var ErrInvalidECRURL = errors.New("invalid ecrRepositoryUrl")

// ecrHost matches a private ECR registry host: the account is the registry
// id GetAuthorizationToken takes, the region picks the endpoint.
var ecrHost = regexp.MustCompile(`^([0-9]{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$`)

// Registry is the ECR registry an ecrRepositoryUrl names.
type Registry struct {
	ID     string // the account
	Region string
}

// ParseECRURL finds the registry in a repository URL such as
// https://<account>.dkr.ecr.<region>.amazonaws.com/v2/my-repo. The scheme
// may be left out, as docker users often do.
func ParseECRURL(raw string) (Registry, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return Registry{}, fmt.Errorf("%w: empty", ErrInvalidECRURL)
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return Registry{}, fmt.Errorf("%w: %w", ErrInvalidECRURL, err)
	}
	m := ecrHost.FindStringSubmatch(u.Hostname())
	if m == nil {
		return Registry{}, fmt.Errorf("%w: host %q is not <account>.dkr.ecr.<region>.amazonaws.com", ErrInvalidECRURL, u.Hostname())
	}
	return Registry{ID: m[1], Region: m[2]}, nil
}

// ECRToken is an authorisation token's password and when it expires (zero
// when ECR did not say).
type ECRToken struct {
	Password  string
	ExpiresAt time.Time
}

// ECRClient gets ECR authorisation tokens with given credentials. It is
// built once from the process's AWS configuration, so that the usual
// AWS_ENDPOINT_URL_ECR and AWS_CA_BUNDLE apply; only the credentials (the
// assumed role's) and the region (the registry's) change per call.
type ECRClient struct {
	cfg aws.Config
}

// NewECRClient wraps an AWS configuration, typically config.LoadDefaultConfig's.
func NewECRClient(cfg aws.Config) *ECRClient { return &ECRClient{cfg: cfg} }

// Token calls GetAuthorizationToken for the registry as the role whose
// credentials c are.
func (e *ECRClient) Token(ctx context.Context, c creds.Credentials, reg Registry) (ECRToken, error) {
	client := ecr.NewFromConfig(e.cfg, func(o *ecr.Options) {
		o.Region = reg.Region
		o.Credentials = credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, c.SessionToken)
	})
	out, err := client.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{RegistryIds: []string{reg.ID}})
	if err != nil {
		return ECRToken{}, fmt.Errorf("ecr get authorization token: %w", err)
	}
	if len(out.AuthorizationData) == 0 {
		return ECRToken{}, fmt.Errorf("%w: no authorization data", ErrInvalidECRToken)
	}
	d := out.AuthorizationData[0]
	pw, err := ECRPassword(aws.ToString(d.AuthorizationToken))
	if err != nil {
		return ECRToken{}, err
	}
	return ECRToken{Password: pw, ExpiresAt: aws.ToTime(d.ExpiresAt)}, nil
}
