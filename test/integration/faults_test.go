package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/refusal"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// agentTimeout is the agent's default --gateway-timeout-creation: what one
// request to a server may take before the agent gives up on it.
const agentTimeout = time.Second

// agentCall is one GetPodCredentials answer an agent got.
type agentCall struct {
	At     time.Time
	IP     string
	Role   string
	KeyID  string
	Expiry time.Time
	Err    error
}

// agents calls GetPodCredentials for every address in a loop, from n
// connections, as agents on busy nodes would, until stopped.
type agents struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	calls []agentCall
}

func startAgents(t *testing.T, sp *serverProc, n int, ips []string) *agents {
	t.Helper()
	a := &agents{stop: make(chan struct{})}
	for range n {
		client := credsClient(t, sp)
		a.wg.Go(func() {
			for {
				for _, ip := range ips {
					select {
					case <-a.stop:
						return
					default:
					}
					a.record(callOnce(client, ip))
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	t.Cleanup(a.Stop)
	return a
}

func callOnce(client pb.CredentialsClient, ip string) agentCall {
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	c := agentCall{At: time.Now(), IP: ip}
	resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
	if err != nil {
		c.Err = err
		return c
	}
	c.Role = resp.GetPod().GetRoleArn()
	c.KeyID = resp.GetCredentials().GetAccessKeyId()
	c.Expiry = resp.GetCredentials().GetExpiration().AsTime()
	return c
}

func (a *agents) record(c agentCall) {
	a.mu.Lock()
	a.calls = append(a.calls, c)
	a.mu.Unlock()
}

// Stop ends the loops and returns every call made.
func (a *agents) Stop() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	a.wg.Wait()
}

func (a *agents) Calls() []agentCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]agentCall(nil), a.calls...)
}

// TestFaultSTSOutage puts STS in a fault window (throttling, 500, 503 for
// every AssumeRole) exactly when the server must refresh the credentials its
// pods hold, with agents asking for those pods all the time.
func TestFaultSTSOutage(t *testing.T) {
	t.Parallel()
	const (
		session  = 40 * time.Second
		refresh  = 30 * time.Second
		minServe = refresh / 2 // the server's min(5m, --session-refresh/2)
		window   = 10 * time.Second
		stsRate  = 4.0
		stsBurst = 4
		nRoles   = 4
	)
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	proxy, viaProxy := testenv.BehindProxy(t, moto)
	sp := startServer(t, kube, viaProxy,
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		fmt.Sprintf("--session-duration=%s", session), fmt.Sprintf("--session-refresh=%s", refresh),
		fmt.Sprintf("--sts-rate=%g", stsRate), fmt.Sprintf("--sts-burst=%d", stsBurst))

	kube.CreateNamespace(t, "faults", map[string]string{"iam.amazonaws.com/permitted": roleARN("fault-.*")})
	var ips []string
	roleOf := map[string]string{}
	for i := 1; i <= nRoles; i++ {
		ip := fmt.Sprintf("10.1.0.%d", i)
		name := fmt.Sprintf("fault-%d", i)
		kube.CreatePod(t, testenv.PodSpec{Namespace: "faults", Name: name,
			Annotations: map[string]string{"iam.amazonaws.com/role": name},
			PodIPs:      []string{ip}, HostIPs: []string{node}})
		ips = append(ips, ip)
		roleOf[ip] = roleARN(name)
	}

	// Every pod gets its first credentials before anything goes wrong.
	client := credsClient(t, sp)
	initial := map[string]agentCall{}
	for _, ip := range ips {
		deadline := time.Now().Add(30 * time.Second)
		for {
			c := callOnce(client, ip)
			if c.Err == nil {
				initial[ip] = c
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("first credentials for %s: %v", ip, c.Err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	firstExpiry, lastExpiry := initial[ips[0]].Expiry, initial[ips[0]].Expiry
	for _, c := range initial {
		if c.Expiry.Before(firstExpiry) {
			firstExpiry = c.Expiry
		}
		if c.Expiry.After(lastExpiry) {
			lastExpiry = c.Expiry
		}
	}
	// The window opens just before the first key comes due for refresh and
	// closes 7s before the held credentials become too short to serve
	// (session - minServe - (session - refresh - 2s + window)).
	start := firstExpiry.Add(-refresh - 2*time.Second)
	end := start.Add(window)
	if time.Until(start) < 0 {
		t.Fatalf("first credentials took too long to fetch (expiries %s..%s): the window would have started already", firstExpiry, lastExpiry)
	}
	if lastExpiry.Add(-refresh).After(end.Add(-3 * time.Second)) {
		t.Fatalf("first credentials spread too far (expiries %s..%s): the last key would not come due inside the window", firstExpiry, lastExpiry)
	}

	ag := startAgents(t, sp, 3, ips)
	time.Sleep(time.Until(start))
	windowStart := proxy.SetFaulting(true)
	time.Sleep(time.Until(end))
	windowEnd := proxy.SetFaulting(false)
	t.Logf("fault window %s .. %s", windowStart.Format("15:04:05.000"), windowEnd.Format("15:04:05.000"))

	// (d) After the window every pod gets new credentials that outlive the
	// old ones, and they work.
	fresh := map[string]agentCall{}
	deadline := firstExpiry
	for len(fresh) < len(ips) {
		for _, ip := range ips {
			if _, ok := fresh[ip]; ok {
				continue
			}
			c := callOnce(client, ip)
			if c.Err == nil && c.KeyID != initial[ip].KeyID && c.Expiry.After(initial[ip].Expiry) {
				fresh[ip] = c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fresh credentials for every pod before the old ones expired: got %d of %d", len(fresh), len(ips))
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the agents keep asking after the recovery
	ag.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ips[0]})
	if err != nil || resp.GetCredentials().GetAccessKeyId() != fresh[ips[0]].KeyID {
		t.Fatalf("fresh credentials not served from the cache: %v %v", resp, err)
	}
	arn, err := moto.CallerIdentity(ctx, creds.Credentials{AccessKeyID: resp.GetCredentials().GetAccessKeyId(),
		SecretAccessKey: resp.GetCredentials().GetSecretAccessKey(), SessionToken: resp.GetCredentials().GetSessionToken()})
	if err != nil || !strings.Contains(arn, ":assumed-role/fault-1/") {
		t.Fatalf("fresh credentials: caller identity %q %v", arn, err)
	}

	// (b) No pod holding valid credentials saw an error, ever, and what it
	// got kept more than the server's MinServe, so SDKs can use it.
	calls := ag.Calls()
	var inWindow int
	var bad []agentCall
	for _, c := range calls {
		if c.Err != nil || c.Role != roleOf[c.IP] || c.Expiry.Sub(c.At) <= minServe {
			bad = append(bad, c)
			continue
		}
		if c.At.After(windowStart) && c.At.Before(windowEnd) {
			inWindow++
		}
	}
	if len(bad) > 0 {
		c := bad[0]
		t.Errorf("%d of %d agent calls failed or got short credentials, from %s to %s; first: %s role %q expiry %s: %v",
			len(bad), len(calls), c.At.Format("15:04:05.000"), bad[len(bad)-1].At.Format("15:04:05.000"),
			c.IP, c.Role, c.Expiry.Format("15:04:05"), c.Err)
	}
	if inWindow < 10*len(ips) {
		t.Fatalf("agents made only %d calls inside the window; the test did not exercise it", inWindow)
	}

	attempts := proxy.Attempts()
	failures := fetchFailures(t, sp.Logs())
	// (a) Retries back off. For each role: far fewer STS attempts than
	// agent calls; every failure announces when the role is retried, no
	// attempt comes before that, and the announced backoff grows. The rate
	// limit may only add delay, so these hold however it binds.
	for _, ip := range ips {
		role := roleOf[ip]
		var times []time.Time
		for _, a := range attempts {
			if a.RoleARN == role && a.Fault != 0 {
				times = append(times, a.At)
			}
		}
		var asked int
		for _, c := range calls {
			if c.IP == ip && c.At.After(windowStart) && c.At.Before(windowEnd) {
				asked++
			}
		}
		fs := failures[role]
		t.Logf("%s: %d failed STS attempts for %d agent calls in the window; gaps %v; announced backoffs %v",
			role, len(times), asked, gaps(times), backoffs(fs))
		if len(times) < 4 || len(fs) != len(times) {
			t.Errorf("%s: %d failed attempts, %d failures logged: want at least 4, one log line each", role, len(times), len(fs))
			continue
		}
		if len(times)*10 > asked {
			t.Errorf("%s: %d STS attempts for %d agent calls: retries follow the callers, not a backoff", role, len(times), asked)
		}
		for k, f := range fs {
			if f.Failures != k+1 {
				t.Errorf("%s: failure %d logged as failures=%d", role, k+1, f.Failures)
			}
			var next time.Time
			for _, a := range attempts {
				if a.RoleARN == role && a.At.After(f.Time) {
					next = a.At
					break
				}
			}
			if next.IsZero() || next.Before(f.RetryAt.Add(-5*time.Millisecond)) {
				t.Errorf("%s: failure %d announced a retry at %s, next attempt at %s", role, k+1,
					f.RetryAt.Format("15:04:05.000"), next.Format("15:04:05.000"))
			}
		}
		// The backoff doubles from RetryBackoff up to MaxRetryBackoff, at
		// least 8 times as much, each drawn from [b/2, b]: by the 4th
		// failure it is at least 4 times the first.
		b := backoffs(fs)
		if last := b[len(b)-1]; last < 4*b[0] {
			t.Errorf("%s: backoff %v after %d failures, first %v: it does not grow", role, last, len(b), b[0])
		}
	}

	// (c) STS never saw more than the configured rate: in any interval,
	// target role calls <= burst + rate*length. The slack covers the time
	// between the server taking a token and the proxy receiving the request.
	var targets []time.Time
	for _, a := range attempts {
		if a.Action == "AssumeRole" && a.RoleARN != roleARN("podiam-server") {
			targets = append(targets, a.At)
		}
	}
	if worst, i, j := worstInterval(targets, stsRate, stsBurst, 300*time.Millisecond); worst > 0 {
		t.Errorf("%d STS calls in %v (%s..%s): over --sts-rate=%g --sts-burst=%d", j-i+1, targets[j].Sub(targets[i]),
			targets[i].Format("15:04:05.000"), targets[j].Format("15:04:05.000"), stsRate, stsBurst)
	}

	// Every attempt STS saw is in the server's metrics: nothing retries
	// behind the cache's back.
	var assumeRoles int
	for _, a := range attempts {
		if a.Action == "AssumeRole" {
			assumeRoles++
		}
	}
	counted := metric(t, sp, "podiam_sts_requests_total", map[string]string{"operation": "assume_role"})
	if int(counted) != assumeRoles {
		t.Errorf("server counted %v AssumeRole calls, STS saw %d", counted, assumeRoles)
	}
	if n := metric(t, sp, "podiam_credcache_requests_total", map[string]string{"result": "stale"}); n == 0 {
		t.Errorf("no request was served held credentials during the window")
	}
}

// fetchFailure is one "credential fetch/refresh/prefetch failed" log line.
type fetchFailure struct {
	Time     time.Time `json:"time"`
	Msg      string    `json:"msg"`
	RoleARN  string    `json:"role_arn"`
	Failures int       `json:"failures"`
	RetryAt  time.Time `json:"retry_at"`
}

// fetchFailures returns the server's logged fetch failures by role, in
// order.
func fetchFailures(t *testing.T, logs string) map[string][]fetchFailure {
	t.Helper()
	out := map[string][]fetchFailure{}
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"credential fetch failed"`) && !strings.Contains(line, `"msg":"credential refresh failed"`) &&
			!strings.Contains(line, `"msg":"credential prefetch failed"`) {
			continue
		}
		var f fetchFailure
		if err := json.Unmarshal([]byte(line), &f); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out[f.RoleARN] = append(out[f.RoleARN], f)
	}
	return out
}

// backoffs are the waits the failures announced.
func backoffs(fs []fetchFailure) []time.Duration {
	out := make([]time.Duration, len(fs))
	for i, f := range fs {
		out[i] = f.RetryAt.Sub(f.Time).Round(time.Millisecond)
	}
	return out
}

func gaps(ts []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(ts); i++ {
		out = append(out, ts[i].Sub(ts[i-1]).Round(time.Millisecond))
	}
	return out
}

// worstInterval checks a token bucket's promise on arrival times: in any
// interval [ts[i], ts[j]] at most burst + rate*(length+slack) events. It
// returns how far the worst interval is over (0: none is) and its ends.
func worstInterval(ts []time.Time, rate float64, burst int, slack time.Duration) (over float64, wi, wj int) {
	sort.Slice(ts, func(a, b int) bool { return ts[a].Before(ts[b]) })
	for i := range ts {
		for j := i; j < len(ts); j++ {
			allowed := float64(burst) + rate*(ts[j].Sub(ts[i])+slack).Seconds()
			if n := float64(j - i + 1); n-allowed > over {
				over, wi, wj = n-allowed, i, j
			}
		}
	}
	return over, wi, wj
}

// TestFaultAPIServerRestart kills kube-apiserver under a serving server and
// keeps it down longer than a watch likes, then cuts the server alone off
// from the API server while kubelets could still reach it. Each time a pod
// is deleted and its address goes to a pod with another role, while agents
// keep asking: no answer may carry a deleted pod's role, and every refusal
// must be a clean Unavailable (agents keep serving what they hold then).
func TestFaultAPIServerRestart(t *testing.T) {
	t.Parallel()
	const down = 8 * time.Second
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	cut := testenv.StartNetCut(t, "", strings.TrimPrefix(kube.URL, "https://"))
	sp := startServer(t, kube, moto,
		"--kubeconfig="+testenv.KubeconfigVia(t, kube.KubeconfigPath, kube.URL, cut.Addr),
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		"--session-duration=15m", "--session-refresh=5m")
	kube.CreateNamespace(t, "restart", map[string]string{"iam.amazonaws.com/permitted": roleARN("restart-.*")})
	const stayIP, reusedIP = "10.2.0.1", "10.2.0.2"
	pod := func(name, ip string) {
		t.Helper()
		kube.CreatePod(t, testenv.PodSpec{Namespace: "restart", Name: name,
			Annotations: map[string]string{"iam.amazonaws.com/role": "restart-" + name},
			PodIPs:      []string{ip}, HostIPs: []string{node}})
	}
	// retired[role] is when the pod with that role was deleted: no answer
	// asked for after it may carry the role.
	retired := map[string]time.Time{}
	replace := func(old, successor string) {
		t.Helper()
		kube.DeletePod(t, "restart", old, 0)
		retired[roleARN("restart-"+old)] = time.Now()
		pod(successor, reusedIP)
	}
	client := credsClient(t, sp)
	waitRole := func(ip, want string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			c := callOnce(client, ip)
			if c.Err == nil && c.Role == roleARN(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: last answer %+v, want role %s", ip, c, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	pod("stay", stayIP)
	pod("old", reusedIP)
	waitRole(stayIP, "restart-stay")
	waitRole(reusedIP, "restart-old")
	ag := startAgents(t, sp, 2, []string{stayIP, reusedIP})
	time.Sleep(time.Second)

	// Phase 1: kube-apiserver dies and comes back; the address goes to a
	// new pod as soon as it is back, before the informer has noticed.
	kube.StopAPIServer(t)
	stopped := time.Now()
	time.Sleep(down)
	kube.StartAPIServer(t)
	back := time.Now()
	replace("old", "new")
	waitRole(reusedIP, "restart-new")
	pod("late", "10.2.0.3")
	waitRole("10.2.0.3", "restart-late")

	// The informer recovers by itself and then serves pods made after
	// that from its own watch, without asking the API server.
	waitWatchCurrent(t, sp, 90*time.Second)
	recovered := time.Now()
	liveBefore := metric(t, sp, "podiam_server_pod_lookups_live_total", nil)
	pod("after", "10.2.0.4")
	waitRole("10.2.0.4", "restart-after")
	if n := metric(t, sp, "podiam_server_pod_lookups_live_total", nil); n != liveBefore {
		t.Errorf("a pod created after the watch recovered needed %v live lookups", n-liveBefore)
	}
	t.Logf("phase 1: kube-apiserver down %s..%s, pod watch current again at %s",
		stopped.Format("15:04:05.000"), back.Format("15:04:05.000"), recovered.Format("15:04:05.000"))

	// Phase 2: the server alone loses the API server, and the address is
	// reused behind its back. The index cannot know; it must not answer.
	cut.Cut()
	cutAt := time.Now()
	replace("new", "newer")
	time.Sleep(5 * time.Second)
	cut.Restore(t)
	restored := time.Now()
	waitRole(reusedIP, "restart-newer")
	t.Logf("phase 2: server cut off %s..%s, new pod served at %s (pod watch current: %v)",
		cutAt.Format("15:04:05.000"), restored.Format("15:04:05.000"), time.Now().Format("15:04:05.000"),
		metric(t, sp, "podiam_server_pod_watch_current", nil) == 1)
	time.Sleep(500 * time.Millisecond)
	ag.Stop()

	// Every answer is right for its time, or a clean refusal.
	var served, unavailable, unknown int
	wrong := map[string][]agentCall{}
	for _, c := range ag.Calls() {
		switch {
		case c.Err != nil && status.Code(c.Err) == codes.Unavailable:
			unavailable++
		case c.Err != nil && c.IP == reusedIP && refusal.Reason(c.Err) == pb.Reason_REASON_POD_UNKNOWN:
			unknown++ // between a deletion and its successor's creation
		case c.Err != nil:
			wrong["an error other than Unavailable"] = append(wrong["an error other than Unavailable"], c)
		case c.IP == stayIP && c.Role != roleARN("restart-stay"):
			wrong["another role for the pod that stayed"] = append(wrong["another role for the pod that stayed"], c)
		case c.IP == reusedIP && !retired[c.Role].IsZero() && c.At.After(retired[c.Role]):
			wrong["a deleted pod's role on its reused address"] = append(wrong["a deleted pod's role on its reused address"], c)
		default:
			served++
		}
	}
	for what, calls := range wrong {
		t.Errorf("%d answers gave %s, from %s to %s; first: %s %s %v", len(calls), what,
			calls[0].At.Format("15:04:05.000"), calls[len(calls)-1].At.Format("15:04:05.000"), calls[0].IP, calls[0].Role, calls[0].Err)
	}
	t.Logf("agent calls: %d served, %d unavailable, %d pod unknown", served, unavailable, unknown)
	if unavailable == 0 {
		t.Errorf("no request was refused while the server could not reach the API server")
	}

	// The outages and the recoveries are visible.
	logs := sp.Logs()
	for msg, min := range map[string]int{`"msg":"pod watch failing`: 2, `"msg":"pod watch restored"`: 1} {
		if n := strings.Count(logs, msg); n < min {
			t.Errorf("server logs have %s %d times, want at least %d", msg, n, min)
		}
	}
	if n := metric(t, sp, "podiam_server_pod_watch_errors_total", nil); n == 0 {
		t.Errorf("podiam_server_pod_watch_errors_total = 0")
	}
	if n := metric(t, sp, "podiam_server_pod_lookups_live_total", map[string]string{"result": "failed"}); n == 0 {
		t.Errorf("no lookup was refused for want of the API server")
	}
	if n := metric(t, sp, "podiam_server_credential_requests_total", map[string]string{"result": "pod_index_stale"}); n == 0 {
		t.Errorf("no credential request was counted as pod_index_stale")
	}
	corrected := 0
	for _, line := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(line, `"msg":"pod index is behind`):
			corrected++
		case strings.Contains(line, `"component":"podwatch"`) && !strings.Contains(line, `"level":"DEBUG"`):
			t.Log(line)
		}
	}
	t.Logf("%d answers came from the API server because the index was behind", corrected)
}

func TestFaultRateBound(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, base.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	tests := []struct {
		name string
		ts   []time.Time
		over bool
	}{
		{"burst at once", at(0, 1, 2), false},
		{"one past the burst", at(0, 1, 2, 3), true},
		{"refilled at the rate", at(0, 1, 2, 1000, 2000, 3000), false},
		{"a second's worth too many", at(0, 1, 2, 500, 600, 700), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// burst 3, 1 per second, no slack
			if over, _, _ := worstInterval(tc.ts, 1, 3, 0); (over > 0) != tc.over {
				t.Fatalf("over = %v, want over: %v", over, tc.over)
			}
		})
	}
}

// TestFaultNamespacePolicyDuringCut flips a namespace's policy to deny
// while the server is cut off from the API server. As soon as the server
// reaches the API server again it must refuse the pod's role, though
// client-go's backoff keeps its namespace watch away for a while after:
// no credentials for the pod once the cut ends. The node's agent is told
// to re-check the pod (CHANGED) as soon, so it drops what it holds.
func TestFaultNamespacePolicyDuringCut(t *testing.T) {
	t.Parallel()
	// Long enough for the reflectors' backoff to grow to several seconds.
	const cutFor = 12 * time.Second
	kube := testenv.StartKube(t, testenv.KubeOptions{})
	moto := testenv.StartMoto(t, testenv.MotoOptions{})
	cut := testenv.StartNetCut(t, "", strings.TrimPrefix(kube.URL, "https://"))
	sp := startServer(t, kube, moto,
		"--kubeconfig="+testenv.KubeconfigVia(t, kube.KubeconfigPath, kube.URL, cut.Addr),
		"--assume-role-arn="+roleARN("podiam-server"),
		"--role-base-arn="+roleARN(""),
		"--session-duration=15m", "--session-refresh=5m")
	const permitted = "iam.amazonaws.com/permitted"
	kube.CreateNamespace(t, "flip", map[string]string{permitted: roleARN("flip-.*")})
	const ip = "10.3.0.1"
	created := kube.CreatePod(t, testenv.PodSpec{Namespace: "flip", Name: "app",
		Annotations: map[string]string{"iam.amazonaws.com/role": "flip-app"},
		PodIPs:      []string{ip}, HostIPs: []string{node}})
	client := credsClient(t, sp)
	ask := func() (*pb.GetPodCredentialsResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
		defer cancel()
		return client.GetPodCredentials(ctx, &pb.GetPodCredentialsRequest{Ip: ip})
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := ask()
		if err == nil && resp.GetPod().GetRoleArn() == roleARN("flip-app") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod not served before the cut: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The node's agent stream, which the cut does not touch.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := client.WatchNodePods(ctx, &pb.WatchNodePodsRequest{HostIp: node})
	if err != nil {
		t.Fatal(err)
	}
	changed := make(chan time.Time, 16)
	synced := make(chan struct{})
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			switch {
			case ev.GetType() == pb.PodEvent_TYPE_SYNCED:
				close(synced)
			case ev.GetType() == pb.PodEvent_TYPE_CHANGED && ev.GetUid() == string(created.UID):
				changed <- time.Now()
			}
		}
	}()
	select {
	case <-synced:
	case <-time.After(10 * time.Second):
		t.Fatal("agent stream not synced")
	}

	// The cut; once the server's watches count as down, the policy flips.
	cut.Cut()
	cutAt := time.Now()
	time.Sleep(3 * time.Second)
	if err := kube.TryAnnotateNamespace(context.Background(), "flip", permitted, roleARN("nothing-.*")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(cutFor - time.Since(cutAt))
	cut.Restore(t)
	restored := time.Now()

	// From now on: Unavailable until the server can read the API server,
	// then the policy's denial, and never credentials.
	nsCurrent := func() float64 {
		v, err := testenv.ScrapeMetric(context.Background(), "http://"+sp.MetricsAddr+"/metrics", "podiam_server_namespace_watch_current", nil)
		if err != nil {
			return -1
		}
		return v
	}
	var firstDenial, nsBack time.Time
	var unavailable, denied int
	deadline = time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) && (nsBack.IsZero() || time.Since(nsBack) < time.Second) {
		resp, err := ask()
		switch {
		case err == nil:
			t.Fatalf("%s after the cut ended: credentials for %s, which the namespace denied during the cut",
				time.Since(restored).Round(time.Millisecond), resp.GetPod().GetRoleArn())
		case status.Code(err) == codes.Unavailable:
			unavailable++
		case status.Code(err) == codes.PermissionDenied && refusal.Reason(err) == pb.Reason_REASON_POLICY_DENIED:
			denied++
			if firstDenial.IsZero() {
				firstDenial = time.Now()
				t.Logf("first denial %s after the cut ended; namespace watch current: %v",
					firstDenial.Sub(restored).Round(time.Millisecond), nsCurrent())
			}
		default:
			t.Fatalf("after the cut: %v, want Unavailable or a policy denial", err)
		}
		if nsBack.IsZero() && nsCurrent() == 1 {
			nsBack = time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	if firstDenial.IsZero() {
		t.Fatalf("no policy denial within %s of the cut's end (%d Unavailable)", time.Since(restored), unavailable)
	}
	// Live reads need only a new connection; 5 s is generous for a
	// loaded machine, and far below the reflectors' backoff.
	if d := firstDenial.Sub(restored); d > 5*time.Second {
		t.Errorf("first denial %s after the cut ended, want within 5s", d)
	}
	if nsBack.IsZero() {
		t.Fatalf("namespace watch not current %s after the cut ended", time.Since(restored))
	}
	t.Logf("cut %s..%s; first denial at +%s, namespace watch current at +%s; %d Unavailable, %d denied",
		cutAt.Format("15:04:05.000"), restored.Format("15:04:05.000"),
		firstDenial.Sub(restored).Round(time.Millisecond), nsBack.Sub(restored).Round(time.Millisecond), unavailable, denied)
	if n := metric(t, sp, "podiam_server_credential_requests_total", map[string]string{"result": "namespace_stale"}); n != 0 {
		t.Logf("%v requests refused as namespace_stale", n)
	}
	if n := metric(t, sp, "podiam_server_namespace_reads_live_total", map[string]string{"result": "corrected"}); n == 0 {
		t.Errorf("no namespace read corrected the cache, though the policy changed during the cut")
	}

	// The agent, which would serve the pod from its cache without asking,
	// is told to re-check the pod as soon as the server reads the new
	// policy, not only once the namespace watch is back.
	select {
	case at := <-changed:
		t.Logf("agent told the pod changed at +%s", at.Sub(restored).Round(time.Millisecond))
		if d := at.Sub(restored); d > 5*time.Second {
			t.Errorf("agent told the pod changed %s after the cut ended, want within 5s", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent not told the pod changed after its namespace denied its role")
	}
}
