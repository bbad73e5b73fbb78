#!/usr/bin/env bash
# Installs what the integration and e2e tests run for real (etcd, kube-apiserver,
# moto as STS, iptables and network namespaces, the AWS CLI) on a fresh Debian
# machine, as root. It is idempotent and silent when everything is present, so
# CI can call it before every test run.
#
# The package indexes and PyPI may be unreachable on these machines, so nothing
# is fetched unless it is missing: apt-get update runs at most once, and pip
# runs only for absent Python packages (a local wheel directory given in
# PIP_FIND_LINKS is honoured by pip itself).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "install-deps: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $*"
  fi
}

# --- apt packages -----------------------------------------------------------
# libprotobuf-dev holds the well-known types (timestamp.proto) that make
# proto, and so make verify, compile against.

apt_packages=(etcd-server iptables iproute2 conntrack protobuf-compiler libprotobuf-dev wrk curl)
# test/node and make image: a real node (containerd, runc, the CNI plugins,
# nsenter from util-linux) and the image built without Docker (buildah, with
# a debootstrap'ed Debian standing in for the Dockerfile's base images).
apt_packages+=(containerd runc containernetworking-plugins util-linux buildah debootstrap)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_updated=false
apt_install() {
  local missing=() p
  for p in "$@"; do
    installed "$p" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} by hand"
  say "installing apt packages: ${missing[*]}"
  if ! $apt_updated; then
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=true
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

apt_install "${apt_packages[@]}"

# --- python packages ----------------------------------------------------------

if ! command -v python3 >/dev/null 2>&1; then
  apt_install python3
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt_install python3-pip
fi

# pip_missing lists the pip requirements whose module or command is absent.
pip_missing=()
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; then
  pip_missing+=('moto[server]')
fi
if ! python3 -c 'import boto3' >/dev/null 2>&1; then
  pip_missing+=(boto3)
fi
if ! command -v aws >/dev/null 2>&1; then
  pip_missing+=(awscli)
fi

if ((${#pip_missing[@]})); then
  say "installing python packages: ${pip_missing[*]}${PIP_FIND_LINKS:+ (find-links: $PIP_FIND_LINKS)}"
  pip_args=(install --quiet --disable-pip-version-check)
  # Debian's python refuses pip installs into the system environment (PEP 668);
  # these are test tools on a throwaway CI machine, so override it there.
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  if [[ -f "$stdlib/EXTERNALLY-MANAGED" ]]; then
    pip_args+=(--break-system-packages)
  fi
  pip_env=()
  [[ -n "${PIP_FIND_LINKS:-}" ]] && pip_env+=("PIP_FIND_LINKS=$PIP_FIND_LINKS")
  if ! as_root env "${pip_env[@]}" python3 -m pip "${pip_args[@]}" "${pip_missing[@]}"; then
    die "pip install ${pip_missing[*]} failed: PyPI may be unreachable; put wheels for them in a directory and set PIP_FIND_LINKS to it"
  fi
  hash -r
  command -v moto_server >/dev/null 2>&1 || die "moto_server still not on PATH after pip install (check pip's script directory)"
  command -v aws >/dev/null 2>&1 || die "aws still not on PATH after pip install (check pip's script directory)"
fi

# --- kube-apiserver -----------------------------------------------------------

command -v go >/dev/null 2>&1 || die "go not found on PATH; it is needed to build kube-apiserver"
"$root/hack/install-kube-apiserver.sh"
# test/node's kubelet, scheduler and controller manager (and an API server
# that reports its real version), from the same pin.
"$root/hack/install-kube-node.sh" >/dev/null

# --- SDK clients of the e2e test ------------------------------------------------
# The end-to-end test runs unmodified AWS SDKs inside pod network namespaces:
# the AWS CLI and boto3 (above), the JavaScript SDK v3 pinned in
# test/e2e/js/package-lock.json, and an aws-sdk-go-v2 program in the main
# module (test/e2e/gosdk).

if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install npm
fi
node_major=$(node -e 'process.stdout.write(process.versions.node.split(".")[0])')
((node_major >= 20)) || die "node $(node --version) is too old for the JavaScript SDK v3 in test/e2e/js (it needs 20 or later)"

# npm ci runs only when node_modules is missing or older than the lock file,
# so the usual run is silent and needs no registry.
js_dir="$root/test/e2e/js"
if [[ ! -f "$js_dir/node_modules/.package-lock.json" || "$js_dir/package-lock.json" -nt "$js_dir/node_modules/.package-lock.json" ]]; then
  say "installing the JavaScript SDK for the e2e test (npm ci in test/e2e/js)"
  (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
    die "npm ci in test/e2e/js failed: the npm registry may be unreachable"
fi

# Building the Go client fetches its modules now rather than in the middle of
# the test; the build cache makes later runs instant.
(cd "$root" && go build -o /dev/null ./test/e2e/gosdk) || die "building the e2e Go SDK client (test/e2e/gosdk) failed"

# --- deploy tooling (test/manifests) --------------------------------------------
# test/manifests renders the Helm chart in deploy/helm and runs
# hack/gen-certs.sh (openssl). helm is built from the Go module proxy, the
# only source of it these machines reach, with the ldflags of helm's own
# Makefile (version, and the Kubernetes version its client modules target),
# and cached in bin/ under its version.

apt_install openssl
helm_version=v3.19.2
helm_k8s_minor=34 # helm v3.19 builds against k8s.io/client-go v0.34
if [[ ! -x "$root/bin/helm-$helm_version" ]]; then
  say "building helm $helm_version into bin/ (a minute or two the first time)"
  helm_tmp=$(mktemp -d)
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
  for pkg in pkg/lint/rules pkg/chartutil; do
    helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$helm_k8s_minor"
  done
  if ! (cd "$helm_tmp" && GOBIN="$helm_tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$helm_version"); then
    rm -rf "$helm_tmp"
    die "building helm $helm_version failed: the Go module proxy may be unreachable"
  fi
  mkdir -p "$root/bin"
  mv "$helm_tmp/helm" "$root/bin/helm-$helm_version"
  rm -rf "$helm_tmp"
fi
if [[ "$(readlink "$root/bin/helm" 2>/dev/null)" != "helm-$helm_version" ]]; then
  ln -sfn "helm-$helm_version" "$root/bin/helm"
fi

# test/manifests installs cert-manager's published CRDs into its
# kube-apiserver to validate the Certificates and Issuers podiam ships; they
# come with cert-manager's Go module, from the module proxy.
(cd "$root" && go mod download github.com/cert-manager/cert-manager@v1.19.1) || die "downloading cert-manager's CRDs (Go module github.com/cert-manager/cert-manager@v1.19.1) failed"
