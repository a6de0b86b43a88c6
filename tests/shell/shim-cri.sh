#!/usr/bin/env bash
# CRI through containerd's socket with runtime handler `husk`: a pod (its VM
# booted for the sandbox), two containers in it, ExecSync, logs, stop and
# remove, and nothing left behind. The client is Python grpcio (from PyPI,
# installed in a venv under /var/cache) on the CRI runtime.v1 proto.
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
venv=${HUSK_CRI_VENV:-/var/cache/husk-cri-venv}
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio grpcio-tools; } >/dev/null 2>&1 \
    || shim_skip "cannot install grpcio/grpcio-tools from PyPI into $venv"
fi
tmp=$(mktemp -d)
trap 'shim_cleanup; containerd_stop; rm -rf "$tmp"' EXIT
"$venv/bin/python" -m grpc_tools.protoc -I "$here/shim/cri" --python_out="$tmp" --grpc_python_out="$tmp" api.proto \
  || fail "protoc"
shim_containerd_start_cri || exit 1
shim_import_image "$tmp" k8s.io
shim_import_pause_image "$tmp" k8s.io
mkdir -p "$tmp/logs"
"$venv/bin/python" "$here/shim/cri/cri_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" || fail "CRI client"
for _ in $(seq 100); do [ -z "$(shim_leftovers)" ] && break; sleep 0.2; done
left=$(shim_leftovers)
[ -z "$left" ] || fail "left behind: $left"
echo "ok: nothing left behind"
