package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMetricValue(t *testing.T) {
	const exposition = `# TYPE podiam_sts_requests_total counter
podiam_sts_requests_total{operation="assume_role",result="ok"} 11
podiam_sts_requests_total{operation="assume_role",result="unavailable"} 2
podiam_sts_requests_total{operation="get_caller_identity",result="ok"} 3
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes 1.2345e+07
`
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"sum over matching series", "podiam_sts_requests_total", map[string]string{"operation": "assume_role"}, 13},
		{"all labels must match", "podiam_sts_requests_total", map[string]string{"operation": "assume_role", "result": "ok"}, 11},
		{"no labels sums the family", "podiam_sts_requests_total", nil, 16},
		{"no series matches", "podiam_sts_requests_total", map[string]string{"operation": "nope"}, 0},
		{"absent family is zero", "podiam_nothing_total", nil, 0},
		{"gauge", "go_memstats_heap_inuse_bytes", nil, 12345000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MetricValue(strings.NewReader(exposition), tc.metric, tc.labels)
			if err != nil || got != tc.want {
				t.Fatalf("MetricValue = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := MetricValue(strings.NewReader("not { a metric"), "x", nil); err == nil {
		t.Fatal("garbage exposition parsed without error")
	}
}

func TestParseProcStatus(t *testing.T) {
	ok := "Name:\tpodiam\nVmPeak:\t 1000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t 20480 kB\nRssFile:\t 10240 kB\nThreads:\t9\n"
	got, err := parseProcStatus(strings.NewReader(ok))
	want := Memory{RSS: 30 << 20, Peak: 40 << 20, Anon: 20 << 20, File: 10 << 20}
	if err != nil || got != want {
		t.Fatalf("parseProcStatus = %+v, %v; want %+v", got, err, want)
	}
	for name, bad := range map[string]string{
		"kernel thread has no Vm lines": "Name:\tkthreadd\nThreads:\t1\n",
		"a line missing":                "VmHWM:\t1 kB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n",
		"unit other than kB":            "VmHWM:\t1 MB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
		"not a number":                  "VmHWM:\tx kB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
	} {
		if _, err := parseProcStatus(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// The test process itself has every line.
	if m, err := ProcMemory(os.Getpid()); err != nil || m.RSS <= 0 || m.Peak < m.RSS || m.Anon <= 0 {
		t.Fatalf("ProcMemory(self) = %+v, %v", m, err)
	}
}

func TestParseProcStat(t *testing.T) {
	// utime 250 and stime 50 ticks; the name holds a space and a ')'.
	line := "4242 (pod iam) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 100 1000000 2000 18446744073709551615\n"
	got, err := parseProcStat(line)
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseProcStat = %v, %v; want 3s", got, err)
	}
	for _, bad := range []string{"", "4242 podiam S 1", "4242 (podiam) S 1 2 3", "4242 (podiam) S 1 4242 4242 0 -1 4194560 900 0 0 0 x 50 0"} {
		if _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q): no error", bad)
		}
	}
	if _, err := ProcCPU(os.Getpid()); err != nil {
		t.Fatalf("ProcCPU(self): %v", err)
	}
}

func TestQuantile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	tests := []struct {
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.5, 7 * time.Millisecond},
		{ms(1, 2, 3, 4, 5), 0.5, 3 * time.Millisecond},
		{ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{ms(1, 2, 3, 4, 5), 1, 5 * time.Millisecond},
		{ms(1, 2, 3, 4, 5), 0, 1 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := Quantile(tc.in, tc.q); got != tc.want {
			t.Errorf("Quantile(%v, %v) = %v, want %v", tc.in, tc.q, got, tc.want)
		}
	}
}

func TestEnvInt(t *testing.T) {
	const name = "PODIAM_TESTENV_ENVINT"
	for _, tc := range []struct {
		value string
		want  int
	}{{"", 7}, {"12", 12}, {"0", 7}, {"-3", 7}, {"x", 7}} {
		t.Setenv(name, tc.value)
		if got := EnvInt(name, 7); got != tc.want {
			t.Errorf("EnvInt with %q = %d, want %d", tc.value, got, tc.want)
		}
	}
}

func TestTable(t *testing.T) {
	tb := Table{Title: "demo", Header: []string{"case", "req/s"}, Notes: []string{"noisy machine"}}
	tb.Row("keep-alive", 1234.5)
	tb.Row("close, 32 conns", 99)
	want := "== demo ==\n" +
		"case             req/s\n" +
		"----             -----\n" +
		"keep-alive       1234.5\n" +
		"close, 32 conns  99\n" +
		"  noisy machine\n"
	if got := tb.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}

	summary := filepath.Join(t.TempDir(), "summary")
	t.Setenv(EnvBenchSummary, summary)
	tb.Report(t)
	tb.Report(t)
	data, err := os.ReadFile(summary)
	if err != nil || string(data) != want+"\n"+want+"\n" {
		t.Fatalf("summary file = %q, %v; want the table twice", data, err)
	}
}
