package testenv

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// NetCut forwards TCP connections to an upstream address and can cut the
// network between the two sides: Cut closes the listener, so new
// connections are refused, and every open connection; Restore listens on
// the same port again. The server reaches kube-apiserver through it, so a
// test can make the API server unreachable for the server alone.
type NetCut struct {
	Addr     string
	upstream string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartNetCut listens on listen, a host:port ("" means a free port on
// 127.0.0.1), and forwards to upstream until t ends.
func StartNetCut(t testing.TB, listen, upstream string) *NetCut {
	t.Helper()
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	c := &NetCut{Addr: ln.Addr().String(), upstream: upstream, conns: map[net.Conn]struct{}{}}
	c.serve(ln)
	t.Cleanup(func() {
		c.Cut()
		c.wg.Wait()
	})
	return c
}

func (c *NetCut) serve(ln net.Listener) {
	c.mu.Lock()
	c.ln = ln
	c.mu.Unlock()
	c.wg.Go(func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return // closed by Cut
			}
			c.wg.Go(func() { c.forward(down) })
		}
	})
}

func (c *NetCut) forward(down net.Conn) {
	up, err := net.DialTimeout("tcp", c.upstream, 5*time.Second)
	if err != nil {
		down.Close()
		return
	}
	if !c.track(down, up) {
		return
	}
	var once sync.Once
	done := make(chan struct{})
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		once.Do(func() { close(done) })
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done
	c.untrack(down, up)
}

// track registers an open pair, or closes it if the network was cut
// meanwhile.
func (c *NetCut) track(conns ...net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ln == nil {
		for _, conn := range conns {
			conn.Close()
		}
		return false
	}
	for _, conn := range conns {
		c.conns[conn] = struct{}{}
	}
	return true
}

func (c *NetCut) untrack(conns ...net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range conns {
		conn.Close()
		delete(c.conns, conn)
	}
}

// Cut refuses new connections and resets the open ones.
func (c *NetCut) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
	for conn := range c.conns {
		conn.Close()
		delete(c.conns, conn)
	}
}

// Restore accepts connections on the same address again.
func (c *NetCut) Restore(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := net.Listen("tcp", c.Addr)
		if err == nil {
			c.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen on %s again: %v", c.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// KubeconfigVia writes a copy of a kubeconfig whose server is reached
// through addr. The API server's certificate names 127.0.0.1, which the
// proxy's address is too.
func KubeconfigVia(t testing.TB, path, apiURL, addr string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), apiURL) {
		t.Fatalf("kubeconfig %s does not name %s", path, apiURL)
	}
	out := filepath.Join(t.TempDir(), "kubeconfig-via-proxy")
	if err := os.WriteFile(out, []byte(strings.ReplaceAll(string(data), apiURL, "https://"+addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}
