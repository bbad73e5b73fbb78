package server

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/podindex"
	"github.com/podiam/podiam/pkg/server/policy"
	"github.com/podiam/podiam/pkg/server/role"
	"github.com/podiam/podiam/pkg/server/session"
	"github.com/podiam/podiam/pkg/supervise"
	"github.com/podiam/podiam/test/syncbuf"
)

const base = "arn:aws:iam::123456789012:role/"

// validConfig is the command's defaults, with the role base ARN given.
func validConfig() Config {
	return Config{
		Bind:                 "127.0.0.1:0",
		RoleBaseARN:          base,
		Session:              "kiam",
		SessionDuration:      time.Hour,
		SessionRefresh:       40 * time.Minute,
		PodWait:              900 * time.Millisecond,
		STSRate:              20,
		STSBurst:             40,
		CacheMaxEntries:      1000,
		Prefetch:             true,
		GRPCKeepaliveTime:    10 * time.Second,
		GRPCKeepaliveTimeout: 2 * time.Second,
	}
}

func TestValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"bad bind", func(c *Config) { c.Bind = "nowhere" }, "--bind"},
		{"both base ARN flags", func(c *Config) { c.RoleBaseARNAutodetect = true }, "exclusive"},
		{"short session against AWS", func(c *Config) { c.SessionDuration, c.SessionRefresh = time.Minute, 30*time.Second }, "below STS's minimum"},
		{"negative drain", func(c *Config) { c.DrainTime = -time.Second }, "--drain-time"},
		{"no session", func(c *Config) { c.Session = "" }, "--session"},
		{"unknown External ID source", func(c *Config) { c.ExternalIDFrom = "both" }, "--external-id-from"},
		{"profiling without a listener", func(c *Config) { c.Profiling, c.PrometheusListenAddr = true, "" }, "--profiling"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
	for _, from := range []policy.ExternalIDFrom{"", policy.ExternalIDFromPod, policy.ExternalIDFromNamespace} {
		c := validConfig()
		c.ExternalIDFrom = from
		if err := c.Validate(); err != nil {
			t.Fatalf("--external-id-from=%q: %v", from, err)
		}
	}
	c := validConfig()
	c.CustomSTSEndpoint, c.SessionDuration, c.SessionRefresh = true, 20*time.Second, 10*time.Second
	if err := c.Validate(); err != nil {
		t.Fatalf("short sessions against a local STS: %v", err)
	}
}

// fakeSTS counts the roles it is asked to assume.
type fakeSTS struct {
	mu       sync.Mutex
	assumed  map[string]int
	callerOK int // CallerARN fails this many times first
	calls    int
	baseErr  error
}

func (f *fakeSTS) Assume(_ context.Context, key creds.Key) (creds.Credentials, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.assumed == nil {
		f.assumed = map[string]int{}
	}
	f.assumed[key.RoleARN]++
	now := time.Now()
	return creds.Credentials{AccessKeyID: "AKIA" + role.Name(key.RoleARN), SecretAccessKey: "s", SessionToken: "t",
		Expiration: now.Add(time.Hour), LastUpdated: now}, nil
}

func (f *fakeSTS) CallerARN(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.callerOK {
		return "", errors.New("sts unreachable")
	}
	return "arn:aws:sts::123456789012:assumed-role/podiam-server/i-0abc", nil
}

func (f *fakeSTS) CheckBase(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.baseErr
}

func (f *fakeSTS) assumedRoles() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.assumed {
		out[k] = v
	}
	return out
}

func namespace(name, permitted string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if permitted != "" {
		ns.Annotations = map[string]string{role.AnnotationPermitted: permitted}
	}
	return ns
}

func pod(ns, name, ip, roleName string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{role.AnnotationRole: roleName}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			HostIPs: []corev1.HostIP{{IP: "10.0.0.1"}}},
	}
}

// testServer builds a server on a fake clientset holding objs, as the
// command builds one on a real one, and starts its informers (after New,
// as the command does) until the test ends.
func testServer(t *testing.T, cfg Config, sts *fakeSTS, logs *syncbuf.Buffer, objs ...runtime.Object) (*Server, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	log := slog.New(slog.DiscardHandler)
	if logs != nil {
		log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(context.Background(), cfg, Deps{
		Kubernetes:     client,
		Informers:      factory,
		LivePods:       podindex.APIPods{Client: client.CoreV1()},
		LiveNamespaces: podindex.APINamespaces{Client: client.CoreV1()},
		STS:            sts,
		TLS:            &tls.Config{},
		Registry:       prometheus.NewRegistry(),
		Log:            log,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.ready = readinessTiming{serving: 50 * time.Millisecond, failing: 10 * time.Millisecond, timeout: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	// Shutdown waits for the informers, which stop only once ctx is done.
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	return s, client
}

func runAsync(ctx context.Context, run func(context.Context) error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	return done
}

func wait(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func waitLog(t *testing.T, logs *syncbuf.Buffer, msg string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), msg) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the logs:\n%s", msg, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The server prefetches permitted roles only, reports SERVING once synced,
// and returns nil when its context ends.
func TestRunPrefetchesPermittedRolesAndStops(t *testing.T) {
	logs := &syncbuf.Buffer{}
	sts := &fakeSTS{}
	s, client := testServer(t, validConfig(), sts, logs, namespace("open", "^"+base+"app-.*$"), namespace("closed", ""))
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, s.Run)
	waitLog(t, logs, `msg=serving`)
	for _, p := range []*corev1.Pod{
		pod("open", "denied", "10.1.0.2", "admin"),
		pod("closed", "closed", "10.1.0.3", "app-web"),
		pod("open", "allowed", "10.1.0.4", "app-web"),
	} {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for sts.assumedRoles()[base+"app-web"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("permitted role never prefetched; assumed %v", sts.assumedRoles())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := wait(t, done); err != nil {
		t.Fatalf("Run = %v after ctx ended, want nil", err)
	}
	if got := sts.assumedRoles(); len(got) != 1 {
		t.Fatalf("assumed %v, want only the permitted %sapp-web", got, base)
	}
}

// A part that stops while the server should run ends it with an error.
func TestRunPartStoppingIsAnError(t *testing.T) {
	s, _ := testServer(t, validConfig(), &fakeSTS{}, nil)
	stopped := supervise.Part{Name: "test part", Run: func(context.Context) error { return nil }}
	err := wait(t, runAsync(context.Background(), func(ctx context.Context) error {
		return s.run(ctx, []supervise.Part{stopped})
	}))
	if !errors.Is(err, supervise.ErrStopped) || !strings.Contains(err.Error(), "test part") {
		t.Fatalf("Run = %v, want the test part's unexpected stop", err)
	}
}

// A part that fails ends the server with its error.
func TestRunPartFailing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := validConfig()
	cfg.PrometheusListenAddr = taken.Addr().String()
	s, _ := testServer(t, cfg, &fakeSTS{}, nil)
	err = wait(t, runAsync(context.Background(), s.Run))
	if err == nil || !strings.Contains(err.Error(), "metrics listen") {
		t.Fatalf("Run = %v, want the metrics server's listen error", err)
	}
	cfg = validConfig()
	cfg.Bind = taken.Addr().String()
	s, _ = testServer(t, cfg, &fakeSTS{}, nil)
	if err := wait(t, runAsync(context.Background(), s.Run)); err == nil || !strings.Contains(err.Error(), "listen "+cfg.Bind) {
		t.Fatalf("Run = %v, want the gRPC listen error", err)
	}
}

// With --role-base-arn-autodetect, New waits for STS to answer.
func TestNewDetectsBaseARN(t *testing.T) {
	logs := &syncbuf.Buffer{}
	cfg := validConfig()
	cfg.RoleBaseARN, cfg.RoleBaseARNAutodetect = "", true
	sts := &fakeSTS{callerOK: 1}
	s, _ := testServer(t, cfg, sts, logs)
	if s.baseARN != base {
		t.Fatalf("base ARN %q, want %q", s.baseARN, base)
	}
	if !strings.Contains(logs.String(), "cannot detect role base ARN yet") {
		t.Fatalf("first failure not logged:\n%s", logs)
	}
	// Stopped while STS is unreachable, New gives up with the reason.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := detectBaseARN(ctx, &fakeSTS{callerOK: 1 << 30}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "sts unreachable") {
		t.Fatalf("detectBaseARN = %v", err)
	}
}

func TestReadiness(t *testing.T) {
	timing := readinessTiming{serving: 20 * time.Millisecond, failing: 5 * time.Millisecond, timeout: time.Second}
	var (
		mu      sync.Mutex
		reasons []string
		synced  bool
		baseErr error = errors.New("no base credentials")
	)
	set := func(reason string) { mu.Lock(); reasons = append(reasons, reason); mu.Unlock() }
	check := func(context.Context) error { mu.Lock(); defer mu.Unlock(); return baseErr }
	hasSynced := func() bool { mu.Lock(); defer mu.Unlock(); return synced }
	snapshot := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), reasons...) }
	waitReasons := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(snapshot()) < len(want) {
			if time.Now().After(deadline) {
				t.Fatalf("reasons %q, want %q", snapshot(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if got := snapshot(); !slices.Equal(got, want) {
			t.Fatalf("reasons %q, want %q", got, want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, func(ctx context.Context) error {
		return readiness(ctx, timing, set, check, []cache.InformerSynced{hasSynced}, slog.New(slog.DiscardHandler))
	})
	time.Sleep(200 * time.Millisecond)
	waitReasons(reasonNotSynced)
	mu.Lock()
	synced = true
	mu.Unlock()
	waitReasons(reasonNotSynced, reasonNoBase)
	time.Sleep(100 * time.Millisecond)
	// Still failing: reported once, not at every check.
	waitReasons(reasonNotSynced, reasonNoBase)
	mu.Lock()
	baseErr = nil
	mu.Unlock()
	waitReasons(reasonNotSynced, reasonNoBase, "")
	mu.Lock()
	baseErr = errors.New("credentials revoked")
	mu.Unlock()
	waitReasons(reasonNotSynced, reasonNoBase, "", reasonNoBase)
	cancel()
	if err := wait(t, done); err != nil {
		t.Fatal(err)
	}
	// Stopped before the informers sync, readiness returns nil too.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := readiness(ctx, timing, set, check, []cache.InformerSynced{func() bool { return false }}, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
}

// nsLister serves namespaces from a map, as the informer's lister does.
type nsLister map[string]*corev1.Namespace

func (l nsLister) Get(name string) (*corev1.Namespace, error) {
	if ns, ok := l[name]; ok {
		return ns, nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// /readyz follows the readiness decision, and the gRPC health service is
// told exactly when serving changes; neither says more than the reason.
func TestReadyState(t *testing.T) {
	var grpcStates []bool
	st := newReadyState(func(ok bool) { grpcStates = append(grpcStates, ok) })
	readyz := func() (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		st.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q", cc)
		}
		return rec.Code, rec.Body.String()
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || body != "not ready: informers not synced\n" {
		t.Fatalf("before any decision: %d %q", code, body)
	}
	st.set(reasonNoBase)
	if code, body := readyz(); code != http.StatusServiceUnavailable || body != "not ready: base credentials unavailable\n" {
		t.Fatalf("without base credentials: %d %q", code, body)
	}
	if len(grpcStates) != 0 {
		t.Fatalf("gRPC health told %v while it stayed NOT_SERVING", grpcStates)
	}
	st.set("")
	if code, body := readyz(); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("serving: %d %q", code, body)
	}
	st.set(reasonNoBase)
	st.set(reasonNoBase)
	if code, _ := readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("after losing the base credentials: %d", code)
	}
	if !slices.Equal(grpcStates, []bool{true, false}) {
		t.Fatalf("gRPC health told %v, want [true false]", grpcStates)
	}
}

// The running server answers /readyz (503 until SERVING, then 200) and
// /healthz on its metrics listener, from the same decision as its gRPC
// health service; nothing of the STS error reaches the body.
func TestRunServesProbes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := validConfig()
	cfg.PrometheusListenAddr = addr
	const secret = "AccessDenied for arn:aws:iam::123456789012:role/podiam-server"
	sts := &fakeSTS{baseErr: errors.New(secret)}
	logs := &syncbuf.Buffer{}
	s, _ := testServer(t, cfg, sts, logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, s.Run)
	defer func() {
		cancel()
		if err := wait(t, done); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()

	client := &http.Client{Timeout: 2 * time.Second}
	get := func(path string) (int, string, error) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	waitFor := func(path string, wantCode int, wantBody string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body, err := get(path)
			if err == nil && code == wantCode && body == wantBody {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d %q %v, want %d %q", path, code, body, err, wantCode, wantBody)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("/readyz", http.StatusServiceUnavailable, "not ready: base credentials unavailable\n")
	waitFor("/healthz", http.StatusOK, "ok\n")
	waitLog(t, logs, secret) // the reason is in the log, not in the body
	if code, _, err := get("/metrics"); err != nil || code != http.StatusOK {
		t.Fatalf("/metrics beside the probes: %d %v", code, err)
	}
	if code, _, err := get("/readyz/more"); err != nil || code != http.StatusNotFound {
		t.Fatalf("/readyz/more: %d %v, want 404", code, err)
	}

	sts.mu.Lock()
	sts.baseErr = nil
	sts.mu.Unlock()
	waitFor("/readyz", http.StatusOK, "ok\n")
	waitLog(t, logs, "msg=serving")
}

// The credential cache keeps refreshing a key exactly while a live pod
// uses it as the policy decides now: the namespace's External ID is part
// of the key, and a key assumed under a previous one is no longer in use.
func TestInUse(t *testing.T) {
	resolver, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	checker, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	namespaces := nsLister{"ns": {ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{role.AnnotationPermitted: ".*"}}}}
	keys, err := session.New(session.Config{DefaultSession: "kiam"}, session.Deps{Roles: resolver})
	if err != nil {
		t.Fatal(err)
	}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{indexCredKey: credKeyIndexFunc(keys)})
	used := inUse(idx, keys, namespaces, checker, nil)
	web := podindex.FromAPI(pod("ns", "web", "10.1.0.1", "app-web"))
	key, err := keys.Key(web)
	if err != nil {
		t.Fatal(err)
	}
	if used(key) {
		t.Fatal("in use with no pods")
	}
	if err := idx.Add(web); err != nil {
		t.Fatal(err)
	}
	if !used(key) {
		t.Fatal("not in use with a live pod using it")
	}

	// The namespace gets an External ID: the pod's session is now the one
	// with it, and the one without is not in use any more.
	namespaces["ns"] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{
		role.AnnotationPermitted: ".*", role.AnnotationExternalID: "tenant-1"}}}
	withID := key
	withID.ExternalID = "tenant-1"
	if used(key) || !used(withID) {
		t.Fatalf("after the namespace's External ID was set: in use without %v, with %v; want false, true", used(key), used(withID))
	}
	// It changes: the session under the old one is not in use either.
	namespaces["ns"].Annotations[role.AnnotationExternalID] = "tenant-2"
	if used(withID) {
		t.Fatal("a session under the namespace's previous External ID is still in use")
	}
	// A policy that no longer permits the role: nothing is in use.
	withID.ExternalID = "tenant-2"
	if !used(withID) {
		t.Fatal("the current session is not in use")
	}
	namespaces["ns"].Annotations[role.AnnotationPermitted] = "nothing"
	if used(withID) {
		t.Fatal("a role the namespace no longer permits is in use")
	}
	namespaces["ns"].Annotations[role.AnnotationPermitted] = ".*"

	done := pod("ns", "web", "10.1.0.1", "app-web")
	done.Status.Phase = corev1.PodSucceeded
	if err := idx.Update(podindex.FromAPI(done)); err != nil {
		t.Fatal(err)
	}
	if used(withID) {
		t.Fatal("in use by a finished pod")
	}
	if err := idx.Add(podindex.FromAPI(pod("ns", "bad", "10.1.0.2", "arn:aws:iam::12:role/x"))); err != nil {
		t.Fatal(err) // an invalid role is simply not indexed
	}
}

// A pod that takes its role from its ServiceAccount is in use under the key
// the account gives it now, not the one it was indexed with: an account's
// annotation changes without its pods changing.
func TestInUseServiceAccountRoles(t *testing.T) {
	resolver, err := role.NewResolver(base)
	if err != nil {
		t.Fatal(err)
	}
	sas := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{indexSARole: saRoleIndexFunc(resolver)})
	keys, err := session.New(session.Config{DefaultSession: "kiam"},
		session.Deps{Roles: resolver, ServiceAccounts: serviceAccountRoles{lister: corelisters.NewServiceAccountLister(sas)}})
	if err != nil {
		t.Fatal(err)
	}
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{
		indexCredKey: credKeyIndexFunc(keys), cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	checker, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	namespaces := nsLister{"ns": {ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: map[string]string{role.AnnotationPermitted: ".*"}}}}
	used := inUse(pods, keys, namespaces, checker, sas)
	account := func(roleName string) *corev1.ServiceAccount {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "api"}}
		if roleName != "" {
			sa.Annotations = map[string]string{role.AnnotationRole: roleName}
		}
		return sa
	}
	keyOf := func(roleName string) creds.Key {
		return creds.Key{RoleARN: base + roleName, SessionName: "kiam-kiam"}
	}
	if err := sas.Add(account("app-a")); err != nil {
		t.Fatal(err)
	}
	p := pod("ns", "api-1", "10.1.0.1", "")
	p.Spec.ServiceAccountName = "api"
	if err := pods.Add(podindex.FromAPI(p)); err != nil {
		t.Fatal(err)
	}
	if !used(keyOf("app-a")) || used(keyOf("app-b")) {
		t.Fatal("the account's role is not the one in use")
	}
	if err := sas.Update(account("app-b")); err != nil {
		t.Fatal(err)
	}
	if used(keyOf("app-a")) {
		t.Fatal("the account's old role is still in use through the stale index entry")
	}
	if !used(keyOf("app-b")) {
		t.Fatal("the account's new role is not in use although its pod uses it")
	}
	// A pod's own annotation is exact whatever its account says.
	own := pod("ns", "own-1", "10.1.0.2", "app-a")
	own.Spec.ServiceAccountName = "api"
	if err := pods.Add(podindex.FromAPI(own)); err != nil {
		t.Fatal(err)
	}
	if !used(keyOf("app-a")) {
		t.Fatal("a pod's own role is not in use")
	}
	if err := sas.Update(account("")); err != nil {
		t.Fatal(err)
	}
	if used(keyOf("app-b")) {
		t.Fatal("in use after the account lost its role")
	}
}
