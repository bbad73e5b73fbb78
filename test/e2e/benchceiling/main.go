// Command benchceiling is the yardstick of the agent benchmark in test/e2e:
// the least a Go HTTP server can do to answer a credential request. It
// serves the bytes the agent served (body and Content-Type; Go adds the
// same Date and Content-Length) to every request, with no routing, lookup,
// metrics or limits, so that wrk against it on the same machine, from the
// same pod namespace through the same kind of DNAT, shows what the agent's
// own work costs.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchceiling:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "", "listen address, e.g. 10.77.0.1:18181")
	bodyFile := flag.String("body", "", "file holding the response body")
	contentType := flag.String("content-type", "application/json", "Content-Type of the response")
	flag.Parse()
	if *addr == "" || *bodyFile == "" {
		return errors.New("-addr and -body are required")
	}
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		return err
	}
	ct := []string{*contentType}
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = ct
		_, _ = w.Write(body)
	})
	return (&http.Server{Addr: *addr, Handler: h}).ListenAndServe() //nolint:gosec // a benchmark yardstick on a private address
}
