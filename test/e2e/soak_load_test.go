package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/podiam/podiam/test/testenv"
)

// soakSlot is one pod address and the pods that hold it in turn, each a
// generation: churn deletes the pod and re-creates another, with another
// role, on the same address.
type soakSlot struct {
	idx   int
	node  *soakNode
	ns    string // the pod's network namespace
	veth  string // host side, in the node's namespace
	ip    string
	kns   string   // Kubernetes namespace
	pool  []string // roles the slot's pods take turns at
	churn bool
	sdk   bool

	mu   sync.Mutex
	role string // the current pod's
	gens int
	gen  *soakGen
}

func (sl *soakSlot) podName() string {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return fmt.Sprintf("s%d-g%d", sl.idx, sl.gens)
}

func (sl *soakSlot) podSpec(name string, withIP bool) testenv.PodSpec {
	sl.mu.Lock()
	role := sl.role
	sl.mu.Unlock()
	spec := testenv.PodSpec{Namespace: sl.kns, Name: name,
		Annotations: map[string]string{"iam.amazonaws.com/role": role}, NodeName: sl.node.name}
	if withIP {
		spec.PodIPs, spec.HostIPs = []string{sl.ip}, []string{sl.node.host}
	}
	return spec
}

func (sl *soakSlot) current() *soakGen {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.gen
}

// soakGen is one pod on a slot's address: its role and the workload that
// asks for credentials as long as the pod lives.
type soakGen struct {
	slot    *soakSlot
	pod     string
	role    string // as annotated
	roleARN string
	cancel  context.CancelFunc
	done    chan struct{}
}

// startGen starts the workload of a new pod with role on the slot. It
// runs from the pod's sandbox (network) creation until stopGen, as a
// container does between sandbox creation and kill.
func (sl *soakSlot) startGen(ctx context.Context, s *soak, role, pod string) {
	ctx, cancel := context.WithCancel(ctx)
	g := &soakGen{slot: sl, pod: pod, role: role, roleARN: fullARN(role), cancel: cancel, done: make(chan struct{})}
	sl.mu.Lock()
	sl.role, sl.gen = role, g
	sl.gens++
	sl.mu.Unlock()
	go func() {
		defer close(g.done)
		g.load(ctx, s)
	}()
}

// stopGen ends the current pod's workload and waits for it, as the
// container runtime kills a deleted pod's containers before its sandbox.
func (sl *soakSlot) stopGen() {
	if g := sl.current(); g != nil {
		g.cancel()
		<-g.done
	}
}

// Kinds of requests.
const (
	kindToken = "token"
	kindList  = "list"
	kindCreds = "creds"
)

// soakRecord is one request a pod made and what came back.
type soakRecord struct {
	gen        *soakGen
	kind       string
	v2         bool
	start, end time.Time
	code       int    // HTTP status, 0 without a response
	err        string // transport error class
	reason     string // a refusal's body, shortened
	key        string // AccessKeyId of a credentials document
	bad        string // why a 200 credentials answer is not a usable document
}

// soakPace is the pause between a pod's rounds (list, then credentials).
const soakPace = 100 * time.Millisecond

// IMDSv2 tokens are asked for with soakTokenTTL and renewed after
// soakTokenRenew.
const (
	soakTokenTTL   = 60 * time.Second
	soakTokenRenew = 50 * time.Second
)

// load asks like an SDK: list the role, then get its credentials, IMDSv1
// and IMDSv2 (a token, kept until refused) in turn. Odd slots open a new
// connection per request, as curl and the AWS CLI do; even ones keep
// connections alive, as long-running SDK clients do.
func (g *soakGen) load(ctx context.Context, s *soak) {
	tr := &http.Transport{
		DialContext:       testenv.DialInNetNS(g.slot.ns, 2*time.Second),
		DisableKeepAlives: g.slot.idx%2 == 1,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	base := "http://" + testenv.MetadataIP
	var token string
	var tokenAt time.Time
	for round := 0; ctx.Err() == nil; round++ {
		v2 := round%2 == 1
		// SDKs renew a token before it expires; one that expires in use
		// would be the client's own refusal, not the agent's.
		if v2 && (token == "" || time.Since(tokenAt) > soakTokenRenew) {
			r := g.do(ctx, client, http.MethodPut, base+testenv.TokenPath, kindToken, true, map[string]string{testenv.TokenTTLHeader: strconv.Itoa(int(soakTokenTTL.Seconds()))})
			s.record(r)
			if r.code != http.StatusOK {
				sleepCtx(ctx, soakPace)
				continue
			}
			token, tokenAt = r.reason, r.start
		}
		hdr := map[string]string{}
		if v2 {
			hdr[testenv.TokenHeader] = token
		}
		list := g.do(ctx, client, http.MethodGet, base+testenv.CredentialsPath, kindList, v2, hdr)
		s.record(list)
		if list.code == http.StatusUnauthorized {
			token = ""
		}
		if list.code == http.StatusOK {
			name := list.reason
			c := g.do(ctx, client, http.MethodGet, base+testenv.CredentialsPath+name, kindCreds, v2, hdr)
			s.record(c)
			if c.code == http.StatusUnauthorized {
				token = ""
			}
		}
		sleepCtx(ctx, soakPace)
	}
}

// do sends one request and classifies the answer. For a 200 token or
// list answer, reason holds the body (the token, the role name).
func (g *soakGen) do(ctx context.Context, client *http.Client, method, url, kind string, v2 bool, hdr map[string]string) soakRecord {
	r := soakRecord{gen: g, kind: kind, v2: v2, start: time.Now()}
	defer func() { r.end = time.Now() }()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		r.err = err.Error()
		return r
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		r.err = errClass(ctx, err)
		r.end = time.Now()
		return r
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r.end = time.Now()
	r.code = resp.StatusCode
	if err != nil {
		r.err = errClass(ctx, err)
		return r
	}
	switch {
	case r.code != http.StatusOK:
		r.reason = shorten(strings.TrimSpace(string(body)), 60)
	case kind == kindCreds:
		doc, err := parseCredDoc(string(body))
		if err != nil {
			r.bad = err.Error()
		}
		r.key = doc.AccessKeyId
		if strings.Contains(string(body), canaryMarker) {
			r.bad = "the node's credentials (canary)"
		}
	default:
		r.reason = string(body)
	}
	return r
}

// errClass names a transport error by its kind, for the refusal table.
func errClass(ctx context.Context, err error) string {
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return "canceled" // the pod was deleted mid-request: not counted
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection reset"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "other: " + shorten(err.Error(), 60)
	}
}

func shorten(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (s *soak) record(r soakRecord) {
	if r.err == "canceled" {
		return
	}
	s.recMu.Lock()
	defer s.recMu.Unlock()
	s.records = append(s.records, r)
}

// sdkRun is one run of the Go SDK client in a pod.
type sdkRun struct {
	node       string
	start, end time.Time
	want, got  string // caller ARNs
	err        string
}

// sdkLoop runs the real Go SDK in the slot's pod, one run after the other:
// its credential provider finds the agent through the DNAT rule and it
// asks STS who it is.
func (s *soak) sdkLoop(ctx context.Context, sl *soakSlot) {
	for ctx.Err() == nil {
		g := sl.current()
		run := sdkRun{node: sl.node.name, start: time.Now(), want: arnOf(g.roleARN)}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res := testenv.RunInNetNS(rctx, sl.ns, s.podEnv, nil, s.gosdk)
		cancel()
		run.end, run.got = time.Now(), strings.TrimSpace(res.Stdout)
		if ctx.Err() != nil {
			return
		}
		if res.Err != nil {
			run.err = shorten(strings.TrimSpace(res.Stderr), 120)
		}
		s.recMu.Lock()
		s.sdkRuns = append(s.sdkRuns, run)
		s.recMu.Unlock()
		sleepCtx(ctx, time.Second)
	}
}

// arnOf is the caller ARN of credentials for roleARN, as GetCallerIdentity
// names them (session kiam-kiam, see assumedARN).
func arnOf(role string) string {
	account := strings.Split(role, ":")[4]
	return "arn:aws:sts::" + account + ":assumed-role/" + role[strings.LastIndex(role, "/")+1:] + "/kiam-kiam"
}

// churnEvery is how often a pod is re-created, measured from one start to
// the next.
const churnEvery = 3 * time.Second

// churnGrace is how long after the old pod's deletion was stored by the
// API server the new pod's sandbox appears. The wrong-role oracle counts
// on the servers having seen the deletion by then; on a real node the
// same pause is at least a kubelet's sandbox teardown and a scheduling.
const churnGrace = time.Second

// churnLoop re-creates pods at a steady rate, as a Deployment's rollout
// does, always on the same address, in the order a kubelet and a CNI
// plugin do it: the API deletion, the old containers killed, the old
// sandbox torn down; after churnGrace the new pod object (without an
// address yet), its sandbox on the same address and its containers, which
// ask at once; then the status with the address. It pauses while
// kube-apiserver is being restarted.
func (s *soak) churnLoop(ctx context.Context, rng *rand.Rand) {
	var churnable []*soakSlot
	for _, sl := range s.slots {
		if sl.churn {
			churnable = append(churnable, sl)
		}
	}
	for ctx.Err() == nil {
		next := time.Now().Add(churnEvery)
		for s.apiDown.Load() && ctx.Err() == nil {
			sleepCtx(ctx, 100*time.Millisecond)
		}
		sl := churnable[rng.IntN(len(churnable))]
		old := sl.current()
		role := old.role
		for role == old.role {
			role = sl.pool[rng.IntN(len(sl.pool))]
		}
		if !s.churnOne(ctx, sl, old, role) {
			return
		}
		s.evMu.Lock()
		s.churns++
		s.evMu.Unlock()
		sleepCtx(ctx, time.Until(next))
	}
}

// churnOne replaces the slot's pod by one with role; false when the run
// ended or the harness failed.
func (s *soak) churnOne(ctx context.Context, sl *soakSlot, old *soakGen, role string) bool {
	if !s.retryAPI(ctx, "delete pod "+old.pod, func(c context.Context) error {
		// A retry after a call that timed out here but was stored finds
		// the pod gone.
		if err := s.kube.TryDeletePod(c, sl.kns, old.pod, 0); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	}) {
		return false
	}
	deleted := time.Now()
	sl.stopGen()
	if out, err := exec.Command(s.topo.ip, "-n", sl.node.netns, "link", "del", sl.veth).CombinedOutput(); err != nil {
		s.harnessError("unwire %s: %v: %s", sl.ip, err, out)
		return false
	}
	sleepCtx(ctx, time.Until(deleted.Add(churnGrace)))
	sl.mu.Lock()
	sl.role = role
	sl.mu.Unlock()
	name := sl.podName()
	spec := sl.podSpec(name, false)
	if !s.retryAPI(ctx, "create pod "+name, func(c context.Context) error {
		// As for the deletion: a timed-out create may have been stored.
		if _, err := s.kube.TryCreatePod(c, spec); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		return nil
	}) {
		return false
	}
	if _, err := s.topo.wirePodErr(sl.node.netns, sl.node.host, sl.ns, sl.veth, sl.ip); err != nil {
		s.harnessError("rewire %s: %v", sl.ip, err)
		return false
	}
	// The run's own context: a generation outlives the churn goroutine's.
	sl.startGen(s.loadCtx, s, role, name)
	return s.retryAPI(ctx, "status of pod "+name, func(c context.Context) error {
		_, err := s.kube.TrySetPodStatus(c, sl.kns, name, "Running", []string{sl.ip}, []string{sl.node.host})
		return err
	})
}

// retryAPI calls fn until it succeeds (kube-apiserver may be restarting)
// or the run ends; more than a minute of failures is a harness failure.
func (s *soak) retryAPI(ctx context.Context, what string, fn func(context.Context) error) bool {
	deadline := time.Now().Add(time.Minute)
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(c)
		cancel()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if time.Now().After(deadline) {
			s.harnessError("%s: %v", what, err)
			return false
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// flip is one change of soak-flip's permitted annotation. A deny is dated
// after the API server stored it, an allow before it was sent: each as
// late (deny) or as early (allow) as the servers can have seen it, so the
// denied oracle never blames the agent for a change not yet made.
type flip struct {
	at    time.Time
	allow bool
}

// flipEvery is how often soak-flip's policy changes.
const flipEvery = 6 * time.Second

// flipLoop flips soak-flip's permitted annotation between allowing and
// denying its pods' roles. Flips wait while a server or its watch is
// being taken away (holdFlips) and while kube-apiserver restarts: agents
// learn of a policy change from their pod stream, and a stream that is
// being moved to the other server has the reconnect's re-check as its
// bound, not the one second the denied oracle allows.
func (s *soak) flipLoop(ctx context.Context, rng *rand.Rand) {
	allow := true
	for ctx.Err() == nil {
		sleepCtx(ctx, flipEvery/2+time.Duration(rng.Int64N(int64(flipEvery))))
		for (s.apiDown.Load() || s.holdFlips.Load() > 0) && ctx.Err() == nil {
			sleepCtx(ctx, 100*time.Millisecond)
		}
		if ctx.Err() != nil {
			return
		}
		allow = !allow
		value := flipDeny
		if allow {
			value = flipAllow
		}
		sent := time.Now()
		if !s.retryAPI(ctx, "flip "+nsSoakFlip, func(c context.Context) error {
			return s.kube.TryAnnotateNamespace(c, nsSoakFlip, "iam.amazonaws.com/permitted", value)
		}) {
			return
		}
		at := time.Now()
		if allow {
			at = sent
		}
		s.evMu.Lock()
		s.flips = append(s.flips, flip{at: at, allow: allow})
		s.evMu.Unlock()
	}
}
