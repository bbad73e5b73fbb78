package imds

// The health endpoints: /ping and /health, which pods can reach too.

import (
	"context"
	"net/http"
)

// health reports readiness without anything about the node: the reasons go
// to the log, the body only says which check failed.
func (h *Handler) health(w http.ResponseWriter, r *http.Request) outcome {
	if h.ready != nil {
		if err := h.ready(); err != nil {
			o := h.text(w, http.StatusServiceUnavailable, "not ready")
			o.reason = "not ready: " + err.Error()
			return o
		}
	}
	if d := r.URL.Query().Get("deep"); d == "1" || d == "true" {
		if err := h.deep(r.Context()); err != nil {
			o := h.text(w, http.StatusServiceUnavailable, "server unavailable")
			o.reason = "deep check: " + err.Error()
			return o
		}
	}
	return h.text(w, http.StatusOK, "ok")
}

// deep runs DeepCheck at most once per DeepCheckInterval, because pods can
// reach /health too and must not be able to turn it into load on the
// servers. The call is detached from the request so that one impatient
// caller does not cache a cancellation for everyone.
func (h *Handler) deep(ctx context.Context) error {
	if h.deepCheck == nil {
		return nil
	}
	h.deepMu.Lock()
	defer h.deepMu.Unlock()
	now := h.now()
	if h.deepRan && now.Sub(h.deepAt) < DeepCheckInterval && !now.Before(h.deepAt) {
		return h.deepErr
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deepCheckTimeout)
	defer cancel()
	h.deepErr = h.deepCheck(cctx)
	h.deepAt = now
	h.deepRan = true
	return h.deepErr
}
