// Package e2e is podiam's end-to-end test in Linux network namespaces. It
// needs root and fails (never skips) without it.
//
// The test binary supervises itself: TestMain, run by `go test`, sweeps
// namespaces left by killed runs, builds podiam and the Go SDK client,
// creates a "node" network namespace and the pod namespaces, and re-executes
// itself inside the node namespace with `ip netns exec`. Running the test
// process itself on the node is what lets it talk to kube-apiserver, the
// server and the agent at the node IP, and serve the canary on
// 169.254.169.254:80 in-process, exactly where the node's metadata service
// would be. When the child exits, however it exits, the supervisor deletes
// every namespace it created.
//
// In the node namespace run etcd, kube-apiserver, moto (as STS), `podiam
// server`, `podiam agent --iptables` and the canary. Each pod namespace is
// joined to the node by a veth pair as Calico does it (/32 routes, the host
// side named pdmN), and the pods exist in the API with the pod namespaces'
// addresses. Unmodified SDKs run inside the pod namespaces with no
// credentials and find the agent at 169.254.169.254 through the agent's DNAT
// rule. The canary answers every path with node-looking secrets and records
// every connection, so a request that slips past the rule or the agent is
// caught.
//
// TestSoak (soak_*_test.go) adds a second node: a namespace of the
// supervisor's joined to this one by a veth pair, with its own agent,
// DNAT rule and canary (listening there through testenv.InNetNS), and
// runs two servers, one per node, that agents find under one name. Its
// pods' workloads are Go clients dialing from inside the pod namespaces,
// and the STS proxy between the servers and moto tells which role each
// access key was issued for.
package e2e
