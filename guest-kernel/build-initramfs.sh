#!/usr/bin/env bash
# Packs the guest initramfs: the statically linked husk-agent as /init and
# the empty mount points it needs, nothing else. Cached under
# $HUSK_CACHE_DIR/initramfs/<key>/ where the key hashes the agent binary and
# this script. The last line of output is the absolute path of the cpio.
#
# usage: build-initramfs.sh [AGENT_BINARY]
#   Without an argument the agent is built here (static, release).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$root/scripts/lib.sh"

apt_need cpio binutils

agent=${1:-}
if [ -z "$agent" ]; then
  # glibc static: no musl target on these machines. The agent must not use
  # NSS (getpwnam and friends), which static glibc cannot load.
  log "building husk-agent (static, release)"
  (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build -q --release -j"${HUSK_JOBS:-$(nproc)}" -p husk-agent \
      --target x86_64-unknown-linux-gnu >&2)
  agent="$root/target/x86_64-unknown-linux-gnu/release/husk-agent"
fi
[ -x "$agent" ] || die "no agent binary at $agent"
if file -L "$agent" 2>/dev/null | grep -q 'dynamically linked'; then
  die "$agent is dynamically linked; the initramfs needs a static agent"
fi

key=$(hash_inputs "$agent" "$0")
out="$HUSK_CACHE_DIR/initramfs/$key"
if [ -s "$out/initramfs.cpio" ]; then
  log "cached: $out/initramfs.cpio"
  echo "$out/initramfs.cpio"
  exit 0
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
# Stripped (7.6 -> 6.1 MB): the initramfs stays in guest RAM as the root
# filesystem, and every boot copies it there; panics still name their file
# and line.
install -s -m 0755 "$agent" "$stage/init"
mkdir -p "$out.tmp"
# Sorted names and fixed mtimes make the archive reproducible.
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
  | cpio --null -o -H newc --owner 0:0 --reproducible --quiet) > "$out.tmp/initramfs.cpio"
rm -rf "$out" && mv "$out.tmp" "$out"
log "packed $out/initramfs.cpio"
echo "$out/initramfs.cpio"
