// Package service answers agents over gRPC. It is where identity, policy and
// credentials meet: an agent names a source IP, the server finds the pod
// there, checks that the agent runs on that pod's node, resolves the pod's
// role, asks the namespace policy (package policy) whether it may have it
// and with which External ID, and only then asks the credential cache.
// Policy is applied on the server and nowhere else, so a compromised or
// outdated agent cannot widen what a pod may assume.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/record"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/session"
	pb "github.com/podiam/podiam/proto/podiam/v1"
)

// PodLookup finds the pod holding an address, waiting until ctx is done.
type PodLookup interface {
	Lookup(ctx context.Context, ip string) (*podindex.Pod, error)
}

// NamespaceGetter returns a namespace: from the informer cache, or from the
// API server while the cache may be behind (podindex.Namespaces), in which
// case an error wrapping podindex.ErrNamespaceStale means its policy cannot
// be known now.
type NamespaceGetter interface {
	Get(name string) (*corev1.Namespace, error)
}

// KeyResolver turns a pod into the STS session it may use: its role, and
// everything else the server sends STS for it (session.Keys).
type KeyResolver interface {
	Key(pod *podindex.Pod) (creds.Key, error)
}

// Policy decides whether a pod in a namespace may have the session its
// annotations name, and with which External ID (policy.Checker.Decide).
type Policy interface {
	Decide(ns policy.Namespace, key creds.Key) (policy.Decision, error)
}

// CredentialSource returns credentials for a session key.
type CredentialSource interface {
	Get(ctx context.Context, key creds.Key) (creds.Credentials, error)
}

// Config tunes the service.
type Config struct {
	// PodWait bounds how long a request for an unknown address waits for the
	// informer to learn of the pod (the pod start race).
	PodWait time.Duration
	// NodeBinding refuses a pod's credentials to any agent not on the pod's
	// node. Off only where the network rewrites source addresses.
	NodeBinding bool
	// DenialLogInterval rate-limits repeated denial log lines per pod and
	// reason; 0 means one minute.
	DenialLogInterval time.Duration
	// Push sends a pod's credentials to its node's agents before it asks
	// (see push.go); Deps.Push is then required and RunPushes must run.
	Push bool
	// PushPrefetch lets a push start the prefetch of the pod's session,
	// as the prefetch controller would (--prefetch); without it a push
	// only sends what the credential cache holds or is fetching.
	PushPrefetch bool
	// PushWorkers is how many addresses are pushed at once; 0 means
	// DefaultPushWorkers.
	PushWorkers int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Deps are the steps of the credential path the service drives.
type Deps struct {
	Pods        PodLookup
	Namespaces  NamespaceGetter
	Keys        KeyResolver
	Policy      Policy
	Credentials CredentialSource
	Events      record.EventRecorder
	Watcher     *NodeWatcher
	// Push is where pushed credentials come from; only with Config.Push.
	Push PushSource
	// Synced reports whether the pod and namespace informers have synced.
	// Until then every answer would be "unknown pod", which agents take as
	// proof that a pod is gone, so the service answers Unavailable instead.
	Synced func() bool
}

// Service implements the podiam.v1.Credentials gRPC service.
type Service struct {
	pb.UnimplementedCredentialsServer

	cfg  Config
	deps Deps
	log  *slog.Logger

	requests *prometheus.CounterVec
	denials  *prometheus.CounterVec

	denyMu   sync.Mutex
	denyLogs *lru.LRU[string, time.Time]

	push *pusher // nil unless Config.Push
}

// New checks the configuration and registers the service's metrics on reg
// (nil: not registered); a nil logger discards.
func New(cfg Config, deps Deps, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	if deps.Pods == nil || deps.Namespaces == nil || deps.Keys == nil || deps.Policy == nil ||
		deps.Credentials == nil || deps.Events == nil || deps.Watcher == nil || deps.Synced == nil {
		return nil, errors.New("server: every dependency is required")
	}
	if cfg.PodWait <= 0 {
		return nil, fmt.Errorf("server: pod wait must be positive, got %s", cfg.PodWait)
	}
	if cfg.DenialLogInterval == 0 {
		cfg.DenialLogInterval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	denyLogs, err := lru.NewLRU[string, time.Time](4096, nil)
	if err != nil {
		return nil, fmt.Errorf("server: denial log cache: %w", err)
	}
	s := &Service{
		cfg:      cfg,
		deps:     deps,
		log:      log,
		denyLogs: denyLogs,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_server_credential_requests_total",
			Help: "Credential requests from agents, by outcome.",
		}, []string{"result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podiam_server_denials_total",
			Help: "Credential requests refused by policy or validation, by reason.",
		}, []string{"reason"}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	collectors := []prometheus.Collector{s.requests, s.denials}
	if cfg.Push {
		if err := s.enablePush(deps.Push); err != nil {
			return nil, err
		}
		collectors = append(collectors, s.push.count)
	}
	if reg == nil {
		return s, nil
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("server: register metrics: %w", err)
		}
	}
	return s, nil
}

// GetPodCredentials implements the request path: identity, node binding,
// role, policy, credentials.
func (s *Service) GetPodCredentials(ctx context.Context, req *pb.GetPodCredentialsRequest) (*pb.GetPodCredentialsResponse, error) {
	resp, err := s.getPodCredentials(ctx, req.GetIp())
	var de *decisionError
	switch {
	case err == nil:
		s.requests.WithLabelValues(string(resultIssued)).Inc()
	case errors.As(err, &de):
		s.requests.WithLabelValues(string(de.result)).Inc()
	default:
		s.requests.WithLabelValues(string(resultError)).Inc()
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (s *Service) getPodCredentials(ctx context.Context, ip string) (*pb.GetPodCredentialsResponse, error) {
	g, err := s.authorize(ctx, ip, peerAddr(ctx), false)
	if err != nil {
		return nil, err
	}
	c, err := s.deps.Credentials.Get(ctx, g.key)
	switch {
	case errors.Is(err, creds.ErrDenied):
		s.logDenial(g.log, g.pod, "sts_denied", "sts refused the role", "error", err)
		return nil, deny(resultSTSDenied, pb.Reason_REASON_STS_DENIED, err)
	case err != nil:
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for credentials: %w", context.Cause(ctx))
		}
		g.log.Warn("credentials unavailable", "error", err)
		return nil, deny(resultSTSUnavailable, pb.Reason_REASON_STS_UNAVAILABLE, err)
	}
	s.audit(g, c, deliveryRequest)
	return response(g, c), nil
}

// grant is what the request path decided for the pod at an address: who it
// is, the session it may use, and its log fields.
type grant struct {
	pod      *podindex.Pod
	key      creds.Key
	decision policy.Decision
	log      *slog.Logger
}

// authorize takes the request path's steps up to the credentials:
// identity, node binding (agent is the caller's address), role and policy.
// A push (the pod has not asked) waits for no pod, leaves node binding to
// the stream, which only the pod's node receives, and records no denial:
// the pod's own request will, if it ever asks.
func (s *Service) authorize(ctx context.Context, ip, agent string, push bool) (grant, error) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return grant{}, deny(resultBadRequest, pb.Reason_REASON_UNSPECIFIED, fmt.Errorf("invalid pod address %q: %w", ip, err))
	}
	ip = addr.Unmap().String()
	if !s.deps.Synced() {
		return grant{}, deny(resultNotSynced, pb.Reason_REASON_UNSPECIFIED, errors.New("server has not synced pods and namespaces yet"))
	}

	wait := s.cfg.PodWait
	if push {
		wait = 0 // the index answers at once: a push follows the pod's own event
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	pod, err := s.deps.Pods.Lookup(wctx, ip)
	cancel()
	switch {
	case errors.Is(err, podindex.ErrConflict):
		if !push {
			s.log.Error("several live pods claim one address; refusing", "pod_ip", ip)
		}
		return grant{}, deny(resultIPConflict, pb.Reason_REASON_IP_CONFLICT, err)
	case errors.Is(err, podindex.ErrStale):
		// Not "pod unknown": agents drop what they hold on that answer.
		return grant{}, deny(resultPodIndexStale, pb.Reason_REASON_UNSPECIFIED, fmt.Errorf("pod %s: %w", ip, err))
	case err != nil:
		return grant{}, deny(resultPodUnknown, pb.Reason_REASON_POD_UNKNOWN, fmt.Errorf("pod %s: %w", ip, err))
	}

	log := s.log.With("namespace", pod.Namespace, "pod", pod.Name, "pod_uid", string(pod.UID), "pod_ip", ip)
	denied := s.denied
	logDenial := s.logDenial
	if push {
		denied = func(*slog.Logger, *podindex.Pod, string, error) {}
		logDenial = func(*slog.Logger, *podindex.Pod, string, string, ...any) {}
	}
	if s.cfg.NodeBinding && !push {
		if !contains(pod.HostIPs, agent) {
			logDenial(log, pod, "wrong_node", "agent is not on the pod's node", "agent_ip", agent)
			return grant{}, deny(resultWrongNode, pb.Reason_REASON_WRONG_NODE,
				fmt.Errorf("agent %s is not on the node of pod %s/%s", agent, pod.Namespace, pod.Name))
		}
	}

	key, err := s.deps.Keys.Key(pod)
	switch {
	case errors.Is(err, role.ErrNoRole):
		return grant{}, deny(resultNoRole, pb.Reason_REASON_NO_ROLE, err)
	case pod.Mirror:
		// A static pod asks for a role: whoever controls a node's kubelet
		// could name any namespace and role this way, so node binding
		// alone would not contain a compromised node. Kubernetes gives
		// static pods no ServiceAccount token for the same reason.
		err := fmt.Errorf("pod %s/%s is a static (mirror) pod; static pods get no role", pod.Namespace, pod.Name)
		denied(log, pod, string(resultStaticPod), err)
		return grant{}, deny(resultStaticPod, pb.Reason_REASON_STATIC_POD, err)
	case errors.Is(err, session.ErrTemplate):
		// The server's configuration failed, not the pod: no Event
		// blaming it, and an internal error rather than a denial.
		if !push {
			log.Error("session parameters failed", "error", err)
		}
		return grant{}, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	case err != nil:
		denied(log, pod, "invalid_annotation", err)
		return grant{}, deny(resultInvalidAnnotation, pb.Reason_REASON_INVALID_ANNOTATION, err)
	}
	log = log.With("role_arn", key.RoleARN)

	decision, err := Decide(s.deps.Namespaces, s.deps.Policy, pod.Namespace, key)
	if errors.Is(err, podindex.ErrNamespaceStale) {
		// Not a denial: the policy is unknown for now. Unavailable, as for
		// a stale pod index, and no Event blaming the pod.
		return grant{}, deny(resultNamespaceStale, pb.Reason_REASON_UNSPECIFIED, err)
	}
	if err != nil {
		denied(log, pod, policy.Reason(err), err)
		return grant{}, deny(resultPolicyDenied, pb.Reason_REASON_POLICY_DENIED, err)
	}
	return grant{pod: pod, key: decision.Key, decision: decision, log: log}, nil
}

// How credentials reached an agent, in the audit line.
const (
	deliveryRequest = "request"
	deliveryPush    = "push"
)

// audit writes the one log line every issue of credentials produces. The
// secret and the session token never appear.
func (s *Service) audit(g grant, c creds.Credentials, delivery string) {
	roleFrom := "pod"
	if own, _ := g.pod.Annotation(role.AnnotationRole); own == "" {
		roleFrom = "serviceaccount"
	}
	g.log.Info("credentials issued",
		"service_account", g.pod.ServiceAccountName,
		"role_from", roleFrom,
		"access_key_id", c.AccessKeyID,
		"session_name", g.key.SessionName,
		"external_id_set", g.key.ExternalID != "",
		"external_id_from", string(g.decision.ExternalIDFrom),
		"source_identity", g.key.SourceIdentity,
		"session_tags", g.key.Tags,
		"expiration", c.Expiration.UTC().Format(time.RFC3339),
		"delivery", delivery,
		"decision", "allow")
}

// response is the answer for the pod of g with credentials c.
func response(g grant, c creds.Credentials) *pb.GetPodCredentialsResponse {
	return &pb.GetPodCredentialsResponse{
		Pod: &pb.Pod{
			Namespace:      g.pod.Namespace,
			Name:           g.pod.Name,
			Uid:            string(g.pod.UID),
			ServiceAccount: g.pod.ServiceAccountName,
			RoleArn:        g.key.RoleARN,
		},
		Credentials: &pb.AWSCredentials{
			AccessKeyId:     c.AccessKeyID,
			SecretAccessKey: c.SecretAccessKey,
			SessionToken:    c.SessionToken,
			Expiration:      timestamppb.New(c.Expiration),
			LastUpdated:     timestamppb.New(c.LastUpdated),
		},
	}
}

// Decide reads a pod's namespace from namespaces and asks p which session
// the pod may use in place of key (its annotations' own). The service, the
// prefetch controller and the credential cache's "in use" all come here,
// so none of them can decide differently. A namespace the informer does
// not know is decided as one without annotations: deny. A namespace that
// cannot be read now (podindex.ErrNamespaceStale) is an error, not a
// decision.
func Decide(namespaces NamespaceGetter, p Policy, namespace string, key creds.Key) (policy.Decision, error) {
	ns, err := namespaces.Get(namespace)
	if err != nil && !apierrors.IsNotFound(err) {
		return policy.Decision{}, fmt.Errorf("namespace %s: %w", namespace, err)
	}
	var annotations map[string]string
	if ns != nil {
		annotations = ns.Annotations
	}
	return p.Decide(policy.NamespaceOf(namespace, annotations), key)
}

// denied records a policy or validation denial: a metric, a Kubernetes Event
// on the pod (the recorder de-duplicates) and a rate-limited log line.
func (s *Service) denied(log *slog.Logger, pod *podindex.Pod, reason string, err error) {
	s.deps.Events.Eventf(pod, corev1.EventTypeWarning, "IAMRoleDenied", "podiam refused credentials: %v", err)
	s.logDenial(log, pod, reason, "credentials denied", "error", err)
}

func (s *Service) logDenial(log *slog.Logger, pod *podindex.Pod, reason, msg string, args ...any) {
	s.denials.WithLabelValues(reason).Inc()
	k := string(pod.UID) + "|" + reason
	now := s.cfg.Now()
	s.denyMu.Lock()
	last, seen := s.denyLogs.Get(k)
	logIt := !seen || now.Sub(last) >= s.cfg.DenialLogInterval
	if logIt {
		s.denyLogs.Add(k, now)
	}
	s.denyMu.Unlock()
	if logIt {
		log.Warn(msg, append(args, "reason", reason, "service_account", pod.ServiceAccountName, "decision", "deny")...)
	}
}

// WatchNodePods streams changes to the pods on the agent's node.
func (s *Service) WatchNodePods(req *pb.WatchNodePodsRequest, stream pb.Credentials_WatchNodePodsServer) error {
	// A snapshot from unsynced informers would tell the agent that pods
	// it knows are gone.
	if !s.deps.Synced() {
		return toStatus(deny(resultNotSynced, pb.Reason_REASON_UNSPECIFIED, errors.New("server has not synced yet")))
	}
	host := req.GetHostIp()
	if s.cfg.NodeBinding {
		// An agent learns only of its own node's pods: the node is the one
		// at the address it calls from, and a claim for another node is
		// refused. A dual-stack node's agent may claim its address of the
		// other family.
		peer := peerAddr(stream.Context())
		if claim, err := netip.ParseAddr(host); err == nil {
			host = claim.Unmap().String()
		}
		if peer == "" || (host != "" && !s.deps.Watcher.SameNode(peer, host)) {
			s.log.Warn("agent asked for another node's pods; refusing", "agent_ip", peer, "host_ip", req.GetHostIp(), "decision", "deny")
			return toStatus(deny(resultWrongNode, pb.Reason_REASON_WRONG_NODE,
				fmt.Errorf("agent %s may watch only its own node, not %q", peer, req.GetHostIp())))
		}
		host = peer
	}
	if req.GetAcceptCredentials() && s.push != nil {
		return s.deps.Watcher.StreamWithCredentials(stream.Context(), host, stream.Send)
	}
	return s.deps.Watcher.Stream(stream.Context(), host, stream.Send)
}

func peerAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return ""
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	return addr.Unmap().String()
}

func contains(list []string, s string) bool {
	if s == "" {
		return false
	}
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
