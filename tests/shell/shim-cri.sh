#!/usr/bin/env bash
# CRI through containerd's socket with runtime handler `husk`: a pod (its VM
# booted for the sandbox) on a CNI network, two containers in it, ExecSync,
# logs, stop and remove, and nothing left behind; a pod asking for the
# host's network (hostNetwork) is refused. The client is Python grpcio (from
# PyPI, installed in a venv under /var/cache) on the CRI runtime.v1 proto.
# containerd (so CNI and the shims) runs in a network namespace the test
# creates, with a bridge + host-local CNI config in a temp dir
# (10.254.8.0/24, plugins from /usr/lib/cni), as in network-cni.sh: a VM
# pod cannot use the host's network, so the pod needs one of its own.
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
  || shim_skip "CNI plugins not installed (apt-get install containernetworking-plugins)"
command -v ip >/dev/null && command -v nsenter >/dev/null || shim_skip "iproute2/util-linux missing"
venv=${HUSK_CRI_VENV:-/var/cache/husk-cri-venv}
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio grpcio-tools; } >/dev/null 2>&1 \
    || shim_skip "cannot install grpcio/grpcio-tools from PyPI into $venv"
fi
tmp=$(mktemp -d)
hostns=husk-cri-host.$$
netns_before=$(ls /var/run/netns 2>/dev/null | sort)
# Shim sockets are made in containerd's socket directory whatever its
# config says; the ones there before the test are not the test's.
socks_before=$(ls /run/containerd/s 2>/dev/null | sort)
cleanup() {
  shim_cleanup; containerd_stop
  # Pod namespaces containerd created and did not remove (a failed run).
  for n in $(comm -13 <(echo "$netns_before") <(ls /var/run/netns 2>/dev/null | sort)); do
    case $n in cni-*) ip netns del "$n" 2>/dev/null ;; esac
  done
  ip netns del "$hostns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$hostns" && ip -n "$hostns" link set lo up || fail "cannot create netns $hostns"
mkdir -p "$tmp/cni" "$tmp/ipam" "$tmp/logs"
cat > "$tmp/cni/10-husk-cri.conflist" <<CNI
{ "cniVersion": "0.4.0", "name": "husk-cri",
  "plugins": [ { "type": "bridge", "bridge": "hkbr1", "isGateway": true, "ipMasq": false,
                 "ipam": { "type": "host-local", "dataDir": "$tmp/ipam",
                           "ranges": [[ { "subnet": "10.254.8.0/24" } ]],
                           "routes": [ { "dst": "0.0.0.0/0" } ] } } ] }
CNI
"$venv/bin/python" -m grpc_tools.protoc -I "$here/shim/cri" --python_out="$tmp" --grpc_python_out="$tmp" api.proto \
  || fail "protoc"
CONTAINERD_WRAP="nsenter --net=/var/run/netns/$hostns" shim_containerd_start_cri "[plugins.\"io.containerd.grpc.v1.cri\".cni]
  bin_dir = \"/usr/lib/cni\"
  conf_dir = \"$tmp/cni\"" || exit 1
shim_import_image "$tmp" k8s.io
shim_import_pause_image "$tmp" k8s.io
"$venv/bin/python" "$here/shim/cri/cri_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" || fail "CRI client"
for _ in $(seq 100); do [ -z "$(shim_leftovers)" ] && break; sleep 0.2; done
left=$(shim_leftovers)
[ -z "$left" ] || fail "left behind: $left"
new=$(comm -13 <(echo "$netns_before") <(ls /var/run/netns 2>/dev/null | sort) | grep -v "^$hostns\$")
[ -z "$new" ] || fail "network namespaces left: $new"
# Every shim removed its socket (runc's shim does): none of this test's
# pods (the refused one included) left one in /run/containerd/s.
socks=$(comm -13 <(echo "$socks_before") <(ls /run/containerd/s 2>/dev/null | sort))
[ -z "$socks" ] || fail "shim sockets left in /run/containerd/s: $socks"
echo "ok: nothing left behind (processes, mounts, network namespaces, shim sockets)"
