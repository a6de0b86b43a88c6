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

c() { ctr --address "$CTR_ADDR" "$@"; }

# Lists what the shim tests may leave behind: shims, monitors, qemu, daemons
# and mounts of this test's state root.
shim_leftovers() {
  pgrep -a -f "containerd-shim-husk-v2.*-address $CTR_ADDR" || true
  pgrep -a -f "husk-vmm --config $HUSK_SHIM_ROOT" || true
  pgrep -a -f "qemu-system-x86_64.*$HUSK_SHIM_ROOT" || true
  pgrep -a -f "(virtiofsd|vhost-device-vsock).*$HUSK_SHIM_ROOT" || true
  grep -F "$HUSK_SHIM_ROOT" /proc/self/mountinfo || true
  if [ -d "$HUSK_SHIM_ROOT" ]; then find "$HUSK_SHIM_ROOT" -mindepth 1 -maxdepth 1; fi
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
