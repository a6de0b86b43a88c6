#!/usr/bin/env bash
# The smoke test at the end of setup: boots what exists.
# Today: the guest kernel and the agent initramfs under QEMU (TCG), showing
# the kernel banner and the agent's first console lines. The container run
# through `husk run` replaces this once the runtime CLI lands.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
share=${HUSK_PREFIX:-/usr/local}/share/husk
log "booting $share/vmlinux with $share/initramfs.cpio under qemu (TCG); the runtime CLI is not built yet"
timeout 60 qemu-system-x86_64 -accel tcg -cpu max -M microvm,acpi=off -m 256 -smp 1 \
  -no-reboot -nographic -nodefaults -serial stdio \
  -kernel "$share/vmlinux" -initrd "$share/initramfs.cpio" \
  -append 'console=ttyS0 panic=-1 reboot=t' </dev/null | tr -d '\r' \
  | grep -E 'Linux version|husk|Run /init|Kernel panic' || true
