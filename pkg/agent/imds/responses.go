package imds

// How answers are written: every body is plain text or JSON, and refusals
// carry only the status text.

import (
	"encoding/json"
	"net/http"
)

// outcome is how a request ended, for the metric and the log line. reason
// must never hold credentials or tokens.
type outcome struct {
	status int
	reason string
	// quiet marks refusals that are routine noise (404 on a path we do not
	// serve): logged at debug only.
	quiet bool
}

func (h *Handler) text(w http.ResponseWriter, status int, body string) outcome {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return outcome{status: status}
}

func (h *Handler) json(w http.ResponseWriter, v any) outcome {
	b, err := json.Marshal(v)
	if err != nil {
		return h.fail(w, http.StatusInternalServerError, "encoding response")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return outcome{status: http.StatusOK}
}

// fail answers with the status text only: reasons (which may name the
// server's view of the pod) go to the log, not to the pod.
func (h *Handler) fail(w http.ResponseWriter, status int, reason string) outcome {
	o := h.text(w, status, http.StatusText(status))
	o.reason = reason
	return o
}

func (h *Handler) methodNotAllowed(w http.ResponseWriter, allow string) outcome {
	w.Header().Set("Allow", allow)
	return h.fail(w, http.StatusMethodNotAllowed, "method not allowed")
}
