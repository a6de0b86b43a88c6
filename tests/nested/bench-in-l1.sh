#!/usr/bin/env bash
# Runs inside the nested tier's L1 (see bench.sh): the builtin engine next
# to QEMU with KVM (`--engine qemu`, `-accel kvm`), same guest kernel,
# initramfs and bundle, same run. Each row: median (min-max) per engine
# and the builtin/qemu ratio of the medians.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${1:-3}
HUSK=${HUSK_BIN:-$root/target/release/husk}
work=$(mktemp -d /tmp/nb.XXXXXX)
ROOT=$work/r
now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }
h() { "$HUSK" --root "$ROOT" "$@"; }

# stats V...: "median min max"
stats() {
  local s; s=$(printf '%s\n' "$@" | sort -n)
  echo "$(sed -n "$(( ($# + 1) / 2 ))p" <<<"$s") $(head -1 <<<"$s") $(tail -1 <<<"$s")"
}
# uptime_at_listen FILE: the guest's own clock (ms since its kernel
# started) in the agent's ready line of console log FILE.
uptime_at_listen() { grep -a 'husk-agent listening' "$1" | grep -o 'uptime_ms=[0-9]*' | cut -d= -f2 | head -1; }
# KiB resident in PID's mappings other than the guest RAM memfd.
rss_without_guest() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:/) } /^Rss:/ { if (!g) s += $2 } END { print s + 0 }' "/proc/$1/smaps"
}

"$root/tests/make-bundle.sh" "$work/true" true >/dev/null
"$root/tests/make-bundle.sh" "$work/idle" sleep 3600 >/dev/null
mkdir -p "$work/data"
jq --arg d "$work/data" '.mounts += [{"destination": "/data", "type": "bind", "source": $d, "options": ["rbind", "rw"]}]' \
  "$work/idle/config.json" >"$work/c.json" && mv "$work/c.json" "$work/idle/config.json"

declare -A R
measure() {
  local engine=$1 i t mon q
  export HUSK_ENGINE=$engine
  local cr=() gu=() rn=() rss=() fw=() fr=()
  for i in $(seq "$N"); do
    t=$(now); h run -b "$work/true" "t$i" </dev/null >/dev/null 2>&1 || echo "run t$i failed on $engine"
    rn+=("$(ms_since "$t")")
    t=$(now); h create -b "$work/idle" "c$i" </dev/null >/dev/null 2>&1 || { echo "create c$i failed on $engine"; continue; }
    cr+=("$(ms_since "$t")")
    gu+=("$(uptime_at_listen "$ROOT/c$i/console.log")")
    h start "c$i"
    mon=$(h state "c$i" | jq .pid)
    local kib; kib=$(rss_without_guest "$mon")
    for q in $(pgrep -P "$mon" qemu-system); do kib=$((kib + $(rss_without_guest "$q"))); done
    rss+=("$kib")
    t=$(now); h exec "c$i" sh -c 'dd if=/dev/zero of=/data/f bs=1M count=64 conv=fsync 2>/dev/null'
    fw+=("$(( 64000 / $(ms_since "$t") ))")
    echo 3 >/proc/sys/vm/drop_caches
    h exec "c$i" sh -c 'echo 3 > /proc/sys/vm/drop_caches' 2>/dev/null
    t=$(now); h exec "c$i" sh -c 'dd if=/data/f of=/dev/null bs=1M 2>/dev/null'
    fr+=("$(( 64000 / $(ms_since "$t") ))")
    rm -f "$work/data/f"
    h delete -f "c$i"
  done
  R[$engine,create]=$(stats "${cr[@]}")
  R[$engine,guest]=$(stats "${gu[@]}")
  R[$engine,run]=$(stats "${rn[@]}")
  R[$engine,rss]=$(stats "${rss[@]}")
  R[$engine,fsw]=$(stats "${fw[@]}")
  R[$engine,fsr]=$(stats "${fr[@]}")
}

echo "nested benchmark: $(nproc) L1 vCPUs (TCG-emulated AMD-V), N=$N"
measure builtin
measure qemu
printf '%-52s %22s %22s %7s\n' "" "builtin: median (min-max)" "qemu -accel kvm" "ratio"
line() {
  local label=$1 key=$2 unit=$3 b q
  read -r bm bl bh <<<"${R[builtin,$key]}"
  read -r qm ql qh <<<"${R[qemu,$key]}"
  printf '%-52s %22s %22s %7s\n' "$label ($unit)" "$bm ($bl-$bh)" "$qm ($ql-$qh)" \
    "$(awk -v b="$bm" -v q="$qm" 'BEGIN { if (q > 0) printf "%.2f", b / q; else print "-" }')"
}
line "husk create: boot to agent listening + create" create ms
line "  of which the guest: its clock at agent listening" guest ms
line "husk run /bin/true: create to exit" run ms
line "monitor + engine RSS without guest RAM" rss KiB
line "virtio-fs sequential write 64 MiB (in guest)" fsw MiB/s
line "virtio-fs sequential read 64 MiB, cold (in guest)" fsr MiB/s
rm -rf "$work"
