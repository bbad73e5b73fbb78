package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group, version and resource, for the dynamic client and for the
// apiVersion and kind the controller sets on objects it converts.
const (
	Group    = "iam.podiam.io"
	Version  = "v1alpha1"
	Kind     = "AWSAssumeRole"
	Resource = "awsassumeroles"
)

// GroupVersion is iam.podiam.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// GroupVersionResource names the resource for the dynamic client.
var GroupVersionResource = GroupVersion.WithResource(Resource)

// SecretType says how the credentials are laid out in the Secret.
// +kubebuilder:validation:Enum=Map;File;EcrDockerConfigJson
type SecretType string

// The seed operator's three layouts.
const (
	// SecretTypeMap puts awsAccessKeyId, awsSecretAccessKey and
	// awsSessionToken in three keys of an Opaque Secret.
	SecretTypeMap SecretType = "Map"
	// SecretTypeFile puts an AWS shared-credentials file in the key
	// "credentials" of an Opaque Secret.
	SecretTypeFile SecretType = "File"
	// SecretTypeEcrDockerConfigJson writes a kubernetes.io/dockerconfigjson
	// Secret with an ECR authorisation token for ecrRepositoryUrl.
	SecretTypeEcrDockerConfigJson SecretType = "EcrDockerConfigJson"
)

// AWSAssumeRoleSpec names the role and the Secret to keep its credentials in.
// +kubebuilder:validation:XValidation:rule="self.secretType != 'EcrDockerConfigJson' || (has(self.ecrRepositoryUrl) && size(self.ecrRepositoryUrl) > 0)",message="ecrRepositoryUrl is required with secretType EcrDockerConfigJson"
// +kubebuilder:validation:XValidation:rule="has(self.roleName) || has(self.roleArn)",message="one of roleName and roleArn is required"
type AWSAssumeRoleSpec struct {
	// RoleName is the IAM role to assume: a name (with an optional path),
	// resolved against the server's role base ARN as the
	// iam.amazonaws.com/role annotation is, or a full role ARN.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	RoleName string `json:"roleName,omitempty"`
	// RoleArn is the full ARN of the role; it takes precedence over
	// roleName.
	// +optional
	// +kubebuilder:validation:Pattern=`^arn:[^:]+:iam::[0-9]{12}:role/.+$`
	RoleArn string `json:"roleArn,omitempty"`
	// SecretName is the Secret, in the object's namespace, that holds the
	// credentials. A Secret of that name that this object does not own is
	// never overwritten.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName"`
	// SecretType is the Secret's layout: Map, File or EcrDockerConfigJson.
	SecretType SecretType `json:"secretType"`
	// EcrRepositoryUrl is the registry (or repository) URL the ECR
	// authorisation token is for, e.g.
	// https://<account>.dkr.ecr.<region>.amazonaws.com/v2/my-repo. It is
	// the key under "auths" in .dockerconfigjson.
	// +optional
	EcrRepositoryUrl string `json:"ecrRepositoryUrl,omitempty"`
	// DurationSeconds is the session length the object asks for. Sessions
	// come from the server's shared credential cache and last its
	// --session-duration; a longer request is reported in the Ready
	// condition's message, not honoured.
	// +optional
	// +kubebuilder:validation:Minimum=900
	// +kubebuilder:validation:Maximum=43200
	DurationSeconds *int32 `json:"durationSeconds,omitempty"`
}

// Condition types and reasons the controller sets.
const (
	// ConditionReady is True when the Secret holds valid credentials.
	ConditionReady = "Ready"

	ReasonSecretWritten  = "SecretWritten"
	ReasonNotPermitted   = "NotPermitted"
	ReasonInvalidSpec    = "InvalidSpec"
	ReasonSTSDenied      = "STSDenied"
	ReasonSTSUnavailable = "STSUnavailable"
	ReasonECRFailed      = "ECRFailed"
	ReasonSecretConflict = "SecretConflict"
	ReasonSecretError    = "SecretError"
)

// AWSAssumeRoleStatus is what the controller last did. It never holds
// credentials.
type AWSAssumeRoleStatus struct {
	// Conditions: Ready, with the reason it is not.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// RoleArn is the role the name resolved to.
	// +optional
	RoleArn string `json:"roleArn,omitempty"`
	// Expiration is when the credentials in the Secret expire.
	// +optional
	Expiration *metav1.Time `json:"expiration,omitempty"`
	// LastRefreshTime is when the Secret was last written with new
	// credentials.
	// +optional
	LastRefreshTime *metav1.Time `json:"lastRefreshTime,omitempty"`
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// AWSAssumeRole asks podiam to keep a Secret with a role's credentials.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=awsar,categories=podiam
// +kubebuilder:printcolumn:name="Role",type=string,JSONPath=`.spec.roleName`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.spec.secretName`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.secretType`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.status.expiration`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AWSAssumeRole struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AWSAssumeRoleSpec   `json:"spec"`
	Status AWSAssumeRoleStatus `json:"status,omitempty"`
}

// AWSAssumeRoleList is a list of AWSAssumeRole.
//
// +kubebuilder:object:root=true
type AWSAssumeRoleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AWSAssumeRole `json:"items"`
}
