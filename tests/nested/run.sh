#!/usr/bin/env bash
# The nested AMD-V tier: runs a command inside an "outer" (L1) VM whose CPU
# QEMU's TCG emulates with AMD SVM and nested paging, so that /dev/kvm in
# there is hardware-KVM semantics and husk's builtin engine runs real
# guests (L2) in it. This machine's own KVM cannot boot a Linux guest.
#
#   tests/nested/run.sh [--cpus N] [--mem MIB] [--timeout SECS] -- CMD [ARG...]
#
# The L1 sees this host's root read-only (virtio-fs, `virtiofsd --readonly`)
# under a tmpfs overlay, so every binary, test program, cache and repository
# path is the same in there as here, and what L1 writes stays in L1. The
# command runs as root in the current directory, with PATH and the HUSK_*
# variables of the caller; its output streams here; the script exits with
# the command's exit status (124 when the L1 timed out, 125 when the tier
# itself failed).
#
# The L1 kernel is Debian's linux-image-cloud-amd64 (from apt, cached under
# $HUSK_CACHE_DIR/nested keyed by the package's version), with its kvm,
# kvm-amd (nested=1) and whatever modules the command needs.
#
# Exit 125 with a line starting with "SKIP" when QEMU cannot emulate SVM.
#
# Debugging: with HUSK_NESTED_SHELL=PATH, a root shell of the L1 listens on
# the unix socket PATH (its second serial port) while the command runs, e.g.
# `socat -,raw,echo=0 UNIX-CONNECT:PATH`. With HUSK_NESTED_MONITOR=PATH,
# QEMU's human monitor of the L1 listens on PATH (`info registers -a`
# shows where each L1 vCPU is, in the L1 or in a nested guest).
# HUSK_NESTED_LOGLEVEL sets the L1 kernel's console log level (default 3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/lib.sh"

cpus=1 mem=4096 timeout=1800
while [ $# -gt 0 ]; do
  case $1 in
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --) shift; break ;;
    *) die "usage: $0 [--cpus N] [--mem MIB] [--timeout SECS] -- CMD [ARG...]" ;;
  esac
done
[ $# -gt 0 ] || die "no command"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: the nested tier needs root (virtiofsd shares /)"; exit 125; }

apt_need qemu-system-x86 busybox-static cpio kmod
command -v virtiofsd >/dev/null || die "virtiofsd is not installed (run scripts/setup.sh)"
if ! qemu-system-x86_64 -accel tcg -cpu help 2>/dev/null | grep -qw EPYC-v3; then
  echo "SKIP: this QEMU has no EPYC-v3 CPU model to emulate AMD SVM with"
  exit 125
fi

# --- the L1 kernel and its modules, cached by package version -------------
prepare_kernel() {
  local meta=linux-image-cloud-amd64 pkg ver dir
  pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
  [ -n "$pkg" ] || { apt-get update -q >&2; pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ { print $2; exit }'); }
  [ -n "$pkg" ] || die "apt knows no $meta"
  ver=$(apt-cache show "$pkg" | awk '/^Version:/ { print $2; exit }')
  dir=$HUSK_CACHE_DIR/nested/$pkg-$ver
  if [ ! -f "$dir/done" ]; then
    log "fetching the L1 kernel $pkg $ver"
    rm -rf "$dir" && mkdir -p "$dir/deb"
    (cd "$dir/deb" && apt-get download -q "$pkg=$ver" >&2 2>/dev/null) || die "apt-get download $pkg=$ver failed"
    dpkg -x "$dir"/deb/*.deb "$dir/x"
    rm -rf "$dir/deb"
    local kver
    kver=$(basename "$(ls -d "$dir"/x/lib/modules/*)")
    depmod -b "$dir/x" "$kver"
    echo "$kver" >"$dir/kver"
    touch "$dir/done"
  fi
  echo "$dir"
}
kdir=$(prepare_kernel)
kver=$(cat "$kdir/kver")
vmlinuz=$kdir/x/boot/vmlinuz-$kver
moddir=$kdir/x/lib/modules/$kver

# --- the L1 initramfs: busybox, the modules to mount virtio-fs, an init ----
# Keyed by its inputs (this script's init, the kernel), rebuilt when missing.
initrd=$kdir/l1-$(hash_inputs "$here/run.sh" "$here/l1-init.sh").cpio
if [ ! -f "$initrd" ]; then
  log "packing the L1 initramfs"
  rm -f "$kdir"/l1-*.cpio
  t=$(mktemp -d)
  mkdir -p "$t"/{bin,dev,proc,sys,lower,upper,newroot,mods}
  install -m 0755 /bin/busybox "$t/bin/busybox"
  for a in sh mount mkdir insmod switch_root cat sleep echo reboot; do ln -s busybox "$t/bin/$a"; done
  # The modules, in dependency order, for the virtio-fs root and the overlay.
  for m in virtio_pci virtiofs overlay; do
    modprobe -d "$kdir/x" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
  done | awk '!seen[$0]++' >"$t/mods/order.host"
  : >"$t/mods/order"
  while read -r m; do
    cp "$m" "$t/mods/"
    echo "/mods/$(basename "$m")" >>"$t/mods/order"
  done <"$t/mods/order.host"
  rm "$t/mods/order.host"
  cat >"$t/init" <<'EOF'
#!/bin/sh
# Stage 1: mount this host's root (read-only virtio-fs) under a tmpfs
# overlay and switch to it; stage 2 is tests/nested/l1-init.sh.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /mods/order); do insmod "$m" || echo "l1: insmod $m failed"; done
set -- $(cat /proc/cmdline)
for a; do case $a in husk_stage2=*) stage2=${a#husk_stage2=} ;; esac; done
mount -t virtiofs -o ro hostroot /lower || { echo "l1: cannot mount the host root"; reboot -f; }
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot \
  || { echo "l1: cannot mount the overlay"; reboot -f; }
mkdir -p /newroot/run/husk-l1-lower
mount --move /lower /newroot/run/husk-l1-lower
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /bin/sh "$stage2"
EOF
  chmod 0755 "$t/init"
  (cd "$t" && find . | cpio -o -H newc --quiet) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$t"
fi

# --- the job: what L1 runs, and a writable share for its status -----------
job=$(mktemp -d /tmp/husk-nested.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$job"
}
trap cleanup EXIT
mkdir -p "$job/share"
{
  echo "cd $(printf %q "$PWD")"
  env | grep -E '^(HUSK_[A-Z0-9_]*|RUST_[A-Z_]*|PATH|HOME)=' | while IFS= read -r kv; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
  printf 'export HUSK_NESTED=1\n'
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$job/share/cmd"
echo "$moddir" >"$job/share/moddir"

virtiofsd --shared-dir / --socket-path "$job/root.sock" --readonly --cache always --no-announce-submounts \
  --sandbox namespace --log-level error &
pids+=($!)
virtiofsd --shared-dir "$job/share" --socket-path "$job/job.sock" --cache never \
  --sandbox namespace --log-level error &
pids+=($!)
for _ in $(seq 100); do [ -S "$job/root.sock" ] && [ -S "$job/job.sock" ] && break; sleep 0.1; done

debug_shell=()
if [ -n "${HUSK_NESTED_SHELL:-}" ]; then
  debug_shell=(-chardev "socket,id=dbg,path=$HUSK_NESTED_SHELL,server=on,wait=off" -serial chardev:dbg)
  touch "$job/share/debug-shell"
fi
if [ -n "${HUSK_NESTED_MONITOR:-}" ]; then
  debug_shell+=(-monitor "unix:$HUSK_NESTED_MONITOR,server=on,wait=off")
fi
log "booting the L1 (kernel $kver, $cpus vCPU, $mem MiB, AMD SVM under TCG)"
# One TCG thread for all the L1's vCPUs (`thread=single`), not one each:
# with one thread per vCPU, QEMU 7.2 sometimes keeps executing a stale
# translation of kernel text that another vCPU has just patched. Seen here:
# the L1's KVM flips a static key in `__schedule` (preempt notifiers) when
# the first nested VM is created or the last destroyed; `text_poke_bp`
# writes an int3, then the final instruction; afterwards both L1 vCPUs kept
# taking int3 at `__schedule+0x2ab`, where memory held a nop, and the int3
# handler, finding no int3 there, rewound and retried forever with
# interrupts off: the whole L1 wedged (about one `husk run` in twenty).
# And a periodic tick in the L1 (`highres=off nohz=off`): with one-shot
# timers, an L1 vCPU once slept in HLT for 152 s with the test runnable,
# its timer interrupt gone, until a byte on its serial port woke it; a
# periodic LAPIC timer re-arms itself, so one lost interrupt costs a tick.
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg,thread=single -M q35 -cpu EPYC-v3,+svm,+npt -smp "$cpus" -m "$mem" \
  -object memory-backend-memfd,id=mem,size="${mem}M",share=on -numa node,memdev=mem \
  -kernel "$vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=${HUSK_NESTED_LOGLEVEL:-3} panic=-1 highres=off nohz=off husk_stage2=$here/l1-init.sh" \
  -chardev socket,id=root,path="$job/root.sock" -device vhost-user-fs-pci,chardev=root,tag=hostroot \
  -chardev socket,id=job,path="$job/job.sock" -device vhost-user-fs-pci,chardev=job,tag=job \
  -nic none -nographic -no-reboot -serial mon:stdio "${debug_shell[@]}" </dev/null \
  2> >(grep -v "TCG doesn't support requested feature" >&2)
q=$?
set -e
if [ $q -eq 124 ] || [ $q -eq 137 ]; then
  log "the L1 ran past ${timeout}s"
  exit 124
fi
[ -f "$job/share/rc" ] || { log "the L1 ended without the command's status (qemu exit $q)"; exit 125; }
exit "$(cat "$job/share/rc")"
