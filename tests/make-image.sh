#!/usr/bin/env bash
# Packs the busybox rootfs of make-rootfs.sh as an OCI image layout tarball
# that `ctr images import` (and `podman load`) accept, without a registry.
#
# usage: make-image.sh OUT.tar [NAME]   (NAME default: docker.io/library/husk-busybox:latest)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"
out=${1:?usage: $0 OUT.tar [NAME]}
name=${2:-docker.io/library/husk-busybox:latest}
apt_need jq busybox-static

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/make-rootfs.sh" "$work/rootfs" >/dev/null
mkdir -p "$work/image/blobs/sha256"
blobs=$work/image/blobs/sha256

# put_blob FILE: moves FILE into blobs/ under its digest, prints the digest.
put_blob() {
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$blobs/$d"
  echo "$d"
}
size_of() { stat -c %s "$blobs/$1"; }

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n "$work/layer.tar"
layer=$(put_blob "$work/layer.tar.gz")

jq -n --arg diff "sha256:$diff_id" '{
  architecture: "amd64", os: "linux",
  config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: ["sh"], WorkingDir: "/"},
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created_by: "husk tests/make-image.sh (busybox-static)"}]
}' > "$work/config.json"
config=$(put_blob "$work/config.json")

jq -n --arg c "sha256:$config" --argjson cs "$(size_of "$config")" \
      --arg l "sha256:$layer" --argjson ls "$(size_of "$layer")" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]
}' > "$work/manifest.json"
manifest=$(put_blob "$work/manifest.json")

jq -n --arg m "sha256:$manifest" --argjson ms "$(size_of "$manifest")" --arg name "$name" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
    platform: {architecture: "amd64", os: "linux"},
    annotations: {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": ($name | sub(".*:"; ""))}}]
}' > "$work/image/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/image/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/image" -cf "$out" .
echo "$out"
