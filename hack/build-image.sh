#!/usr/bin/env bash
# Builds podiam's image from the Dockerfile as it is, without Docker and
# without a registry, and writes a docker-archive that `docker load` and
# `ctr -n k8s.io images import` accept. Prints the archive's path.
#
# The Dockerfile's base images come from registries these machines cannot
# reach, so local stand-ins are made from Debian's packages under the same
# names: docker.io/library/debian:bookworm-slim with debootstrap, and
# docker.io/library/golang:1.26 from that base plus ca-certificates, git, the
# host's /usr/local/go and the CA certificates the host trusts (HTTPS from
# the build container goes through the same interception as the host's;
# those CAs never reach the final image, which starts from the slim base).
#
# Everything is cached in bin/images under a hash of its inputs: the base
# images, and the image itself under the Dockerfile and the files it copies.
# buildah's storage is a temporary directory removed on exit, so nothing is
# left in /var/lib/containers.
#
# usage: hack/build-image.sh [IMAGE_NAME]   (default ghcr.io/podiam/podiam:dev)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-ghcr.io/podiam/podiam:dev}
images="$root/bin/images"
mkdir -p "$images"

say() { echo "build-image: $*" >&2; }
# make image must work on a fresh machine without the whole of make deps.
if ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  say "installing buildah and debootstrap"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null ||
    { say "apt-get install buildah debootstrap failed (needs root)"; exit 1; }
fi

hash() { sha256sum | cut -c1-16; }
# Bump a recipe when its steps below change, so its cached archive is
# rebuilt; editing the rest of this script keeps the slow base images.
base_recipe=1
golang_recipe=1
image_recipe=1
mirror=http://deb.debian.org/debian

# The image's inputs: the Dockerfile and every file its COPY lines read.
context=(go.mod go.sum cmd pkg proto deploy/image)
image_sum=$(cd "$root" && {
  echo "$name $image_recipe"
  sha256sum Dockerfile
  git ls-files -co --exclude-standard -- "${context[@]}" | LC_ALL=C sort | xargs -d '\n' sha256sum
} | hash)
out="$images/podiam-$image_sum.tar"
if [[ -s $out ]]; then
  say "cached: $out"
  echo "$out"
  exit 0
fi

work=$(mktemp -d /var/tmp/podiam-build-image.XXXXXX)
store=(--root "$work/storage" --runroot "$work/run" --storage-driver overlay)
# buildah's temporary files (TMPDIR) go with its storage; its blob-info
# cache is always /var/lib/containers/cache, removed if this run made it.
mkdir -p "$work/tmp"
export TMPDIR=$work/tmp
[[ -e /var/lib/containers ]] && made_lib=false || made_lib=true
bh() { buildah "${store[@]}" "$@"; }
cleanup() {
  bh rm --all >/dev/null 2>&1 || true
  bh rmi --all --force >/dev/null 2>&1 || true
  # Whatever buildah left mounted under its storage (overlay layers, shm).
  # (grep finds none when nothing is left: not an error, and under
  # pipefail it would end the cleanup before the directory goes.)
  { grep -o " $work[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
  for _ in 1 2 3 4 5; do
    rm -rf "$work" 2>/dev/null && break
    sleep 1
  done
  [[ -e $work ]] && say "warning: could not remove $work"
  if $made_lib; then rm -rf /var/lib/containers; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# base: docker.io/library/debian:bookworm-slim from debootstrap, trimmed as
# the official slim image is (no apt lists, docs, man pages or locales).
base_sum=$(echo "$base_recipe $mirror" | hash)
base="$images/debian-bookworm-slim-$base_sum.tar"
if [[ ! -s $base ]]; then
  start=$SECONDS
  say "debootstrap bookworm (about a minute)"
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
  find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  ctr=$(bh from scratch)
  mnt=$(bh mount "$ctr")
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xf -
  bh umount "$ctr" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  bh commit --quiet "$ctr" docker.io/library/debian:bookworm-slim >/dev/null
  bh rm "$ctr" >/dev/null
  bh push --quiet docker.io/library/debian:bookworm-slim "docker-archive:$base.tmp:docker.io/library/debian:bookworm-slim"
  mv "$base.tmp" "$base"
  rm -rf "$rootfs"
  say "base image done in $((SECONDS - start)) s"
else
  bh pull --quiet "docker-archive:$base" >/dev/null
fi

# golang: docker.io/library/golang:1.26 with the host's toolchain, laid out
# and configured as the official image is (GOPATH=/go, Go in /usr/local/go).
go_version=$(go env GOVERSION)
cas=(/usr/local/share/ca-certificates/*.crt)
[[ -e ${cas[0]} ]] || cas=()
go_sum=$( { echo "$golang_recipe $base_sum $go_version"; ((${#cas[@]})) && cat "${cas[@]}"; } | hash)
golang="$images/golang-$go_version-$go_sum.tar"
if [[ ! -s $golang ]]; then
  start=$SECONDS
  say "golang stand-in from the host's $go_version"
  ctr=$(bh from --pull=never docker.io/library/debian:bookworm-slim)
  bh run --network host "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates git >/dev/null && rm -rf /var/lib/apt/lists/*'
  mnt=$(bh mount "$ctr")
  tar -C "$(go env GOROOT)" -cf - . | { mkdir -p "$mnt/usr/local/go" && tar -C "$mnt/usr/local/go" -xf -; }
  if ((${#cas[@]})); then
    cp "${cas[@]}" "$mnt/usr/local/share/ca-certificates/"
  fi
  mkdir -p "$mnt/go/bin" "$mnt/go/src"
  bh umount "$ctr" >/dev/null
  bh run --network none "$ctr" -- update-ca-certificates >/dev/null
  bh config --env GOLANG_VERSION="${go_version#go}" --env GOTOOLCHAIN=local --env GOPATH=/go \
    --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --workingdir /go "$ctr"
  bh commit --quiet "$ctr" docker.io/library/golang:1.26 >/dev/null
  bh rm "$ctr" >/dev/null
  bh push --quiet docker.io/library/golang:1.26 "docker-archive:$golang.tmp:docker.io/library/golang:1.26"
  mv "$golang.tmp" "$golang"
  say "golang stand-in done in $((SECONDS - start)) s"
else
  bh pull --quiet "docker-archive:$golang" >/dev/null
fi

# The Dockerfile itself, with the context as users have it.
start=$SECONDS
say "buildah bud of the Dockerfile (several minutes cold: the Go build)"
bh bud --quiet --pull=never --network host --layers=false --format docker -t "$name" -f "$root/Dockerfile" "$root" >&2
bh push --quiet "$name" "docker-archive:$out.tmp:$name"
mv "$out.tmp" "$out"
say "image $name done in $((SECONDS - start)) s: $out"
echo "$out"
