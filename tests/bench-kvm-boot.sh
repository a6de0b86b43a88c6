#!/usr/bin/env bash
# Builtin KVM engine vs QEMU microvm on KVM, same vmlinux, same run:
#  - start -> first `Linux version` byte on the serial console (median of N,
#    with min and max);
#  - the monitor's resident memory at that moment without guest RAM
#    (RssAnon + RssFile; guest RAM is a memfd for both, i.e. RssShmem).
# The builtin side is the VMM alone (vmm/kvm/examples/builtin_boot: no device
# daemons, no agent), the same thing QEMU runs here. Not a test: no
# thresholds; exits 0 whenever it measured.
#
# usage: tests/bench-kvm-boot.sh [-n N]
# Needs root, /dev/kvm, qemu-system-x86 (installed from apt if missing).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
. "$repo/scripts/lib.sh"

N=5
if [ "${1:-}" = -n ]; then N=$2; shift 2; fi
[ "$(id -u)" -eq 0 ] || die "run as root"
[ -w /dev/kvm ] || die "/dev/kvm is not usable"
apt_need qemu-system-x86
KERNEL=${HUSK_KERNEL:-${HUSK_PREFIX:-/usr/local}/share/husk/vmlinux}
[ -f "$KERNEL" ] || die "no kernel at $KERNEL (set HUSK_KERNEL)"
MEM=256
target=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build -q --release -j2 -p husk-kvm --example builtin_boot) \
  || die "cannot build vmm/kvm/examples/builtin_boot"
BUILTIN=$target/release/examples/builtin_boot

# The same command line for both: what the builtin engine adds (reboot=k,
# and clearcpuid= on PVM-backed KVM) is given to QEMU too.
EXTRA="loglevel=7 earlyprintk=ttyS0"
CMDLINE="console=ttyS0 panic=-1 quiet $EXTRA reboot=k"
QCPU=host
if ! grep -qw -e vmx -e svm /proc/cpuinfo && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
  CMDLINE="$CMDLINE clearcpuid=xsave,cx16,popcnt,smap,smep"
  # PVM refuses MSR_IA32_ARCH_CAPABILITIES (0x10a), which QEMU asserts on.
  QCPU=host,-arch-capabilities
  log "no vmx/svm: PVM-backed KVM; both guests stop shortly after the banner"
fi

work=$(mktemp -d /tmp/hbk.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

now_ns() { date +%s%N; }

# run_one NAME CMD...: prints "MS RSS_KIB" for one boot to the banner.
run_one() {
  local console=$work/console.log
  rm -f "$console"
  : >"$console"
  local t0 t1 status rss
  t0=$(now_ns)
  "$@" >"$work/out.log" 2>&1 &
  pid=$!
  while ! grep -q 'Linux version' "$console" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$1 exited before the banner:"; tail -5 "$work/out.log" >&2
      pid=; echo "NA NA"; return
    fi
    sleep 0.002
  done
  t1=$(now_ns)
  status=/proc/$pid/status
  rss=$(awk '/^RssAnon:|^RssFile:/ {s += $2} END {print s}' "$status" 2>/dev/null)
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=
  echo "$(( (t1 - t0) / 1000000 )) ${rss:-NA}"
}

# stats VALUES...: "median min max"
stats() {
  printf '%s\n' "$@" | grep -v NA | sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "NA NA NA"} else {print v[int((NR+1)/2)], v[1], v[NR]}}'
}

bt=(); br=(); qt=(); qr=(); bs=()
for i in $(seq "$N"); do
  read -r t r < <(run_one "$BUILTIN" "$KERNEL" "$work/console.log" "$MEM" "$EXTRA")
  bt+=("$t"); br+=("$r")
  bs+=("$(sed -n 's/.*vCPUs started in \([0-9]*\) us/\1/p' "$work/out.log")")
  read -r t r < <(run_one qemu-system-x86_64 -M microvm,acpi=off,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size=${MEM}M,share=on -m ${MEM}M \
    -accel kvm -cpu "$QCPU" -smp 1 -nodefaults -no-user-config -no-reboot \
    -display none -monitor none -serial "file:$work/console.log" \
    -kernel "$KERNEL" -append "$CMDLINE")
  qt+=("$t"); qr+=("$r")
  log "run $i: builtin ${bt[-1]} ms, qemu ${qt[-1]} ms"
done

read -r bm bmin bmax < <(stats "${bt[@]}")
read -r qm qmin qmax < <(stats "${qt[@]}")
read -r brm _ _ < <(stats "${br[@]}")
read -r bsm bsmin bsmax < <(stats "${bs[@]}")
read -r qrm _ _ < <(stats "${qr[@]}")
ratio() { if [ "$1" = NA ] || [ "$2" = NA ] || [ "$2" = 0 ]; then echo NA; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi; }

echo "qemu: -cpu $QCPU; cmdline: $CMDLINE"
echo "kernel: $KERNEL ($(du -h "$KERNEL" | cut -f1)), ${MEM} MiB, 1 vCPU, N=$N, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf '%-44s %18s %18s %12s\n' "" "husk builtin" "qemu microvm kvm" "qemu/builtin"
printf '%-44s %18s %18s %12s\n' "start -> 'Linux version' ms, median [min-max]" \
  "$bm [$bmin-$bmax]" "$qm [$qmin-$qmax]" "$(ratio "$qm" "$bm")"
printf '%-44s %18s %18s %12s\n' "RSS without guest RAM KiB, median" "$brm" "$qrm" "$(ratio "$qrm" "$brm")"
printf '%-44s %18s\n' "builtin: main() -> vCPUs running us, median" "$bsm [$bsmin-$bsmax]"
echo "(the rest of start -> banner is the guest's own early boot, the same for both engines)"
