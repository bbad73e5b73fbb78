package testenv

// Where pods find the instance metadata service, and the parts of its
// protocol that the demo and the e2e test speak. They are written out here,
// not taken from the agent's packages, so that a change there shows up as
// a failing test.
const (
	MetadataIP      = "169.254.169.254"
	CredentialsPath = "/latest/meta-data/iam/security-credentials/"
	TokenPath       = "/latest/api/token"
	TokenTTLHeader  = "X-aws-ec2-metadata-token-ttl-seconds"
	TokenHeader     = "X-aws-ec2-metadata-token"
)
