#!/usr/bin/env bash
# The initramfs holds a statically linked /init and nothing it does not need.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cpio_path=${HUSK_INITRAMFS:-/usr/local/share/husk/initramfs.cpio}
[ -s "$cpio_path" ] || { echo "SKIP: no initramfs at $cpio_path (run scripts/setup.sh)"; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && cpio -id --quiet < "$cpio_path")
[ -x "$tmp/init" ] || { echo "no executable /init"; exit 1; }
file "$tmp/init" | grep -qE 'statically linked|static-pie linked' || { echo "/init is not static: $(file "$tmp/init")"; exit 1; }
"$tmp/init" --version | grep -q husk-agent || { echo "/init is not husk-agent"; exit 1; }
extra=$(cd "$tmp" && find . -mindepth 1 ! -name init ! -type d)
[ -z "$extra" ] || { echo "unexpected files in the initramfs: $extra"; exit 1; }
