package imds

// How answers are written: every body is plain text or JSON, and refusals
// carry only the status text.

import (
	"io"
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

// headerValues are the header values every answer carries, made once:
// Header().Set would allocate a slice for each on every request. net/http
// only reads them.
type headerValues struct {
	text, json, nosniff []string
}

func newHeaderValues() headerValues {
	return headerValues{
		text:    []string{"text/plain; charset=utf-8"},
		json:    []string{"application/json"},
		nosniff: []string{"nosniff"},
	}
}

// readyText and readyJSON answer 200 with a body built in advance.
func (h *Handler) readyText(w http.ResponseWriter, body []byte) outcome {
	hd := w.Header()
	hd["Content-Type"] = h.hdr.text
	hd["X-Content-Type-Options"] = h.hdr.nosniff
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return outcome{status: http.StatusOK}
}

func (h *Handler) readyJSON(w http.ResponseWriter, body []byte) outcome {
	w.Header()["Content-Type"] = h.hdr.json
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return outcome{status: http.StatusOK}
}

func (h *Handler) text(w http.ResponseWriter, status int, body string) outcome {
	hd := w.Header()
	hd["Content-Type"] = h.hdr.text
	hd["X-Content-Type-Options"] = h.hdr.nosniff
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
	return outcome{status: status}
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
