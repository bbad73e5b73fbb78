package imds

// The credential endpoints: the pod's role name, its credentials and the
// instance profile document, all answered from the Provider for the pod's
// address and never from the node.

import (
	"crypto/sha256"
	"encoding/base32"
	"net/http"
	"strings"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/creds"
)

// lookup asks the Provider about the pod at ip and checks the answer enough
// to fail closed: no role means 404, and a malformed ARN or missing or
// expired credentials are never served.
func (h *Handler) lookup(r *http.Request, ip string) (creds.PodCredentials, string, outcome, bool) {
	pc, err := h.p.Credentials(r.Context(), ip)
	if err != nil {
		st := httperr.Status(err, http.StatusServiceUnavailable)
		if st < 400 || st > 599 {
			st = http.StatusServiceUnavailable
		}
		return pc, "", outcome{status: st, reason: err.Error()}, false
	}
	if pc.RoleARN == "" {
		return pc, "", outcome{status: http.StatusNotFound, reason: "pod has no role"}, false
	}
	a, ok := parseRoleARN(pc.RoleARN)
	if !ok {
		return pc, "", outcome{status: http.StatusServiceUnavailable, reason: "provider returned a malformed role arn"}, false
	}
	return pc, a.name, outcome{}, true
}

func (h *Handler) roleName(w http.ResponseWriter, r *http.Request, ip string) outcome {
	_, name, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	return h.text(w, http.StatusOK, name)
}

// credentialsDoc is the document SDKs parse; field order follows the real
// service.
type credentialsDoc struct {
	Code            string `json:"Code"`
	LastUpdated     string `json:"LastUpdated"`
	Type            string `json:"Type"`
	AccessKeyID     string `json:"AccessKeyId"`
	SecretAccessKey string `json:"SecretAccessKey"`
	Token           string `json:"Token"`
	Expiration      string `json:"Expiration"`
}

func (h *Handler) credentials(w http.ResponseWriter, r *http.Request, ip, asked string) outcome {
	pc, name, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	if asked != name {
		return h.fail(w, http.StatusNotFound, "role name is not the pod's role")
	}
	c := pc.Credentials
	now := h.now()
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || !c.Expiration.After(now) {
		return h.fail(w, http.StatusServiceUnavailable, "provider returned missing or expired credentials")
	}
	updated := c.LastUpdated
	if updated.IsZero() {
		updated = now
	}
	return h.json(w, credentialsDoc{
		Code:            "Success",
		LastUpdated:     updated.UTC().Format(timeLayout),
		Type:            "AWS-HMAC",
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		Token:           c.SessionToken,
		Expiration:      c.Expiration.UTC().Format(timeLayout),
	})
}

type infoDoc struct {
	Code               string `json:"Code"`
	LastUpdated        string `json:"LastUpdated"`
	InstanceProfileArn string `json:"InstanceProfileArn"`
	InstanceProfileID  string `json:"InstanceProfileId"`
}

// info describes the pod's role as if it were an instance profile; the
// node's profile is never revealed.
func (h *Handler) info(w http.ResponseWriter, r *http.Request, ip string) outcome {
	pc, _, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	a, _ := parseRoleARN(pc.RoleARN)
	updated := pc.Credentials.LastUpdated
	if updated.IsZero() {
		updated = h.now()
	}
	return h.json(w, infoDoc{
		Code:               "Success",
		LastUpdated:        updated.UTC().Format(timeLayout),
		InstanceProfileArn: "arn:" + a.partition + ":iam::" + a.account + ":instance-profile/" + a.name,
		InstanceProfileID:  instanceProfileID(pc.RoleARN),
	})
}

// roleARN is the part of an IAM role ARN the metadata API shows.
type roleARN struct {
	partition, account, name string
}

// parseRoleARN accepts arn:<partition>:iam::<account>:role[/path]/<name>.
func parseRoleARN(arn string) (roleARN, bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[1] == "" || parts[2] != "iam" || parts[3] != "" || parts[4] == "" {
		return roleARN{}, false
	}
	res, ok := strings.CutPrefix(parts[5], "role/")
	if !ok {
		return roleARN{}, false
	}
	name := res[strings.LastIndexByte(res, '/')+1:]
	if name == "" {
		return roleARN{}, false
	}
	return roleARN{partition: parts[1], account: parts[4], name: name}, true
}

// instanceProfileID is a stable pseudo ID in the real format (AIPA + 17
// uppercase alphanumerics), derived from the role ARN so that it is the same
// on every node and across restarts.
func instanceProfileID(arn string) string {
	sum := sha256.Sum256([]byte(arn))
	return "AIPA" + base32.StdEncoding.EncodeToString(sum[:])[:17]
}
