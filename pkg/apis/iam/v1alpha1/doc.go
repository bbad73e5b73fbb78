// Package v1alpha1 is podiam's iam.podiam.io/v1alpha1 API: the AWSAssumeRole
// resource, which asks the server to keep a Secret with a role's
// credentials up to date for workloads that cannot read them from the
// metadata address (image pulls from ECR, tools that only read a
// credentials file or environment variables, hostNetwork pods).
//
// The spec's field names and meanings are those of the AWS Assume Role
// Operator, so its objects apply with only apiVersion changed. The CRD in
// deploy/ is generated from these types (make crds); edit them, not the
// YAML.
//
// +kubebuilder:object:generate=true
// +groupName=iam.podiam.io
package v1alpha1
