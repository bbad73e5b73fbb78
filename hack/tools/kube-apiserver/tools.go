//go:build tools

// Package tools records the kube-apiserver dependency for go mod tidy.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
