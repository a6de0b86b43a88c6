#!/usr/bin/env bash
# A real client: podman with husk as its OCI runtime, on a locally imported
# busybox image (no registry): output, exit code, and nothing left behind.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v podman >/dev/null || { echo "SKIP: podman not installed"; exit 77; }
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root"; exit 77; }
husk=${HUSK_BIN:-/usr/local/bin/husk}
[ -x "$husk" ] || { echo "SKIP: no $husk (run scripts/setup.sh)"; exit 77; }
tmp=$(mktemp -d); trap 'podman rmi -f localhost/husk-bb:test >/dev/null 2>&1; rm -rf "$tmp"' EXIT
"$root/tests/make-rootfs.sh" "$tmp/rootfs" >/dev/null
tar -C "$tmp/rootfs" -c . | podman import - localhost/husk-bb:test >/dev/null
# Monitors and VMs by process name, so the check sees only new ones of ours.
vms() { { pgrep -a -x qemu-system-x86; pgrep -a -x husk-vmm; } | sort || true; }
before=$(vms)
set +e
out=$(podman --runtime "$husk" run --rm --network none localhost/husk-bb:test \
  sh -c 'echo "kernel $(uname -r)"; echo to-stderr >&2; exit 3' 2>"$tmp/err")
rc=$?
set -e
[ "$rc" -eq 3 ] || { echo "exit status $rc, want 3; stderr: $(cat "$tmp/err")"; exit 1; }
[ "$out" = "kernel $(uname -r)" ] && { echo "the container saw the host kernel: $out"; exit 1; }
case "$out" in "kernel 6.12."*) ;; *) echo "unexpected output: $out"; exit 1 ;; esac
grep -q to-stderr "$tmp/err" || { echo "stderr lost: $(cat "$tmp/err")"; exit 1; }
left=$(comm -13 <(echo "$before") <(vms))
[ -z "$left" ] || { echo "left running: $left"; exit 1; }
