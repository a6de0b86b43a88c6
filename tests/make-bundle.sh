#!/usr/bin/env bash
# Makes an OCI bundle without any image registry: DIR/rootfs is a busybox
# rootfs (Debian's busybox-static, every applet linked), DIR/config.json is
# the config `runc spec` writes, with process.args = ARGS (default: sh),
# terminal off and a writable rootfs unless asked otherwise. --probes adds
# the static test probes of tests/probes/ (e.g. vsock-cat) to /usr/bin.
#
# usage: make-bundle.sh [--readonly] [--tty] [--probes] DIR [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"

readonly_root=false
terminal=false
probes=false
while [ $# -gt 0 ]; do
  case "$1" in
    --readonly) readonly_root=true; shift ;;
    --tty) terminal=true; shift ;;
    --probes) probes=true; shift ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die "usage: $0 [--readonly] [--tty] [--probes] DIR [ARGS...]"
dir=$1; shift
[ $# -gt 0 ] || set -- sh

apt_need busybox-static jq
[ -e "$dir/config.json" ] && die "$dir already holds a bundle"
"$here/make-rootfs.sh" "$dir/rootfs" >/dev/null
if $probes; then
  probe_dir=$("$here/probes/build.sh")
  for p in "$probe_dir"/*; do install -m 0755 "$p" "$dir/rootfs/usr/bin/"; done
fi

args=$(printf '%s\n' "$@" | jq -R . | jq -s -c .)
jq --argjson args "$args" --argjson ro "$readonly_root" --argjson tty "$terminal" \
  '.process.args = $args | .root.readonly = $ro | .process.terminal = $tty' \
  "$here/../runtime/src/default-spec.json" > "$dir/config.json"
echo "$dir"
