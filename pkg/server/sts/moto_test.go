//go:build privileged

// The tests in this file need moto_server (make deps installs it), so they
// are built only with the privileged tag, which make test sets; make unit
// runs the package's other tests without it.

package sts_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/podiam/podiam/pkg/creds"
	"github.com/podiam/podiam/pkg/server/sts"
	"github.com/podiam/podiam/test/testenv"
)

// recordingProxy sits between the STS client and a real moto: it records the
// form of every STS request (to see what goes on the wire) and can answer
// the first few requests with an error (to exercise the SDK's retryer).
type recordingProxy struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []url.Values
	failNext int
	failCode int
	failBody string
}

func newRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		form, _ := url.ParseQuery(string(body))
		r.Body = io.NopCloser(bytes.NewReader(body))
		p.mu.Lock()
		p.requests = append(p.requests, form)
		fail := p.failNext > 0
		if fail {
			p.failNext--
		}
		code, failBody := p.failCode, p.failBody
		p.mu.Unlock()
		if fail {
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(code)
			_, _ = io.WriteString(w, failBody)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// failWith makes the next n requests fail with an STS error document.
func (p *recordingProxy) failWith(n, status int, code string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failNext, p.failCode = n, status
	p.failBody = fmt.Sprintf(`<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">`+
		`<Error><Type>Sender</Type><Code>%s</Code><Message>injected by test</Message></Error>`+
		`<RequestId>test-req</RequestId></ErrorResponse>`, code)
}

// calls returns the recorded requests for one STS action.
func (p *recordingProxy) calls(action string) []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []url.Values
	for _, f := range p.requests {
		if f.Get("Action") == action {
			out = append(out, f)
		}
	}
	return out
}

// useSTS points the SDK's standard chain at endpoint with moto's credentials,
// isolated from any AWS configuration on the machine.
func useSTS(t *testing.T, m *testenv.Moto, endpoint string) {
	t.Helper()
	for _, kv := range m.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	t.Setenv("AWS_ENDPOINT_URL_STS", endpoint)
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
}

func newAssumer(t *testing.T, cfg sts.Config) (*sts.Assumer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := sts.New(t.Context(), cfg, reg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a, reg
}

// testWriter sends log lines to t.Log and checks none carries a secret.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	if bytes.Contains(p, []byte("SecretAccessKey")) || bytes.Contains(p, []byte("session_token")) {
		w.t.Errorf("log line carries a secret field: %s", p)
	}
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func counter(t *testing.T, reg *prometheus.Registry, op, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "podiam_sts_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "operation") == op && label(m, "result") == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no podiam_sts_requests_total{operation=%q,result=%q}", op, result)
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, op string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "podiam_sts_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "operation") == op {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	t.Fatalf("no podiam_sts_request_duration_seconds{operation=%q}", op)
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// checkCreds verifies the credentials are complete, in the served format
// and valid for about want.
func checkCreds(t *testing.T, c creds.Credentials, want time.Duration) {
	t.Helper()
	if c.AccessKeyID == "" || c.SecretAccessKey == "" || c.SessionToken == "" {
		t.Fatalf("incomplete credentials: %v", c)
	}
	now := time.Now()
	if left := c.Expiration.Sub(now); left < want-30*time.Second || left > want+5*time.Second {
		t.Errorf("expiration %v is %v away, want about %v", c.Expiration, left, want)
	}
	if c.LastUpdated.Location() != time.UTC || c.Expiration.Location() != time.UTC {
		t.Errorf("times not UTC: LastUpdated %v Expiration %v", c.LastUpdated, c.Expiration)
	}
	if c.LastUpdated.Nanosecond() != 0 || c.Expiration.Nanosecond() != 0 {
		t.Errorf("times have fractions: LastUpdated %v Expiration %v", c.LastUpdated, c.Expiration)
	}
	if d := now.Sub(c.LastUpdated); d < 0 || d > 10*time.Second {
		t.Errorf("LastUpdated %v is not now (%v)", c.LastUpdated, now)
	}
}

func TestAgainstMoto(t *testing.T) {
	m := testenv.StartMoto(t, testenv.MotoOptions{})
	const account = testenv.MotoAccountID

	t.Run("direct target role", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, reg := newAssumer(t, sts.Config{SessionDuration: 15 * time.Minute})

		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app-web", SessionName: "kiam-web"}
		c, err := a.Assume(t.Context(), key)
		if err != nil {
			t.Fatalf("Assume: %v", err)
		}
		checkCreds(t, c, 15*time.Minute)
		arn, err := m.CallerIdentity(t.Context(), c)
		if err != nil {
			t.Fatalf("CallerIdentity: %v", err)
		}
		if want := "arn:aws:sts::" + account + ":assumed-role/app-web/kiam-web"; arn != want {
			t.Errorf("identity of issued credentials = %q, want %q", arn, want)
		}

		calls := proxy.calls("AssumeRole")
		if len(calls) != 1 {
			t.Fatalf("AssumeRole calls on the wire = %d, want 1", len(calls))
		}
		got := calls[0]
		if got.Get("RoleArn") != key.RoleARN || got.Get("RoleSessionName") != "kiam-web" || got.Get("DurationSeconds") != "900" {
			t.Errorf("AssumeRole request = %v", got)
		}
		if got.Has("ExternalId") || got.Has("SourceIdentity") || got.Has("Tags.member.1.Key") {
			t.Errorf("ExternalId, SourceIdentity or Tags sent although the key has none: %v", got)
		}

		caller, err := a.CallerARN(t.Context())
		if err != nil {
			t.Fatalf("CallerARN: %v", err)
		}
		if caller != "arn:aws:sts::"+account+":user/moto" {
			t.Errorf("CallerARN without base role = %q, want moto's root user", caller)
		}
		if err := a.CheckBase(t.Context()); err != nil {
			t.Errorf("CheckBase: %v", err)
		}
		if v := counter(t, reg, "assume_role", "ok"); v != 1 {
			t.Errorf("assume_role ok = %v, want 1", v)
		}
		if v := counter(t, reg, "get_caller_identity", "ok"); v != 1 {
			t.Errorf("get_caller_identity ok = %v, want 1", v)
		}
		if n := histogramCount(t, reg, "assume_role"); n != 1 {
			t.Errorf("assume_role duration samples = %d, want 1", n)
		}
	})

	t.Run("external id passes through", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, _ := newAssumer(t, sts.Config{SessionDuration: 15 * time.Minute})
		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/partner", ExternalID: "ext-1234", SessionName: "kiam-partner"}
		c, err := a.Assume(t.Context(), key)
		if err != nil {
			t.Fatalf("Assume: %v", err)
		}
		calls := proxy.calls("AssumeRole")
		if len(calls) != 1 || calls[0].Get("ExternalId") != "ext-1234" {
			t.Errorf("AssumeRole requests = %v, want one with ExternalId=ext-1234", calls)
		}
		arn, err := m.CallerIdentity(t.Context(), c)
		if err != nil || arn != "arn:aws:sts::"+account+":assumed-role/partner/kiam-partner" {
			t.Errorf("identity = %q, %v", arn, err)
		}
	})

	// moto accepts SourceIdentity without checking it; what matters is
	// that it is on the wire and that the call still succeeds.
	t.Run("source identity passes through", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, _ := newAssumer(t, sts.Config{SessionDuration: 15 * time.Minute})
		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: "payments.ledger",
			SourceIdentity: "payments.ledger-7d9f"}
		c, err := a.Assume(t.Context(), key)
		if err != nil {
			t.Fatalf("Assume: %v", err)
		}
		calls := proxy.calls("AssumeRole")
		if len(calls) != 1 || calls[0].Get("SourceIdentity") != "payments.ledger-7d9f" {
			t.Errorf("AssumeRole requests = %v, want one with SourceIdentity=payments.ledger-7d9f", calls)
		}
		arn, err := m.CallerIdentity(t.Context(), c)
		if err != nil || arn != "arn:aws:sts::"+account+":assumed-role/app/payments.ledger" {
			t.Errorf("identity = %q, %v", arn, err)
		}
	})

	// moto accepts session tags without checking them either; the wire
	// form is what AWS documents, transitive keys only when asked.
	t.Run("session tags pass through", func(t *testing.T) {
		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: "payments.ledger",
			Tags: creds.NewTags(creds.Tag{Key: "kubernetes-namespace", Value: "payments"}, creds.Tag{Key: "kubernetes-pod-name", Value: "ledger-1"})}
		for _, transitive := range []bool{false, true} {
			proxy := newRecordingProxy(t, m.Endpoint)
			useSTS(t, m, proxy.srv.URL)
			a, _ := newAssumer(t, sts.Config{SessionDuration: 15 * time.Minute, TransitiveTags: transitive})
			c, err := a.Assume(t.Context(), key)
			if err != nil {
				t.Fatalf("Assume: %v", err)
			}
			calls := proxy.calls("AssumeRole")
			if len(calls) != 1 {
				t.Fatalf("%d AssumeRole calls, want 1", len(calls))
			}
			got := calls[0]
			want := url.Values{
				"Tags.member.1.Key": {"kubernetes-namespace"}, "Tags.member.1.Value": {"payments"},
				"Tags.member.2.Key": {"kubernetes-pod-name"}, "Tags.member.2.Value": {"ledger-1"},
			}
			if transitive {
				want["TransitiveTagKeys.member.1"] = []string{"kubernetes-namespace"}
				want["TransitiveTagKeys.member.2"] = []string{"kubernetes-pod-name"}
			}
			for k, v := range want {
				if got.Get(k) != v[0] {
					t.Errorf("transitive %v: %s = %q, want %q", transitive, k, got.Get(k), v[0])
				}
			}
			if !transitive && got.Has("TransitiveTagKeys.member.1") {
				t.Errorf("transitive keys sent unasked: %v", got)
			}
			if _, err := m.CallerIdentity(t.Context(), c); err != nil {
				t.Errorf("identity: %v", err)
			}
		}
	})

	t.Run("chained through base role with short session", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		base := "arn:aws:iam::" + account + ":role/kiam-server"
		a, reg := newAssumer(t, sts.Config{
			BaseRoleARN:     base,
			BaseSessionName: "kiam-server",
			SessionDuration: 120 * time.Second,
		})

		if err := a.CheckBase(t.Context()); err != nil {
			t.Fatalf("CheckBase: %v", err)
		}
		caller, err := a.CallerARN(t.Context())
		if err != nil {
			t.Fatalf("CallerARN: %v", err)
		}
		if want := "arn:aws:sts::" + account + ":assumed-role/kiam-server/kiam-server"; caller != want {
			t.Errorf("CallerARN = %q, want the base role %q", caller, want)
		}
		// The first hop is the process's own identity, not the base role.
		source, err := a.SourceIdentity(t.Context())
		if err != nil || source != "arn:aws:sts::"+account+":user/moto" {
			t.Errorf("SourceIdentity = %q, %v; want moto's root user", source, err)
		}

		for _, name := range []string{"app-a", "app-b"} {
			key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/" + name, SessionName: "kiam-" + name}
			c, err := a.Assume(t.Context(), key)
			if err != nil {
				t.Fatalf("Assume %s: %v", name, err)
			}
			checkCreds(t, c, 120*time.Second)
			arn, err := m.CallerIdentity(t.Context(), c)
			if err != nil {
				t.Fatalf("CallerIdentity: %v", err)
			}
			if want := "arn:aws:sts::" + account + ":assumed-role/" + name + "/kiam-" + name; arn != want {
				t.Errorf("identity = %q, want %q", arn, want)
			}
		}

		// One base AssumeRole (cached across CheckBase, CallerARN and both
		// targets), then the two targets with the short duration.
		calls := proxy.calls("AssumeRole")
		if len(calls) != 3 {
			t.Fatalf("AssumeRole calls = %d, want 3 (base once, two targets): %v", len(calls), calls)
		}
		if calls[0].Get("RoleArn") != base || calls[0].Get("RoleSessionName") != "kiam-server" {
			t.Errorf("first call is not the base role: %v", calls[0])
		}
		for _, c := range calls[1:] {
			if c.Get("DurationSeconds") != "120" {
				t.Errorf("target call duration = %q, want 120", c.Get("DurationSeconds"))
			}
		}
		if v := counter(t, reg, "assume_role", "ok"); v != 3 {
			t.Errorf("assume_role ok = %v, want 3", v)
		}
	})

	t.Run("no region uses the configured endpoint", func(t *testing.T) {
		useSTS(t, m, m.Endpoint)
		t.Setenv("AWS_REGION", "")
		a, _ := newAssumer(t, sts.Config{})
		if _, err := a.CallerARN(t.Context()); err != nil {
			t.Errorf("CallerARN with AWS_ENDPOINT_URL_STS and no region: %v", err)
		}
	})

	t.Run("retries throttling then succeeds", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, reg := newAssumer(t, sts.Config{MaxAttempts: 3})
		proxy.failWith(2, http.StatusBadRequest, "Throttling")
		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/busy", SessionName: "kiam-busy"}
		if _, err := a.Assume(t.Context(), key); err != nil {
			t.Fatalf("Assume after two throttled attempts: %v", err)
		}
		if n := len(proxy.calls("AssumeRole")); n != 3 {
			t.Errorf("attempts on the wire = %d, want 3", n)
		}
		if v := counter(t, reg, "assume_role", "ok"); v != 1 {
			t.Errorf("assume_role ok = %v, want 1 (retries are one request)", v)
		}
	})

	t.Run("5xx beyond max attempts is unavailable", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, reg := newAssumer(t, sts.Config{MaxAttempts: 2})
		proxy.failWith(5, http.StatusServiceUnavailable, "ServiceUnavailable")
		_, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/down", SessionName: "kiam-s"})
		if !errors.Is(err, creds.ErrUnavailable) {
			t.Fatalf("Assume = %v, want ErrUnavailable", err)
		}
		if !strings.Contains(err.Error(), "ServiceUnavailable") {
			t.Errorf("original error text lost: %v", err)
		}
		if n := len(proxy.calls("AssumeRole")); n != 2 {
			t.Errorf("attempts = %d, want 2", n)
		}
		if v := counter(t, reg, "assume_role", "unavailable"); v != 1 {
			t.Errorf("assume_role unavailable = %v, want 1", v)
		}
	})

	t.Run("AssumeMaxAttempts 1 leaves retries to the caller", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		base := "arn:aws:iam::" + account + ":role/kiam-server"
		a, reg := newAssumer(t, sts.Config{BaseRoleARN: base, MaxAttempts: 3, AssumeMaxAttempts: 1})
		if err := a.CheckBase(t.Context()); err != nil {
			t.Fatalf("CheckBase: %v", err)
		}
		key := creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/busy", SessionName: "kiam-busy"}
		proxy.failWith(1, http.StatusBadRequest, "Throttling")
		if _, err := a.Assume(t.Context(), key); !errors.Is(err, creds.ErrUnavailable) {
			t.Fatalf("Assume with one throttled attempt = %v, want ErrUnavailable", err)
		}
		if n := len(proxy.calls("AssumeRole")); n != 2 {
			t.Errorf("AssumeRole on the wire = %d, want 2 (base, one target attempt)", n)
		}
		if v := counter(t, reg, "assume_role", "unavailable"); v != 1 {
			t.Errorf("assume_role unavailable = %v, want 1: every attempt is counted", v)
		}
		// Other calls keep MaxAttempts.
		proxy.failWith(2, http.StatusInternalServerError, "InternalFailure")
		if _, err := a.CallerARN(t.Context()); err != nil {
			t.Errorf("CallerARN after two 500s with MaxAttempts 3: %v", err)
		}
	})

	t.Run("access denied is denied without retry", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, reg := newAssumer(t, sts.Config{})
		proxy.failWith(1, http.StatusForbidden, "AccessDenied")
		_, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/forbidden", SessionName: "kiam-s"})
		if !errors.Is(err, creds.ErrDenied) {
			t.Fatalf("Assume = %v, want ErrDenied", err)
		}
		if n := len(proxy.calls("AssumeRole")); n != 1 {
			t.Errorf("attempts = %d, want 1", n)
		}
		if v := counter(t, reg, "assume_role", "denied"); v != 1 {
			t.Errorf("assume_role denied = %v, want 1", v)
		}
	})

	t.Run("denied base role fails target calls as denied", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, _ := newAssumer(t, sts.Config{BaseRoleARN: "arn:aws:iam::" + account + ":role/kiam-server"})
		proxy.failWith(1, http.StatusForbidden, "AccessDenied")
		if err := a.CheckBase(t.Context()); !errors.Is(err, creds.ErrDenied) {
			t.Errorf("CheckBase = %v, want ErrDenied", err)
		}
		proxy.failWith(1, http.StatusForbidden, "AccessDenied")
		_, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: "kiam-s"})
		if !errors.Is(err, creds.ErrDenied) {
			t.Errorf("Assume with denied base = %v, want ErrDenied", err)
		}
		// Once the base role is granted, the same Assumer recovers.
		if _, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: "kiam-s"}); err != nil {
			t.Errorf("Assume after base recovered: %v", err)
		}
	})

	t.Run("invalid session name is denied before sending", func(t *testing.T) {
		proxy := newRecordingProxy(t, m.Endpoint)
		useSTS(t, m, proxy.srv.URL)
		a, _ := newAssumer(t, sts.Config{})
		for _, session := range []string{"", "kiam web"} {
			_, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: session})
			if !errors.Is(err, creds.ErrDenied) {
				t.Errorf("Assume with session name %q = %v, want ErrDenied", session, err)
			}
		}
		if n := len(proxy.calls("AssumeRole")); n != 0 {
			t.Errorf("invalid request reached STS %d times", n)
		}
	})

	t.Run("unreachable sts is unavailable", func(t *testing.T) {
		useSTS(t, m, fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t)))
		a, reg := newAssumer(t, sts.Config{MaxAttempts: 1})
		_, err := a.Assume(t.Context(), creds.Key{RoleARN: "arn:aws:iam::" + account + ":role/app", SessionName: "kiam-s"})
		if !errors.Is(err, creds.ErrUnavailable) {
			t.Errorf("Assume against a closed port = %v, want ErrUnavailable", err)
		}
		if _, err := a.CallerARN(t.Context()); !errors.Is(err, creds.ErrUnavailable) {
			t.Errorf("CallerARN against a closed port = %v, want ErrUnavailable", err)
		}
		if v := counter(t, reg, "get_caller_identity", "unavailable"); v != 1 {
			t.Errorf("get_caller_identity unavailable = %v, want 1", v)
		}
	})
}
