# podiam image: one static binary for server, agent and health, answering
# to /podiam and to /kiam so that KIAM manifests (command: /kiam) run with
# only the image changed.
#
#   docker build -t ghcr.io/podiam/podiam:v0.1.0 .
#
# The final stage is Debian slim rather than distroless because the agent
# runs iptables (go-iptables execs it) and conntrack. It runs as root by
# default: the agent needs NET_ADMIN, and Kubernetes grants no ambient
# capabilities to a non-root user. The server's manifests run it as
# non-root (runAsUser 65532) with every capability dropped.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# Only what cmd/podiam links: test/ and hack/ stay out of the context's
# layers (test/manifests checks that this list covers every package).
COPY cmd/ cmd/
COPY pkg/ pkg/
COPY proto/ proto/
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags='-s -w' -o /out/podiam ./cmd/podiam

FROM debian:bookworm-slim
# iptables ships both back ends (iptables-legacy and iptables-nft); the
# wrapper below picks the node's. conntrack lets the agent drop connections
# to the metadata address that predate its rule. ca-certificates is for STS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables conntrack ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/image/iptables-wrapper /usr/sbin/podiam-iptables-wrapper
# /usr/local/sbin comes first in PATH, so go-iptables' lookup of "iptables"
# finds the wrapper, which execs /usr/sbin/iptables-legacy or -nft.
RUN for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
      ln -s /usr/sbin/podiam-iptables-wrapper "/usr/local/sbin/$n"; \
    done \
    && mkdir -p /run/podiam
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=build /out/podiam /podiam
RUN ln -s /podiam /kiam
ENTRYPOINT ["/podiam"]
