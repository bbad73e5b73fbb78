#!/usr/bin/env bash
# Builds kube-apiserver from the k8s.io/kubernetes module pinned in
# hack/tools/kube-apiserver and caches it in bin/. A first build takes about
# eight minutes on two cores, so the binary is reused while the pin is unchanged.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mod="$root/hack/tools/kube-apiserver"
stamp="$bin/.kube-apiserver.sum"
want=$(sha256sum "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -d' ' -f1)
if [[ -x "$bin/kube-apiserver" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
mkdir -p "$bin"
echo "building kube-apiserver (first time takes several minutes)..." >&2
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
echo "$want" >"$stamp"
