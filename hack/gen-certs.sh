#!/usr/bin/env bash
# Generates the mutual TLS files podiam's server and agents need, for clusters
# without cert-manager: a CA, a server certificate and an agent certificate,
# ECDSA P-256, written as the files cert-manager would put in the Secrets
# (tls.crt, tls.key, ca.crt), then prints the kubectl commands that create the
# Secrets the manifests and the Helm chart mount.
#
# The server certificate is for serverAuth only, so it cannot act as an agent
# or as any other client: the server's readiness probe is plain HTTP
# (/readyz) and needs no client certificate. The agent certificate is for
# clientAuth only. -k adds clientAuth to the server certificate for KIAM's own
# manifests, whose probes run `health` with the server's certificate; run
# podiam's manifests or chart without it.
#
# usage: hack/gen-certs.sh [-o DIR] [-n NAMESPACE] [-p PREFIX] [-d CLUSTER_DOMAIN] [-D DAYS] [-k] [-f]
set -euo pipefail

out=podiam-certs
namespace=kube-system
prefix=podiam
domain=cluster.local
days=365
kiam=false
force=false

usage() {
  cat >&2 <<EOF
usage: $0 [-o DIR] [-n NAMESPACE] [-p PREFIX] [-d CLUSTER_DOMAIN] [-D DAYS] [-k] [-f]
  -o DIR             output directory (default: $out)
  -n NAMESPACE       namespace of the server Service and the Secrets (default: $namespace)
  -p PREFIX          name prefix of the Service and Secrets: PREFIX-server, PREFIX-server-tls,
                     PREFIX-agent-tls; for Helm, the release's full name (default: $prefix)
  -d CLUSTER_DOMAIN  cluster DNS domain (default: $domain)
  -D DAYS            validity of the server and agent certificates; the CA gets ten times as long (default: $days)
  -k                 for KIAM's manifests: the server certificate also gets clientAuth, which their
                     probes need; it can then act as a client (as an agent without --agent-identity)
  -f                 overwrite an existing CA in DIR
EOF
  exit 2
}

while getopts "o:n:p:d:D:kfh" opt; do
  case $opt in
    o) out=$OPTARG ;;
    n) namespace=$OPTARG ;;
    p) prefix=$OPTARG ;;
    d) domain=$OPTARG ;;
    D) days=$OPTARG ;;
    k) kiam=true ;;
    f) force=true ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
(($# == 0)) || usage
[[ $days =~ ^[1-9][0-9]*$ ]] || { echo "gen-certs: -D must be a positive number of days" >&2; exit 2; }
command -v openssl >/dev/null 2>&1 || { echo "gen-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }

# An existing CA is never replaced silently: agents and servers that still
# trust it would stop talking to each other half way through a rollout.
if [[ -e "$out/ca/ca.key" ]] && ! $force; then
  echo "gen-certs: $out/ca/ca.key exists; pass -f to replace the CA" >&2
  exit 1
fi

mkdir -p "$out/ca" "$out/server" "$out/agent"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key "$out/ca/ca.key"
openssl req -x509 -new -sha256 -key "$out/ca/ca.key" -days $((days * 10)) \
  -subj "/CN=podiam-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca/ca.crt"

# issue NAME CN EXTENSIONS: a key, a CSR and a certificate signed by the CA,
# laid out as a kubernetes.io/tls Secret with ca.crt beside it.
issue() {
  local dir=$out/$1 cn=$2 ext=$3
  key "$dir/tls.key"
  openssl req -new -sha256 -key "$dir/tls.key" -subj "/CN=$cn" -out "$tmp/$1.csr"
  printf '%s\n' "$ext" >"$tmp/$1.ext"
  openssl x509 -req -sha256 -in "$tmp/$1.csr" -CA "$out/ca/ca.crt" -CAkey "$out/ca/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -days "$days" -extfile "$tmp/$1.ext" -out "$dir/tls.crt" 2>/dev/null
  cp "$out/ca/ca.crt" "$dir/ca.crt"
}

service=$prefix-server
svc=$service.$namespace
server_usage=serverAuth
if $kiam; then
  server_usage=serverAuth,clientAuth
fi
issue server "$service" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$server_usage
subjectAltName=DNS:$service,DNS:$svc,DNS:$svc.svc,DNS:$svc.svc.$domain,DNS:localhost,IP:127.0.0.1,IP:::1"

# The agent certificate's common name is the identity the server's
# --agent-identity accepts (podiam-agent in the manifests and the chart).
issue agent podiam-agent "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

# The certificates are public; only the keys stay private.
chmod 644 "$out/ca/ca.crt" "$out"/{server,agent}/{tls,ca}.crt

cat <<EOF
# Certificates written to $out/ (CA key: $out/ca/ca.key, keep it offline).
# Create the Secrets podiam mounts:
kubectl -n $namespace create secret generic $service-tls --from-file=tls.crt=$out/server/tls.crt --from-file=tls.key=$out/server/tls.key --from-file=ca.crt=$out/server/ca.crt
kubectl -n $namespace create secret generic $prefix-agent-tls --from-file=tls.crt=$out/agent/tls.crt --from-file=tls.key=$out/agent/tls.key --from-file=ca.crt=$out/agent/ca.crt
EOF
