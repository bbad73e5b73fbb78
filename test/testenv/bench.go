package testenv

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// EnvBenchSummary names a file that every benchmark table is appended to,
// so that `make bench` can print all of them together after the noisy
// output of go test.
const EnvBenchSummary = "PODIAM_BENCH_SUMMARY"

// Benchmarking reports whether the test binary was asked to run benchmarks
// (-test.bench). TestMain uses it to build podiam without -race: the race
// detector multiplies CPU and memory costs, and benchmarks measure the
// binary as shipped. flag.Parse must have run.
func Benchmarking() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

// EnvInt returns the positive integer in environment variable name, or def
// when it is unset or not a positive integer: the knobs of a benchmark.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// Table is one benchmark's figures, printed for people: no thresholds, no
// pass or fail, just what was measured and under which conditions.
type Table struct {
	Title  string
	Header []string
	Notes  []string // printed under the table, one per line
	rows   [][]string
}

// Row adds a row; each cell is formatted with fmt.Sprint.
func (t *Table) Row(cells ...any) {
	row := make([]string, len(cells))
	for i, c := range cells {
		row[i] = fmt.Sprint(c)
	}
	t.rows = append(t.rows, row)
}

// String renders the table with aligned columns.
func (t *Table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "== %s ==\n", t.Title)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	if len(t.Header) > 0 {
		fmt.Fprintln(tw, strings.Join(t.Header, "\t"))
		dashes := make([]string, len(t.Header))
		for i, h := range t.Header {
			dashes[i] = strings.Repeat("-", len(h))
		}
		fmt.Fprintln(tw, strings.Join(dashes, "\t"))
	}
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	return b.String()
}

// Report prints the table on stdout (benchmark logs are indented and
// interleaved; a table is read as a whole) and appends it to the file named
// by EnvBenchSummary, if set.
func (t *Table) Report(tb testing.TB) {
	tb.Helper()
	s := t.String()
	fmt.Fprintf(os.Stdout, "\n%s\n", s)
	path := os.Getenv(EnvBenchSummary)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Errorf("testenv: open bench summary: %v", err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\n", s); err != nil {
		tb.Errorf("testenv: write bench summary: %v", err)
	}
}

// MetricValue sums the samples of the counter, gauge or untyped family name
// in a Prometheus text exposition whose labels include labels. A family
// that is absent is 0: counters with no events yet are often not exported.
func MetricValue(exposition io.Reader, name string, labels map[string]string) (float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(exposition)
	if err != nil {
		return 0, fmt.Errorf("testenv: parse metrics: %w", err)
	}
	mf, ok := families[name]
	if !ok {
		return 0, nil
	}
	var sum float64
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, nil
}

// ScrapeMetric fetches a /metrics URL and returns MetricValue of it.
func ScrapeMetric(ctx context.Context, url, name string, labels map[string]string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("testenv: scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("testenv: scrape %s: %s", url, resp.Status)
	}
	return MetricValue(resp.Body, name, labels)
}

// Memory is a process's resident memory as /proc/<pid>/status shows it, in
// bytes. RSS = Anon + File (+ shared memory): File is mostly the binary's
// own pages, which the page cache shares and can reclaim; Anon is the heap,
// stacks and runtime.
type Memory struct {
	RSS, Peak, Anon, File int64
}

// ProcMemory reads VmRSS, VmHWM, RssAnon and RssFile of a process.
func ProcMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("testenv: %w", err)
	}
	defer f.Close()
	return parseProcStatus(f)
}

// parseProcStatus reads the lines of Memory ("VmRSS:     12345 kB") from
// the text of /proc/<pid>/status.
func parseProcStatus(r io.Reader) (Memory, error) {
	var m Memory
	fields := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak, "RssAnon": &m.Anon, "RssFile": &m.File}
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		dst := fields[name]
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return Memory{}, fmt.Errorf("testenv: unexpected /proc status line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("testenv: /proc status line %q: %w", sc.Text(), err)
		}
		*dst = kb << 10
		found++
	}
	if err := sc.Err(); err != nil {
		return Memory{}, fmt.Errorf("testenv: read /proc status: %w", err)
	}
	if found != len(fields) {
		return Memory{}, errors.New("testenv: memory lines missing from /proc status (a kernel thread or a zombie?)")
	}
	return m, nil
}

// userHZ is the unit of the times in /proc/<pid>/stat: USER_HZ, which the
// Linux ABI fixes at 100 on every architecture Go supports.
const userHZ = 100

// ProcCPU returns the CPU time, user and system over all threads, that a
// process has used so far. On a shared machine, CPU per request is steadier
// than requests per second.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("testenv: %w", err)
	}
	return parseProcStat(string(data))
}

// parseProcStat reads utime and stime (fields 14 and 15) from the text of
// /proc/<pid>/stat. The command name, field 2, may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseProcStat(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("testenv: /proc stat without a command name: %q", s)
	}
	fields := strings.Fields(s[i+1:]) // fields[0] is field 3, the state
	if len(fields) < 13 {
		return 0, fmt.Errorf("testenv: /proc stat too short: %q", s)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("testenv: /proc stat time %q: %w", f, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// MiB formats a byte count in mebibytes with one decimal.
func MiB(b float64) string { return strconv.FormatFloat(b/(1<<20), 'f', 1, 64) }

// Quantile returns the q-quantile (0..1) of sorted values by the nearest
// rank method, or 0 for none.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
