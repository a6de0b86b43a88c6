#!/usr/bin/env bash
# Builds the guest vmlinux from Debian's linux-source-6.12 with our config
# fragments, caching it under $HUSK_CACHE_DIR/kernel/<key>/ where the key
# hashes the fragments, this script and the source package version.
# The last line of output is the absolute path of vmlinux.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"

apt_need linux-source-6.12 flex bison bc libelf-dev libssl-dev cpio make gcc xz-utils

src_tar=/usr/src/linux-source-6.12.tar.xz
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
fragments=("$here"/fragments/*.config)
key=$(printf '%s\n' "$src_ver" | cat - "${fragments[@]}" "$0" | sha256sum | cut -c1-16)
out="$HUSK_CACHE_DIR/kernel/$key"

if [ -s "$out/vmlinux" ] && [ -s "$out/config" ]; then
  log "cached: $out/vmlinux (key $key)"
  echo "$out/vmlinux"
  exit 0
fi

# The source tree is kept between builds so a fragment change rebuilds
# incrementally (~1 min) rather than from scratch (~7 min on 2 cores).
tree="$HUSK_CACHE_DIR/kernel-src/$src_ver"
if [ ! -f "$tree/.extracted" ]; then
  log "extracting $src_tar into $tree"
  rm -rf "$tree" && mkdir -p "$tree"
  tar -C "$tree" --strip-components=1 -xf "$src_tar"
  touch "$tree/.extracted"
fi

jobs=${HUSK_JOBS:-$(nproc)}
log "configuring (tinyconfig + ${#fragments[@]} fragments)"
make -C "$tree" -s tinyconfig >&2
KCONFIG_CONFIG="$tree/.config" "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" \
  "$tree/.config" "${fragments[@]}" >&2
make -C "$tree" -s olddefconfig >&2
log "building vmlinux with $jobs jobs"
make -C "$tree" -s -j"$jobs" vmlinux >&2

mkdir -p "$out.tmp"
cp "$tree/vmlinux" "$out.tmp/vmlinux"
cp "$tree/.config" "$out.tmp/config"
rm -rf "$out" && mv "$out.tmp" "$out"
log "built $out/vmlinux"
echo "$out/vmlinux"
