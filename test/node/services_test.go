package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// canary stands in for the EC2 instance metadata service on
// 169.254.169.254:80 as the node sees it: it answers the node role's
// secrets to anyone. A pod must never reach it; the agent's DNAT rule is
// what keeps pods away, also while the agent restarts.
type canary struct {
	mu   sync.Mutex
	hits []string // "source path"
}

const canaryKeyID = "ASIACANARYNODESECRET"

func (c *canary) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.hits = append(c.hits, r.RemoteAddr+" "+r.Method+" "+r.URL.Path)
	c.mu.Unlock()
	switch p := r.URL.Path; {
	case p == "/latest/api/token":
		fmt.Fprint(w, "canary-token")
	case p == "/latest/meta-data/iam/security-credentials/" || p == "/latest/meta-data/iam/security-credentials":
		fmt.Fprint(w, "node-role")
	case strings.HasPrefix(p, "/latest/meta-data/iam/security-credentials/"):
		fmt.Fprintf(w, `{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":%q,"SecretAccessKey":"node-secret","Token":"node-token","Expiration":%q}`,
			canaryKeyID, time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	default:
		fmt.Fprint(w, "node metadata")
	}
}

// podHits returns the requests that came from a pod address.
func (c *canary) podHits() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	prefix := netip.MustParsePrefix(podCIDR)
	var out []string
	for _, h := range c.hits {
		ap, err := netip.ParseAddrPort(strings.Fields(h)[0])
		if err == nil && prefix.Contains(ap.Addr()) {
			out = append(out, h)
		}
	}
	return out
}

// startCanary serves the canary in the node's namespace.
func (n *node) startCanary(t *testing.T) {
	n.canary = &canary{}
	var ln net.Listener
	if err := inNetns(func() (err error) {
		ln, err = net.Listen("tcp", metadataIP+":80")
		return err
	}); err != nil {
		t.Fatalf("canary: %v", err)
	}
	srv := &http.Server{Handler: n.canary, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	cleanups.push("stop the canary", func() error { return srv.Close() })
}

// startDNS serves the cluster's names on the node IP, standing in for
// CoreDNS and, for Services, for kube-proxy: <svc>.<ns>.svc.cluster.local
// answers the ready endpoint addresses of the Service, whatever its type,
// which is right for podiam's and KIAM's headless Services and for any
// Service whose port equals its target port. Other names are NXDOMAIN.
func (n *node) startDNS(t *testing.T) {
	var pc net.PacketConn
	if err := inNetns(func() (err error) {
		pc, err = net.ListenPacket("udp", nodeIP+":53")
		return err
	}); err != nil {
		t.Fatalf("dns: %v", err)
	}
	cleanups.push("stop the DNS stand-in", pc.Close)
	go func() {
		buf := make([]byte, 1500)
		for {
			nr, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp, err := n.answerDNS(buf[:nr]); err == nil {
				_, _ = pc.WriteTo(resp, addr)
			}
		}
	}()
}

func (n *node) answerDNS(req []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	rcode := dnsmessage.RCodeNameError
	var addrs [][4]byte
	if svc, ns, ok := serviceName(q.Name.String()); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		addrs, err = n.readyAddresses(ctx, ns, svc)
		cancel()
		if err != nil {
			rcode = dnsmessage.RCodeServerFailure
		} else if addrs != nil {
			rcode = dnsmessage.RCodeSuccess
		}
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA {
		for _, a := range addrs {
			hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
			if err := b.AResource(hdr, dnsmessage.AResource{A: a}); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}

// serviceName splits "svc.ns.svc.cluster.local." into its Service and
// namespace.
func serviceName(name string) (svc, ns string, ok bool) {
	rest, found := strings.CutSuffix(strings.ToLower(name), ".svc.cluster.local.")
	if !found {
		return "", "", false
	}
	svc, ns, ok = strings.Cut(rest, ".")
	return svc, ns, ok && !strings.Contains(ns, ".")
}

// readyAddresses returns the Service's ready IPv4 endpoints: non-nil (maybe
// empty) when the Service exists, nil when it does not.
func (n *node) readyAddresses(ctx context.Context, ns, svc string) ([][4]byte, error) {
	if _, err := n.client.CoreV1().Services(ns).Get(ctx, svc, metav1.GetOptions{}); err != nil {
		return nil, nil
	}
	slices, err := n.client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	out := [][4]byte{}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
					out = append(out, ip.As4())
				}
			}
		}
	}
	return out, nil
}
