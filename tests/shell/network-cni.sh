#!/usr/bin/env bash
# CNI through containerd's CRI with runtime handler `husk`: containerd runs
# inside a network namespace this test creates (so the CNI bridge lives
# there, never in the host's), its CRI plugin uses a bridge + host-local
# config in a temp dir (10.254.7.0/24) and the plugins in /usr/lib/cni.
# Two pods: pod 2 reaches pod 1's server through pod 1's VM. Nothing is left
# behind (processes, mounts, network namespaces, taps).
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_cri_preflight
tmp=$(mktemp -d)
cleanup() { shim_cleanup; containerd_stop; shim_cni_cleanup; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/logs"
shim_cri_start "$tmp" "husk-cni-host.$$" husk-test hkbr0 10.254.7.0/24 || exit 1
"$venv/bin/python" "$here/shim/cri/cni_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" "/var/run/netns/$CNI_HOSTNS" \
  || fail "CNI client"
shim_expect_nothing_left
new=$(shim_cni_netns_left)
[ -z "$new" ] || fail "network namespaces left: $new"
ip -n "$CNI_HOSTNS" link show | grep -q tap0_husk && fail "a tap is left in the host-side netns"
echo "ok: nothing left behind (processes, mounts, network namespaces)"
