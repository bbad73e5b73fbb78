package integration

// Benchmarks of the real `podiam server` binary (built without -race) with
// many pods in a real kube-apiserver and moto as STS. They print figures and
// never judge them: `make bench` runs them once (-benchtime 1x) and prints
// every table at the end.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// bulkWorkers and bulkQPS: enough to keep a two-core apiserver and etcd
// busy without turning the run into a test of client throttling.
const (
	bulkWorkers = 48
	bulkQPS     = 1000
)

const baseRole = "podiam-server"

// stsCounter is a reverse proxy in front of moto that counts what the
// server asks STS, by action and, for AssumeRole, base role or not: the
// server's own metrics are the other witness.
type stsCounter struct {
	URL     string
	baseARN string

	mu      sync.Mutex
	actions map[string]int
	base    int
	targets map[string]int // AssumeRole calls per target role ARN
}

type stsCounts struct {
	AssumeRole, Base, Target, TargetRoles, CallerIdentity int
}

func startSTSCounter(t testing.TB, moto *testenv.Moto, baseARN string) *stsCounter {
	t.Helper()
	upstream, err := url.Parse(moto.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	c := &stsCounter{baseARN: baseARN, actions: map[string]int{}, targets: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if form, err := url.ParseQuery(string(body)); err == nil {
			c.record(form.Get("Action"), form.Get("RoleArn"))
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
	})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	c.URL = "http://" + lis.Addr().String()
	return c
}

func (c *stsCounter) record(action, role string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.actions[action]++
	if action != "AssumeRole" {
		return
	}
	if role == c.baseARN {
		c.base++
		return
	}
	c.targets[role]++
}

func (c *stsCounter) counts() stsCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := stsCounts{AssumeRole: c.actions["AssumeRole"], Base: c.base, TargetRoles: len(c.targets), CallerIdentity: c.actions["GetCallerIdentity"]}
	for _, v := range c.targets {
		n.Target += v
	}
	return n
}

func (n stsCounts) minus(o stsCounts) stsCounts {
	return stsCounts{AssumeRole: n.AssumeRole - o.AssumeRole, Base: n.Base - o.Base, Target: n.Target - o.Target,
		TargetRoles: n.TargetRoles, CallerIdentity: n.CallerIdentity - o.CallerIdentity}
}

// viaCounter is moto as the server sees it: behind the counter.
func viaCounter(moto *testenv.Moto, c *stsCounter) *testenv.Moto {
	m := *moto
	m.Endpoint = c.URL
	return &m
}

// bulkPod is one pod of a bulk load, created with its address set.
type bulkPod struct {
	Namespace, Name, Role, IP, Node, HostIP string
}

// bulkClient is a client for bulk loads: a higher rate limit than the
// tests' client.
func bulkClient(t testing.TB, kube *testenv.Kube) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(kube.RESTConfig)
	cfg.QPS, cfg.Burst = bulkQPS, 2*bulkQPS
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// parallel runs f for 0..n-1 on workers goroutines and returns the first
// error; it reports progress on stderr every step items, since a bulk load
// on a busy machine takes minutes.
func parallel(ctx context.Context, what string, n, workers, step int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, done atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					cancel(err)
					return
				}
				if d := done.Add(1); step > 0 && d%int64(step) == 0 {
					fmt.Fprintf(os.Stderr, "bench: %s %d/%d (%.0f s)\n", what, d, n, time.Since(start).Seconds())
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// createNamespaces creates namespaces with their default ServiceAccount.
func createNamespaces(ctx context.Context, c kubernetes.Interface, names []string, annotations map[string]string) error {
	return parallel(ctx, "namespaces", len(names), bulkWorkers, 0, func(ctx context.Context, i int) error {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: names[i], Annotations: annotations}}
		if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace %s: %w", names[i], err)
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: names[i], Name: "default"}}
		if _, err := c.CoreV1().ServiceAccounts(names[i]).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create serviceaccount %s/default: %w", names[i], err)
		}
		return nil
	})
}

// createPod creates one pod and then sets its address; beforeStatus, if
// set, runs just before the status write, which is when the pod's address
// becomes known, and what it returns runs when the write is answered.
func createPod(ctx context.Context, c kubernetes.Interface, p bulkPod, beforeStatus func() (acked func())) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name,
			Annotations: map[string]string{"iam.amazonaws.com/role": p.Role}},
		Spec: corev1.PodSpec{NodeName: p.Node, ServiceAccountName: "default",
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/podiam/bench:latest"}}},
	}
	created, err := c.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP, created.Status.PodIPs = p.IP, []corev1.PodIP{{IP: p.IP}}
	created.Status.HostIP, created.Status.HostIPs = p.HostIP, []corev1.HostIP{{IP: p.HostIP}}
	acked := func() {}
	if beforeStatus != nil {
		acked = beforeStatus()
	}
	if _, err := c.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	acked()
	return nil
}

// cluster is a kube-apiserver and moto behind an STS counter, loaded with
// pods by loadPods.
type cluster struct {
	kube       *testenv.Kube
	sts        *testenv.Moto // moto as the server should see it: behind counter
	counter    *stsCounter
	pods       []bulkPod
	namespaces []string
	load       time.Duration // to create the namespaces and pods
}

func newCluster(b *testing.B) *cluster {
	b.Helper()
	kube := testenv.StartKube(b, testenv.KubeOptions{})
	moto := testenv.StartMoto(b, testenv.MotoOptions{})
	counter := startSTSCounter(b, moto, roleARN(baseRole))
	return &cluster{kube: kube, sts: viaCounter(moto, counter), counter: counter}
}

// loadPods creates nPods pods spread over namespaces prefix-000.. (n of
// them), each permitting the roles rolePrefix*, with role and node chosen
// by place(i) for pod i.
func (c *cluster) loadPods(b *testing.B, prefix string, n, nPods int, rolePrefix string, place func(i int) (role, node, hostIP string)) {
	b.Helper()
	start := time.Now()
	c.loadNamespaces(b, prefix, n, rolePrefix)
	if err := c.addPods(context.Background(), b, nPods, place); err != nil {
		b.Fatal(err)
	}
	c.load = time.Since(start)
}

// loadNamespaces creates namespaces prefix-000.. (n of them), each
// permitting the roles rolePrefix*.
func (c *cluster) loadNamespaces(b *testing.B, prefix string, n int, rolePrefix string) {
	b.Helper()
	c.namespaces = make([]string, n)
	for i := range c.namespaces {
		c.namespaces[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	if err := createNamespaces(context.Background(), bulkClient(b, c.kube), c.namespaces,
		map[string]string{"iam.amazonaws.com/permitted": roleARN(rolePrefix + ".*")}); err != nil {
		b.Fatal(err)
	}
}

// addPods grows the cluster to nPods pods in its namespaces, pod i in
// namespace i mod their number, with role and node chosen by place(i).
// When ctx ends first it keeps the pods whose status was set and returns
// ctx's error: the figure a slow API server reached.
func (c *cluster) addPods(ctx context.Context, b *testing.B, nPods int, place func(i int) (role, node, hostIP string)) error {
	b.Helper()
	var add []bulkPod
	for i := len(c.pods); i < nPods; i++ {
		role, node, hostIP := place(i)
		add = append(add, bulkPod{Namespace: c.namespaces[i%len(c.namespaces)], Name: fmt.Sprintf("pod-%05d", i),
			Role: role, IP: podIP(i), Node: node, HostIP: hostIP})
	}
	client := bulkClient(b, c.kube)
	done := make([]bool, len(add))
	err := parallel(ctx, "pods", len(add), bulkWorkers, 1000, func(ctx context.Context, i int) error {
		if err := createPod(ctx, client, add[i], nil); err != nil {
			return err
		}
		done[i] = true
		return nil
	})
	for i, p := range add {
		if done[i] {
			c.pods = append(c.pods, p)
		}
	}
	return err
}

// podIP is the i-th pod address in 10.100.0.0/14.
func podIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", 100+i/(250*256), i/250%256, i%250+1) }

// logTimes returns the time of the first log line with each message.
func logTimes(logs string, msgs ...string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if _, seen := out[rec.Msg]; !seen && slices.Contains(msgs, rec.Msg) {
			out[rec.Msg] = rec.Time
		}
	}
	return out
}

// waitSettled polls a server metric until it reaches want or stops moving
// for a few seconds, and returns its last value.
func waitSettled(t testing.TB, sp *serverProc, name string, labels map[string]string, want float64, timeout time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last, since := -1.0, time.Now()
	for {
		v := metric(t, sp, name, labels)
		if v >= want {
			return v
		}
		if v != last {
			last, since = v, time.Now()
		}
		if time.Since(since) > 5*time.Second || time.Now().After(deadline) {
			return v
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// memRow shows RSS with its split: file-backed pages are mostly the binary
// itself, shared with the page cache.
func memRow(m testenv.Memory) string {
	return fmt.Sprintf("%s MiB (anon %s, file %s)", testenv.MiB(float64(m.RSS)), testenv.MiB(float64(m.Anon)), testenv.MiB(float64(m.File)))
}

func msStr(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func usStr(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1000) }

// warmResult is a burst of credential requests as agents would send them.
type warmResult struct {
	Nodes, Workers int
	Requests       int
	Took           time.Duration
	P50, P99       time.Duration
	CPU            time.Duration
}

func (w warmResult) RPS() float64 { return float64(w.Requests) / w.Took.Seconds() }

func (w warmResult) CPUPerRequest() time.Duration {
	if w.Requests == 0 {
		return 0
	}
	return w.CPU / time.Duration(w.Requests)
}

// benchWarmRequests plays agents on the first nodes: one mTLS connection
// per node from the node's address (node binding holds), workers spread
// over them, each asking for its node's pods in turn for d.
func benchWarmRequests(b *testing.B, sp *serverProc, pods []bulkPod, nodes, workers int, d time.Duration) warmResult {
	b.Helper()
	byNode := map[string][]string{}
	clients := map[string]pb.CredentialsClient{}
	var hostIPs []string
	for _, p := range pods {
		if _, ok := byNode[p.HostIP]; !ok {
			if len(hostIPs) == nodes {
				continue
			}
			hostIPs = append(hostIPs, p.HostIP)
			clients[p.HostIP] = pb.NewCredentialsClient(dial(b, sp, sp.PKI.AgentCert, sp.PKI.AgentKey, p.HostIP))
		}
		byNode[p.HostIP] = append(byNode[p.HostIP], p.IP)
	}
	cpu0, err := testenv.ProcCPU(sp.Pid())
	if err != nil {
		b.Fatal(err)
	}
	lat := make([][]time.Duration, workers)
	errs := make(chan error, workers)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		host := hostIPs[w%len(hostIPs)]
		ips, client := byNode[host], clients[host]
		wg.Go(func() {
			for i := w; time.Now().Before(deadline); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				t0 := time.Now()
				_, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ips[i%len(ips)]})
				lat[w] = append(lat[w], time.Since(t0))
				cancel()
				if err != nil {
					errs <- fmt.Errorf("GetPodCredentials %s from %s: %w", ips[i%len(ips)], host, err)
					return
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	cpu1, err := testenv.ProcCPU(sp.Pid())
	if err != nil {
		b.Fatal(err)
	}
	close(errs)
	for err := range errs {
		b.Error(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return warmResult{Nodes: len(hostIPs), Workers: workers, Requests: len(all), Took: took,
		P50: testenv.Quantile(all, 0.5), P99: testenv.Quantile(all, 0.99), CPU: cpu1 - cpu0}
}

// Economy: 1,000 pods share 10 roles; sessions last 20 s and are refreshed
// with 10 s left, so one refresh period is 10 s.
const (
	econPods       = 1000
	econRoles      = 10
	econNamespaces = 10
	econSession    = 20 * time.Second
	econRefresh    = 10 * time.Second
	econPeriods    = 2
)

// BenchmarkSTSEconomy counts STS calls while 1,000 pods sharing 10 roles
// keep asking for credentials over two refresh periods.
func BenchmarkSTSEconomy(b *testing.B) {
	c := newCluster(b)
	c.loadPods(b, "econ", econNamespaces, econPods, "econ-role-", func(i int) (string, string, string) {
		return fmt.Sprintf("econ-role-%02d", i%econRoles), "n1", node
	})
	counter, pods := c.counter, c.pods
	ctx := context.Background()
	sp := startServer(b, c.kube, c.sts, "--level=info",
		"--assume-role-arn="+roleARN(baseRole), "--role-base-arn-autodetect",
		"--session-duration="+econSession.String(), "--session-refresh="+econRefresh.String())
	// Prefetch warms every role before the pods ask.
	waitSettled(b, sp, "podiam_credcache_entries", nil, econRoles, time.Minute)
	atStart := counter.counts()
	assume := map[string]string{"operation": "assume_role"}
	metric0 := metric(b, sp, "podiam_sts_requests_total", assume)
	refresh0 := metric(b, sp, "podiam_credcache_refreshes_total", map[string]string{"result": "ok"})
	hit0, miss0 := metric(b, sp, "podiam_credcache_requests_total", map[string]string{"result": "hit"}),
		metric(b, sp, "podiam_credcache_requests_total", map[string]string{"result": "miss"})

	// Every pod asks every 2 s, as SDKs near expiry would, for two periods.
	creds := credsClient(b, sp)
	window := econPeriods*(econSession-econRefresh) + time.Second
	start := time.Now()
	rounds, requests := 0, 0
	for time.Since(start) < window {
		round := time.Now()
		err := parallel(ctx, "", len(pods), 32, 0, func(ctx context.Context, i int) error {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := creds.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: pods[i].IP})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		rounds++
		requests += len(pods)
		time.Sleep(time.Until(round.Add(2 * time.Second)))
	}
	took := time.Since(start)
	period := econSession - econRefresh
	completed := int(took / period)
	during := counter.counts().minus(atStart)
	metricDuring := metric(b, sp, "podiam_sts_requests_total", assume) - metric0
	refreshes := metric(b, sp, "podiam_credcache_refreshes_total", map[string]string{"result": "ok"}) - refresh0
	hits := metric(b, sp, "podiam_credcache_requests_total", map[string]string{"result": "hit"}) - hit0
	misses := metric(b, sp, "podiam_credcache_requests_total", map[string]string{"result": "miss"}) - miss0

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(atStart.Target), "assumerole-initial")
	b.ReportMetric(float64(during.Target)/float64(completed), "assumerole/period")
	b.ReportMetric(float64(during.Base), "base-assumerole")

	table := testenv.Table{
		Title: fmt.Sprintf("STS economy: %d pods sharing %d roles, session %s refreshed with %s left (period %s), %d periods",
			econPods, econRoles, econSession, econRefresh, period, completed),
		Header: []string{"figure", "counted at STS (proxy)", "server metrics"},
		Notes: []string{
			"short test-only sessions against moto; production defaults are 1 h sessions refreshed with 40 min left",
			fmt.Sprintf("expected: %d AssumeRole per period (one per role) and one base role session", econRoles),
		},
	}
	table.Row("start-up: target AssumeRole (prefetch)", atStart.Target, "")
	table.Row("start-up: base role AssumeRole", atStart.Base, "")
	table.Row("start-up: GetCallerIdentity", atStart.CallerIdentity, "")
	table.Row(fmt.Sprintf("during %.1f s: target AssumeRole", took.Seconds()), during.Target, fmt.Sprintf("%.0f refreshes ok", refreshes))
	table.Row("during: target AssumeRole per period", fmt.Sprintf("%.1f", float64(during.Target)/float64(completed)), "")
	table.Row("during: base role AssumeRole", during.Base, "")
	table.Row("during: AssumeRole total", during.AssumeRole, fmt.Sprintf("%.0f", metricDuring))
	table.Row(fmt.Sprintf("pod requests (%d rounds of %d)", rounds, len(pods)), requests,
		fmt.Sprintf("%.0f cache hits, %.0f misses (joined a refresh)", hits, misses))
	table.Report(b)
}

// BenchmarkSessionChoices counts the STS calls each session naming choice
// costs: 1,000 pods in 10 namespaces on 10 roles (every namespace uses
// every role) each ask once, against a server per choice on one cluster.
// The number is the number of distinct session keys.
func BenchmarkSessionChoices(b *testing.B) {
	c := newCluster(b)
	c.loadPods(b, "choice", econNamespaces, econPods, "choice-role-", func(i int) (string, string, string) {
		// Namespace i%10 and role (i/10)%10: each namespace has pods of
		// every role.
		return fmt.Sprintf("choice-role-%02d", (i/econNamespaces)%econRoles), "n1", node
	})
	ctx := context.Background()
	choices := []struct {
		name string
		args []string
		want int
	}{
		{"KIAM's default (kiam-kiam)", nil, econRoles},
		{"--session-name-template={{.Namespace}}", []string{"--session-name-template={{.Namespace}}"}, econRoles * econNamespaces},
		{"--session-tags=namespace + --static-session-tag", []string{"--session-tags=namespace", "--static-session-tag=eks-cluster-name=bench"}, econRoles * econNamespaces},
		{"--session-tags=pod-uid", []string{"--session-tags=pod-uid"}, econPods},
	}
	table := testenv.Table{
		Title:  fmt.Sprintf("STS calls by session choice: %d pods in %d namespaces on %d roles, each asking once", econPods, econNamespaces, econRoles),
		Header: []string{"choice", "target AssumeRole (proxy)", "distinct keys expected", "first round"},
		Notes: []string{
			"each row is a fresh server on the same cluster; prefetch and requests share calls",
			"the count repeats every refresh period (--session-duration minus --session-refresh) while pods run",
		},
	}
	for i, ch := range choices {
		before := c.counter.counts()
		args := append([]string{"--level=info", "--assume-role-arn=" + roleARN(baseRole), "--role-base-arn-autodetect",
			"--sts-rate=200", "--sts-burst=200"}, ch.args...)
		sp := startServer(b, c.kube, c.sts, args...)
		creds := credsClient(b, sp)
		start := time.Now()
		err := parallel(ctx, "", len(c.pods), 32, 0, func(ctx context.Context, i int) error {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, err := creds.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: c.pods[i].IP})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		// Prefetches still running finish within their fetch timeout.
		waitSettled(b, sp, "podiam_credcache_entries", nil, float64(ch.want), time.Minute)
		got := c.counter.counts().minus(before).Target
		table.Row(ch.name, got, ch.want, took.Round(time.Millisecond))
		b.ReportMetric(float64(got), fmt.Sprintf("assumerole-choice%d", i))
		ctxStop, cancel := context.WithTimeout(ctx, 15*time.Second)
		_ = sp.Stop(ctxStop)
		cancel()
	}
	b.ReportMetric(0, "ns/op")
	table.Report(b)
}
