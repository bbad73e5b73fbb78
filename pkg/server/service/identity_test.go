package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// podAt is a PodLookup that finds pod at every address.
type podAt struct{ pod *podindex.Pod }

func (l podAt) Lookup(context.Context, string) (*podindex.Pod, error) { return l.pod, nil }

type allowAll struct{}

func (allowAll) Decide(_ policy.Namespace, key creds.Key) (policy.Decision, error) {
	return policy.Decision{Key: key, ExternalIDFrom: policy.SourceNone}, nil
}

type namespaces map[string]*corev1.Namespace

func (n namespaces) Get(name string) (*corev1.Namespace, error) {
	if ns, ok := n[name]; ok {
		return ns, nil
	}
	return nil, errors.New("no such namespace")
}

// withPeer makes ctx look like a gRPC call from addr.
func withPeer(ctx context.Context, addr string) context.Context {
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(addr), Port: 40000}})
}

// TestStaticPodRefused: a mirror pod gets no role, whatever its namespace
// permits, with an Event and a metric, and STS is never asked. A node's
// kubelet can create mirror pods in any namespace with any annotation, so
// anything else would hand every permitted role to a compromised node.
func TestStaticPodRefused(t *testing.T) {
	pod := podindex.FromAPI(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "team", Name: "static-web-node1", UID: "u1",
			Annotations: map[string]string{
				corev1.MirrorPodAnnotationKey: "hash",
				role.AnnotationRole:           "arn:aws:iam::123456789012:role/web",
			},
		},
		Spec:   corev1.PodSpec{NodeName: "node1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", HostIP: "192.0.2.1"},
	})
	if !pod.Mirror {
		t.Fatal("the slim pod lost the mirror annotation")
	}
	resolver, err := role.NewResolver("arn:aws:iam::123456789012:role/")
	if err != nil {
		t.Fatal(err)
	}
	events := record.NewFakeRecorder(10)
	w, _ := newTestWatcher(t)
	svc, err := New(Config{PodWait: 100 * time.Millisecond, NodeBinding: true}, Deps{
		Pods:       podAt{pod},
		Namespaces: namespaces{"team": {ObjectMeta: metav1.ObjectMeta{Name: "team", Annotations: map[string]string{role.AnnotationPermitted: ".*"}}}},
		Keys:       kiamKeys(t, resolver),
		Policy:     allowAll{},
		Credentials: credentialsFunc(func(context.Context, creds.Key) (creds.Credentials, error) {
			t.Error("STS was asked for a static pod's role")
			return creds.Credentials{}, errors.New("unused")
		}),
		Events:  events,
		Watcher: w,
		Synced:  func() bool { return true },
	}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.GetPodCredentials(withPeer(context.Background(), "192.0.2.1"), &pb.GetPodCredentialsRequest{Ip: "10.0.0.7"})
	if status.Code(err) != codes.PermissionDenied || refusal.Reason(err) != pb.Reason_REASON_STATIC_POD {
		t.Fatalf("got %v (reason %v), want PermissionDenied REASON_STATIC_POD", err, refusal.Reason(err))
	}
	if got := testutil.ToFloat64(svc.requests.WithLabelValues(string(resultStaticPod))); got != 1 {
		t.Errorf("requests{result=static_pod} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(svc.denials.WithLabelValues(string(resultStaticPod))); got != 1 {
		t.Errorf("denials{reason=static_pod} = %v, want 1", got)
	}
	select {
	case ev := <-events.Events:
		if !strings.Contains(ev, "IAMRoleDenied") || !strings.Contains(ev, "static") {
			t.Errorf("event %q", ev)
		}
	default:
		t.Error("no Event recorded on the static pod")
	}
}

// nodeStream is the server side of a WatchNodePods call from one address.
type nodeStream struct {
	grpc.ServerStreamingServer[pb.PodEvent]
	ctx context.Context
}

func (s nodeStream) Context() context.Context { return s.ctx }
func (s nodeStream) Send(*pb.PodEvent) error  { return nil }

// TestWatchOnlyOwnNode: with node binding, an agent may stream only the
// pods of the node it calls from; a claim for another node is refused.
func TestWatchOnlyOwnNode(t *testing.T) {
	for _, tc := range []struct {
		name        string
		nodeBinding bool
		peer, claim string
		refused     bool
	}{
		{"own address", true, "192.0.2.1", "192.0.2.1", false},
		{"own address, IPv4-mapped claim", true, "192.0.2.1", "::ffff:192.0.2.1", false},
		{"another node", true, "192.0.2.1", "192.0.2.2", true},
		{"empty claim: the caller's own node", true, "192.0.2.1", "", false},
		{"dual-stack node, the other family's address", true, "fd00::1", "192.0.2.1", false},
		{"claim of a node that shares no pod with the caller", true, "fd00::9", "192.0.2.1", true},
		{"another node without node binding", false, "192.0.2.1", "192.0.2.2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, idx := newTestWatcher(t)
			// A pod on the dual-stack node 192.0.2.1 / fd00::1.
			if err := idx.Add(podindex.FromAPI(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7",
					HostIPs: []corev1.HostIP{{IP: "192.0.2.1"}, {IP: "fd00::1"}}},
			})); err != nil {
				t.Fatal(err)
			}
			svc, err := New(Config{PodWait: time.Second, NodeBinding: tc.nodeBinding}, Deps{
				Pods: podAt{}, Namespaces: namespaces{}, Keys: kiamKeys(t, &role.Resolver{}), Policy: allowAll{},
				Credentials: credentialsFunc(func(context.Context, creds.Key) (creds.Credentials, error) { return creds.Credentials{}, nil }),
				Events:      record.NewFakeRecorder(1), Watcher: w, Synced: func() bool { return true },
			}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(withPeer(context.Background(), tc.peer), 200*time.Millisecond)
			defer cancel()
			err = svc.WatchNodePods(&pb.WatchNodePodsRequest{HostIp: tc.claim}, nodeStream{ctx: ctx})
			refused := status.Code(err) == codes.PermissionDenied && refusal.Reason(err) == pb.Reason_REASON_WRONG_NODE
			if refused != tc.refused {
				t.Fatalf("WatchNodePods(peer %s, claim %q) = %v; refused %v, want %v", tc.peer, tc.claim, err, refused, tc.refused)
			}
		})
	}
}

// tlsPeer makes ctx look like a call whose verified client certificate is
// leaf.
func tlsPeer(leaf *x509.Certificate) context.Context {
	state := tls.ConnectionState{}
	if leaf != nil {
		state.VerifiedChains = [][]*x509.Certificate{{leaf}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: state},
	})
}

// TestAgentIdentity: with identities set, only a client certificate that
// names one may call the Credentials service; the health service stays
// open to every certificate the CA signed, for the server's own probes.
func TestAgentIdentity(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/podiam-agent")
	a := agentCheck{identities: []string{"podiam-agent", spiffe.String()}, log: slog.New(slog.DiscardHandler)}
	get := "/" + pb.Credentials_ServiceDesc.ServiceName + "/GetPodCredentials"
	watch := "/" + pb.Credentials_ServiceDesc.ServiceName + "/WatchNodePods"
	health := "/grpc.health.v1.Health/Check"
	cert := func(cn string, dns []string, uris ...*url.URL) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, URIs: uris}
	}
	for _, tc := range []struct {
		name   string
		leaf   *x509.Certificate
		method string
		ok     bool
	}{
		{"common name", cert("podiam-agent", nil), get, true},
		{"DNS SAN", cert("node-7", []string{"podiam-agent"}), watch, true},
		{"URI SAN", cert("", nil, spiffe), get, true},
		{"another name from the same CA", cert("some-workload", []string{"localhost"}), get, false},
		{"the server's certificate", cert("podiam-server", []string{"podiam-server.kube-system.svc"}), watch, false},
		{"a prefix of an identity", cert("podiam", nil), get, false},
		{"no verified certificate", nil, get, false},
		{"health with the server's certificate", cert("podiam-server", nil), health, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := a.check(tlsPeer(tc.leaf), tc.method)
			if (err == nil) != tc.ok {
				t.Fatalf("check = %v, want ok %v", err, tc.ok)
			}
			if err != nil && status.Code(err) != codes.PermissionDenied {
				t.Fatalf("code %v, want PermissionDenied", status.Code(err))
			}
		})
	}
	t.Run("no identities configured admits any verified client", func(t *testing.T) {
		if err := (agentCheck{}).check(tlsPeer(cert("anything", nil)), get); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("an empty identity is a config error", func(t *testing.T) {
		_, err := NewGRPCServer(GRPCConfig{TLS: &tls.Config{}, AgentIdentities: []string{""}}, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
		if err == nil {
			t.Fatal("accepted an empty agent identity")
		}
	})
}

// TestConstructorsWithoutRegistryOrLogger: as in every package, a nil
// registry is not registered and a nil logger discards.
func TestConstructorsWithoutRegistryOrLogger(t *testing.T) {
	w, _ := newTestWatcher(t)
	if _, err := New(Config{PodWait: time.Second}, Deps{
		Pods: podAt{}, Namespaces: namespaces{}, Keys: kiamKeys(t, &role.Resolver{}), Policy: allowAll{},
		Credentials: credentialsFunc(func(context.Context, creds.Key) (creds.Credentials, error) { return creds.Credentials{}, nil }),
		Events:      record.NewFakeRecorder(1), Watcher: w, Synced: func() bool { return true },
	}, nil, nil); err != nil {
		t.Fatal(err)
	}
	g, err := NewGRPCServer(GRPCConfig{TLS: &tls.Config{}}, nil, nil, nil)
	if err != nil || g.log == nil {
		t.Fatalf("NewGRPCServer without registry or logger: %v", err)
	}
}
