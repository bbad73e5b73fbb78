package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podiam/podiam/test/testenv"
)

// Chaos timings.
const (
	serverDown     = 5 * time.Second  // a killed server stays down this long
	apiserverDown  = 2 * time.Second  // kube-apiserver, between SIGKILL and start
	stsFaultWindow = 20 * time.Second // every AssumeRole throttled or failing
	cutWindow      = 10 * time.Second // server 1 cut off from kube-apiserver
	rotationStep   = 3 * time.Second  // between the certificate rotation's steps
	// flipSettle is how long flips stay held after both servers' watches
	// are current again (see flipLoop).
	flipSettle = time.Second
	// probeSeen: servers that see a new namespace this soon have a
	// working namespace watch (waitNamespaceSeen).
	probeSeen = time.Second
	// nextRoundMin: a round after the first starts only with this much of
	// the run left, so that a short soak ends near its length.
	nextRoundMin = 20 * time.Second
)

// chaosEvent is one kind of fault.
type chaosEvent struct {
	name string
	run  func(t *testing.T)
}

// chaos runs the fault events in a seeded random order, with seeded gaps,
// until deadline; the first round always runs every event, so a short soak
// sees each fault once.
func (s *soak) chaos(t *testing.T, rng *rand.Rand, deadline time.Time) {
	events := []chaosEvent{
		{"server SIGKILL", s.killServer},
		{"agent SIGKILL", s.killAgent},
		{"kube-apiserver restart", s.restartAPIServer},
		{"STS throttling and 5xx", s.stsFaults},
		{"certificate rotation", s.rotateCertificates},
		{"server cut off from kube-apiserver", s.cutServer},
	}
	for round := 0; ; round++ {
		for _, i := range rng.Perm(len(events)) {
			if round > 0 && time.Until(deadline) < nextRoundMin {
				return
			}
			time.Sleep(time.Second + time.Duration(rng.Int64N(int64(2*time.Second))))
			ev := events[i]
			start := time.Now()
			ev.run(t)
			w := window{name: ev.name, start: start, end: time.Now()}
			t.Logf("chaos: %s from %s for %s", w.name, w.start.Format("15:04:05.000"), w.end.Sub(w.start).Round(time.Millisecond))
			s.evMu.Lock()
			s.events = append(s.events, w)
			s.evMu.Unlock()
		}
		if time.Now().After(deadline) {
			return
		}
	}
}

// holdFlipsUntilSettled holds policy flips now; the returned function
// waits until both servers' pod watches are current and both have seen a
// namespace created after the event, and releases flips flipSettle later.
// A server whose namespace watch is behind does not see a policy change:
// it decides requests on the namespace it knew and streams nothing to the
// agents, which keep serving what they hold. After kube-apiserver comes
// back that lasts as long as client-go's backoff keeps the namespace
// watch away (see the README's Resilience section). The denied oracle's
// one second starts once the servers can know.
func (s *soak) holdFlipsUntilSettled(t *testing.T) func() {
	s.holdFlips.Add(1)
	return func() {
		s.waitWatchesCurrent(t)
		s.waitNamespaceSeen(t)
		time.AfterFunc(flipSettle, func() { s.holdFlips.Add(-1) })
	}
}

// waitNamespaceSeen creates namespaces until both servers count one
// (podiam_server_namespaces) within probeSeen of its creation: a watch
// delivers in order, so servers that do will see the flips that follow as
// fast. One seen later may have come with a relist while the watch still
// fails: after a restart kube-apiserver's watch cache can lag etcd, and
// watches from a newer resource version are refused until it catches up.
func (s *soak) waitNamespaceSeen(t *testing.T) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s.probes++
		created := time.Now()
		s.kube.CreateNamespace(t, fmt.Sprintf("soak-probe-%d", s.probes), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		list, err := s.kube.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		cancel()
		if err != nil {
			t.Fatalf("list namespaces: %v", err)
		}
		want := float64(len(list.Items))
		s.waitServerMetric(t, "podiam_server_namespaces", func(v float64) bool { return v >= want })
		if took := time.Since(created); took <= probeSeen {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("the servers still took %s to see a new namespace two minutes after a fault", took)
		}
	}
}

// waitWatchesCurrent waits until both servers say their pod watch is open
// and current (podiam_server_pod_watch_current).
func (s *soak) waitWatchesCurrent(t *testing.T) {
	s.waitServerMetric(t, "podiam_server_pod_watch_current", func(v float64) bool { return v == 1 })
}

// waitServerMetric waits until ok accepts both servers' value of metric.
func (s *soak) waitServerMetric(t *testing.T, metric string, ok func(float64) bool) {
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, host := range []string{nodeIP, node2IP} {
		testenv.Eventually(t, 2*time.Minute, "server at "+host+": "+metric, func() error {
			code, body, err := get(client, "http://"+hostPort(host, serverMetr)+"/metrics")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("/metrics: %d %v", code, err)
			}
			v, err := testenv.MetricValue(strings.NewReader(body), metric, nil)
			if err != nil {
				return err
			}
			if !ok(v) {
				return fmt.Errorf("%s is %v", metric, v)
			}
			return nil
		})
	}
}

// killServer kills server 2 with SIGKILL; server 1 keeps serving. It comes
// back after serverDown, as a Deployment replaces a crashed pod.
func (s *soak) killServer(t *testing.T) {
	release := s.holdFlipsUntilSettled(t)
	defer release()
	if err := s.server2.Kill(); err != nil {
		t.Errorf("server 2 SIGKILL: %v", err)
	}
	time.Sleep(serverDown)
	s.server2 = s.track(s.startServerAt(t, s.server2Place, s.serverArgs()...))
}

// killAgent kills node 2's agent with SIGKILL and starts it again at once,
// as a DaemonSet's restart does. The DNAT rule stays: while no agent
// listens, pods are refused, never sent to the node's metadata.
func (s *soak) killAgent(t *testing.T) {
	n := s.nodes[1]
	start := time.Now()
	if err := n.currentAgent().Kill(); err != nil {
		t.Errorf("agent 2 SIGKILL: %v", err)
	}
	if c := dnatCount(natRulesIn(t, n.netns)); c != 1 {
		s.harnessError("node 2 with its agent killed has %d metadata DNAT rules, want 1", c)
	}
	n.setAgent(s.track(s.startAgentAt(t, "agent2", n.netns, n.host, s.agentArgs()...)))
	n.mu.Lock()
	n.down = append(n.down, window{name: "agent SIGKILL", start: start, end: time.Now()})
	n.mu.Unlock()
}

// restartAPIServer kills kube-apiserver and starts it again; etcd keeps
// the state. Churn and flips wait meanwhile.
func (s *soak) restartAPIServer(t *testing.T) {
	release := s.holdFlipsUntilSettled(t)
	defer release()
	s.apiDown.Store(true)
	defer s.apiDown.Store(false)
	s.kube.RestartAPIServer(t, apiserverDown)
}

// stsFaults makes STS answer every AssumeRole with throttling, 500 and
// 503 in turn.
func (s *soak) stsFaults(*testing.T) {
	s.proxy.SetFaulting(true)
	time.Sleep(stsFaultWindow)
	s.proxy.SetFaulting(false)
}

// rotateCertificates rotates the CA and every leaf on disk in the order
// that keeps peers talking (see testCertRotation): both CAs trusted, new
// leaves, old CA dropped. Nothing restarts; the servers' connection age
// makes new handshakes.
func (s *soak) rotateCertificates(t *testing.T) {
	pki := s.pki
	old := pki.CABundle(t)
	next := testenv.NewCA(t, fmt.Sprintf("podiam soak ca %d", time.Now().UnixNano()))
	pki.WriteCABundle(t, old, next.PEM())
	time.Sleep(rotationStep)
	pki.IssueServer(t, next)
	pki.IssueAgent(t, next)
	time.Sleep(rotationStep)
	pki.WriteCABundle(t, next.PEM())
	time.Sleep(rotationStep)
}

// cutServer cuts server 1 off from kube-apiserver: its connections are
// reset and new ones refused, while agents still reach it.
func (s *soak) cutServer(t *testing.T) {
	release := s.holdFlipsUntilSettled(t)
	defer release()
	s.cut.Cut()
	time.Sleep(cutWindow)
	s.cut.Restore(t)
}
