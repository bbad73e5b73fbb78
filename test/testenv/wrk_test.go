package testenv

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const wrkOutput = `Running 2s test @ http://169.254.169.254/latest/meta-data/iam/security-credentials/app-web
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.01ms    1.20ms  20.46ms   91.00%
  58000 requests in 2.00s, 39.00MB read
Requests/sec:  29000.00
Transfer/sec:     19.50MB
PODIAM-WRK requests=58000 duration_us=2000000 p50_us=700 p90_us=1500 p99_us=6100 max_us=20460 connect=0 read=1 write=0 status=2 timeout=0
`

func TestParseWrk(t *testing.T) {
	r, err := ParseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 58000 || r.Duration != 2*time.Second || r.P50 != 700*time.Microsecond ||
		r.P99 != 6100*time.Microsecond || r.Max != 20460*time.Microsecond || r.ErrorCount() != 3 || r.Errors["status"] != 2 {
		t.Fatalf("ParseWrk = %+v", r)
	}
	if r.RPS() != 29000 {
		t.Fatalf("RPS = %v", r.RPS())
	}
	r.CPU = 58 * time.Millisecond
	if r.CPUPerRequest() != time.Microsecond {
		t.Fatalf("CPUPerRequest = %v", r.CPUPerRequest())
	}
	for name, bad := range map[string]string{
		"no line":        "Requests/sec: 5\n",
		"missing figure": "PODIAM-WRK requests=5 duration_us=10\n",
		"not a number":   strings.Replace(wrkOutput, "p50_us=700", "p50_us=7e2", 1),
		"zero duration":  strings.Replace(wrkOutput, "duration_us=2000000", "duration_us=0", 1),
	} {
		if _, err := ParseWrk(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestCombineWrk(t *testing.T) {
	run := func(req int64, p50, p99 time.Duration, status int64) WrkResult {
		return WrkResult{Requests: req, Duration: time.Second, P50: p50, P99: p99, Max: 2 * p99, CPU: 10 * time.Millisecond,
			Errors: map[string]int64{"status": status}}
	}
	got := CombineWrk([]WrkResult{
		run(1000, 3*time.Millisecond, 9*time.Millisecond, 0),
		run(3000, 1*time.Millisecond, 5*time.Millisecond, 1),
		run(2000, 2*time.Millisecond, 7*time.Millisecond, 1),
	})
	if got.Requests != 6000 || got.Duration != 3*time.Second || got.RPS() != 2000 || got.CPU != 30*time.Millisecond {
		t.Fatalf("totals: %+v", got)
	}
	if got.P50 != 2*time.Millisecond || got.P99 != 7*time.Millisecond || got.Max != 18*time.Millisecond || got.ErrorCount() != 2 {
		t.Fatalf("percentiles and errors: %+v", got)
	}
}

// TestWrkScript runs the script in wrk's own Lua: a typo in it would
// otherwise show only in make bench.
func TestWrkScript(t *testing.T) {
	wrk := Bin(t, "wrk")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	script := filepath.Join(t.TempDir(), "report.lua")
	if err := os.WriteFile(script, []byte(WrkScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(wrk, "-t1", "-c2", "-d1s", "-s", script, srv.URL).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	r, err := ParseWrk(string(out))
	if err != nil || r.Requests == 0 || r.ErrorCount() != 0 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99 {
		t.Fatalf("ParseWrk = %+v, %v\n%s", r, err, out)
	}
}
