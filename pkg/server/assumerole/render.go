package assumerole

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/podiam/podiam/pkg/apis/iam/v1alpha1"
	"github.com/podiam/podiam/pkg/creds"
)

// Keys of the seed operator's Map layout; readers of its Secrets use them.
const (
	KeyAccessKeyID     = "awsAccessKeyId"
	KeySecretAccessKey = "awsSecretAccessKey"
	KeySessionToken    = "awsSessionToken"
	// KeyCredentials is the File layout's key: mounted as a volume it is
	// the file AWS_SHARED_CREDENTIALS_FILE names.
	KeyCredentials = "credentials"
)

// ECRUser is the user name every ECR authorisation token goes with.
const ECRUser = "AWS"

// ErrInvalidECRToken means GetAuthorizationToken returned something that is
// not base64("AWS:<password>").
var ErrInvalidECRToken = errors.New("invalid ecr authorization token")

// Rendered is a Secret's desired type and data, before it is given a name,
// labels and an owner.
type Rendered struct {
	Type corev1.SecretType
	Data map[string][]byte
}

// RenderMap is the Map layout: three keys in an Opaque Secret.
func RenderMap(c creds.Credentials) Rendered {
	return Rendered{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{
		KeyAccessKeyID:     []byte(c.AccessKeyID),
		KeySecretAccessKey: []byte(c.SecretAccessKey),
		KeySessionToken:    []byte(c.SessionToken),
	}}
}

// RenderFile is the File layout: an AWS shared-credentials file with a
// default profile under "credentials".
func RenderFile(c creds.Credentials) Rendered {
	return Rendered{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{
		KeyCredentials: []byte(CredentialsINI(c)),
	}}
}

// CredentialsINI formats credentials as the shared-credentials file every
// AWS SDK and the CLI read. Values never contain newlines (STS returns
// base64 and upper-case alphanumerics), so no quoting is needed; one that
// did would end the value early, so it is refused by stripping.
func CredentialsINI(c creds.Credentials) string {
	clean := func(s string) string { return strings.NewReplacer("\n", "", "\r", "").Replace(s) }
	return "[default]\n" +
		"aws_access_key_id=" + clean(c.AccessKeyID) + "\n" +
		"aws_secret_access_key=" + clean(c.SecretAccessKey) + "\n" +
		"aws_session_token=" + clean(c.SessionToken) + "\n"
}

// dockerAuth is one entry of .dockerconfigjson's "auths". "auth" is
// base64(user:password), which some readers (older kubelets, tools) use
// instead of the two fields the seed's layout shows.
type dockerAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Auth     string `json:"auth"`
}

type dockerConfig struct {
	Auths map[string]dockerAuth `json:"auths"`
}

// RenderDockerConfig is the EcrDockerConfigJson layout: a
// kubernetes.io/dockerconfigjson Secret whose only entry is registry, with
// user AWS and the ECR password.
func RenderDockerConfig(registry, password string) (Rendered, error) {
	cfg := dockerConfig{Auths: map[string]dockerAuth{registry: {
		Username: ECRUser,
		Password: password,
		Auth:     base64.StdEncoding.EncodeToString([]byte(ECRUser + ":" + password)),
	}}}
	b, err := json.Marshal(cfg)
	if err != nil {
		return Rendered{}, fmt.Errorf("encode docker config: %w", err)
	}
	return Rendered{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{
		corev1.DockerConfigJsonKey: b,
	}}, nil
}

// ECRPassword decodes ECR's authorisation token, base64("AWS:<password>"),
// into the password.
func ECRPassword(token string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalidECRToken, err)
	}
	user, pw, ok := strings.Cut(string(raw), ":")
	if !ok || user != ECRUser || pw == "" {
		return "", ErrInvalidECRToken
	}
	return pw, nil
}

// Render lays out credentials for a Map or File spec. The ECR layout needs
// a token and goes through RenderDockerConfig.
func Render(t v1alpha1.SecretType, c creds.Credentials) (Rendered, error) {
	switch t {
	case v1alpha1.SecretTypeMap:
		return RenderMap(c), nil
	case v1alpha1.SecretTypeFile:
		return RenderFile(c), nil
	default:
		return Rendered{}, fmt.Errorf("%w: secret type %q has no credentials layout", ErrInvalidSpec, t)
	}
}
