package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/podiam/podiam/pkg/creds"
	pb "github.com/podiam/podiam/proto/podiam/v1"
	"github.com/podiam/podiam/test/testenv"
)

// The fault scenarios run the server with sessions short enough (against
// moto) that refresh periods and expiry pass within the test, and the
// agent with cache windows scaled down to match. Their order mirrors the
// defaults: session 1h, server refresh 40m, agent refresh 35m, served
// during an outage until 5m are left.
const (
	faultSession       = 16 * time.Second
	faultServerRefresh = 10 * time.Second
	faultAgentRefresh  = 8 * time.Second
	faultMinServe      = 3 * time.Second

	// The server closes every agent connection after about this long, so
	// that new TLS handshakes happen while certificates rotate, as they do
	// when a server is scaled or a connection breaks, without restarting
	// anything. gRPC adds up to 10% jitter to the age.
	faultConnAge      = 2 * time.Second
	faultConnAgeGrace = 500 * time.Millisecond
	// connLife bounds how long any agent connection lives.
	connLife = faultConnAge*11/10 + faultConnAgeGrace + 500*time.Millisecond
	// tlsCheckInterval is pkg/tlsconfig's default: files are re-read at
	// most this often, on a handshake.
	tlsCheckInterval = time.Second

	agentRestarts = 20
	upgrades      = 3
)

func faultServerArgs() []string {
	return []string{
		"--session-duration=" + faultSession.String(),
		"--session-refresh=" + faultServerRefresh.String(),
		"--grpc-max-connection-age-duration=" + faultConnAge.String(),
		"--grpc-max-connection-age-grace-duration=" + faultConnAgeGrace.String(),
	}
}

func faultAgentArgs() []string {
	return []string{
		"--credential-refresh=" + faultAgentRefresh.String(),
		"--credential-min-serve=" + faultMinServe.String(),
	}
}

// faultPod is a pod namespace and the role its pod has.
type faultPod struct {
	net  *podNet
	role string
}

// faultEnv is the node of TestE2E with the processes and pods of the fault
// scenarios.
type faultEnv struct {
	*env
	track func(*testenv.Proc) *testenv.Proc
	pods  []faultPod // web and two more pods with roles, all permitted
}

// testFaults runs the fault scenarios in order; each leaves a server and an
// agent (started with the fault flags) running.
func testFaults(t *testing.T, e *env, track func(*testenv.Proc) *testenv.Proc) {
	f := &faultEnv{env: e, track: track}
	f.setUp(t)
	t.Run("every server down for longer than a refresh period", func(t *testing.T) { testEveryServerDown(t, f) })
	t.Run("certificates rotated on disk while agent and server run", func(t *testing.T) { testCertRotation(t, f) })
	t.Run("agent restarted in a loop under load", func(t *testing.T) { testAgentRestartLoop(t, f) })
	t.Run("old and new agent overlap during an upgrade", func(t *testing.T) { testAgentOverlap(t, f) })
	e.canary.assertUntouched(t)
}

// setUp wires two more pods and restarts server and agent with the fault
// flags, then waits until every pod gets credentials.
func (f *faultEnv) setUp(t *testing.T) {
	e := f.env
	a := e.topo.wirePod(t, e.topo.PodNS[5], "pdm6", fmt.Sprintf(podIPFormat, 6))
	b := e.topo.wirePod(t, e.topo.PodNS[6], "pdm7", fmt.Sprintf(podIPFormat, 7))
	e.createPod(t, nsApps, "fault-a", "app-fault-a", a)
	e.createPod(t, nsApps, "fault-b", "app-fault-b", b)
	f.pods = []faultPod{{e.web, "app-web"}, {a, "app-fault-a"}, {b, "app-fault-b"}}

	if e.server != nil {
		_ = e.server.Kill() // already gone after the outage scenario
	}
	e.server = f.track(e.startServer(t, faultServerArgs()...))
	if err := stop(t.Context(), e.agent); err != nil {
		t.Errorf("agent exit after SIGTERM: %v", err)
	}
	e.agent = f.track(e.startAgent(t, faultAgentArgs()...))
	for _, p := range f.pods {
		f.waitCreds(t, p, 30*time.Second, func(credDoc) error { return nil })
	}
}

// waitCreds waits until the pod gets a credential document that ok accepts.
func (f *faultEnv) waitCreds(t *testing.T, p faultPod, timeout time.Duration, ok func(credDoc) error) credDoc {
	t.Helper()
	var doc credDoc
	testenv.Eventually(t, timeout, "pod "+p.net.IP+" gets credentials for "+p.role, func() error {
		r := f.imds(p.net, http.MethodGet, testenv.CredentialsPath+p.role)
		if r.Code != http.StatusOK {
			return fmt.Errorf("%s", r)
		}
		d, err := parseCredDoc(r.Body)
		if err != nil {
			return err
		}
		if err := ok(d); err != nil {
			return err
		}
		doc = d
		return nil
	})
	return doc
}

// parseCredDoc parses a credential document and refuses anything that is
// not a pod's own credentials: malformed, or the node's (canary's).
func parseCredDoc(body string) (credDoc, error) {
	var d credDoc
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		return d, fmt.Errorf("credential document %q: %w", body, err)
	}
	if d.Code != "Success" || d.AccessKeyId == "" || d.SecretAccessKey == "" || d.Token == "" {
		return d, fmt.Errorf("incomplete credential document %q", body)
	}
	if d.AccessKeyId == canaryAccessKey || strings.Contains(body, canaryMarker) {
		return d, fmt.Errorf("the node's credentials were served: %q", body)
	}
	if _, err := time.Parse(time.RFC3339, d.Expiration); err != nil {
		return d, fmt.Errorf("expiration %q: %w", d.Expiration, err)
	}
	return d, nil
}

func (d credDoc) expires() time.Time {
	exp, _ := time.Parse(time.RFC3339, d.Expiration)
	return exp
}

// outageState is what one pod saw while no server ran.
type outageState struct {
	held         credDoc // what the agent served last before the outage
	served       int     // 200 answers during the outage
	refused      int     // 503 answers during the outage
	lastServed   time.Duration
	firstRefusal time.Duration // validity left at the first 503
}

// observe checks one answer to a pod during the outage: the held
// credentials while more than faultMinServe is left, then 503 for good.
func (st *outageState) observe(t *testing.T, p faultPod, r testenv.CurlResult, start, end, killed time.Time) {
	t.Helper()
	unavailable := http.StatusText(http.StatusServiceUnavailable)
	switch {
	case r.Code == http.StatusServiceUnavailable && r.Body == unavailable:
		if st.refused == 0 {
			// The document's expiry is truncated to the second, so the
			// real one is later: the agent refused with at most this left.
			st.firstRefusal = st.held.expires().Sub(end)
			if st.firstRefusal > faultMinServe+time.Second {
				t.Errorf("pod %s refused with %s of validity left; cached credentials must be served until %s remain",
					p.net.IP, st.firstRefusal.Round(time.Millisecond), faultMinServe)
			}
		}
		st.refused++
		return
	case r.Code != http.StatusOK:
		t.Errorf("pod %s during the outage: %s, want 200 with the held credentials or 503 %q", p.net.IP, r, unavailable)
		return
	}
	doc, err := parseCredDoc(r.Body)
	if err != nil {
		t.Errorf("pod %s during the outage: %v", p.net.IP, err)
		return
	}
	if st.refused > 0 {
		t.Errorf("pod %s got credentials (%s, expiring %s) after the agent had refused: nothing can make them servable again",
			p.net.IP, doc.AccessKeyId, doc.Expiration)
	}
	if doc.AccessKeyId != st.held.AccessKeyId || doc.Expiration != st.held.Expiration {
		// Only a refresh between the last fetch and the kill can explain
		// new credentials, and only if the held ones were due.
		if st.served == 0 && st.held.expires().Sub(killed) <= faultAgentRefresh+time.Second {
			t.Logf("pod %s: the agent refreshed just before the kill (%s -> %s)", p.net.IP, st.held.AccessKeyId, doc.AccessKeyId)
			st.held = doc
		} else {
			t.Errorf("pod %s got other credentials (%s, expiring %s) than the agent held (%s, expiring %s) while no server ran",
				p.net.IP, doc.AccessKeyId, doc.Expiration, st.held.AccessKeyId, st.held.Expiration)
		}
	}
	// The agent served them with more than faultMinServe left; the
	// document's truncated expiry can show up to a second less.
	left := doc.expires().Sub(start)
	if left <= faultMinServe-time.Second {
		t.Errorf("pod %s got credentials with %s left; the agent must stop serving at %s", p.net.IP, left.Round(time.Millisecond), faultMinServe)
	}
	st.served++
	st.lastServed = left
}

// testEveryServerDown kills the only server for longer than the
// credentials live. While their validity is above --credential-min-serve,
// the agent serves every pod the credentials it held, unchanged; then a
// 503 with a plain body, also after they expired; never an expired
// document and never the node's credentials. A new server brings fresh
// credentials to the same agent process.
func testEveryServerDown(t *testing.T, f *faultEnv) {
	e := f.env
	agentPID := e.agent.Pid()
	states := map[string]*outageState{}
	for _, p := range f.pods {
		states[p.net.IP] = &outageState{held: f.waitCreds(t, p, 30*time.Second, func(credDoc) error { return nil })}
	}
	if err := e.server.Kill(); err != nil {
		t.Logf("server after SIGKILL: %v", err)
	}
	killed := time.Now()

	for {
		done := true
		for _, p := range f.pods {
			st := states[p.net.IP]
			start := time.Now()
			r := e.imds(p.net, http.MethodGet, testenv.CredentialsPath+p.role)
			st.observe(t, p, r, start, time.Now(), killed)
			// Go on until the credentials have expired (the document's
			// second plus one) and the pod was refused.
			if st.refused == 0 || time.Now().Before(st.held.expires().Add(2*time.Second)) {
				done = false
			}
		}
		if done {
			break
		}
		if time.Since(killed) > faultSession+60*time.Second {
			t.Fatalf("outage scenario did not run its course in %s: %+v", time.Since(killed), states)
		}
		time.Sleep(100 * time.Millisecond)
	}
	outage := time.Since(killed)
	for _, p := range f.pods {
		st := states[p.net.IP]
		t.Logf("pod %s (%s): %d answers with the held credentials (last with %s left), then %d x 503 from %s left until after expiry",
			p.net.IP, p.role, st.served, st.lastServed.Round(time.Millisecond), st.refused, st.firstRefusal.Round(time.Millisecond))
		if st.served == 0 {
			t.Errorf("pod %s never got its cached credentials while no server ran", p.net.IP)
		}
		if r := e.imds(p.net, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusServiceUnavailable {
			t.Errorf("pod %s role listing after its credentials expired with no server: %s, want 503", p.net.IP, r)
		}
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	if code, body, err := get(client, "http://"+hostPort(nodeIP, agentPort)+"/health"); err != nil || code != http.StatusOK {
		t.Errorf("agent /health with no server: %d %q %v, want 200", code, body, err)
	}
	e.canary.assertUntouched(t)
	if outage <= faultSession-faultServerRefresh {
		t.Fatalf("the outage lasted %s, not longer than one refresh period", outage)
	}

	e.server = f.track(e.startServer(t, faultServerArgs()...))
	for _, p := range f.pods {
		held := states[p.net.IP].held
		doc := f.waitCreds(t, p, 60*time.Second, func(d credDoc) error {
			if d.AccessKeyId == held.AccessKeyId || !d.expires().After(held.expires()) {
				return fmt.Errorf("still %s expiring %s", d.AccessKeyId, d.Expiration)
			}
			return nil
		})
		if arn := f.callerARN(t, doc); arn != assumedARN(p.role) {
			t.Errorf("pod %s after the outage: credentials of %q, want %q", p.net.IP, arn, assumedARN(p.role))
		}
	}
	if gone, err := e.agent.Exited(); gone || e.agent.Pid() != agentPID {
		t.Errorf("the agent was restarted (exited: %v %v); recovery must not need that", gone, err)
	}
	e.canary.assertUntouched(t)
}

// callerARN asks moto whose credentials doc holds.
func (f *faultEnv) callerARN(t *testing.T, doc credDoc) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	arn, err := f.moto.CallerIdentity(ctx, creds.Credentials{AccessKeyID: doc.AccessKeyId, SecretAccessKey: doc.SecretAccessKey, SessionToken: doc.Token})
	if err != nil {
		t.Errorf("GetCallerIdentity with served credentials: %v", err)
	}
	return arn
}

// testCertRotation rotates the CA and both leaf certificates on disk, in
// the order that keeps every pair of peers talking, while the server and
// the agent run, and never restarts either. Between the steps the server
// recycles agent connections, so every step is exercised by new TLS
// handshakes. After the last step the test sees the server present the
// new certificate, the server refuse the old agent certificate, and the
// agent complete calls on connections made after both had dropped the old
// CA: those handshakes can only have succeeded with the new certificates
// on both sides.
func testCertRotation(t *testing.T, f *faultEnv) {
	e := f.env
	serverPID, agentPID := e.server.Pid(), e.agent.Pid()
	oldCert, oldKey := filepath.Join(e.tmp, "old-agent.pem"), filepath.Join(e.tmp, "old-agent-key.pem")
	copyFile(t, e.pki.AgentCert, oldCert)
	copyFile(t, e.pki.AgentKey, oldKey)
	oldServerSerial := f.serverCertSerial(t)
	ok0, failed0 := f.agentFetchCalls(t)

	loops := f.startLoops(t, false)
	oldBundle := e.pki.CABundle(t)
	next := testenv.NewCA(t, "podiam test ca, rotated")

	// 1. Both sides trust both CAs.
	e.pki.WriteCABundle(t, oldBundle, next.PEM())
	f.waitFetchOnNewConnection(t, time.Now().Add(tlsCheckInterval), "old and new CA in the bundles")

	// 2. New leaves for both, signed by the new CA.
	server := e.pki.IssueServer(t, next)
	e.pki.IssueAgent(t, next)
	issued := time.Now()
	testenv.Eventually(t, 15*time.Second, "server presents the new certificate", func() error {
		if got := f.serverCertSerial(t); got != server.SerialNumber.String() {
			return fmt.Errorf("serial %s (old %s, new %s)", got, oldServerSerial, server.SerialNumber)
		}
		return nil
	})
	f.waitFetchOnNewConnection(t, issued.Add(tlsCheckInterval), "new certificates on both sides")

	// 3. The old CA leaves both bundles.
	dropped := time.Now()
	e.pki.WriteCABundle(t, next.PEM())
	var reloaded time.Time
	for _, p := range []*testenv.Proc{e.agent, e.server} {
		at := waitLog(t, p, 30*time.Second, func(l logLine) bool {
			return l.Msg == "tls certificates reloaded" && l.CACount == 1 && !l.Time.Before(dropped)
		})
		reloaded = later(reloaded, at)
	}
	testenv.Eventually(t, 15*time.Second, "server refuses the old agent certificate", func() error {
		if out, err := f.health(oldCert, oldKey); err == nil {
			return fmt.Errorf("podiam health with the old agent certificate passed: %s", out)
		}
		return nil
	})
	f.waitFetchOnNewConnection(t, reloaded, "old CA dropped on both sides")
	if out, err := f.health(e.pki.AgentCert, e.pki.AgentKey); err != nil {
		t.Errorf("podiam health with the rotated files: %v: %s", err, out)
	}

	res := loops.stop(t)
	t.Logf("pod requests during the rotation: %s", res)
	if res.failed() > 0 {
		t.Errorf("pod requests failed during the rotation: %s", res)
	}
	ok1, failed1 := f.agentFetchCalls(t)
	t.Logf("agent -> server GetPodCredentials during the rotation: %v OK, %v failed", ok1-ok0, failed1-failed0)
	if failed1 != failed0 || ok1 <= ok0 {
		t.Errorf("agent -> server GetPodCredentials during the rotation: %v OK, %v failed; want only OK", ok1-ok0, failed1-failed0)
	}
	if e.server.Pid() != serverPID || e.agent.Pid() != agentPID {
		t.Errorf("server or agent was restarted during the rotation")
	}
	for _, p := range []*testenv.Proc{e.server, e.agent} {
		if gone, err := p.Exited(); gone {
			t.Errorf("%s exited during the rotation: %v", p.Name(), err)
		}
	}
	e.canary.assertUntouched(t)
}

// waitFetchOnNewConnection waits until the agent completes a
// GetPodCredentials call on a connection made after since: calls made once
// every connection open at since has aged out (connLife) qualify.
func (f *faultEnv) waitFetchOnNewConnection(t *testing.T, since time.Time, step string) {
	t.Helper()
	time.Sleep(time.Until(since.Add(connLife)))
	ok0, _ := f.agentFetchCalls(t)
	testenv.Eventually(t, 30*time.Second, step+": agent completes a call on a new connection", func() error {
		if ok, failed := f.agentFetchCalls(t); ok <= ok0 {
			return fmt.Errorf("GetPodCredentials OK %v (%v failed)", ok, failed)
		}
		return nil
	})
}

// agentFetchCalls returns the agent's GetPodCredentials calls to servers
// that succeeded and that failed.
func (f *faultEnv) agentFetchCalls(t *testing.T) (ok, failed float64) {
	t.Helper()
	body := scrapeAgent(t)
	method := map[string]string{"method": pb.Credentials_GetPodCredentials_FullMethodName}
	all := metricValue(t, body, "podiam_agent_server_requests_total", method)
	method["code"] = "OK"
	ok = metricValue(t, body, "podiam_agent_server_requests_total", method)
	return ok, all - ok
}

// serverCertSerial returns the serial of the certificate the server
// presents to a new connection.
func (f *faultEnv) serverCertSerial(t *testing.T) string {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(f.pki.AgentCert, f.pki.AgentKey)
	if err != nil {
		t.Fatalf("agent key pair: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(f.pki.CABundle(t)) {
		t.Fatal("no certificates in the CA bundle")
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", hostPort(nodeIP, serverPort), &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ServerName:   nodeIP,
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatalf("TLS dial to the server: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// health runs `podiam health` against the server with the given client
// certificate and the current CA bundle.
func (f *faultEnv) health(cert, key string) (string, error) {
	out, err := exec.Command(f.podiam, "health", "--cert="+cert, "--key="+key, "--ca="+f.pki.CA,
		"--server-address="+hostPort(nodeIP, serverPort), "--timeout=3s").CombinedOutput()
	return string(out), err
}

// testAgentRestartLoop stops (SIGTERM) and starts the agent agentRestarts
// times while every pod requests credentials continuously. The DNAT rule
// is in place exactly once whether an agent runs or not, and no request
// ever reaches the node's metadata. Requests that arrive while no agent
// listens fail with "connection refused" (or a reset for one queued on the
// listener as it closed): the rule stays and fails closed. They are
// counted and reported; any other kind of failure is an error.
func testAgentRestartLoop(t *testing.T, f *faultEnv) {
	e := f.env
	loops := f.startLoops(t, false)
	loops.waitOK(t, time.Now())
	var downtime time.Duration
	perRestart := make([]int, 0, agentRestarts)
	for i := range agentRestarts {
		failedBefore := loops.failedSoFar()
		if err := stop(t.Context(), e.agent); err != nil {
			t.Errorf("restart %d: agent exit after SIGTERM: %v", i+1, err)
		}
		stopped := time.Now()
		if rules := natRules(t); dnatCount(rules) != 1 || !ruleInstalled(rules) {
			t.Fatalf("restart %d, no agent running: want exactly one metadata DNAT rule, got:\n%s", i+1, rules)
		}
		e.agent = f.track(e.startAgent(t, faultAgentArgs()...))
		downtime += time.Since(stopped)
		if rules := natRules(t); dnatCount(rules) != 1 {
			t.Fatalf("restart %d, agent running again: want exactly one metadata DNAT rule, got:\n%s", i+1, rules)
		}
		// Every pod is served by the new agent before the next restart.
		loops.waitOK(t, time.Now())
		perRestart = append(perRestart, loops.failedSoFar()-failedBefore)
	}
	res := loops.stop(t)
	t.Logf("%d agent restarts (%s from SIGTERM's end to a ready agent, in total): %s", agentRestarts, downtime.Round(time.Millisecond), res)
	t.Logf("failed pod requests per restart: %v", perRestart)
	for kind, n := range res.failures {
		if kind != "curl exit 7" && kind != "curl exit 56" {
			t.Errorf("%d pod requests failed with %s; only refused or reset connections are expected while no agent listens", n, kind)
		}
	}
	if res.ok == 0 {
		t.Error("no pod request succeeded during the restarts")
	}
	e.canary.assertUntouched(t)
	if r := e.imds(e.web, http.MethodGet, testenv.CredentialsPath); r.Code != http.StatusOK || r.Body != "app-web" {
		t.Errorf("after %d restarts: %s, want 200 app-web", agentRestarts, r)
	}
}

// testAgentOverlap upgrades the agent as a DaemonSet with maxSurge does,
// upgrades times in a row: the new agent starts, with the same command
// line, while the old one runs, both take pod connections on the shared
// port, then the old one gets SIGTERM. No pod request may fail at any
// point, and neither may any of the much more frequent /ping requests the
// node sends around each SIGTERM: they hit a closing listener's last
// instant far more often than pods' requests do.
func testAgentOverlap(t *testing.T, f *faultEnv) {
	e := f.env
	loops := f.startLoops(t, true)
	loops.waitAnswers(t, 3)

	var sigterms, pingErrs []string
	var pingsOK, pingsFailed int
	for i := range upgrades {
		old := e.agent
		next := f.track(e.startAgent(t, faultAgentArgs()...))
		waitLog(t, next, 60*time.Second, func(l logLine) bool { return l.Msg == "podiam agent started" })
		if gone, err := old.Exited(); gone {
			t.Fatalf("upgrade %d: the old agent exited when the new one started: %v\n%s", i+1, err, old.Tail(30))
		}
		if rules := natRules(t); dnatCount(rules) != 1 {
			t.Fatalf("upgrade %d, two agents running: want exactly one metadata DNAT rule, got:\n%s", i+1, rules)
		}
		// Both agents must really take pod connections, or the handoff
		// proves nothing.
		before := credentialAnswersByProcess(t, 2)
		loops.waitAnswers(t, 3)
		after := credentialAnswersByProcess(t, 2)
		for p, n := range after {
			if n <= before[p] {
				t.Errorf("upgrade %d: agent process started at %s answered no credential request while both ran (%v -> %v)", i+1, p, before[p], n)
			}
		}

		pings := startPingLoad(8)
		time.Sleep(100 * time.Millisecond)
		sigterms = append(sigterms, time.Now().Format("15:04:05.000"))
		if err := stop(t.Context(), old); err != nil {
			t.Errorf("upgrade %d: old agent exit after SIGTERM: %v", i+1, err)
		}
		time.Sleep(100 * time.Millisecond)
		ok, failed, errs := pings.stop()
		pingsOK, pingsFailed, pingErrs = pingsOK+ok, pingsFailed+failed, append(pingErrs, errs...)
		if !strings.Contains(old.Logs(), `"metadata listener drained"`) {
			t.Errorf("upgrade %d: the old agent did not drain its listener:\n%s", i+1, old.Tail(20))
		}
		e.agent = next
		loops.waitAnswers(t, 3)
	}
	res := loops.stop(t)
	t.Logf("pod requests across %d upgrades: %s", upgrades, res)
	t.Logf("node /ping requests around the SIGTERMs: %d answered, %d failed", pingsOK, pingsFailed)
	if res.failed() > 0 {
		t.Errorf("pod requests failed across the upgrades (SIGTERM to the old agents at %v): %s", sigterms, res)
	}
	if pingsFailed > 0 || pingsOK == 0 {
		t.Errorf("node /ping requests around the SIGTERMs (at %v): %d answered, %d failed: %v",
			sigterms, pingsOK, pingsFailed, pingErrs)
	}
	if rules := natRules(t); dnatCount(rules) != 1 {
		t.Errorf("after the upgrades: want exactly one metadata DNAT rule, got:\n%s", rules)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("net.ipv4.tcp_migrate_req on the node is %q (%v); the agent sets it to 1", b, err)
	}
	e.assertAgentUp(t)
	e.canary.assertUntouched(t)
}

// pingLoad is GET /ping on the agent port from the node, each request on a
// new connection, from several goroutines at once.
type pingLoad struct {
	done chan struct{}
	wg   sync.WaitGroup

	mu         sync.Mutex
	ok, failed int
	errs       []string
}

func startPingLoad(workers int) *pingLoad {
	l := &pingLoad{done: make(chan struct{})}
	url := "http://" + hostPort(nodeIP, agentPort) + "/ping"
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for {
				select {
				case <-l.done:
					return
				default:
				}
				code, body, err := get(client, url)
				l.mu.Lock()
				if err == nil && code == http.StatusOK && body == "pong" {
					l.ok++
				} else {
					l.failed++
					if len(l.errs) < 5 {
						l.errs = append(l.errs, fmt.Sprintf("%s: %d %q %v", time.Now().Format("15:04:05.000"), code, body, err))
					}
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// stop ends the load (again harmlessly) and returns what it saw.
func (l *pingLoad) stop() (ok, failed int, errs []string) {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok, l.failed, l.errs
}

// requestLoop is curl asking for a pod's credentials over and over inside
// the pod's namespace, as an SDK-using workload does.
type requestLoop struct {
	pod      faultPod
	cmd      *exec.Cmd
	stopFile string
	done     chan struct{}

	mu      sync.Mutex
	results []loopResult
}

// loopResult is one request of a loop.
type loopResult struct {
	at   time.Time // when its line was read
	code int       // HTTP status, 0 without a response
	exit int       // curl's exit code for the transfer
	body string
}

// loopScript runs curl until the stop file exists. With several URLs, curl
// sends them over one kept-alive connection where it can. Each transfer
// prints its body (one line of JSON, or a status text) and " @@<http code>
// <curl exit code>".
const loopScript = `stop=$1; shift
while [ ! -e "$stop" ]; do
  curl -s -N --max-time 5 -w ' @@%{http_code} %{exitcode}\n' "$@"
  sleep 0.05
done`

func (f *faultEnv) startLoop(t *testing.T, p faultPod, keepAlive bool) *requestLoop {
	t.Helper()
	url := "http://" + testenv.MetadataIP + testenv.CredentialsPath + p.role
	urls := []string{url}
	if keepAlive {
		urls = slices.Repeat(urls, 10)
	}
	l := &requestLoop{pod: p, stopFile: filepath.Join(f.tmp, fmt.Sprintf("loop-stop-%d", f.seq.Add(1))), done: make(chan struct{})}
	args := append([]string{"netns", "exec", p.net.NS, "sh", "-c", loopScript, "loop", l.stopFile}, urls...)
	l.cmd = exec.Command(f.topo.ip, args...)
	l.cmd.Env = f.podEnv
	l.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start request loop in %s: %v", p.net.NS, err)
	}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if r, ok := parseLoopLine(sc.Text()); ok {
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			}
		}
		_ = l.cmd.Wait()
	}()
	t.Cleanup(func() { l.kill() })
	return l
}

func parseLoopLine(line string) (loopResult, bool) {
	i := strings.LastIndex(line, " @@")
	if i < 0 {
		return loopResult{}, false
	}
	fields := strings.Fields(line[i+3:])
	if len(fields) != 2 {
		return loopResult{}, false
	}
	code, err1 := strconv.Atoi(fields[0])
	exit, err2 := strconv.Atoi(fields[1])
	if err1 != nil || err2 != nil {
		return loopResult{}, false
	}
	return loopResult{at: time.Now(), code: code, exit: exit, body: line[:i]}, true
}

func (l *requestLoop) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.results)
}

func (l *requestLoop) kill() {
	_ = os.WriteFile(l.stopFile, nil, 0o644)
	select {
	case <-l.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGKILL)
		<-l.done
	}
}

// loopSet is one loop per fault pod, and with keepAlive one more in the
// first pod sending ten requests per connection.
type loopSet []*requestLoop

func (f *faultEnv) startLoops(t *testing.T, keepAlive bool) loopSet {
	t.Helper()
	var ls loopSet
	for _, p := range f.pods {
		ls = append(ls, f.startLoop(t, p, false))
	}
	if keepAlive {
		ls = append(ls, f.startLoop(t, f.pods[0], true))
	}
	return ls
}

// waitAnswers waits until every loop has n more results.
func (ls loopSet) waitAnswers(t *testing.T, n int) {
	t.Helper()
	for _, l := range ls {
		target := l.count() + n
		testenv.Eventually(t, 60*time.Second, "request loop in "+l.pod.net.NS+" goes on", func() error {
			if c := l.count(); c < target {
				return fmt.Errorf("%d results, want %d", c, target)
			}
			return nil
		})
	}
}

// waitOK waits until every loop has had a request succeed after since.
func (ls loopSet) waitOK(t *testing.T, since time.Time) {
	t.Helper()
	for _, l := range ls {
		testenv.Eventually(t, 60*time.Second, "pod "+l.pod.net.IP+" gets credentials", func() error {
			l.mu.Lock()
			defer l.mu.Unlock()
			for _, r := range slices.Backward(l.results) {
				if !r.at.After(since) {
					break
				}
				if r.failure() == "" {
					return nil
				}
			}
			return fmt.Errorf("no success since %s among %d results", since.Format("15:04:05.000"), len(l.results))
		})
	}
}

// failedSoFar counts the loops' failed requests so far.
func (ls loopSet) failedSoFar() int {
	n := 0
	for _, l := range ls {
		l.mu.Lock()
		for _, r := range l.results {
			if r.failure() != "" {
				n++
			}
		}
		l.mu.Unlock()
	}
	return n
}

// failure classifies a result: "" for a 200 with the pod's own complete
// credentials, otherwise what went wrong.
func (r loopResult) failure() string {
	switch {
	case r.exit != 0:
		return "curl exit " + strconv.Itoa(r.exit)
	case r.code != http.StatusOK:
		return "HTTP " + strconv.Itoa(r.code)
	}
	if _, err := parseCredDoc(r.body); err != nil {
		return "bad document"
	}
	return ""
}

// loopStats sums up the loops' results.
type loopStats struct {
	total, ok int
	failures  map[string]int // kind -> count
	examples  []string
}

func (s loopStats) failed() int { return s.total - s.ok }

func (s loopStats) String() string {
	kinds := slices.Sorted(func(yield func(string) bool) {
		for k := range s.failures {
			if !yield(k) {
				return
			}
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests, %d succeeded, %d failed", s.total, s.ok, s.failed())
	for _, k := range kinds {
		fmt.Fprintf(&b, "; %s: %d", k, s.failures[k])
	}
	for _, ex := range s.examples {
		fmt.Fprintf(&b, "\n  %s", ex)
	}
	return b.String()
}

// stop ends every loop and classifies what they saw: success is a 200
// with the pod's own, complete credentials.
func (ls loopSet) stop(t *testing.T) loopStats {
	t.Helper()
	for _, l := range ls {
		l.kill()
	}
	s := loopStats{failures: map[string]int{}}
	for _, l := range ls {
		for _, r := range l.results {
			s.total++
			kind := r.failure()
			if kind == "" {
				s.ok++
				continue
			}
			s.failures[kind]++
			if len(s.examples) < 10 {
				s.examples = append(s.examples, fmt.Sprintf("%s pod %s: %s (body %.80q)", r.at.Format("15:04:05.000"), l.pod.net.IP, kind, r.body))
			}
		}
	}
	if s.total == 0 {
		t.Fatal("the request loops produced no results")
	}
	return s
}

// metricValue is testenv.MetricValue of an exposition already fetched.
func metricValue(t *testing.T, body, name string, labels map[string]string) float64 {
	t.Helper()
	v, err := testenv.MetricValue(strings.NewReader(body), name, labels)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

// scrapeAgent fetches the agent's /metrics over a new connection, so that
// with two agents on the shared port either may answer.
func scrapeAgent(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	code, body, err := get(client, "http://"+hostPort(nodeIP, agentMetr)+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("agent /metrics: %d %v", code, err)
	}
	return body
}

// credentialAnswersByProcess scrapes the agents' shared metrics port until
// it has heard from want processes and returns, per process (its start
// time), how many credential requests it answered with 200.
func credentialAnswersByProcess(t *testing.T, want int) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for i := 0; i < 60 && len(out) < want; i++ {
		body := scrapeAgent(t)
		start := metricValue(t, body, "process_start_time_seconds", nil)
		if start == 0 {
			t.Fatalf("agent metrics without process_start_time_seconds")
		}
		out[strconv.FormatFloat(start, 'f', 2, 64)] = metricValue(t, body, "podiam_agent_http_requests_total",
			map[string]string{"class": "credentials", "code": "200"})
	}
	if len(out) < want {
		t.Fatalf("60 scrapes of the shared metrics port reached %d agent processes, want %d", len(out), want)
	}
	return out
}

// logLine is the part of a JSON log line the fault scenarios look at.
type logLine struct {
	Time    time.Time `json:"time"`
	Msg     string    `json:"msg"`
	CACount int       `json:"ca_count"`
}

// waitLog waits until p logs a line match accepts and returns its time.
func waitLog(t *testing.T, p *testenv.Proc, timeout time.Duration, match func(logLine) bool) time.Time {
	t.Helper()
	var at time.Time
	testenv.Eventually(t, timeout, p.Name()+" logs the expected line", func() error {
		for _, raw := range strings.Split(p.Logs(), "\n") {
			var l logLine
			if json.Unmarshal([]byte(raw), &l) == nil && match(l) {
				at = l.Time
				return nil
			}
		}
		return fmt.Errorf("not in %s", p.LogPath())
	})
	return at
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
