// Package sts is the last step of the server's credential path: it calls
// STS through aws-sdk-go-v2, optionally chaining through a base role first
// (KIAM's --assume-role-arn), and classifies failures into creds.ErrDenied
// and creds.ErrUnavailable so the gRPC edge can answer PermissionDenied or
// Unavailable.
//
// It uses the SDK's standard configuration chain on purpose, so the usual
// AWS_* variables (credentials, AWS_CA_BUNDLE, AWS_ENDPOINT_URL_STS) work as
// in any AWS tool; that is also how tests point it at moto.
package sts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/creds"
)

const (
	// DefaultMaxAttempts is the SDK's standard retryer attempt count used
	// when Config.MaxAttempts is 0.
	DefaultMaxAttempts = 5
	// DefaultBaseSessionName names the base role's session when none is set.
	DefaultBaseSessionName = "podiam-server"
	// MaxChainedSessionDuration is STS's limit for a role assumed with role
	// credentials (role chaining).
	MaxChainedSessionDuration = time.Hour
	// maxSessionDuration is STS's absolute limit.
	maxSessionDuration = 12 * time.Hour
	// baseExpiryWindow refreshes the base role's credentials this long before
	// they expire, so a target AssumeRole never signs with a dying token.
	baseExpiryWindow = 2 * time.Minute
)

// operation is the value of the metrics' operation label: the STS call.
type operation string

const (
	opAssumeRole        operation = "assume_role"
	opGetCallerIdentity operation = "get_caller_identity"
)

// result is the value of the requests metric's result label.
type result string

const (
	resultOK          result = "ok"
	resultDenied      result = "denied"
	resultUnavailable result = "unavailable"
)

// Config configures an Assumer. The fields mirror the server's flags.
type Config struct {
	// Region is --region. "" takes AWS_REGION or AWS_DEFAULT_REGION; if those
	// are empty too, us-east-1 with the global endpoint (KIAM's behaviour),
	// unless AWS_ENDPOINT_URL_STS or AWS_ENDPOINT_URL names an endpoint.
	Region string
	// BaseRoleARN is --assume-role-arn: assumed first with the process's own
	// credentials; target roles are then assumed with its credentials.
	BaseRoleARN string
	// BaseSessionName is the base role's session name (e.g. "kiam-server").
	BaseSessionName string
	// SessionDuration is the target roles' session length; 0 lets STS choose
	// (one hour). Chained roles allow at most one hour.
	SessionDuration time.Duration
	// MaxAttempts is the standard retryer's attempt count (exponential
	// backoff with jitter on throttling, 5xx and network errors); 0 means 5.
	MaxAttempts int
	// TransitiveTags marks every session tag of a target AssumeRole
	// transitive (--transitive-session-tags), so that it stays on the
	// session through any role chaining the pod does itself.
	TransitiveTags bool
	// AssumeMaxAttempts overrides MaxAttempts for Assume, the target role
	// calls; 0 means MaxAttempts. The server sets 1: its credential cache
	// retries with backoff per role and under the STS rate limit, whereas
	// the SDK's retries would go to STS unmetered and restart their backoff
	// with every fetch.
	AssumeMaxAttempts int
}

// Assumer issues STS calls for the server. It is safe for concurrent use.
type Assumer struct {
	cfg       Config
	client    *sts.Client // signs with baseCreds
	source    *sts.Client // signs with the process's own credentials
	baseCreds aws.CredentialsProvider
	log       *slog.Logger
	now       func() time.Time
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
}

// New loads the SDK's default configuration and builds the STS client. It
// does not call STS; CheckBase does. reg may be nil (metrics not
// registered); log may be nil (discarded).
func New(ctx context.Context, cfg Config, reg prometheus.Registerer, log *slog.Logger) (*Assumer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxAttempts < 0 || cfg.AssumeMaxAttempts < 0 {
		return nil, fmt.Errorf("sts: max attempts %d/%d is negative", cfg.MaxAttempts, cfg.AssumeMaxAttempts)
	}
	if cfg.AssumeMaxAttempts == 0 {
		cfg.AssumeMaxAttempts = cfg.MaxAttempts
	}
	if cfg.SessionDuration < 0 || cfg.SessionDuration > maxSessionDuration {
		return nil, fmt.Errorf("sts: session duration %s outside 0..%s", cfg.SessionDuration, maxSessionDuration)
	}
	if cfg.BaseRoleARN != "" && cfg.SessionDuration > MaxChainedSessionDuration {
		return nil, fmt.Errorf("sts: session duration %s exceeds %s, the limit for roles chained from --assume-role-arn",
			cfg.SessionDuration, MaxChainedSessionDuration)
	}
	if cfg.BaseRoleARN != "" && cfg.BaseSessionName == "" {
		cfg.BaseSessionName = DefaultBaseSessionName
	}

	region, global := ResolveRegion(cfg.Region, regionFromEnv(os.Getenv))
	endpointFromEnv := configuredEndpoint(os.Getenv) != ""
	awsCfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion(region),
		config.WithRetryMaxAttempts(cfg.MaxAttempts),
	)
	if err != nil {
		return nil, fmt.Errorf("sts: load aws config: %w", err)
	}
	stsOpts := func(o *sts.Options) {
		if global && !endpointFromEnv {
			o.BaseEndpoint = aws.String(GlobalEndpoint)
		}
	}

	a := &Assumer{
		cfg: cfg,
		log: log,
		now: time.Now,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_sts_requests_total",
			Help: "STS requests by operation and result (ok, denied, unavailable).",
		}, []string{"operation", "result"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podiam_sts_request_duration_seconds",
			Help:    "STS request latency including SDK retries.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
	}
	for _, op := range []operation{opAssumeRole, opGetCallerIdentity} {
		a.durations.WithLabelValues(string(op))
		for _, res := range []result{resultOK, resultDenied, resultUnavailable} {
			a.requests.WithLabelValues(string(op), string(res))
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{a.requests, a.durations} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("sts: register metrics: %w", err)
			}
		}
	}

	a.baseCreds = awsCfg.Credentials
	a.source = sts.NewFromConfig(awsCfg, stsOpts)
	if cfg.BaseRoleARN != "" {
		provider := stscreds.NewAssumeRoleProvider(a.source, cfg.BaseRoleARN, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = cfg.BaseSessionName
		})
		// The cache refreshes the base role on its own before expiry and
		// lets concurrent target calls share one refresh.
		a.baseCreds = aws.NewCredentialsCache(&observedProvider{inner: provider, a: a, roleARN: cfg.BaseRoleARN},
			func(o *aws.CredentialsCacheOptions) { o.ExpiryWindow = baseExpiryWindow })
	}
	if a.baseCreds == nil {
		return nil, errors.New("sts: the aws configuration chain yielded no credentials provider")
	}
	a.client = sts.NewFromConfig(awsCfg, stsOpts, func(o *sts.Options) { o.Credentials = a.baseCreds })
	log.Debug("sts client configured", "region", region, "global_endpoint", global && !endpointFromEnv,
		"endpoint_from_env", endpointFromEnv, "base_role_arn", cfg.BaseRoleARN, "max_attempts", cfg.MaxAttempts,
		"assume_max_attempts", cfg.AssumeMaxAttempts)
	return a, nil
}

// Assume assumes key.RoleARN with the base credentials. A key that breaks
// STS's parameter rules is refused with creds.ErrDenied without a call.
func (a *Assumer) Assume(ctx context.Context, key creds.Key) (creds.Credentials, error) {
	if err := validateKey(key); err != nil {
		a.log.Debug("sts assume role refused locally", "role_arn", key.RoleARN, "session_name", key.SessionName, "error", err)
		return creds.Credentials{}, err
	}
	in := &sts.AssumeRoleInput{
		RoleArn:         aws.String(key.RoleARN),
		RoleSessionName: aws.String(key.SessionName),
	}
	if key.ExternalID != "" {
		in.ExternalId = aws.String(key.ExternalID)
	}
	if key.SourceIdentity != "" {
		in.SourceIdentity = aws.String(key.SourceIdentity)
	}
	for _, t := range key.Tags.All() {
		in.Tags = append(in.Tags, types.Tag{Key: aws.String(t.Key), Value: aws.String(t.Value)})
		if a.cfg.TransitiveTags {
			in.TransitiveTagKeys = append(in.TransitiveTagKeys, t.Key)
		}
	}
	if a.cfg.SessionDuration > 0 {
		in.DurationSeconds = aws.Int32(int32(a.cfg.SessionDuration / time.Second))
	}
	start := a.now()
	out, err := a.client.AssumeRole(ctx, in, func(o *sts.Options) { o.RetryMaxAttempts = a.cfg.AssumeMaxAttempts })
	if err == nil && (out.Credentials == nil || out.Credentials.AccessKeyId == nil ||
		out.Credentials.SecretAccessKey == nil || out.Credentials.SessionToken == nil || out.Credentials.Expiration == nil) {
		err = fmt.Errorf("%w: assume role %s: response without complete credentials", creds.ErrUnavailable, key.RoleARN)
	}
	err = a.observe(opAssumeRole, start, err)
	if err != nil {
		a.log.Debug("sts assume role failed", "role_arn", key.RoleARN, "session_name", key.SessionName,
			"external_id_set", key.ExternalID != "", "source_identity", key.SourceIdentity, "session_tags", key.Tags,
			"duration", a.now().Sub(start), "error", err)
		return creds.Credentials{}, err
	}
	c := creds.Credentials{
		AccessKeyID:     aws.ToString(out.Credentials.AccessKeyId),
		SecretAccessKey: aws.ToString(out.Credentials.SecretAccessKey),
		SessionToken:    aws.ToString(out.Credentials.SessionToken),
		// Second precision in UTC: these values are served in the
		// 2006-01-02T15:04:05Z layout that botocore parses.
		Expiration:  out.Credentials.Expiration.UTC().Truncate(time.Second),
		LastUpdated: a.now().UTC().Truncate(time.Second),
	}
	a.log.Debug("sts assume role", "role_arn", key.RoleARN, "session_name", key.SessionName,
		"external_id_set", key.ExternalID != "", "source_identity", key.SourceIdentity, "session_tags", key.Tags,
		"access_key_id", c.AccessKeyID,
		"expiration", c.Expiration, "duration", a.now().Sub(start))
	return c, nil
}

// CallerARN returns the identity behind the base credentials: the base
// role's assumed-role ARN when one is set, else the process's own identity.
func (a *Assumer) CallerARN(ctx context.Context) (string, error) {
	start := a.now()
	out, err := a.client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err == nil && out.Arn == nil {
		err = fmt.Errorf("%w: get caller identity: response without arn", creds.ErrUnavailable)
	}
	err = a.observe(opGetCallerIdentity, start, err)
	if err != nil {
		a.log.Debug("sts get caller identity failed", "duration", a.now().Sub(start), "error", err)
		return "", err
	}
	arn := aws.ToString(out.Arn)
	a.log.Debug("sts get caller identity", "arn", arn, "duration", a.now().Sub(start))
	return arn, nil
}

// SourceIdentity returns the identity of the process's own credentials,
// the first hop: the one that assumes the base role (or, without one, the
// target roles). podiam check reports it.
func (a *Assumer) SourceIdentity(ctx context.Context) (string, error) {
	start := a.now()
	out, err := a.source.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err == nil && out.Arn == nil {
		err = fmt.Errorf("%w: get caller identity: response without arn", creds.ErrUnavailable)
	}
	err = a.observe(opGetCallerIdentity, start, err)
	if err != nil {
		return "", err
	}
	return aws.ToString(out.Arn), nil
}

// CheckBase reports whether base credentials can be retrieved, for the
// server's readiness: with --assume-role-arn this assumes the base role
// (once; the cache serves later checks until refresh is due).
func (a *Assumer) CheckBase(ctx context.Context) error {
	c, err := a.baseCreds.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("base credentials: %w", Classify(err))
	}
	if !c.HasKeys() {
		return fmt.Errorf("%w: base credentials are empty", creds.ErrDenied)
	}
	return nil
}

// observe classifies err and records the call.
func (a *Assumer) observe(op operation, start time.Time, err error) error {
	a.durations.WithLabelValues(string(op)).Observe(a.now().Sub(start).Seconds())
	err = Classify(err)
	res := resultOK
	switch {
	case errors.Is(err, creds.ErrDenied):
		res = resultDenied
	case err != nil:
		res = resultUnavailable
	}
	a.requests.WithLabelValues(string(op), string(res)).Inc()
	return err
}

// observedProvider counts and logs the base role's AssumeRole calls, which
// stscreds makes on its own schedule, like the target calls.
type observedProvider struct {
	inner   aws.CredentialsProvider
	a       *Assumer
	roleARN string
}

func (p *observedProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	start := p.a.now()
	c, err := p.inner.Retrieve(ctx)
	if cerr := p.a.observe(opAssumeRole, start, err); cerr != nil {
		p.a.log.Debug("sts assume base role failed", "role_arn", p.roleARN, "duration", p.a.now().Sub(start), "error", cerr)
		return aws.Credentials{}, cerr
	}
	p.a.log.Debug("sts assume base role", "role_arn", p.roleARN, "access_key_id", c.AccessKeyID,
		"expiration", c.Expires.UTC(), "duration", p.a.now().Sub(start))
	return c, nil
}
