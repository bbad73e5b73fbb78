package imds

// The proxy endpoint: paths the allow-list admits go to the real metadata
// service (see upstream.go).

import "net/http"

// proxy answers an allowed route from the real metadata service with its
// status, content type and body (up to maxProxyBody).
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, canon string) outcome {
	p, err := h.up.get(r.Context(), canon)
	if err != nil {
		return h.fail(w, http.StatusBadGateway, err.Error())
	}
	if p.contentType != "" {
		w.Header().Set("Content-Type", p.contentType)
	}
	w.WriteHeader(p.status)
	_, _ = w.Write(p.body)
	if p.status >= 400 {
		return outcome{status: p.status, reason: "upstream refused", quiet: p.status == http.StatusNotFound}
	}
	return outcome{status: p.status}
}
