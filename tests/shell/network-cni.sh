#!/usr/bin/env bash
# CNI through containerd's CRI with runtime handler `husk`: containerd runs
# inside a network namespace this test creates (so the CNI bridge lives
# there, never in the host's), its CRI plugin uses a bridge + host-local
# config in a temp dir (10.254.7.0/24) and the plugins in /usr/lib/cni.
# Two pods: pod 2 reaches pod 1's server through pod 1's VM. Nothing is left
# behind (processes, mounts, network namespaces, taps).
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
hostns=husk-cni-host.$$
netns_before=$(ls /var/run/netns 2>/dev/null | sort)
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
cat > "$tmp/cni/10-husk-test.conflist" <<CNI
{ "cniVersion": "0.4.0", "name": "husk-test",
  "plugins": [ { "type": "bridge", "bridge": "hkbr0", "isGateway": true, "ipMasq": false,
                 "ipam": { "type": "host-local", "dataDir": "$tmp/ipam",
                           "ranges": [[ { "subnet": "10.254.7.0/24" } ]],
                           "routes": [ { "dst": "0.0.0.0/0" } ] } } ] }
CNI
"$venv/bin/python" -m grpc_tools.protoc -I "$here/shim/cri" --python_out="$tmp" --grpc_python_out="$tmp" api.proto \
  || fail "protoc"
# containerd (and so CNI and the shims) in the test's netns; only the
# network namespace changes (nsenter), the mount namespace stays the host's.
CONTAINERD_WRAP="nsenter --net=/var/run/netns/$hostns" shim_containerd_start_cri "[plugins.\"io.containerd.grpc.v1.cri\".cni]
  bin_dir = \"/usr/lib/cni\"
  conf_dir = \"$tmp/cni\"" || exit 1
shim_import_image "$tmp" k8s.io
shim_import_pause_image "$tmp" k8s.io
"$venv/bin/python" "$here/shim/cri/cni_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" "/var/run/netns/$hostns" \
  || fail "CNI client"
for _ in $(seq 100); do [ -z "$(shim_leftovers)" ] && break; sleep 0.2; done
left=$(shim_leftovers)
[ -z "$left" ] || fail "left behind: $left"
new=$(comm -13 <(echo "$netns_before") <(ls /var/run/netns 2>/dev/null | sort) | grep -v "^$hostns\$")
[ -z "$new" ] || fail "network namespaces left: $new"
ip -n "$hostns" link show | grep -q tap0_husk && fail "a tap is left in the host-side netns"
echo "ok: nothing left behind (processes, mounts, network namespaces)"
