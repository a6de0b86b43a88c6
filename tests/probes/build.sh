#!/usr/bin/env bash
# Builds the test probes in this folder as static binaries (so they run in
# the busybox test rootfs), cached under $HUSK_CACHE_DIR/probes/<hash>/.
# Prints the directory that holds them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
sources=("$here"/*.c)
out="$HUSK_CACHE_DIR/probes/$(hash_inputs "${sources[@]}" "$0")"
if [ ! -f "$out/.done" ]; then
  command -v gcc >/dev/null || apt_need build-essential
  mkdir -p "$out"
  for c in "${sources[@]}"; do
    gcc -static -O2 -Wall -Werror -o "$out/$(basename "$c" .c)" "$c"
  done
  touch "$out/.done"
fi
echo "$out"
