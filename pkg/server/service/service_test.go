package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/session"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/syncbuf"
)

// lookupErr is a PodLookup that always fails with err.
type lookupErr struct{ err error }

func (l lookupErr) Lookup(context.Context, string) (*podindex.Pod, error) { return nil, l.err }

// unused fails the test if the request path goes past identity.
type unused struct{ t *testing.T }

func (u unused) Get(string) (*corev1.Namespace, error) {
	u.t.Error("namespace read after a failed lookup")
	return nil, errors.New("unused")
}
func (u unused) Key(*podindex.Pod) (creds.Key, error) {
	u.t.Error("key resolved after a failed lookup")
	return creds.Key{}, errors.New("unused")
}
func (u unused) Decide(policy.Namespace, creds.Key) (policy.Decision, error) {
	u.t.Error("policy checked after a failed lookup")
	return policy.Decision{}, errors.New("unused")
}
func (u unused) CredentialsGet(context.Context, creds.Key) (creds.Credentials, error) {
	u.t.Error("credentials fetched after a failed lookup")
	return creds.Credentials{}, errors.New("unused")
}

type credentialsFunc func(context.Context, creds.Key) (creds.Credentials, error)

func (f credentialsFunc) Get(ctx context.Context, k creds.Key) (creds.Credentials, error) {
	return f(ctx, k)
}

// TestLookupFailuresMapToCodes pins what an agent hears when identity
// fails. "Pod unknown" makes an agent drop the credentials it holds for the
// address, so a stale index must answer Unavailable, never that.
func TestLookupFailuresMapToCodes(t *testing.T) {
	tests := []struct {
		err    error
		code   codes.Code
		reason pb.Reason
		result result
	}{
		{fmt.Errorf("%w: dial tcp: connection refused", podindex.ErrStale), codes.Unavailable, pb.Reason_REASON_UNSPECIFIED, resultPodIndexStale},
		{podindex.ErrNotFound, codes.NotFound, pb.Reason_REASON_POD_UNKNOWN, resultPodUnknown},
		{fmt.Errorf("%w (checked with the api server)", podindex.ErrNotFound), codes.NotFound, pb.Reason_REASON_POD_UNKNOWN, resultPodUnknown},
		{podindex.ErrConflict, codes.FailedPrecondition, pb.Reason_REASON_IP_CONFLICT, resultIPConflict},
	}
	for _, tc := range tests {
		t.Run(string(tc.result)+": "+tc.err.Error(), func(t *testing.T) {
			w, _ := newTestWatcher(t)
			u := unused{t}
			svc, err := New(Config{PodWait: 100 * time.Millisecond}, Deps{
				Pods:        lookupErr{tc.err},
				Namespaces:  u,
				Keys:        u,
				Policy:      u,
				Credentials: credentialsFunc(u.CredentialsGet),
				Events:      record.NewFakeRecorder(10),
				Watcher:     w,
				Synced:      func() bool { return true },
			}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			_, err = svc.GetPodCredentials(context.Background(), &pb.GetPodCredentialsRequest{Ip: "10.0.0.1"})
			if status.Code(err) != tc.code || refusal.Reason(err) != tc.reason {
				t.Fatalf("got %v (reason %v), want %v %v", err, refusal.Reason(err), tc.code, tc.reason)
			}
			if got := testutil.ToFloat64(svc.requests.WithLabelValues(string(tc.result))); got != 1 {
				t.Fatalf("requests{result=%q} = %v, want 1", tc.result, got)
			}
		})
	}
}

// Every result a denial can carry has a code; a missing one would be OK.
func TestEveryResultHasACode(t *testing.T) {
	for _, r := range []result{resultBadRequest, resultNotSynced, resultPodIndexStale, resultNamespaceStale, resultPodUnknown, resultIPConflict,
		resultWrongNode, resultNoRole, resultStaticPod, resultInvalidAnnotation, resultPolicyDenied, resultSTSDenied, resultSTSUnavailable} {
		if c, ok := resultCodes[r]; !ok || c == codes.OK {
			t.Errorf("result %q has no code", r)
		}
	}
}

// fakePods finds pods by address; any other address is unknown.
type fakePods struct {
	pods   map[string]*podindex.Pod
	mu     sync.Mutex
	looked []string
}

func (f *fakePods) Lookup(_ context.Context, ip string) (*podindex.Pod, error) {
	f.mu.Lock()
	f.looked = append(f.looked, ip)
	f.mu.Unlock()
	if p, ok := f.pods[ip]; ok {
		return p, nil
	}
	return nil, podindex.ErrNotFound
}

// fakeNamespaces serves namespaces by name; an absent one is NotFound, as
// from the informer's lister; err, if set, is every answer.
type fakeNamespaces struct {
	ns  map[string]*corev1.Namespace
	err error
}

func (f fakeNamespaces) Get(name string) (*corev1.Namespace, error) {
	if f.err != nil {
		return nil, f.err
	}
	if ns, ok := f.ns[name]; ok {
		return ns, nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// kiamKeys resolves keys as the server does by default: KIAM's session
// names, nothing else.
func kiamKeys(t testing.TB, roles session.RoleKeys) *session.Keys {
	t.Helper()
	k, err := session.New(session.Config{DefaultSession: "kiam"}, session.Deps{Roles: roles})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeKeys answers every pod with key or err, recording what it was asked.
type fakeKeys struct {
	key   creds.Key
	err   error
	asked *podindex.Pod
}

func (f *fakeKeys) Key(pod *podindex.Pod) (creds.Key, error) {
	f.asked = pod
	return f.key, f.err
}

// fakePolicy answers every decision with err, or allows with the key it
// was given (and externalID, when set), recording the last one.
type fakePolicy struct {
	err        error
	externalID string
	calls      int
	ns         policy.Namespace
	key        creds.Key
}

func (f *fakePolicy) Decide(ns policy.Namespace, key creds.Key) (policy.Decision, error) {
	f.calls++
	f.ns, f.key = ns, key
	if f.err != nil {
		return policy.Decision{}, f.err
	}
	src := policy.SourceNone
	if f.externalID != "" {
		key.ExternalID, src = f.externalID, policy.SourceNamespace
	}
	return policy.Decision{Key: key, ExternalIDFrom: src}, nil
}

// fakeCreds answers every key with answer, counting the calls.
type fakeCreds struct {
	mu     sync.Mutex
	calls  int
	key    creds.Key
	answer func(ctx context.Context) (creds.Credentials, error)
}

func (f *fakeCreds) Get(ctx context.Context, key creds.Key) (creds.Credentials, error) {
	f.mu.Lock()
	f.calls++
	f.key = key
	f.mu.Unlock()
	return f.answer(ctx)
}

const (
	podIP   = "10.0.0.1"
	nodeIP  = "192.168.0.1"
	roleARN = "arn:aws:iam::123456789012:role/app"
)

var (
	issuedAt  = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	testCreds = creds.Credentials{AccessKeyID: "ASIATEST", SecretAccessKey: "secret", SessionToken: "token",
		Expiration: issuedAt.Add(time.Hour), LastUpdated: issuedAt}
	testKey = creds.Key{RoleARN: roleARN, SessionName: "kiam-kiam"}
)

// fromAgent is ctx as a gRPC handler sees it for a call from an agent at ip.
func fromAgent(ctx context.Context, ip string) context.Context {
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}})
}

// svcFixture is a Service over fakes, with what they saw.
type svcFixture struct {
	svc    *Service
	pods   *fakePods
	keys   *fakeKeys
	policy *fakePolicy
	creds  *fakeCreds
	events *record.FakeRecorder
	logs   *syncbuf.Buffer
	clk    *testingclock.FakeClock
}

func newSvcFixture(t *testing.T, cfg Config, synced bool) *svcFixture {
	t.Helper()
	w, _ := newTestWatcher(t)
	fx := &svcFixture{
		pods: &fakePods{pods: map[string]*podindex.Pod{
			podIP: testPod("app", podIP, nodeIP, "app", func(p *corev1.Pod) { p.Spec.ServiceAccountName = "sa" }),
		}},
		keys:   &fakeKeys{key: testKey},
		policy: &fakePolicy{},
		creds: &fakeCreds{answer: func(context.Context) (creds.Credentials, error) {
			return testCreds, nil
		}},
		events: record.NewFakeRecorder(10),
		logs:   &syncbuf.Buffer{},
		clk:    testingclock.NewFakeClock(issuedAt),
	}
	cfg.PodWait = 100 * time.Millisecond
	cfg.Now = fx.clk.Now
	ns := fakeNamespaces{ns: map[string]*corev1.Namespace{
		"ns": {ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{role.AnnotationPermitted: ".*"}}},
	}}
	svc, err := New(cfg, Deps{
		Pods:        fx.pods,
		Namespaces:  ns,
		Keys:        fx.keys,
		Policy:      fx.policy,
		Credentials: fx.creds,
		Events:      fx.events,
		Watcher:     w,
		Synced:      func() bool { return synced },
	}, prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(fx.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	fx.svc = svc
	return fx
}

// event returns the next event recorded, or "" if none was.
func (fx *svcFixture) event() string {
	select {
	case e := <-fx.events.Events:
		return e
	default:
		return ""
	}
}

// TestGetPodCredentials walks the request path one refusal at a time:
// what the agent hears (code and reason), what is counted, which later
// steps are skipped, what is recorded on the pod and what is logged.
func TestGetPodCredentials(t *testing.T) {
	errSTSDenied := fmt.Errorf("credcache: %s: %w: AccessDenied", roleARN, creds.ErrDenied)
	errSTSDown := fmt.Errorf("credcache: %s: %w: Throttling", roleARN, creds.ErrUnavailable)
	tests := []struct {
		name        string
		cfg         Config
		unsynced    bool
		ip          string // default podIP
		agent       string // peer address; "" none
		ctx         func(context.Context) (context.Context, context.CancelFunc)
		keyErr      error
		nsErr       error
		noNamespace bool
		policyErr   error
		credsErr    error
		cancelInGet bool

		code   codes.Code
		reason pb.Reason
		result result
		denial string // denials metric label; "" none
		event  bool   // an IAMRoleDenied event on the pod
		steps  int    // 0 lookup only ... 1 keys, 2 policy, 3 credentials
		log    string // a line the log must hold
	}{
		{name: "issued", cfg: Config{NodeBinding: true}, agent: nodeIP,
			code: codes.OK, result: resultIssued, steps: 3, log: `"msg":"credentials issued"`},
		{name: "issued for an IPv4-mapped address", ip: "::ffff:" + podIP, agent: nodeIP, cfg: Config{NodeBinding: true},
			code: codes.OK, result: resultIssued, steps: 3},
		{name: "issued to any agent without node binding", agent: "192.168.9.9",
			code: codes.OK, result: resultIssued, steps: 3},
		{name: "bad address", ip: "10.0.0", code: codes.InvalidArgument, result: resultBadRequest, steps: -1},
		{name: "not synced", unsynced: true, code: codes.Unavailable, result: resultNotSynced, steps: -1},
		{name: "unknown pod", ip: "10.0.0.2", code: codes.NotFound, reason: pb.Reason_REASON_POD_UNKNOWN, result: resultPodUnknown},
		{name: "agent on another node", cfg: Config{NodeBinding: true}, agent: "192.168.0.2",
			code: codes.PermissionDenied, reason: pb.Reason_REASON_WRONG_NODE, result: resultWrongNode,
			denial: "wrong_node", log: `"agent_ip":"192.168.0.2"`},
		{name: "agent unknown", cfg: Config{NodeBinding: true},
			code: codes.PermissionDenied, reason: pb.Reason_REASON_WRONG_NODE, result: resultWrongNode, denial: "wrong_node"},
		{name: "no role", agent: nodeIP, keyErr: role.ErrNoRole,
			code: codes.NotFound, reason: pb.Reason_REASON_NO_ROLE, result: resultNoRole, steps: 1},
		{name: "invalid annotation", agent: nodeIP, keyErr: fmt.Errorf("%w: %q", role.ErrInvalidRole, "arn:bad"),
			code: codes.PermissionDenied, reason: pb.Reason_REASON_INVALID_ANNOTATION, result: resultInvalidAnnotation,
			denial: "invalid_annotation", event: true, steps: 1, log: `"reason":"invalid_annotation"`},
		{name: "session template fails: the server's fault, no denial", agent: nodeIP,
			keyErr: fmt.Errorf("session name: %w: template: index out of range", session.ErrTemplate),
			code:   codes.Internal, result: resultError, steps: 1, log: `"msg":"session parameters failed"`},
		{name: "policy denied", agent: nodeIP, policyErr: fmt.Errorf("%w: %s", policy.ErrNotPermitted, roleARN),
			code: codes.PermissionDenied, reason: pb.Reason_REASON_POLICY_DENIED, result: resultPolicyDenied,
			denial: "not_permitted", event: true, steps: 2, log: `"decision":"deny"`},
		{name: "namespace unknown to the informer", agent: nodeIP, noNamespace: true, policyErr: policy.ErrNoAnnotation,
			code: codes.PermissionDenied, reason: pb.Reason_REASON_POLICY_DENIED, result: resultPolicyDenied,
			denial: "no_annotation", event: true, steps: 2},
		{name: "namespace unreadable", agent: nodeIP, nsErr: errors.New("lister broken"),
			code: codes.PermissionDenied, reason: pb.Reason_REASON_POLICY_DENIED, result: resultPolicyDenied,
			denial: "other", event: true, steps: 1, log: "lister broken"},
		{name: "sts denied", agent: nodeIP, credsErr: errSTSDenied,
			code: codes.PermissionDenied, reason: pb.Reason_REASON_STS_DENIED, result: resultSTSDenied,
			denial: "sts_denied", steps: 3, log: `"msg":"sts refused the role"`},
		{name: "sts unavailable", agent: nodeIP, credsErr: errSTSDown,
			code: codes.Unavailable, reason: pb.Reason_REASON_STS_UNAVAILABLE, result: resultSTSUnavailable,
			steps: 3, log: `"msg":"credentials unavailable"`},
		{name: "caller cancelled while waiting for credentials", agent: nodeIP, cancelInGet: true,
			code: codes.Canceled, result: resultError, steps: 3},
		{name: "caller's deadline passed while waiting for credentials", agent: nodeIP,
			ctx: func(ctx context.Context) (context.Context, context.CancelFunc) {
				return context.WithDeadline(ctx, time.Now().Add(-time.Second))
			},
			code: codes.DeadlineExceeded, result: resultError, steps: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newSvcFixture(t, tt.cfg, !tt.unsynced)
			fx.keys.err = tt.keyErr
			fx.policy.err = tt.policyErr
			if tt.nsErr != nil || tt.noNamespace {
				fx.svc.deps.Namespaces = fakeNamespaces{err: tt.nsErr}
			}
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx(context.Background())
			}
			defer cancel()
			fx.creds.answer = func(ctx context.Context) (creds.Credentials, error) {
				if tt.cancelInGet {
					cancel()
				}
				if err := ctx.Err(); err != nil {
					// What credcache returns to a caller that gave up.
					return creds.Credentials{}, fmt.Errorf("credcache: waiting for %s: %w", roleARN, err)
				}
				if tt.credsErr != nil {
					return creds.Credentials{}, tt.credsErr
				}
				return testCreds, nil
			}
			if tt.agent != "" {
				ctx = fromAgent(ctx, tt.agent)
			}
			ip := tt.ip
			if ip == "" {
				ip = podIP
			}

			resp, err := fx.svc.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})

			if status.Code(err) != tt.code || refusal.Reason(err) != tt.reason {
				t.Fatalf("got %v (reason %v), want %v (reason %v)", err, refusal.Reason(err), tt.code, tt.reason)
			}
			if got := testutil.ToFloat64(fx.svc.requests.WithLabelValues(string(tt.result))); got != 1 {
				t.Errorf("requests{result=%q} = %v, want 1", tt.result, got)
			}
			if got := testutil.CollectAndCount(fx.svc.requests); got != 1 {
				t.Errorf("%d request results counted, want 1", got)
			}
			wantDenials := 0
			if tt.denial != "" {
				wantDenials = 1
				if got := testutil.ToFloat64(fx.svc.denials.WithLabelValues(tt.denial)); got != 1 {
					t.Errorf("denials{reason=%q} = %v, want 1", tt.denial, got)
				}
			}
			if got := testutil.CollectAndCount(fx.svc.denials); got != wantDenials {
				t.Errorf("%d denial reasons counted, want %d", got, wantDenials)
			}
			ev := fx.event()
			if tt.event != (ev != "") || (tt.event && !strings.HasPrefix(ev, "Warning IAMRoleDenied podiam refused credentials: ")) {
				t.Errorf("event %q, want one: %v", ev, tt.event)
			}
			// Each step runs only when the ones before it allowed the request.
			if got, want := len(fx.pods.looked), min(tt.steps+1, 1); got != want {
				t.Errorf("%d pod lookups, want %d", got, want)
			}
			if got, want := fx.policy.calls, b2i(tt.steps >= 2); got != want {
				t.Errorf("%d policy checks, want %d", got, want)
			}
			if got, want := fx.creds.calls, b2i(tt.steps >= 3); got != want {
				t.Errorf("%d credential fetches, want %d", got, want)
			}
			if tt.log != "" && !strings.Contains(fx.logs.String(), tt.log) {
				t.Errorf("log lacks %s:\n%s", tt.log, fx.logs)
			}
			if strings.Contains(fx.logs.String(), testCreds.SecretAccessKey) || strings.Contains(fx.logs.String(), testCreds.SessionToken) {
				t.Errorf("log holds a secret:\n%s", fx.logs)
			}
			if tt.code != codes.OK {
				if resp != nil {
					t.Errorf("response %v with an error", resp)
				}
				return
			}
			if fx.pods.looked[0] != podIP {
				t.Errorf("looked up %q, want the unmapped %s", fx.pods.looked[0], podIP)
			}
			checkIssued(t, fx, resp)
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkIssued checks a response against what the fakes gave and what each
// step was asked.
func checkIssued(t *testing.T, fx *svcFixture, resp *pb.GetPodCredentialsResponse) {
	t.Helper()
	p, c := resp.GetPod(), resp.GetCredentials()
	if p.GetNamespace() != "ns" || p.GetName() != "app" || p.GetUid() != "uid-app" || p.GetServiceAccount() != "sa" || p.GetRoleArn() != roleARN {
		t.Errorf("pod %v", p)
	}
	if c.GetAccessKeyId() != testCreds.AccessKeyID || c.GetSecretAccessKey() != testCreds.SecretAccessKey ||
		c.GetSessionToken() != testCreds.SessionToken || !c.GetExpiration().AsTime().Equal(testCreds.Expiration) ||
		!c.GetLastUpdated().AsTime().Equal(testCreds.LastUpdated) {
		t.Errorf("credentials %v, want %+v", c, testCreds)
	}
	if fx.keys.asked == nil || fx.keys.asked.Name != "app" {
		t.Errorf("keys asked for pod %v", fx.keys.asked)
	}
	if fx.policy.ns != (policy.Namespace{Name: "ns", Permitted: ".*", HasPermitted: true}) || fx.policy.key != testKey {
		t.Errorf("policy asked (%+v, %+v)", fx.policy.ns, fx.policy.key)
	}
	if fx.creds.key != testKey {
		t.Errorf("credentials asked for %+v, want %+v", fx.creds.key, testKey)
	}
	for _, want := range []string{`"access_key_id":"ASIATEST"`, `"session_name":"kiam-kiam"`, `"decision":"allow"`, `"pod_uid":"uid-app"`} {
		if !strings.Contains(fx.logs.String(), want) {
			t.Errorf("issue log lacks %s:\n%s", want, fx.logs)
		}
	}
}

// A namespace the informer does not know is checked as one without the
// annotation: the policy decides, and denies.
func TestUnknownNamespaceCheckedWithoutAnnotation(t *testing.T) {
	fx := newSvcFixture(t, Config{}, true)
	fx.svc.deps.Namespaces = fakeNamespaces{}
	if _, err := fx.svc.GetPodCredentials(fromAgent(context.Background(), nodeIP), &pb.GetPodCredentialsRequest{Ip: podIP}); err != nil {
		t.Fatal(err)
	}
	if fx.policy.calls != 1 || fx.policy.ns != (policy.Namespace{Name: "ns"}) {
		t.Fatalf("policy asked %d times with %+v, want once without annotations", fx.policy.calls, fx.policy.ns)
	}
}

// A namespace whose policy cannot be read now (its watch is behind and the
// API server does not answer) is Unavailable, not a denial: no policy
// decision on what may be stale, no Event, and agents keep what they hold.
func TestStaleNamespaceUnavailable(t *testing.T) {
	fx := newSvcFixture(t, Config{}, true)
	fx.svc.deps.Namespaces = fakeNamespaces{err: fmt.Errorf("namespace ns: %w: dial tcp: connection refused", podindex.ErrNamespaceStale)}
	_, err := fx.svc.GetPodCredentials(fromAgent(context.Background(), nodeIP), &pb.GetPodCredentialsRequest{Ip: podIP})
	if status.Code(err) != codes.Unavailable || refusal.Reason(err) != pb.Reason_REASON_UNSPECIFIED {
		t.Fatalf("got %v (reason %v), want Unavailable without a reason", err, refusal.Reason(err))
	}
	if fx.policy.calls != 0 {
		t.Fatalf("policy asked %d times, want never", fx.policy.calls)
	}
	if got := testutil.ToFloat64(fx.svc.requests.WithLabelValues(string(resultNamespaceStale))); got != 1 {
		t.Fatalf("requests{result=namespace_stale} = %v, want 1", got)
	}
	select {
	case e := <-fx.events.Events:
		t.Fatalf("event %q for an unknown policy", e)
	default:
	}
}

// Repeated denials of one pod for one reason are logged once per
// DenialLogInterval, and counted every time.
func TestDenialLogsRateLimited(t *testing.T) {
	fx := newSvcFixture(t, Config{NodeBinding: true, DenialLogInterval: time.Minute}, true)
	ask := func() {
		t.Helper()
		_, err := fx.svc.GetPodCredentials(fromAgent(context.Background(), "192.168.0.2"), &pb.GetPodCredentialsRequest{Ip: podIP})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
	}
	lines := func() int { return strings.Count(fx.logs.String(), `"msg":"agent is not on the pod's node"`) }
	ask()
	ask()
	if lines() != 1 {
		t.Fatalf("%d log lines for two denials within the interval, want 1", lines())
	}
	fx.clk.Step(time.Minute)
	ask()
	if lines() != 2 {
		t.Fatalf("%d log lines after the interval, want 2", lines())
	}
	if got := testutil.ToFloat64(fx.svc.denials.WithLabelValues("wrong_node")); got != 3 {
		t.Fatalf("denials{wrong_node} = %v, want 3", got)
	}
}

// The namespace's External ID is what the credential cache is asked for;
// a pod naming another is refused before any credentials are fetched, with
// an Event and its own denial reason. The External ID itself is in no log
// line, Event or error.
func TestNamespaceExternalID(t *testing.T) {
	const nsID = "tenant-42-secretless"
	tests := []struct {
		name   string
		mode   policy.ExternalIDFrom
		podID  string
		wantID string // "" with a denial
		denial string
	}{
		{name: "namespace's applies to a pod without one", podID: "", wantID: nsID},
		{name: "pod naming the same one", podID: nsID, wantID: nsID},
		{name: "pod naming another is denied", podID: "tenant-7", denial: "external_id_mismatch"},
		{name: "namespace mode: pod naming any is denied", mode: policy.ExternalIDFromNamespace, podID: nsID, denial: "external_id_from_pod"},
		{name: "namespace mode: pod without one", mode: policy.ExternalIDFromNamespace, wantID: nsID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newSvcFixture(t, Config{}, true)
			checker, err := policy.New(policy.Config{ExternalIDFrom: tt.mode})
			if err != nil {
				t.Fatal(err)
			}
			fx.svc.deps.Policy = checker
			fx.svc.deps.Namespaces = fakeNamespaces{ns: map[string]*corev1.Namespace{
				"ns": {ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{
					role.AnnotationPermitted: ".*", role.AnnotationExternalID: nsID}}},
			}}
			fx.keys.key.ExternalID = tt.podID

			resp, err := fx.svc.GetPodCredentials(fromAgent(context.Background(), nodeIP), &pb.GetPodCredentialsRequest{Ip: podIP})
			logs := fx.logs.String()
			ev := fx.event()
			if strings.Contains(logs, nsID) || strings.Contains(ev, nsID) || (err != nil && strings.Contains(err.Error(), nsID)) {
				t.Errorf("the External ID was written out:\nlogs %s\nevent %q\nerror %v", logs, ev, err)
			}
			if tt.denial != "" {
				if status.Code(err) != codes.PermissionDenied || refusal.Reason(err) != pb.Reason_REASON_POLICY_DENIED {
					t.Fatalf("got %v (reason %v), want PermissionDenied, policy denied", err, refusal.Reason(err))
				}
				if fx.creds.calls != 0 {
					t.Errorf("credentials fetched for a denied pod")
				}
				if got := testutil.ToFloat64(fx.svc.denials.WithLabelValues(tt.denial)); got != 1 {
					t.Errorf("denials{reason=%q} = %v, want 1", tt.denial, got)
				}
				if !strings.HasPrefix(ev, "Warning IAMRoleDenied podiam refused credentials: ") || !strings.Contains(ev, role.AnnotationExternalID) {
					t.Errorf("event %q", ev)
				}
				if !strings.Contains(logs, `"reason":"`+tt.denial+`"`) {
					t.Errorf("denial not logged with its reason:\n%s", logs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fx.creds.key.ExternalID != tt.wantID || fx.creds.key.RoleARN != roleARN {
				t.Fatalf("credentials asked for %+v, want External ID %q", fx.creds.key, tt.wantID)
			}
			if resp.GetPod().GetRoleArn() != roleARN {
				t.Fatalf("pod %v", resp.GetPod())
			}
			if !strings.Contains(logs, `"external_id_set":true`) || !strings.Contains(logs, `"external_id_from":"namespace"`) {
				t.Errorf("issue log lacks the External ID's source:\n%s", logs)
			}
		})
	}
}
