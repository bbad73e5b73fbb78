package testenv

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WrkScript is a wrk Lua script (wrk -s) that prints exact figures in one
// line ParseWrk reads: wrk's own summary rounds latencies to two digits in
// mixed units.
const WrkScript = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("PODIAM-WRK requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
`

// WrkResult is one wrk run, plus the CPU the target process used meanwhile
// (filled in by the caller).
type WrkResult struct {
	Requests           int64
	Duration           time.Duration
	P50, P90, P99, Max time.Duration
	// Errors by wrk's kinds: connect, read, write, status (non-2xx/3xx
	// answers), timeout.
	Errors map[string]int64
	CPU    time.Duration
}

// RPS is requests per second.
func (r WrkResult) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Duration.Seconds()
}

// CPUPerRequest is the target's CPU time per request.
func (r WrkResult) CPUPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Requests)
}

// ErrorCount is the number of failed requests of every kind.
func (r WrkResult) ErrorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

var wrkErrorKinds = []string{"connect", "read", "write", "status", "timeout"}

// ParseWrk finds WrkScript's line in wrk's output.
func ParseWrk(out string) (WrkResult, error) {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "PODIAM-WRK ")
		if !ok {
			continue
		}
		vals := map[string]int64{}
		for _, kv := range strings.Fields(rest) {
			k, v, ok := strings.Cut(kv, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				return WrkResult{}, fmt.Errorf("testenv: wrk figure %q", kv)
			}
			vals[k] = n
		}
		for _, k := range append([]string{"requests", "duration_us", "p50_us", "p90_us", "p99_us", "max_us"}, wrkErrorKinds...) {
			if _, ok := vals[k]; !ok {
				return WrkResult{}, fmt.Errorf("testenv: wrk line without %s: %q", k, line)
			}
		}
		us := func(k string) time.Duration { return time.Duration(vals[k]) * time.Microsecond }
		r := WrkResult{Requests: vals["requests"], Duration: us("duration_us"),
			P50: us("p50_us"), P90: us("p90_us"), P99: us("p99_us"), Max: us("max_us"), Errors: map[string]int64{}}
		for _, k := range wrkErrorKinds {
			r.Errors[k] = vals[k]
		}
		if r.Duration <= 0 {
			return WrkResult{}, fmt.Errorf("testenv: wrk ran for %v", r.Duration)
		}
		return r, nil
	}
	return WrkResult{}, errors.New("testenv: no PODIAM-WRK line in wrk's output")
}

// CombineWrk sums runs against one target: requests, time, CPU and errors
// add up. Latency percentiles cannot be merged without the histograms, so
// each is the median of the runs' values; Max is the largest.
func CombineWrk(runs []WrkResult) WrkResult {
	out := WrkResult{Errors: map[string]int64{}}
	var p50, p90, p99 []time.Duration
	for _, r := range runs {
		out.Requests += r.Requests
		out.Duration += r.Duration
		out.CPU += r.CPU
		out.Max = max(out.Max, r.Max)
		for k, v := range r.Errors {
			out.Errors[k] += v
		}
		p50, p90, p99 = append(p50, r.P50), append(p90, r.P90), append(p99, r.P99)
	}
	for _, l := range [][]time.Duration{p50, p90, p99} {
		slices.Sort(l)
	}
	out.P50, out.P90, out.P99 = Quantile(p50, 0.5), Quantile(p90, 0.5), Quantile(p99, 0.5)
	return out
}
