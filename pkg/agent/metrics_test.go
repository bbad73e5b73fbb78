package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/metricsserver"
)

// Two agents overlap during a rolling update with the same command line:
// the second must be able to serve metrics on the port the first holds,
// or it exits. Scrapes then reach either.
func TestAgentMetricsPortShared(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	for _, name := range []string{"old", "new"} {
		reg := prometheus.NewRegistry()
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "agent_" + name, Help: "which agent answered"}, func() float64 { return 1 }))
		go func() {
			errc <- metricsserver.Serve(ctx, listenReusePort, addr, reg, nil, slog.New(slog.DiscardHandler))
		}()
	}
	running := 2
	defer func() {
		cancel()
		for range running {
			if err := <-errc; err != nil {
				t.Errorf("metrics server: %v", err)
			}
		}
	}()

	seen := map[string]bool{}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		select {
		case err := <-errc:
			running--
			t.Fatalf("a metrics server ended while the other held the port: %v", err)
		default:
		}
		body, err := scrape(client, "http://"+addr+"/metrics")
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		for _, name := range []string{"old", "new"} {
			if strings.Contains(body, "agent_"+name+" 1") {
				seen[name] = true
			}
		}
	}
	if len(seen) != 2 {
		t.Fatalf("scrapes reached %v, want both agents", seen)
	}
}

func scrape(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%d %v", resp.StatusCode, err)
	}
	return string(b), nil
}
