# Shared by the shim tests (sourced): builds nothing, finds the shim binary,
# starts a private containerd that runs it, imports the busybox image, and
# checks that nothing is left behind.
#
# The shim is taken from $HUSK_SHIM_BIN_DIR, else target/debug of
# $CARGO_TARGET_DIR (or the repository's target/), else /usr/local/bin.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repo=$(cd "$here/.." && pwd)
. "$here/lib/containerd.sh"

shim_skip() { echo "SKIP: $*"; exit 77; }

shim_preflight() {
  [ "$(id -u)" -eq 0 ] || shim_skip "containerd and the shim need root"
  command -v containerd >/dev/null || shim_skip "containerd not installed (apt-get install containerd)"
  [ -f /usr/local/share/husk/vmlinux ] || shim_skip "no guest kernel: run scripts/setup.sh --no-run"
  local d
  # What scripts/setup.sh installed (test.sh runs it first) before any
  # build tree: a stale debug build must never stand in for the shim under
  # test. HUSK_SHIM_BIN_DIR picks another.
  for d in "${HUSK_SHIM_BIN_DIR:-}" /usr/local/bin "${CARGO_TARGET_DIR:-$repo/target}/release"; do
    if [ -n "$d" ] && [ -x "$d/containerd-shim-husk-v2" ]; then SHIM_DIR=$d; break; fi
  done
  [ -n "${SHIM_DIR:-}" ] || shim_skip "containerd-shim-husk-v2 not built (cargo build -p husk-runtime --bin containerd-shim-husk-v2)"
  if [ -x "$SHIM_DIR/husk-vmm" ]; then export HUSK_VMM=$SHIM_DIR/husk-vmm
  elif command -v husk-vmm >/dev/null; then export HUSK_VMM=$(command -v husk-vmm)
  else shim_skip "husk-vmm not found"; fi
  # containerd finds the shim in its PATH and passes its environment on.
  export PATH=$SHIM_DIR:$PATH
  export HUSK_SHIM_ROOT=${HUSK_SHIM_ROOT:-/run/husk-shim-test.$$}
  echo "shim: $SHIM_DIR/containerd-shim-husk-v2, monitor: $HUSK_VMM, state: $HUSK_SHIM_ROOT"
}

IMAGE=docker.io/library/husk-busybox:test
PAUSE_IMAGE=docker.io/library/husk-pause:test
# shim_import_image TMPDIR [NAMESPACE]
shim_import_image() {
  [ -f "$1/img.tar" ] || "$here/make-image.sh" "$1/img.tar" "$IMAGE" >/dev/null
  ctr --address "$CTR_ADDR" -n "${2:-default}" images import "$1/img.tar" >/dev/null
}

# shim_import_pause_image TMPDIR [NAMESPACE]: the busybox image with
# `sleep` as its command, named $PAUSE_IMAGE (no registry to pull pause from).
shim_import_pause_image() {
  local t=$1/pause d m c
  [ -f "$1/img.tar" ] || "$here/make-image.sh" "$1/img.tar" "$IMAGE" >/dev/null
  rm -rf "$t"; mkdir -p "$t"; tar -C "$t" -xf "$1/img.tar"
  m=$(jq -r '.manifests[0].digest' "$t/index.json" | cut -d: -f2)
  c=$(jq -r '.config.digest' "$t/blobs/sha256/$m" | cut -d: -f2)
  jq -c '.config.Cmd = ["sleep", "2147483647"]' "$t/blobs/sha256/$c" >"$t/cfg"
  d=$(sha256sum "$t/cfg" | cut -d' ' -f1); mv "$t/cfg" "$t/blobs/sha256/$d"
  jq -c --arg d "sha256:$d" --argjson s "$(stat -c %s "$t/blobs/sha256/$d")" \
    '.config.digest = $d | .config.size = $s' "$t/blobs/sha256/$m" >"$t/man"
  m=$(sha256sum "$t/man" | cut -d' ' -f1); mv "$t/man" "$t/blobs/sha256/$m"
  jq -c --arg d "sha256:$m" --argjson s "$(stat -c %s "$t/blobs/sha256/$m")" --arg n "$PAUSE_IMAGE" \
    '.manifests[0].digest = $d | .manifests[0].size = $s
     | .manifests[0].annotations["io.containerd.image.name"] = $n
     | .manifests[0].annotations["org.opencontainers.image.ref.name"] = "test"' "$t/index.json" >"$t/idx"
  mv "$t/idx" "$t/index.json"
  tar -C "$t" -cf "$1/pause.tar" .
  ctr --address "$CTR_ADDR" -n "${2:-default}" images import "$1/pause.tar" >/dev/null
}

# containerd_start (tests/lib/containerd.sh) with the CRI runtime handler
# `husk` registered and the pause image set; $1: further TOML tables.
shim_containerd_start_cri() {
  containerd_start "  sandbox_image = \"$PAUSE_IMAGE\"
[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
  runtime_type = \"io.containerd.runc.v2\"
[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]
  runtime_type = \"io.containerd.husk.v2\"
  pod_annotations = [\"husk.memory_mib\", \"husk.vcpus\"]
${1:-}"
}

# The CRI tests' client: Python grpcio on the CRI runtime.v1 proto, in a
# venv ($venv: $HUSK_CRI_VENV, else under /var/cache) installed from PyPI
# when it lacks grpcio or grpcio-tools; skips the test when that fails.
shim_cri_venv() {
  venv=${HUSK_CRI_VENV:-/var/cache/husk-cri-venv}
  if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio grpcio-tools; } >/dev/null 2>&1 \
      || shim_skip "cannot install grpcio/grpcio-tools from PyPI into $venv"
  fi
}

# CNI for the CRI tests. A VM pod cannot use the host's network, so the pod
# needs one of its own: containerd (and so CNI and the shims) runs in a
# network namespace the test creates, with a bridge + host-local CNI config in
# the test's temp dir and the plugins in /usr/lib/cni.
#
# shim_cni_preflight: skips the test without the CNI plugins, ip or nsenter.
shim_cni_preflight() {
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
    || shim_skip "CNI plugins not installed (apt-get install containernetworking-plugins)"
  command -v ip >/dev/null && command -v nsenter >/dev/null || shim_skip "iproute2/util-linux missing"
}

# shim_cni_containerd_start TMPDIR HOSTNS NETWORK BRIDGE SUBNET: creates the
# network namespace HOSTNS ($CNI_HOSTNS, with lo up) and the CNI network
# NETWORK (TMPDIR/cni/10-NETWORK.conflist: bridge BRIDGE, host-local leases
# of SUBNET in TMPDIR/ipam), then shim_containerd_start_cri with containerd in
# HOSTNS and CNI on. Only the network namespace changes (nsenter), the mount
# namespace stays the host's. Set the test's EXIT trap first and have it call
# shim_cni_cleanup after containerd_stop.
shim_cni_containerd_start() {
  local dir=$1 network=$3 bridge=$4 subnet=$5
  CNI_NETNS_BEFORE=$(ls /var/run/netns 2>/dev/null | sort)
  CNI_HOSTNS=$2
  ip netns add "$CNI_HOSTNS" && ip -n "$CNI_HOSTNS" link set lo up || fail "cannot create netns $CNI_HOSTNS"
  mkdir -p "$dir/cni" "$dir/ipam"
  cat > "$dir/cni/10-$network.conflist" <<CNI
{ "cniVersion": "0.4.0", "name": "$network",
  "plugins": [ { "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
                 "ipam": { "type": "host-local", "dataDir": "$dir/ipam",
                           "ranges": [[ { "subnet": "$subnet" } ]],
                           "routes": [ { "dst": "0.0.0.0/0" } ] } } ] }
CNI
  CONTAINERD_WRAP="nsenter --net=/var/run/netns/$CNI_HOSTNS" shim_containerd_start_cri "[plugins.\"io.containerd.grpc.v1.cri\".cni]
  bin_dir = \"/usr/lib/cni\"
  conf_dir = \"$dir/cni\""
}

# shim_cri_preflight: shim_preflight, shim_cni_preflight and shim_cri_venv.
shim_cri_preflight() {
  shim_preflight
  shim_cni_preflight
  shim_cri_venv
}

# shim_cri_start TMPDIR HOSTNS NETWORK BRIDGE SUBNET: what the CRI tests
# start with: the client's Python modules from the CRI proto generated into
# TMPDIR (with $venv of shim_cri_venv), shim_cni_containerd_start, and the
# busybox and pause images imported into containerd's k8s.io namespace.
shim_cri_start() {
  "$venv/bin/python" -m grpc_tools.protoc -I "$here/shim/cri" --python_out="$1" --grpc_python_out="$1" api.proto \
    || fail "protoc"
  shim_cni_containerd_start "$@" || return 1
  shim_import_image "$1" k8s.io
  shim_import_pause_image "$1" k8s.io
}

# shim_cni_netns_left: the network namespaces made since
# shim_cni_containerd_start other than $CNI_HOSTNS (pod namespaces that
# containerd did not remove).
shim_cni_netns_left() {
  comm -13 <(echo "$CNI_NETNS_BEFORE") <(ls /var/run/netns 2>/dev/null | sort) | grep -v "^$CNI_HOSTNS\$"
}

# shim_cni_cleanup: removes the pod namespaces containerd left (a failed
# run) and $CNI_HOSTNS; nothing when shim_cni_containerd_start never ran.
shim_cni_cleanup() {
  [ -n "${CNI_HOSTNS:-}" ] || return 0
  local n
  for n in $(shim_cni_netns_left); do
    case $n in cni-*) ip netns del "$n" 2>/dev/null ;; esac
  done
  ip netns del "$CNI_HOSTNS" 2>/dev/null
  return 0
}

c() { ctr --address "$CTR_ADDR" "$@"; }

# Lists what the shim tests may leave behind: shims, monitors, qemu, daemons
# and mounts of this test's state root.
shim_leftovers() {
  pgrep -a -f "containerd-shim-husk-v2.*-address $CTR_ADDR" || true
  pgrep -a -f "husk-vmm --config $HUSK_SHIM_ROOT" || true
  pgrep -a -f "qemu-system-x86_64.*$HUSK_SHIM_ROOT" || true
  pgrep -a -f "(virtiofsd|husk-vsockd).*$HUSK_SHIM_ROOT" || true
  grep -F "$HUSK_SHIM_ROOT" /proc/self/mountinfo || true
  if [ -d "$HUSK_SHIM_ROOT" ]; then find "$HUSK_SHIM_ROOT" -mindepth 1 -maxdepth 1; fi
}

# Fails unless nothing of the shim's is left once it had time to go: a
# shim exits after its VM has stopped and containerd has shut it down,
# seconds on a loaded host or in a nested L1; the wait ends as soon as
# nothing is left.
shim_expect_nothing_left() {
  local left
  for _ in $(seq 300); do [ -z "$(shim_leftovers)" ] && break; sleep 0.2; done
  left=$(shim_leftovers)
  [ -z "$left" ] || fail "left behind: $left"
}

# Kills whatever a failed test left (only processes of this test's root).
shim_cleanup() {
  local p
  for p in $(pgrep -f "containerd-shim-husk-v2.*-address $CTR_ADDR" 2>/dev/null) \
           $(pgrep -f "husk-vmm --config $HUSK_SHIM_ROOT" 2>/dev/null); do
    kill -9 "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in $(pgrep -f "$HUSK_SHIM_ROOT" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  grep -o "$HUSK_SHIM_ROOT[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -rf "$HUSK_SHIM_ROOT"
}

fail() { echo "FAIL: $*" >&2; echo "--- containerd log (tail)" >&2; tail -40 "$CONTAINERD_DIR/log" >&2; exit 1; }

# expect_eq WHAT GOT WANT
expect_eq() { [ "$2" = "$3" ] || fail "$1: got $(printf %q "$2"), want $(printf %q "$3")"; echo "ok: $1"; }
