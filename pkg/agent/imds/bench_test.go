package imds

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podiam/podiam/pkg/agent/cache"
	"github.com/podiam/podiam/pkg/agent/metadoc"
	"github.com/podiam/podiam/pkg/agent/sandbox"
	"github.com/podiam/podiam/pkg/creds"
)

// The warm hot path: a pod asking for what the agent has cached. Run with
//
//	go test -run '^$' -bench . -benchmem ./pkg/agent/imds
//
// BenchmarkHandler is the handler alone; BenchmarkWarmCache adds the real
// cache and, where the machine allows, the netlink drain every request
// makes; BenchmarkServer is the whole request over loopback TCP through
// net/http, next to a bare net/http server writing the same bytes (the
// ceiling): the difference in allocs/op between the two is what the agent
// adds to net/http's own.

const benchRole = "app-role"

var benchPaths = []struct{ name, path string }{
	{"credentials", "/latest/meta-data/iam/security-credentials/" + benchRole},
	{"role", "/latest/meta-data/iam/security-credentials/"},
	{"info", "/latest/meta-data/iam/info"},
}

// staticProvider answers every address with the same documents, as the
// agent cache does on a hit.
type staticProvider struct{ d *metadoc.Docs }

func (p staticProvider) Documents(context.Context, string) (*metadoc.Docs, error) {
	return p.d, nil
}

// discardWriter is a ResponseWriter that keeps nothing but the header map,
// so that the benchmark measures the handler, not a recorder.
type discardWriter struct{ h http.Header }

func (w discardWriter) Header() http.Header         { return w.h }
func (w discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w discardWriter) WriteHeader(int)             {}

func benchCreds() creds.PodCredentials {
	pc := podCreds(appRoleARN)
	pc.Credentials.Expiration = time.Now().Add(time.Hour)
	return pc
}

// benchHandler runs each warm path through h from one pod address.
func benchHandler(b *testing.B, h http.Handler) {
	for _, p := range benchPaths {
		b.Run(p.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, p.path, nil)
			r.RemoteAddr = ipApp + ":40000"
			w := discardWriter{h: http.Header{}}
			h.ServeHTTP(w, r)
			b.ReportAllocs()
			cpu := startCPU(b)
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, r)
			}
			cpu.report(b)
		})
	}
}

// BenchmarkHandler is the handler without the network or the cache.
func BenchmarkHandler(b *testing.B) {
	h, err := New(Config{}, staticProvider{metadoc.Build(benchCreds(), time.Now())}, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	benchHandler(b, h)
}

// benchFetcher answers every address with the same credentials.
type benchFetcher struct{ pc creds.PodCredentials }

func (f benchFetcher) Fetch(context.Context, string) (creds.PodCredentials, error) { return f.pc, nil }

// newBenchCache returns a cache as the agent wires it, draining a real
// netlink watcher before every answer when the machine lets it open one.
func newBenchCache(b *testing.B) *cache.Cache {
	cfg := cache.Config{}
	if w, err := sandbox.NewWatcher(); err == nil {
		b.Cleanup(func() { _ = w.Close() })
		cfg.Changes = w
	} else {
		b.Logf("no netlink watcher (%v): the cache drains nothing", err)
	}
	c, err := cache.New(cfg, benchFetcher{benchCreds()}, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkWarmCache is the handler answering from the agent's cache.
func BenchmarkWarmCache(b *testing.B) {
	h, err := New(Config{}, newBenchCache(b), prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	benchHandler(b, h)
}

// BenchmarkServer is a whole warm credential request over loopback TCP,
// keep-alive: the agent's server (limits, connection tracking, per-address
// connection cap, cache) against a bare net/http server writing the same
// body with the same Content-Type, as test/e2e's benchceiling does.
func BenchmarkServer(b *testing.B) {
	h, err := New(Config{}, newBenchCache(b), prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	path := benchPaths[0].path
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = "127.0.0.1:1"
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK {
		b.Fatalf("warming: %d %s", rec.Code, rec.Body)
	}
	body, ct := rec.Body.Bytes(), []string{rec.Header().Get("Content-Type")}
	ceiling := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = ct
		_, _ = w.Write(body)
	})

	agentAddr := serveBench(b, func(l net.Listener) error {
		ll, err := LimitListener(l, ConnLimitConfig{}, prometheus.NewRegistry())
		if err != nil {
			return err
		}
		s := NewServer(h)
		// As the agent wires it: sandbox changes drained once per connection.
		s.ConnContext = func(ctx context.Context, _ net.Conn) context.Context { return cache.WithConnection(ctx) }
		b.Cleanup(func() { _ = s.Close() })
		return s.Serve(ll)
	})
	ceilingAddr := serveBench(b, func(l net.Listener) error {
		s := &http.Server{Handler: ceiling} //nolint:gosec // a yardstick on loopback
		b.Cleanup(func() { _ = s.Close() })
		return s.Serve(l)
	})
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	for _, t := range []struct{ name, addr string }{{"agent", agentAddr}, {"ceiling", ceilingAddr}} {
		b.Run(t.name+"/c1", func(b *testing.B) {
			c := dialBench(b, t.addr, req)
			b.ReportAllocs()
			cpu := startCPU(b)
			for b.Loop() {
				if err := c.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
			cpu.report(b)
		})
		b.Run(t.name+"/c32", func(b *testing.B) {
			b.SetParallelism(16) // 32 connections at GOMAXPROCS 2
			b.ReportAllocs()
			conns := make(chan *benchConn, 64)
			for range 64 {
				conns <- dialBench(b, t.addr, req)
			}
			b.ResetTimer()
			cpu := startCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				c := <-conns
				for pb.Next() {
					if err := c.roundTrip(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			cpu.report(b)
		})
	}
}

// cpuClock is the process's CPU time (user and system) since a start:
// wall time is noise on a machine that others share, CPU time much less.
// It counts the client too, the same for agent and ceiling.
type cpuClock time.Duration

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU(b *testing.B) cpuClock { return cpuClock(processCPU(b)) }

// report adds cpu-ns/op: the process's CPU time per request.
func (c cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(processCPU(b)-time.Duration(c))/float64(b.N), "cpu-ns/op")
}

func serveBench(b *testing.B, serve func(net.Listener) error) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(l) }()
	b.Cleanup(func() {
		_ = l.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			b.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String()
}

// benchConn is a keep-alive client that allocates nothing per request: it
// writes the same request and reads a response of the length the first one
// had (the Date header has a fixed width).
type benchConn struct {
	c    net.Conn
	br   *bufio.Reader
	req  []byte
	buf  []byte
	size int
}

func dialBench(b *testing.B, addr string, req []byte) *benchConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	bc := &benchConn{c: c, br: bufio.NewReaderSize(c, 4096), req: req, buf: make([]byte, 4096)}
	if _, err := c.Write(req); err != nil {
		b.Fatal(err)
	}
	head := bc.buf[:0]
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		ch, err := bc.br.ReadByte()
		if err != nil {
			b.Fatal(err)
		}
		head = append(head, ch)
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200 ")) {
		b.Fatalf("response %q", head)
	}
	const clh = "\r\nContent-Length: "
	i := bytes.Index(head, []byte(clh))
	if i < 0 {
		b.Fatalf("no Content-Length in %q", head)
	}
	n, err := strconv.Atoi(string(head[i+len(clh) : i+len(clh)+bytes.IndexByte(head[i+len(clh):], '\r')]))
	if err != nil {
		b.Fatal(err)
	}
	bc.size = len(head) + n
	if _, err := io.ReadFull(bc.br, bc.buf[len(head):bc.size]); err != nil {
		b.Fatal(err)
	}
	return bc
}

func (bc *benchConn) roundTrip() error {
	if _, err := bc.c.Write(bc.req); err != nil {
		return err
	}
	if _, err := io.ReadFull(bc.br, bc.buf[:bc.size]); err != nil {
		return err
	}
	if !bytes.HasPrefix(bc.buf, []byte("HTTP/1.1 200 ")) {
		return fmt.Errorf("response %q", bc.buf[:bc.size])
	}
	return nil
}
