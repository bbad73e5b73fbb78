package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/podiam/podiam/test/testenv"
)

// procFigures is what one process's /metrics said.
type procFigures struct {
	pid        int
	rss        float64 // bytes
	goroutines float64
}

// scrapeAll reads RSS and goroutines of both servers and both agents.
func (s *soak) scrapeAll(t *testing.T) map[string]procFigures {
	t.Helper()
	targets := []struct {
		name string
		addr string
		proc *testenv.Proc
	}{
		{"server1", hostPort(nodeIP, serverMetr), s.server1},
		{"server2", hostPort(node2IP, serverMetr), s.server2},
		{"agent1", hostPort(nodeIP, agentMetr), s.nodes[0].currentAgent()},
		{"agent2", hostPort(node2IP, agentMetr), s.nodes[1].currentAgent()},
	}
	out := map[string]procFigures{}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, tg := range targets {
		testenv.Eventually(t, 30*time.Second, tg.name+" /metrics", func() error {
			code, body, err := get(client, "http://"+tg.addr+"/metrics")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%d %v", code, err)
			}
			var f procFigures
			f.pid = tg.proc.Pid()
			if f.rss, err = testenv.MetricValue(strings.NewReader(body), "process_resident_memory_bytes", nil); err != nil {
				return err
			}
			if f.goroutines, err = testenv.MetricValue(strings.NewReader(body), "go_goroutines", nil); err != nil {
				return err
			}
			out[tg.name] = f
			return nil
		})
	}
	return out
}

// Oracle graces.
const (
	// deniedGrace: after a deny is stored, the servers see it through
	// their watch and stream it to the agents, which drop what they
	// hold. A credentials answer to a request that started this long
	// after is a violation (the "allow 1 s").
	deniedGrace = time.Second
	// availSettle: a policy flip this recent leaves a request out of the
	// availability figure, either way.
	availSettle = 2 * time.Second
)

// soakReport is a run's figures and oracle violations.
type soakReport struct {
	cfg        soakConfig
	start, end time.Time

	requests, ok int
	byKind       map[string]int
	refusals     map[string]int // status and reason, or transport error

	availCounted, availOK int            // requests of pods holding valid credentials
	availMisses           map[string]int // the counted requests that failed, by phase and answer
	noAgentReqs           int            // requests while no agent listened on the pod's node
	noAgentOK             int
	noAgentTime           time.Duration

	latency map[string][]time.Duration // by phase: "steady" or a chaos event

	before, after map[string]procFigures
	dnat          map[string]int

	sdkRuns, sdkOK int
	sdkFailures    map[string]int

	churns        int
	flips         int
	events        []window
	assumes       int
	assumeFaults  int
	distinctKeys  int
	leaks         []string
	violations    map[string][]string // oracle -> examples
	violationsCnt map[string]int
}

// Oracles, in the order the report lists them.
var soakOracles = []string{"wrong role", "node secrets", "denied served", "expired served", "malformed document", "DNAT rules", "leak"}

func (r *soakReport) violate(oracle, format string, args ...any) {
	r.violationsCnt[oracle]++
	if len(r.violations[oracle]) < 10 {
		r.violations[oracle] = append(r.violations[oracle], fmt.Sprintf(format, args...))
	}
}

// violationList is every violation, or "" for none.
func (r *soakReport) violationList() string {
	var b strings.Builder
	for _, o := range soakOracles {
		if n := r.violationsCnt[o]; n > 0 {
			fmt.Fprintf(&b, "%s: %d\n", o, n)
			for _, ex := range r.violations[o] {
				fmt.Fprintf(&b, "  %s\n", ex)
			}
		}
	}
	return b.String()
}

// report evaluates every record against the oracles and sums up.
func (s *soak) report(t *testing.T, start, end time.Time, before, after map[string]procFigures) *soakReport {
	r := &soakReport{cfg: s.cfg, start: start, end: end, before: before, after: after,
		byKind: map[string]int{}, refusals: map[string]int{}, latency: map[string][]time.Duration{}, availMisses: map[string]int{},
		dnat: map[string]int{}, sdkFailures: map[string]int{},
		violations: map[string][]string{}, violationsCnt: map[string]int{}}
	s.recMu.Lock()
	records := slices.Clone(s.records)
	sdkRuns := slices.Clone(s.sdkRuns)
	s.recMu.Unlock()
	s.evMu.Lock()
	flips := slices.Clone(s.flips)
	r.events = slices.Clone(s.events)
	r.churns = s.churns
	s.evMu.Unlock()
	r.flips = len(flips) - 1 // the first is the namespace's creation

	// Credentials each pod held: for every generation, its successful
	// credentials answers by end time, with the latest expiry so far.
	type held struct {
		end time.Time
		exp time.Time
	}
	helds := map[*soakGen][]held{}
	keys := map[string]bool{}
	sort.Slice(records, func(i, j int) bool { return records[i].end.Before(records[j].end) })
	for _, rec := range records {
		if rec.kind != kindCreds || rec.code != http.StatusOK || rec.bad != "" {
			continue
		}
		iss, ok := s.proxy.Issued(rec.key)
		if !ok {
			continue
		}
		keys[rec.key] = true
		h := held{end: rec.end, exp: iss.Expiration}
		if l := helds[rec.gen]; len(l) > 0 && l[len(l)-1].exp.After(h.exp) {
			h.exp = l[len(l)-1].exp
		}
		helds[rec.gen] = append(helds[rec.gen], h)
	}
	r.distinctKeys = len(keys)
	holdsValid := func(g *soakGen, at time.Time) bool {
		l := helds[g]
		i := sort.Search(len(l), func(i int) bool { return !l[i].end.Before(at) })
		return i > 0 && l[i-1].exp.After(at)
	}
	// flipAt is the last flip at or before at.
	flipAt := func(at time.Time) flip {
		i := sort.Search(len(flips), func(i int) bool { return flips[i].at.After(at) })
		if i == 0 {
			return flip{allow: true}
		}
		return flips[i-1]
	}
	flipIn := func(from, to time.Time) bool {
		for _, f := range flips {
			if f.at.After(from) && !f.at.After(to) {
				return true
			}
		}
		return false
	}
	phaseAt := func(at time.Time) string {
		for _, w := range r.events {
			if !at.Before(w.start) && at.Before(w.end) {
				return w.name
			}
		}
		return "steady"
	}
	noAgent := func(n *soakNode, from, to time.Time) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, w := range n.down {
			if w.overlaps(from, to) {
				return true
			}
		}
		return false
	}

	for _, rec := range records {
		g := rec.gen
		r.requests++
		r.byKind[rec.kind]++
		success := rec.code == http.StatusOK && rec.bad == ""
		if success {
			r.ok++
		}
		switch {
		case rec.err != "":
			r.refusals["no answer: "+rec.err]++
		case rec.code != http.StatusOK:
			r.refusals[fmt.Sprintf("%d %s", rec.code, rec.reason)]++
		}
		if rec.code != 0 {
			phase := phaseAt(rec.start)
			r.latency[phase] = append(r.latency[phase], rec.end.Sub(rec.start))
		}
		if rec.kind == kindCreds && rec.code == http.StatusOK {
			s.checkCredentials(r, rec, flipAt)
		}

		// Availability: pods holding valid credentials, in a namespace
		// that has permitted their role for a while, on a node whose agent
		// listens.
		if g.slot.kns == nsSoakFlip && (!flipAt(rec.start.Add(-availSettle)).allow || flipIn(rec.start.Add(-availSettle), rec.end)) {
			continue
		}
		if !holdsValid(g, rec.start) {
			continue
		}
		if noAgent(g.slot.node, rec.start, rec.end) {
			r.noAgentReqs++
			if success {
				r.noAgentOK++
			}
			continue
		}
		r.availCounted++
		switch {
		case success:
			r.availOK++
		case rec.err != "":
			r.availMisses[phaseAt(rec.start)+": no answer: "+rec.err]++
		default:
			r.availMisses[fmt.Sprintf("%s: %d %s", phaseAt(rec.start), rec.code, rec.reason)]++
		}
	}
	for _, n := range s.nodes {
		n.mu.Lock()
		for _, w := range n.down {
			r.noAgentTime += w.end.Sub(w.start)
		}
		n.mu.Unlock()
		if c, q := len(n.canary.Connections()), len(n.canary.Requests()); c+q > 0 {
			r.violationsCnt["node secrets"] += c
			r.violations["node secrets"] = append(r.violations["node secrets"],
				fmt.Sprintf("%s's metadata service (canary) had %d connections, %d requests: %v", n.name, c, q, n.canary.Requests()))
		}
	}

	for _, run := range sdkRuns {
		r.sdkRuns++
		switch {
		case run.got == run.want:
			r.sdkOK++
		case strings.HasPrefix(run.got, "arn:"):
			r.violate("wrong role", "%s %s: the Go SDK was %s, want %s", run.start.Format("15:04:05.000"), run.node, run.got, run.want)
		default:
			r.sdkFailures[shorten(run.err, 80)]++
		}
	}
	for _, a := range s.proxy.Attempts() {
		if a.Action == "AssumeRole" {
			r.assumes++
			if a.Fault != 0 {
				r.assumeFaults++
			}
		}
	}

	// DNAT rules and leaks, checked on the processes that lived the whole
	// run (server 1 and agent 1; server 2 and agent 2 were killed).
	r.dnat[nodeName] = dnatCount(natRules(t))
	r.dnat[node2Name] = dnatCount(natRulesIn(t, s.nodes[1].netns))
	for node, c := range r.dnat {
		if c != 1 {
			r.violate("DNAT rules", "%s has %d metadata DNAT rules at the end, want exactly 1", node, c)
		}
	}
	for _, name := range []string{"server1", "agent1"} {
		b, a := before[name], after[name]
		if a.goroutines > b.goroutines*1.5+20 {
			r.violate("leak", "%s goroutines %v at the start, %v at the end", name, b.goroutines, a.goroutines)
		}
		if a.rss > b.rss*2+32<<20 {
			r.violate("leak", "%s RSS %s at the start, %s at the end", name, mib(b.rss), mib(a.rss))
		}
	}
	return r
}

// checkCredentials applies the per-answer oracles to a 200 credentials
// answer.
func (s *soak) checkCredentials(r *soakReport, rec soakRecord, flipAt func(time.Time) flip) {
	g := rec.gen
	at := rec.start.Format("15:04:05.000")
	if rec.bad != "" {
		oracle := "malformed document"
		if strings.Contains(rec.bad, "canary") || strings.Contains(rec.bad, "node's credentials") {
			oracle = "node secrets"
		}
		r.violate(oracle, "%s pod %s/%s (%s): %s", at, g.slot.kns, g.pod, g.slot.ip, rec.bad)
		return
	}
	// Wrong role: STS's own answer says whose key this is. A pod's
	// workload runs only while its sandbox exists, and the next pod's
	// sandbox on the address appears churnGrace after the deletion was
	// stored, so there is no window in which another pod's role is right.
	iss, ok := s.proxy.Issued(rec.key)
	switch {
	case !ok:
		r.violate("wrong role", "%s pod %s/%s (%s): access key %s was never issued by STS", at, g.slot.kns, g.pod, g.slot.ip, rec.key)
		return
	case iss.RoleARN != g.roleARN:
		r.violate("wrong role", "%s pod %s/%s (%s) with role %s got credentials of %s (key %s, issued %s)",
			at, g.slot.kns, g.pod, g.slot.ip, g.roleARN, iss.RoleARN, rec.key, iss.At.Format("15:04:05.000"))
	case g.slot.kns == nsSoakTenant && iss.ExternalID != soakExtID, g.slot.kns != nsSoakTenant && iss.ExternalID != "":
		r.violate("wrong role", "%s pod %s/%s (%s) got credentials assumed with External ID %q", at, g.slot.kns, g.pod, g.slot.ip, iss.ExternalID)
	}
	if !iss.Expiration.IsZero() && !iss.Expiration.After(rec.end) {
		r.violate("expired served", "%s pod %s (%s) got key %s at %s, expired %s", at, g.pod, g.slot.ip, rec.key,
			rec.end.Format("15:04:05.000"), iss.Expiration.Format("15:04:05.000"))
	}
	if g.slot.kns == nsSoakFlip {
		if f := flipAt(rec.end); !f.allow && !f.at.After(rec.start.Add(-deniedGrace)) {
			r.violate("denied served", "%s pod %s (%s) got credentials for %s; its namespace denied it from %s",
				at, g.pod, g.slot.ip, g.role, f.at.Format("15:04:05.000"))
		}
	}
}

func mib(b float64) string { return testenv.MiB(b) + " MiB" }

func percentile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return testenv.Quantile(s, q)
}

func msec(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// table prints the figures as Markdown, for the README.
func (r *soakReport) table() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	took := r.end.Sub(r.start).Round(time.Second)
	p("\n==================== podiam soak: %s (asked %s), seed %d ====================\n\n", took, r.cfg.duration, r.cfg.seed)
	p("| figure | value |\n|---|---|\n")
	p("| requests (token, list, credentials) | %d (%d, %d, %d) |\n", r.requests, r.byKind[kindToken], r.byKind[kindList], r.byKind[kindCreds])
	p("| 200 | %d |\n", r.ok)
	avail := 0.0
	if r.availCounted > 0 {
		avail = 100 * float64(r.availOK) / float64(r.availCounted)
	}
	p("| availability, pods holding valid credentials | %.3f%% (%d of %d) |\n", avail, r.availOK, r.availCounted)
	p("| while no agent listened on the node | %s; %d requests, %d answered |\n", r.noAgentTime.Round(100*time.Millisecond), r.noAgentReqs, r.noAgentOK)
	p("| pods re-created on the same address | %d |\n", r.churns)
	p("| namespace policy flips | %d |\n", r.flips)
	p("| Go SDK runs in pods (one per node) | %d, %d with the pod's role |\n", r.sdkRuns, r.sdkOK)
	p("| STS AssumeRole calls (faults injected) | %d (%d); %d keys served to pods |\n", r.assumes, r.assumeFaults, r.distinctKeys)
	for _, o := range soakOracles {
		p("| **%s** | %d |\n", o, r.violationsCnt[o])
	}

	p("\n| refusal (status and body, or no answer) | count |\n|---|---|\n")
	writeCounts(&b, r.refusals)
	for k, n := range r.sdkFailures {
		p("| Go SDK failed: %s | %d |\n", strings.ReplaceAll(k, "|", "\\|"), n)
	}

	p("\n| availability misses (phase: answer) | count |\n|---|---|\n")
	writeCounts(&b, r.availMisses)

	p("\n| phase | time | answers | p50 ms | p99 ms |\n|---|---|---|---|---|\n")
	spent := map[string]time.Duration{}
	var chaos time.Duration
	for _, w := range r.events {
		spent[w.name] += w.end.Sub(w.start)
		chaos += w.end.Sub(w.start)
	}
	spent["steady"] = r.end.Sub(r.start) - chaos
	phases := []string{"steady"}
	for _, w := range r.events {
		if !slices.Contains(phases, w.name) {
			phases = append(phases, w.name)
		}
	}
	for _, ph := range phases {
		l := r.latency[ph]
		p("| %s | %s | %d | %s | %s |\n", ph, spent[ph].Round(100*time.Millisecond), len(l), msec(percentile(l, 0.5)), msec(percentile(l, 0.99)))
	}

	p("\n| process | RSS start | RSS end | goroutines start | goroutines end |\n|---|---|---|---|---|\n")
	for _, name := range []string{"server1", "server2", "agent1", "agent2"} {
		b, a := r.before[name], r.after[name]
		note := ""
		if a.pid != b.pid {
			note = " (restarted: end is a new process)"
		}
		p("| %s%s | %s | %s | %.0f | %.0f |\n", name, note, mib(b.rss), mib(a.rss), b.goroutines, a.goroutines)
	}
	p("\nDNAT rules for 169.254.169.254 at the end: %s %d, %s %d (want exactly one per agent)\n", nodeName, r.dnat[nodeName], node2Name, r.dnat[node2Name])
	p("\nchaos events:")
	for _, w := range r.events {
		p(" %s +%s (%s);", w.name, w.start.Sub(r.start).Round(time.Second), w.end.Sub(w.start).Round(100*time.Millisecond))
	}
	p("\n\n")
	return b.String()
}

// writeCounts writes counts as table rows, most first.
func writeCounts(b *strings.Builder, counts map[string]int) {
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if counts[kinds[i]] != counts[kinds[j]] {
			return counts[kinds[i]] > counts[kinds[j]]
		}
		return kinds[i] < kinds[j]
	})
	for _, k := range kinds {
		fmt.Fprintf(b, "| %s | %d |\n", strings.ReplaceAll(k, "|", "\\|"), counts[k])
	}
}
