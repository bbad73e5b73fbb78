// Package metadoc builds what the metadata API shows a pod for one answer
// of a podiam server: its role name, its credentials document and its
// instance profile document.
//
// The agent builds them once, when its cache receives the answer, so that
// a request writes ready bytes: a warm request then encodes no JSON,
// formats no time and parses no ARN. What can only be decided at request
// time (whether the credentials have expired) is left to the request.
package metadoc

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/creds"
)

// TimeLayout is what botocore parses with strptime: UTC, no fraction.
const TimeLayout = "2006-01-02T15:04:05Z"

// Docs are the documents of one answer. They are immutable once built and
// safe for concurrent use; the byte slices they return must not be
// modified.
type Docs struct {
	pod creds.PodCredentials
	// err is why no document can be served: the pod has no role (404) or
	// its role ARN is malformed (503). Built once, so that a refused pod
	// costs no allocation either.
	err      error
	roleName string
	role     []byte
	// creds is nil when the answer lacks an access key or a secret: such
	// credentials are never served.
	creds []byte
	info  []byte
}

// credentialsDoc is the document SDKs parse; field order follows the real
// service, as some parsers are picky.
type credentialsDoc struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

// infoDoc describes the pod's role as if it were an instance profile; the
// node's profile is never revealed.
type infoDoc struct {
	Code               string `json:"Code"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn"`
	InstanceProfileID  string `json:"InstanceProfileId"`
}

// Build makes the documents for pc, received at received: LastUpdated is
// pc's, or received when the server sent none. It never fails: an answer
// that cannot be shown gives Docs whose Err says why.
func Build(pc creds.PodCredentials, received time.Time) *Docs {
	d := &Docs{pod: pc}
	if pc.RoleARN == "" {
		d.err = httperr.New(http.StatusNotFound, errors.New("pod has no role"))
		return d
	}
	a, ok := ParseRoleARN(pc.RoleARN)
	if !ok {
		d.err = httperr.New(http.StatusServiceUnavailable, errors.New("provider returned a malformed role arn"))
		return d
	}
	d.roleName = a.Name
	d.role = []byte(a.Name)
	c := pc.Credentials
	updated := c.LastUpdated
	if updated.IsZero() {
		updated = received
	}
	lastUpdated := updated.UTC().Format(TimeLayout)
	if c.AccessKeyID != "" && c.SecretAccessKey != "" {
		d.creds = mustJSON(credentialsDoc{
			Code:            "Success",
			LastUpdated:     lastUpdated,
			Type:            "AWS-HMAC",
			AccessKeyID:     c.AccessKeyID,
			SecretAccessKey: c.SecretAccessKey,
			Token:           c.SessionToken,
			Expiration:      c.Expiration.UTC().Format(TimeLayout),
		})
	}
	d.info = mustJSON(infoDoc{
		Code:               "Success",
		LastUpdated:        lastUpdated,
		InstanceProfileArn: "arn:" + a.Partition + ":iam::" + a.Account + ":instance-profile/" + a.Name,
		InstanceProfileID:  InstanceProfileID(pc.RoleARN),
	})
	return d
}

// mustJSON encodes a struct of strings, which cannot fail.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("metadoc: encoding %T: %v", v, err))
	}
	return b
}

// Pod is the answer the documents were built from.
func (d *Docs) Pod() *creds.PodCredentials { return &d.pod }

// Err is nil when the pod has a role the documents show, and otherwise
// says why not, with the HTTP status to answer (httperr).
func (d *Docs) Err() error { return d.err }

// RoleName is the name of the pod's role, the last segment of its ARN.
func (d *Docs) RoleName() string { return d.roleName }

// Role is RoleName's bytes, the body of the role listing.
func (d *Docs) Role() []byte { return d.role }

// Credentials is the credentials document, or false when the answer has
// no access key or secret or its credentials have expired at now.
func (d *Docs) Credentials(now time.Time) ([]byte, bool) {
	if d.creds == nil || !d.pod.Credentials.Expiration.After(now) {
		return nil, false
	}
	return d.creds, true
}

// Info is the instance profile document.
func (d *Docs) Info() []byte { return d.info }

// RoleARN is the part of an IAM role ARN the metadata API shows.
type RoleARN struct {
	Partition, Account, Name string
}

// ParseRoleARN accepts arn:<partition>:iam::<account>:role[/path]/<name>.
func ParseRoleARN(arn string) (RoleARN, bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[1] == "" || parts[2] != "iam" || parts[3] != "" || parts[4] == "" {
		return RoleARN{}, false
	}
	res, ok := strings.CutPrefix(parts[5], "role/")
	if !ok {
		return RoleARN{}, false
	}
	name := res[strings.LastIndexByte(res, '/')+1:]
	if name == "" {
		return RoleARN{}, false
	}
	return RoleARN{Partition: parts[1], Account: parts[4], Name: name}, true
}

// InstanceProfileID is a stable pseudo ID in the real format (AIPA + 17
// uppercase alphanumerics), derived from the role ARN so that it is the
// same on every node and across restarts.
func InstanceProfileID(arn string) string {
	sum := sha256.Sum256([]byte(arn))
	return "AIPA" + base32.StdEncoding.EncodeToString(sum[:])[:17]
}
