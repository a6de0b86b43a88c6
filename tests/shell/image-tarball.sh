#!/usr/bin/env bash
# The busybox image tarball is a valid OCI layout that `ctr images import` takes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/lib/containerd.sh"
tmp=$(mktemp -d); trap 'containerd_stop 2>/dev/null; rm -rf "$tmp"' EXIT
"$here/make-image.sh" "$tmp/img.tar" docker.io/library/husk-busybox:test >/dev/null
tar -xOf "$tmp/img.tar" ./index.json | jq -e '.manifests[0].annotations["io.containerd.image.name"] == "docker.io/library/husk-busybox:test"' >/dev/null
command -v containerd >/dev/null || { echo "SKIP: containerd not installed"; exit 77; }
[ "$(id -u)" -eq 0 ] || { echo "SKIP: containerd needs root"; exit 77; }
containerd_start
ctr --address "$CTR_ADDR" images import "$tmp/img.tar" >/dev/null
images=$(ctr --address "$CTR_ADDR" images check)
grep -E '^docker.io/library/husk-busybox:test .*complete' <<<"$images" >/dev/null \
  || { echo "image not imported complete:"; echo "$images"; exit 1; }
