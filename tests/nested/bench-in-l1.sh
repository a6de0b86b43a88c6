#!/usr/bin/env bash
# Runs inside the nested tier's L1 (see bench.sh): the builtin engine next
# to QEMU with KVM (`--engine qemu`, `-accel kvm`), same guest kernel,
# initramfs and bundle, same run. Each row: median (min-max) per engine
# and the builtin/qemu ratio of the medians. With a second argument
# `density`, then the density run (see density() below).
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
. "$root/tests/bench-lib.sh"

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
  local cr=() gu=() rn=() ex=() rss=() fw=() fr=()
  for i in $(seq "$N"); do
    t=$(now); h run -b "$work/true" "t$i" </dev/null >/dev/null 2>&1 || echo "run t$i failed on $engine"
    rn+=("$(ms_since "$t")")
    if h create -b "$work/true" "e$i" </dev/null >/dev/null 2>&1; then
      ex+=("$(exit_path_ms "$ROOT" "e$i")")
      h delete "e$i"
    else
      echo "create e$i failed on $engine"
    fi
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
  R[$engine,exit]=$(stats "${ex[@]}")
  R[$engine,rss]=$(stats "${rss[@]}")
  R[$engine,fsw]=$(stats "${fw[@]}")
  R[$engine,fsr]=$(stats "${fr[@]}")
}

if [ "$N" -gt 0 ]; then
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
line "container exit -> monitor exited" exit ms
line "monitor + engine RSS without guest RAM" rss KiB
line "virtio-fs sequential write 64 MiB (in guest)" fsw MiB/s
line "virtio-fs sequential read 64 MiB, cold (in guest)" fsr MiB/s
fi

# density: idle `sleep 3600` containers with 128 MiB guests on the builtin
# engine, created (`run -d`) one after another until the PSS of their
# monitors and the monitors' children (as tests/bench.sh's density()
# counts it) reaches 4 GiB, a creation fails, or the time cap
# (HUSK_NESTED_DENSITY_CAP_S, default 1800 s) has passed. Each
# container's monitor pid is asked for once, after its creation (`husk
# list` would ask every agent at every step, seconds each on the L1's one
# emulated CPU), and the sum is taken again over all of them at every step:
# a container's PSS falls as more containers share its pages. One `ps` and
# one `awk` per step (a pgrep and an awk per process made the accounting
# grow with the square of the count: 86 containers in 1800 s, 21 s a step
# against a median creation of 3 s).
# pss_sum_kib MONITOR_PID...: PSS of those processes and their children.
pss_sum_kib() {
  local list files=() p
  list=$(IFS=,; echo "$*")
  for p in "$@" $(ps -o pid= --ppid "$list"); do files+=("/proc/$p/smaps_rollup"); done
  cat "${files[@]}" 2>/dev/null | awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}
density() {
  export HUSK_ENGINE=builtin
  local cap=${HUSK_NESTED_DENSITY_CAP_S:-1800} budget=$((4096 * 1024)) used=0 n=0 why t0 t
  local times=() mons=()
  "$root/tests/make-bundle.sh" "$work/den" sleep 3600 >/dev/null
  jq '.annotations["husk.memory_mib"] = "128"' "$work/den/config.json" >"$work/c.json" && mv "$work/c.json" "$work/den/config.json"
  t0=$(now)
  while :; do
    if [ "$(ms_since "$t0")" -ge $((cap * 1000)) ]; then why="the ${cap} s time cap"; break; fi
    t=$(now)
    if ! h run -d -b "$work/den" "d$n" </dev/null >/dev/null 2>"$work/den.err"; then
      why="creation $((n + 1)) failing: $(tail -n 3 "$work/den.err" | tr '\n' ' ')"
      free -m
      break
    fi
    times+=("$(ms_since "$t")")
    mons+=("$(h state "d$n" | jq .pid)")
    n=$((n + 1))
    used=$(pss_sum_kib "${mons[@]}")
    if [ "$used" -ge "$budget" ]; then why="the 4 GiB PSS budget"; break; fi
  done
  local secs=$(( $(ms_since "$t0") / 1000 ))
  echo
  echo "density (builtin engine, idle 128 MiB guests, one after another): $n containers running after ${secs} s, stopped by $why"
  if [ "$n" -gt 0 ]; then
    awk -v u="$used" -v n="$n" 'BEGIN { printf "PSS of monitors + children: %d MiB in all, %.1f MiB per container, %.1f containers per GiB\n", u / 1024, u / 1024 / n, n * 1024 * 1024 / u }'
    read -r m lo hi <<<"$(stats "${times[@]}")"
    echo "time to create+start one more container: median $m ms ($lo-$hi), first ${times[0]} ms, last ${times[-1]} ms"
  fi
  for id in $(h list -q); do h delete -f "$id" >/dev/null 2>&1; done
}
[ "${2:-}" = density ] && density
rm -rf "$work"
