# podiam build, test and generation targets.
SHELL := /bin/bash
BIN := $(CURDIR)/bin
GO ?= go
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
CONTROLLER_GEN_VERSION := v0.23.0
CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)

.PHONY: build test unit deps fuzz proto crds verify check-agent-deps demo docs image

# TEST_TAGS builds the tests that need more than Go: root and network
# namespaces (real iptables) or the tools make deps installs (moto). make
# test sets it; make unit leaves those tests out, so it runs as any user.
TEST_TAGS := privileged

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/podiam ./cmd/podiam

$(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	mv $(BIN)/protoc-gen-go $@

$(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	mv $(BIN)/protoc-gen-go-grpc $@

# proto regenerates the committed gRPC code with pinned plugins and Debian's protoc.
proto: $(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
	protoc -I proto -I /usr/include \
	  --plugin=protoc-gen-go=$(BIN)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	  --plugin=protoc-gen-go-grpc=$(BIN)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) \
	  --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	  proto/podiam/v1/podiam.proto

$(CONTROLLER_GEN):
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(BIN)/controller-gen $@

# crds regenerates the committed deep-copy code and the AWSAssumeRole CRD
# from pkg/apis with a pinned controller-gen; the chart gets the same file.
CRD_FILE := iam.podiam.io_awsassumeroles.yaml
crds: $(CONTROLLER_GEN)
	$(CONTROLLER_GEN) object paths=./pkg/apis/...
	$(CONTROLLER_GEN) crd paths=./pkg/apis/... output:crd:dir=deploy/crds
	mkdir -p deploy/helm/podiam/crds
	cp deploy/crds/$(CRD_FILE) deploy/helm/podiam/crds/$(CRD_FILE)

# image builds the Dockerfile as it is with buildah (no Docker daemon, no
# registry: local stand-ins for its base images are made from Debian's
# packages) and writes a docker-archive for `docker load` or `ctr images
# import`, cached in bin/images on its inputs. The path is printed last.
IMAGE ?= ghcr.io/podiam/podiam:dev
image:
	./hack/build-image.sh $(IMAGE)

# deps installs everything the tests need on a fresh Debian machine.
deps:
	./hack/install-deps.sh

# test is the one command that runs every test: unit, integration against a
# real kube-apiserver, etcd and moto, and the end-to-end suite in network
# namespaces (root). Nothing is skipped for a missing tool: it fails.
# image first: test/node loads it, and a cold build would eat the test
# timeout.
test: deps image
	$(GO) test -race -count=1 -timeout 30m -tags $(TEST_TAGS) ./...
	$(MAKE) fuzz

# fuzz runs each fuzz target briefly; make fuzz FUZZTIME=10m for a real hunt.
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzRouter$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 200x ./pkg/agent/imds
	$(GO) test -run '^$$' -fuzz '^FuzzResolve$$' -fuzztime $(FUZZTIME) ./pkg/server/role
	$(GO) test -run '^$$' -fuzz '^FuzzSanitize$$' -fuzztime $(FUZZTIME) ./pkg/server/session

# unit runs the tests that need only Go, in seconds, as any user: neither
# test/ nor the files behind TEST_TAGS.
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v -e /test/)

# The agent must not link client-go or the AWS SDK: it runs on every node.
# go list -deps follows pkg/agent's imports, so the shared packages it uses
# (pkg/creds, pkg/tlsconfig, proto, ...) are checked without a list to keep.
check-agent-deps:
	@deps=$$($(GO) list -deps ./pkg/agent/...) || exit 1; \
	bad=$$(echo "$$deps" | grep -E '^(k8s.io/client-go|github.com/aws/)' || true); \
	if [ -n "$$bad" ]; then echo "agent packages link forbidden dependencies:"; echo "$$bad"; exit 1; fi; \
	echo "agent packages link neither client-go nor the AWS SDK"

# verify fails when formatting, vet, generated code and docs, or agent
# dependencies are not as committed. vet sets TEST_TAGS to see every file:
# none is built only without them.
verify: check-agent-deps
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags $(TEST_TAGS) ./...
	$(MAKE) proto
	@git diff --exit-code -- proto || (echo "generated code differs from proto/; run make proto and commit"; exit 1)
	$(MAKE) crds
	@git diff --exit-code -- pkg/apis deploy/crds deploy/helm/podiam/crds || (echo "generated CRD or deep-copy code differs from pkg/apis; run make crds and commit"; exit 1)
	@untracked=$$(git ls-files --others --exclude-standard -- pkg/apis deploy/crds deploy/helm/podiam/crds); if [ -n "$$untracked" ]; then echo "generated files not committed:"; echo "$$untracked"; exit 1; fi
	$(GO) test -count=1 -run '^(TestREADMEFlagTables|TestKIAMFlagsKept)$$' ./cmd/podiam

# docs regenerates README.md's flag tables from the flag definitions.
docs:
	$(GO) test -count=1 -run '^TestREADMEFlagTables$$' ./cmd/podiam -update

# demo brings up a local installation from real parts (etcd, kube-apiserver,
# moto as STS, server, agent with its iptables rule in a node network
# namespace, pod namespaces) and shows a permitted pod, a denied pod and an
# IMDSv2 exchange. Root; it removes everything it made on exit or Ctrl-C.
demo: deps
	$(GO) run ./test/demo

# bench measures and prints performance figures; it asserts nothing. Run it
# as root on Debian (network namespaces, iptables, wrk). It reuses the
# integration and end-to-end harnesses with podiam built without -race:
#   - agent hot path: wrk from a pod through the DNAT rule, against the
#     agent and against a minimal Go HTTP server (the ceiling);
#   - cold path: a new pod's first credentials, server prefetch on and off;
#   - abuse: one pod holding 20,000 connections (agent RSS, another pod's
#     p99) and a denied pod asking in a tight loop (server calls a second);
#   - server at scale: 5,000 namespaces, 500 nodes with one agent stream
#     each, 100 roles; a fresh server at 0, 10,000, 50,000 and 100,000
#     pods (start-up, anon RSS, heap per pod, STS calls), then 100 pods/s
#     replaced for 60 s (server CPU, the streams' event lag);
#   - STS economy: 1,000 pods sharing 10 roles over two refresh periods;
#   - session choices: the STS calls of 1,000 pods in 10 namespaces on 10
#     roles for KIAM's names, a namespace template, namespace tags and
#     per-pod tags.
# Every table is printed again at the end. About half an hour on two
# cores, most of it loading 100,000 pods into the API server.
# Knobs (environment): PODIAM_BENCH_WRK_SECONDS, PODIAM_BENCH_WRK_ROUNDS,
# PODIAM_BENCH_COLD_TRIALS; for the scale rows PODIAM_BENCH_SCALE_PODS
# (the rows' pod counts, comma-separated: 2000 for a quick look),
# PODIAM_BENCH_SCALE_NAMESPACES, PODIAM_BENCH_SCALE_NODES,
# PODIAM_BENCH_SCALE_LOAD_MINUTES (25: rows not loaded by then are
# reported as the count reached), PODIAM_BENCH_SCALE_CHURN_RATE (100),
# PODIAM_BENCH_SCALE_CHURN_SECONDS (60; 0: no churn) and
# PODIAM_BENCH_SCALE_PROFILES=/some/dir for the server's heap profiles;
# PODIAM_BENCH_PERF=/some/dir to profile agent and ceiling with perf;
# BENCH=ServerScale (a -bench pattern) runs a part.
# soak runs the chaos soak for SOAK (default 10m; a Go duration) and prints
# its figures: two nodes with an agent each, two servers, twelve pods that
# ask continuously and are re-created on their addresses with other roles,
# a namespace's policy flipping, and on a seeded schedule a server and an
# agent SIGKILLed, kube-apiserver restarted, STS throttling and failing,
# certificates rotated and a server cut off from kube-apiserver. Every
# answer is checked (wrong role, node secrets, denied served, expired
# served); this run only reports, while the 90 s soak in make test fails on
# any violation. PODIAM_SOAK_SEED=<seed printed by a run> replays its
# schedule. Root, like make test.
.PHONY: soak
SOAK ?= 10m
soak: deps
	PODIAM_SOAK=$(SOAK) PODIAM_SOAK_REPORT_ONLY=1 $(GO) test -race -count=1 -v -timeout 3h -tags $(TEST_TAGS) -run '^TestSoak$$' ./test/e2e

.PHONY: bench
BENCH ?= .
BENCHFLAGS = -count=1 -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 60m
bench: deps
	@summary=$$(mktemp); trap 'rm -f "$$summary"' EXIT; \
	export PODIAM_BENCH_SUMMARY=$$summary; rc=0; \
	for pkg in ./test/integration ./test/e2e; do \
	  echo "$(GO) test $(BENCHFLAGS) $$pkg"; \
	  $(GO) test $(BENCHFLAGS) $$pkg || rc=1; \
	done; \
	echo; echo "==================== podiam benchmark summary ($$(nproc) cores, $$(date -u +%Y-%m-%dT%H:%MZ)) ===================="; \
	echo; cat "$$summary"; exit $$rc
