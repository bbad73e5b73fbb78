package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// StopAPIServer kills kube-apiserver the way a crash or an OOM kill would:
// SIGKILL, no graceful shutdown, so watches end without a goodbye and
// clients see connection refused until StartAPIServer. etcd keeps running
// and keeps the cluster's state.
func (k *Kube) StopAPIServer(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	running := k.apiserver != nil
	k.mu.Unlock()
	if !running {
		t.Fatalf("testenv: StopAPIServer: kube-apiserver is not running")
		return
	}
	k.stopAPIServer(t)
}

func (k *Kube) stopAPIServer(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	p := k.apiserver
	k.apiserver = nil
	k.mu.Unlock()
	if p != nil {
		killProc(t, p) // returns once the process has exited and its port is closed
	}
}

// StartAPIServer starts kube-apiserver with the flags StartKube gave it: the
// same address and port, etcd, token file and serving certificate (kept in
// its certificate directory), so the Kube's clients, its kubeconfig and any
// client made from them keep working. It waits until /readyz is ok. The
// process is killed in the cleanup of the test that called StartKube.
func (k *Kube) StartAPIServer(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	if k.apiserver != nil {
		k.mu.Unlock()
		t.Fatalf("testenv: StartAPIServer: kube-apiserver is already running")
		return
	}
	// Appended to one log, however often it restarts.
	p, err := Spawn(ProcSpec{Name: "kube-apiserver", Path: k.apiserverBin, Args: k.apiserverArgs,
		Dir: k.dir, NetNS: k.netns, Log: filepath.Join(k.dir, "kube-apiserver.log")})
	if err != nil {
		k.mu.Unlock()
		t.Fatalf("testenv: %v", err)
		return
	}
	k.apiserver = p
	k.mu.Unlock()
	k.waitReady(t)
}

// RestartAPIServer stops kube-apiserver, leaves it down for down, and starts
// it again.
func (k *Kube) RestartAPIServer(t testing.TB, down time.Duration) {
	t.Helper()
	k.StopAPIServer(t)
	time.Sleep(down)
	k.StartAPIServer(t)
}

// procs are the processes whose exit makes waiting on the cluster pointless.
func (k *Kube) procs() []*Proc {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.apiserver == nil {
		return []*Proc{k.etcd}
	}
	return []*Proc{k.etcd, k.apiserver}
}

// waitReady polls /readyz. On the first start the serving certificate does
// not exist until kube-apiserver generates it, so readiness is probed
// without verification; the real clients verify against that certificate.
func (k *Kube) waitReady(t testing.TB) {
	t.Helper()
	probe := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // readiness probe only
	}
	defer probe.CloseIdleConnections()
	Ready(t, kubeStartTimeout, "kube-apiserver /readyz", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.URL+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+k.token)
		resp, err := probe.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	}, k.procs()...)
}
