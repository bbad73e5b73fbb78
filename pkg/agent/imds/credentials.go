package imds

// The credential endpoints: the pod's role name, its credentials and the
// instance profile document, all answered from the Provider for the pod's
// address and never from the node. The Provider hands over documents built
// when the answer was received (metadoc), so these write ready bytes.

import (
	"net/http"

	"github.com/podiam/podiam/pkg/agent/httperr"
	"github.com/podiam/podiam/pkg/agent/metadoc"
)

// lookup asks the Provider about the pod at ip and checks the answer enough
// to fail closed: no role means 404, and a malformed ARN is never served.
func (h *Handler) lookup(r *http.Request, ip string) (*metadoc.Docs, outcome, bool) {
	d, err := h.p.Documents(r.Context(), ip)
	if err == nil && d == nil {
		return nil, outcome{status: http.StatusServiceUnavailable, reason: "provider returned nothing"}, false
	}
	if err == nil {
		err = d.Err()
	}
	if err != nil {
		st := httperr.Status(err, http.StatusServiceUnavailable)
		if st < 400 || st > 599 {
			st = http.StatusServiceUnavailable
		}
		return nil, outcome{status: st, reason: err.Error()}, false
	}
	return d, outcome{}, true
}

func (h *Handler) roleName(w http.ResponseWriter, r *http.Request, ip string) outcome {
	d, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	return h.readyText(w, d.Role())
}

func (h *Handler) credentials(w http.ResponseWriter, r *http.Request, ip, asked string) outcome {
	d, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	if asked != d.RoleName() {
		return h.fail(w, http.StatusNotFound, "role name is not the pod's role")
	}
	doc, ok := d.Credentials(h.now())
	if !ok {
		return h.fail(w, http.StatusServiceUnavailable, "provider returned missing or expired credentials")
	}
	return h.readyJSON(w, doc)
}

// info describes the pod's role as if it were an instance profile; the
// node's profile is never revealed.
func (h *Handler) info(w http.ResponseWriter, r *http.Request, ip string) outcome {
	d, o, ok := h.lookup(r, ip)
	if !ok {
		return h.fail(w, o.status, o.reason)
	}
	return h.readyJSON(w, d.Info())
}
