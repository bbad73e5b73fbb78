#!/usr/bin/env bash
# Builds the Kubernetes binaries test/node runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet) from the k8s.io/kubernetes
# module pinned in hack/tools/kube-node, which must be the pin of
# hack/tools/kube-apiserver, and caches them in bin/ under their version.
# Prints the directory that holds them.
#
# Built from the module, they would report v0.0.0-master; Helm's kubeVersion
# check and the kubelet's version skew checks need the real one, so it is set
# with -ldflags -X as Kubernetes' own build does. One go build for the four
# shares their common packages: about five minutes with a warm module cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
mod="$root/hack/tools/kube-node"

pin() { awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$1/go.mod"; }
version=$(pin "$mod")
[[ -n $version ]] || { echo "install-kube-node: no k8s.io/kubernetes pin in $mod/go.mod" >&2; exit 1; }
if [[ $version != "$(pin "$root/hack/tools/kube-apiserver")" ]]; then
  echo "install-kube-node: hack/tools/kube-node pins k8s.io/kubernetes $version, hack/tools/kube-apiserver $(pin "$root/hack/tools/kube-apiserver"): keep them equal" >&2
  exit 1
fi

cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
dir="$bin/kube-node-$version"
stamp="$dir/.sum"
major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
# client-go reports the same version in its user agent and version checks.
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"

# The cache key: the pin and the flags, not this script's wording.
want=$( { cat "$mod/go.mod" "$mod/go.sum"; echo "${cmds[*]} $ldflags"; } | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$dir"
  exit 0
fi

echo "install-kube-node: building ${cmds[*]} $version into $dir (several minutes the first time)" >&2
tmp=$(mktemp -d "$bin/.kube-node.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
echo "$want" >"$tmp/.sum"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
