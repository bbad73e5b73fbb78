package testenv

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
)

func TestKubeRestartAPIServer(t *testing.T) {
	var pgids []int
	t.Run("restart", func(t *testing.T) {
		k := StartKube(t, KubeOptions{})
		ctx := t.Context()
		first := k.apiserver.Pid()
		pgids = append(pgids, k.etcd.Pid(), first)
		url := k.URL
		hostPort := strings.TrimPrefix(url, "https://")
		k.CreateNamespace(t, "before", nil)
		// Made before the restart, like a running server's client.
		fromFile, err := kubernetes.NewForConfig(loadKubeconfig(t, k.KubeconfigPath))
		if err != nil {
			t.Fatal(err)
		}

		k.StopAPIServer(t)
		if err := syscall.Kill(-first, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("kube-apiserver group %d alive after StopAPIServer (kill 0: %v)", first, err)
		}
		if conn, err := net.DialTimeout("tcp", hostPort, time.Second); err == nil {
			conn.Close()
			t.Fatalf("%s still accepts connections after StopAPIServer", hostPort)
		}
		_, err = k.Client.CoreV1().Namespaces().Get(ctx, "before", metav1.GetOptions{})
		if !utilnet.IsConnectionRefused(err) {
			t.Fatalf("API call while stopped: %v, want connection refused", err)
		}
		if gone, _ := k.etcd.Exited(); gone {
			t.Fatal("etcd died with kube-apiserver")
		}
		rec := &fatalRecorder{TB: t}
		k.StopAPIServer(rec)
		if !strings.Contains(rec.msg, "not running") {
			t.Errorf("StopAPIServer twice: %q, want a failure", rec.msg)
		}

		k.StartAPIServer(t)
		second := k.apiserver.Pid()
		pgids = append(pgids, second)
		if second == first || k.URL != url {
			t.Fatalf("after restart: pid %d (was %d), URL %s (was %s)", second, first, k.URL, url)
		}
		// Same etcd, certificate and token: old clients see the old state.
		for name, c := range map[string]kubernetes.Interface{"Client": k.Client, "kubeconfig client": fromFile} {
			if _, err := c.CoreV1().Namespaces().Get(ctx, "before", metav1.GetOptions{}); err != nil {
				t.Errorf("%s after restart: %v", name, err)
			}
		}
		k.CreateNamespace(t, "after", nil)
		rec = &fatalRecorder{TB: t}
		k.StartAPIServer(rec)
		if !strings.Contains(rec.msg, "already running") || k.apiserver.Pid() != second {
			t.Errorf("StartAPIServer while running: %q, pid %d; want a failure and no second process", rec.msg, k.apiserver.Pid())
		}

		k.RestartAPIServer(t, 500*time.Millisecond)
		pgids = append(pgids, k.apiserver.Pid())
		for _, ns := range []string{"before", "after"} {
			if _, err := fromFile.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				t.Errorf("namespace %s after RestartAPIServer: %v", ns, err)
			}
		}
	})
	// The last kube-apiserver dies in the cleanup of the test that started
	// the Kube, as does etcd; the stopped ones are long gone.
	assertGroupsGone(t, pgids)
}
