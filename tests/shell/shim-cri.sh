#!/usr/bin/env bash
# CRI through containerd's socket with runtime handler `husk`: a pod (its VM
# booted for the sandbox) on a CNI network, two containers in it, ExecSync,
# logs, stop and remove, and nothing left behind; a pod asking for the
# host's network (hostNetwork) is refused; a container the guest's OOM
# killer kills at its memory limit is reported exited 137, reason OOMKilled. The client is Python grpcio (from
# PyPI, installed in a venv under /var/cache) on the CRI runtime.v1 proto.
# containerd (so CNI and the shims) runs in a network namespace the test
# creates, with a bridge + host-local CNI config in a temp dir
# (10.254.8.0/24, plugins from /usr/lib/cni), as in network-cni.sh: a VM
# pod cannot use the host's network, so the pod needs one of its own.
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_cri_preflight
tmp=$(mktemp -d)
# Shim sockets are made in containerd's socket directory whatever its
# config says; the ones there before the test are not the test's.
socks_before=$(ls /run/containerd/s 2>/dev/null | sort)
cleanup() { shim_cleanup; containerd_stop; shim_cni_cleanup; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/logs"
shim_cri_start "$tmp" "husk-cri-host.$$" husk-cri hkbr1 10.254.8.0/24 || exit 1
"$venv/bin/python" "$here/shim/cri/cri_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" || fail "CRI client"
shim_expect_nothing_left
new=$(shim_cni_netns_left)
[ -z "$new" ] || fail "network namespaces left: $new"
# Every shim removed its socket (runc's shim does): none of this test's
# pods (the refused one included) left one in /run/containerd/s.
socks=$(comm -13 <(echo "$socks_before") <(ls /run/containerd/s 2>/dev/null | sort))
[ -z "$socks" ] || fail "shim sockets left in /run/containerd/s: $socks"
echo "ok: nothing left behind (processes, mounts, network namespaces, shim sockets)"
