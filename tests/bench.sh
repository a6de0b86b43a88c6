#!/usr/bin/env bash
# husk's benchmarks: every row is measured in this run, next to a peer
# measured the same way on the same machine (runc, crun, plain QEMU, the
# host directory). Each row prints the median of N with min and max.
# Not a test: no thresholds; exits 0 whenever it measured.
#
# usage: tests/bench.sh [-n N] [SECTION...]
#   sections: lifecycle boot memory io fsmodes density net (default: all)
#   -n N      repetitions per row (default 5)
# Needs root and scripts/setup.sh's install (husk, the guest, runc, crun).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"
. "$here/bench-lib.sh"

N=5
if [ "${1:-}" = -n ]; then N=$2; shift 2; fi
sections=${*:-lifecycle boot memory io fsmodes density net}
[ "$(id -u)" -eq 0 ] || die "run as root"
apt_need runc crun bc python3
SHARE=${HUSK_PREFIX:-/usr/local}/share/husk
KERNEL=${HUSK_KERNEL:-$SHARE/vmlinux}
INITRAMFS=${HUSK_INITRAMFS:-$SHARE/initramfs.cpio}
work=$(mktemp -d /tmp/hb.XXXXXX)
ROOT=$work/r
cleanup() {
  for id in $(husk --root "$ROOT" list -q 2>/dev/null); do husk --root "$ROOT" delete -f "$id" >/dev/null 2>&1; done
  pkill -f "$work" 2>/dev/null
  runc --root "$work/runc" delete -f net >/dev/null 2>&1
  ip netns del "hbA$$" 2>/dev/null; ip netns del "hbB$$" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }

# row LABEL UNIT VALUE...: median, min and max of the values.
row() {
  local label=$1 unit=$2; shift 2
  local sorted; sorted=$(printf '%s\n' "$@" | sort -n)
  local n=$#; local med; med=$(sed -n "$(( (n + 1) / 2 ))p" <<<"$sorted")
  printf '%-58s %10s %10s %10s  %s\n' "$label" "$med" "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")" "$unit"
}
header() {
  printf '\n== %s ==\n' "$1"
  printf '%-58s %10s %10s %10s\n' "" median min max
}

engine=$(grep -qE 'vmx|svm' /proc/cpuinfo && echo "builtin KVM (hardware virtualization)" || echo "qemu TCG (no hardware virtualization on this host)")
echo "husk benchmarks, $(date -u +%FT%TZ), $(nproc) cores, host kernel $(uname -r)"
echo "husk's hypervisor path here: $engine; N=$N"

bundle() { "$here/make-bundle.sh" "$work/$1" "${@:2}" >/dev/null; }
# bundle_with_data NAME DIR: an idle bundle with host directory DIR (made
# if missing) bind-mounted read-write at /data.
bundle_with_data() {
  mkdir -p "$2"
  bundle "$1" sleep 3600
  jq --arg d "$2" '.mounts += [{"destination": "/data", "type": "bind", "source": $d, "options": ["rbind", "rw"]}]' \
    "$work/$1/config.json" > "$work/$1/c.json" && mv "$work/$1/c.json" "$work/$1/config.json"
}

lifecycle() {
  header "container lifecycle: create + start + wait + delete of /bin/true (ms)"
  bundle lc true
  local t h=() r=() c=()
  for i in $(seq "$N"); do
    t=$(now)
    husk --root "$ROOT" create -b "$work/lc" "lc$i" </dev/null >/dev/null 2>&1 || { echo "husk create failed"; return; }
    husk --root "$ROOT" start "lc$i"
    while [ "$(husk --root "$ROOT" state "lc$i" 2>/dev/null | jq -r .status)" != stopped ]; do sleep 0.01; done
    husk --root "$ROOT" delete "lc$i"
    h+=("$(ms_since "$t")")
  done
  # crun refuses this host's hybrid v1/v2 cgroups unless told not to manage
  # them, and then still fails setrlimit(RLIMIT_MEMLOCK) without
  # CAP_SYS_RESOURCE (which this kind of sandboxed CI host may lack); the
  # bench says so and goes on.
  local -A flags=([runc]="" [crun]="--cgroup-manager=disabled")
  for rt in runc crun; do
    local -n arr=$([ $rt = runc ] && echo r || echo c)
    for i in $(seq "$N"); do
      t=$(now)
      if ! $rt ${flags[$rt]} --root "$work/$rt" create -b "$work/lc" "lc$i" </dev/null >/dev/null 2>"$work/err"; then
        echo "$rt cannot run a container on this host: $(tail -n1 "$work/err")"
        break
      fi
      $rt ${flags[$rt]} --root "$work/$rt" start "lc$i"
      while [ "$($rt ${flags[$rt]} --root "$work/$rt" state "lc$i" 2>/dev/null | jq -r .status)" != stopped ]; do sleep 0.01; done
      $rt ${flags[$rt]} --root "$work/$rt" delete "lc$i"
      arr+=("$(ms_since "$t")")
    done
  done
  row "husk ($engine)" ms "${h[@]}"
  [ ${#r[@]} -gt 0 ] && row "runc $(runc --version | head -1 | cut -d' ' -f3) (no VM)" ms "${r[@]}"
  [ ${#c[@]} -gt 0 ] && row "crun $(crun --version | head -1 | cut -d' ' -f3) (no VM, cgroups not managed)" ms "${c[@]}"
  # The exit path alone: from the monitor seeing init's exit to the monitor
  # gone (stdio drained, the agent's Shutdown answered, engine and daemons
  # stopped, guest memory released).
  local e=()
  for i in $(seq "$N"); do
    husk --root "$ROOT" create -b "$work/lc" "ex$i" </dev/null >/dev/null 2>&1 || { echo "husk create failed"; return; }
    e+=("$(exit_path_ms "$ROOT" "ex$i")")
    husk --root "$ROOT" delete "ex$i"
  done
  row "husk: container exit -> monitor exited" ms "${e[@]}"
}

# wait_line FILE PATTERN START: ms from START until PATTERN is in FILE.
wait_line() {
  for _ in $(seq 6000); do
    grep -q "$2" "$1" 2>/dev/null && { ms_since "$3"; return; }
    sleep 0.01
  done
  echo timeout
}

# uptime_at_listen FILE: the guest's own clock (ms since its kernel started)
# in the agent's ready line.
uptime_at_listen() { grep -a 'husk-agent listening' "$1" | grep -o 'uptime_ms=[0-9]*' | cut -d= -f2; }

boot() {
  header "boot: process start to the guest's first console line / agent ready (ms)"
  local t vk=() va=() vg=() qk=() qa=() qg=()
  local accel; accel=$(grep -qE 'vmx|svm' /proc/cpuinfo && echo kvm || echo tcg)
  for i in $(seq "$N"); do
    local d=$work/vm$i; mkdir -p "$d"
    t=$(now)
    husk-vmm --kernel "$KERNEL" --initramfs "$INITRAMFS" --state-dir "$d" --engine auto --cmdline loglevel=6 >"$d/out" 2>&1 &
    local pid=$!
    vk+=("$(wait_line "$d/console.log" 'Linux version' "$t")")
    va+=("$(wait_line "$d/console.log" 'husk-agent listening' "$t")")
    vg+=("$(uptime_at_listen "$d/console.log")")
    kill "$pid"; wait "$pid" 2>/dev/null
    # Bare QEMU: the same kernel and initramfs, QEMU's defaults otherwise
    # (what anyone starting it by hand gets), no devices.
    t=$(now)
    qemu-system-x86_64 -accel "$accel" -cpu max -M microvm,acpi=off -m 256 -smp 1 -no-reboot \
      -nodefaults -no-user-config -display none -monitor none -serial "file:$d/q.log" \
      -kernel "$KERNEL" -initrd "$INITRAMFS" -append 'console=ttyS0 panic=-1 quiet loglevel=6' 2>/dev/null &
    pid=$!
    qk+=("$(wait_line "$d/q.log" 'Linux version' "$t")")
    qa+=("$(wait_line "$d/q.log" 'husk-agent listening' "$t")")
    qg+=("$(uptime_at_listen "$d/q.log")")
    kill "$pid"; wait "$pid" 2>/dev/null
  done
  row "husk-vmm ($engine): first console line" ms "${vk[@]}"
  row "qemu -M microvm alone, same kernel+initramfs: first line" ms "${qk[@]}"
  row "husk-vmm: agent listening (with virtio-fs + vsock daemons)" ms "${va[@]}"
  row "qemu -M microvm alone: agent listening (no devices)" ms "${qa[@]}"
  row "husk-vmm: guest clock at agent listening (kernel start = 0)" ms "${vg[@]}"
  row "qemu -M microvm alone: guest clock at agent listening" ms "${qg[@]}"
  local r; r=$(awk -v h="$(printf '%s\n' "${va[@]}" | sort -n | sed -n "$(( (N + 1) / 2 ))p")" \
    -v q="$(printf '%s\n' "${qa[@]}" | sort -n | sed -n "$(( (N + 1) / 2 ))p")" 'BEGIN { printf "%.2f", h / q }')
  echo "husk-vmm / bare qemu, agent listening (medians): $r"
  boot_stages
}

# boot_stages: where a container's create spends its time, from the boot
# stages the monitor reports (`husk --debug create`), ms since husk-vmm
# started.
boot_stages() {
  bundle bs sleep 3600
  local -A st=()
  local names=("device daemons ready" "engine started" "agent listening" "agent answered" "container created")
  for i in $(seq "$N"); do
    husk --debug --root "$ROOT" create -b "$work/bs" "bs$i" </dev/null >/dev/null 2>"$work/bs.log" || { echo "husk create failed"; return; }
    husk --root "$ROOT" delete -f "bs$i"
    for n in "${names[@]}"; do
      st[$n]+=" $(grep "boot: $n\"" "$work/bs.log" | sed 's/.*ms="\([0-9]*\).*/\1/')"
    done
  done
  for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    row "husk create, boot stage: $n" ms ${st[$n]}
  done
}

# rss_kib PID: resident KiB; pss_kib PID: proportional KiB.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss_kib() { awk '/^Pss:/ {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }

memory() {
  header "memory of an idle busybox container (KiB)"
  bundle mem sleep 3600
  local mr=() mp=() er=() dr=() gt=()
  for i in $(seq "$N"); do
    husk --root "$ROOT" run -d -b "$work/mem" "m$i" </dev/null >/dev/null 2>&1 || { echo "husk run failed"; return; }
    sleep 2
    local mon; mon=$(husk --root "$ROOT" state "m$i" | jq .pid)
    mr+=("$(rss_kib "$mon")"); mp+=("$(pss_kib "$mon")")
    local q; q=$(pgrep -P "$mon" qemu-system)
    local d=0
    for c in $(pgrep -P "$mon" -f 'virtiofsd|husk-vsockd'); do d=$((d + $(rss_kib "$c"))); done
    dr+=("$d")
    # Guest RAM touched: the resident part of QEMU's memfd mapping.
    gt+=("$(awk '/memfd:/ {m=1; next} /^[0-9a-f]+-/ {m=0} m && /^Rss:/ {s += $2} END {print s+0}' "/proc/$q/smaps")")
    er+=("$(( $(rss_kib "$q") - ${gt[-1]} ))")
    husk --root "$ROOT" delete -f "m$i"
  done
  row "husk-vmm monitor RSS (guest RAM is not mapped in it)" KiB "${mr[@]}"
  row "husk-vmm monitor PSS" KiB "${mp[@]}"
  row "engine RSS excluding guest RAM (qemu here)" KiB "${er[@]}"
  row "device daemons RSS (virtiofsd + husk-vsockd)" KiB "${dr[@]}"
  row "guest RAM touched (resident pages of the memfd)" KiB "${gt[@]}"
}

io() {
  header "throughput (MiB/s) and small-file ops (ops/s)"
  bundle_with_data io "$work/data"
  husk --root "$ROOT" run -d -b "$work/io" io </dev/null >/dev/null 2>&1 || { echo "husk run failed"; return; }
  local gw=() gr=() hw=() hr=() gs=() hs=() vs=() vr=()
  local x="husk --root $ROOT exec io sh -c"
  for i in $(seq "$N"); do
    local t
    t=$(now); $x 'dd if=/dev/zero of=/data/f bs=1M count=256 conv=fsync 2>/dev/null'
    gw+=("$(( 256000 / $(ms_since "$t") ))")
    echo 3 > /proc/sys/vm/drop_caches
    t=$(now); $x 'dd if=/data/f of=/dev/null bs=1M 2>/dev/null'
    gr+=("$(( 256000 / $(ms_since "$t") ))")
    t=$(now); dd if=/dev/zero of="$work/data/h" bs=1M count=256 conv=fsync 2>/dev/null
    hw+=("$(( 256000 / $(ms_since "$t") ))")
    echo 3 > /proc/sys/vm/drop_caches
    t=$(now); dd if="$work/data/h" of=/dev/null bs=1M 2>/dev/null
    hr+=("$(( 256000 / $(ms_since "$t") ))")
    t=$(now); $x 'cd /data && i=0; while [ $i -lt 500 ]; do echo x > s$i; stat s$i >/dev/null; rm s$i; i=$((i+1)); done'
    gs+=("$(( 500000 / $(ms_since "$t") ))")
    t=$(now); (cd "$work/data" && i=0; while [ $i -lt 500 ]; do echo x > s$i; stat s$i >/dev/null; rm s$i; i=$((i+1)); done)
    hs+=("$(( 500000 / $(ms_since "$t") ))")
    # dd with 1 MiB blocks at both ends: busybox head and cat move 4-8 KiB
    # per syscall and top out near 20 MiB/s under TCG by themselves.
    t=$(now); $x 'dd if=/dev/zero bs=1M count=256 2>/dev/null' | wc -c >/dev/null
    vs+=("$(( 256000 / $(ms_since "$t") ))")
    t=$(now); head -c 268435456 /dev/zero | husk --root "$ROOT" exec io sh -c 'dd of=/dev/null bs=1M 2>/dev/null'
    vr+=("$(( 256000 / $(ms_since "$t") ))")
  done
  local p=()
  for i in $(seq "$N"); do
    t=$(now); $x 'dd if=/dev/zero bs=1M count=256 2>/dev/null | dd of=/dev/null bs=1M 2>/dev/null'
    p+=("$(( 256000 / $(ms_since "$t") ))")
  done
  rm -f "$work/data/f" "$work/data/h"
  husk --root "$ROOT" delete -f io
  row "virtio-fs sequential write 256 MiB (in guest)" MiB/s "${gw[@]}"
  row "host directory sequential write 256 MiB" MiB/s "${hw[@]}"
  row "virtio-fs sequential read 256 MiB, cold host cache (in guest)" MiB/s "${gr[@]}"
  row "host directory sequential read 256 MiB, cold cache" MiB/s "${hr[@]}"
  row "virtio-fs create+stat+unlink, busybox sh loop (in guest)" ops/s "${gs[@]}"
  row "host directory create+stat+unlink, same loop (host sh)" ops/s "${hs[@]}"
  row "vsock stream guest->host (exec stdout, 256 MiB, dd bs=1M)" MiB/s "${vs[@]}"
  row "vsock stream host->guest (exec stdin, 256 MiB, dd bs=1M)" MiB/s "${vr[@]}"
  row "in-guest pipe, same dd pair (the guest's ceiling)" MiB/s "${p[@]}"
}

# fs_workload PREFIX: the virtio-fs rows of one configuration, in the
# running container "fs" with the host directory $work/fsdata at /data:
# sequential write (fsync'd), a cold read of a file the host wrote (host
# cache dropped; the guest never saw it), the same file read again (warm:
# whatever the guest's cache keeps), small-file create+stat+unlink.
fs_workload() {
  local x="husk --root $ROOT exec fs sh -c" t i w=() c=() r=() o=() e=()
  for i in $(seq "$N"); do
    t=$(now); $x "dd if=/dev/zero of=/data/w bs=1M count=128 conv=fsync 2>/dev/null"
    w+=("$(( 128000 / $(ms_since "$t") ))")
    dd if=/dev/urandom of="$work/fsdata/h$i" bs=1M count=128 2>/dev/null
    echo 3 >/proc/sys/vm/drop_caches
    t=$(now); $x "dd if=/data/h$i of=/dev/null bs=1M 2>/dev/null"
    c+=("$(( 128000 / $(ms_since "$t") ))")
    t=$(now); $x "dd if=/data/h$i of=/dev/null bs=1M 2>/dev/null"
    r+=("$(( 128000 / $(ms_since "$t") ))")
    t=$(now); $x 'cd /data && i=0; while [ $i -lt 300 ]; do echo x > s$i; stat s$i >/dev/null; rm s$i; i=$((i+1)); done'
    o+=("$(( 300000 / $(ms_since "$t") ))")
    t=$(now); $x 'i=0; while [ $i -lt 100 ]; do /bin/busybox true; i=$((i+1)); done'
    e+=("$(( 100000 / $(ms_since "$t") ))")
  done
  row "$1: seq write 128 MiB, fsync" MiB/s "${w[@]}"
  row "$1: seq read 128 MiB, cold" MiB/s "${c[@]}"
  row "$1: seq read 128 MiB, again" MiB/s "${r[@]}"
  row "$1: create+stat+unlink" ops/s "${o[@]}"
  row "$1: exec /bin/busybox from the rootfs" execs/s "${e[@]}"
  rm -f "$work"/fsdata/*
}

# fsmodes: virtio-fs configurations side by side (HUSK_VIRTIOFS_CACHE,
# HUSK_VIRTIOFS_WRITEBACK, HUSK_VIRTIOFSD_THREADS), with the host directory
# and the guest's own memory (tmpfs) as the ceilings, same run.
fsmodes() {
  header "virtio-fs configurations (MiB/s, ops/s; one 128 MiB file per read)"
  bundle_with_data fs "$work/fsdata"
  local mode label first=1
  for mode in ${HUSK_BENCH_FSMODES:-never:: auto:: metadata:: always:: auto:true: always:true: auto::4}; do
    IFS=: read -r cache wb threads <<<"$mode"
    label="cache=$cache${wb:+ writeback}${threads:+ threads=$threads}"
    [ "$cache" = never ] && [ -z "$wb$threads" ] && label="$label (default)"
    if ! env HUSK_VIRTIOFS_CACHE="$cache" HUSK_VIRTIOFS_WRITEBACK="${wb:-false}" ${threads:+HUSK_VIRTIOFSD_THREADS=$threads} \
      husk --root "$ROOT" run -d -b "$work/fs" fs </dev/null >/dev/null 2>"$work/err"; then
      echo "husk run with $label failed: $(tail -n1 "$work/err")"; continue
    fi
    if [ "$first" = 1 ]; then
      first=0
      local g=() t i
      for i in $(seq "$N"); do
        # /dev/shm holds 64 MiB: 48 MiB read three times, in one exec
        # like the other rows.
        husk --root "$ROOT" exec fs sh -c 'dd if=/dev/zero of=/dev/shm/m bs=1M count=48 2>/dev/null'
        t=$(now); husk --root "$ROOT" exec fs sh -c 'for i in 1 2 3; do dd if=/dev/shm/m of=/dev/null bs=1M 2>/dev/null; done; rm /dev/shm/m'
        g+=("$(( 144000 / $(ms_since "$t") ))")
      done
      row "guest tmpfs (/dev/shm) read 3x48 MiB: the guest's own copy" MiB/s "${g[@]}"
    fi
    fs_workload "$label"
    husk --root "$ROOT" delete -f fs
  done
  local hw=() hr=() ho=()
  for i in $(seq "$N"); do
    t=$(now); dd if=/dev/zero of="$work/fsdata/w" bs=1M count=128 conv=fsync 2>/dev/null
    hw+=("$(( 128000 / $(ms_since "$t") ))")
    echo 3 >/proc/sys/vm/drop_caches
    t=$(now); dd if="$work/fsdata/w" of=/dev/null bs=1M 2>/dev/null
    hr+=("$(( 128000 / $(ms_since "$t") ))")
    t=$(now); (cd "$work/fsdata" && i=0; while [ $i -lt 300 ]; do echo x > s$i; stat s$i >/dev/null; rm s$i; i=$((i+1)); done)
    ho+=("$(( 300000 / $(ms_since "$t") ))")
  done
  row "host directory: seq write 128 MiB, fsync" MiB/s "${hw[@]}"
  row "host directory: seq read 128 MiB, cold" MiB/s "${hr[@]}"
  row "host directory: create+stat+unlink (host sh)" ops/s "${ho[@]}"
}

# pss_split PID: "GUEST OTHER", KiB of PID's proportional set size in guest
# RAM (the shared memfd every engine and vhost-user daemon maps) and in
# everything else. Summed over processes, the guest part counts each
# touched guest page once.
pss_split() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:/) } /^Pss:/ { if (g) a += $2; else b += $2 } END { print a + 0, b + 0 }' "/proc/$1/smaps" 2>/dev/null || echo "0 0"
}

density() {
  header "density: idle containers (128 MiB guests) until they hold 4 GiB of host memory"
  bundle den sleep 3600
  jq '.annotations["husk.memory_mib"] = "128"' "$work/den/config.json" > "$work/den/c.json" && mv "$work/den/c.json" "$work/den/config.json"
  # The budget stops it; HUSK_BENCH_DENSITY_MAX only bounds a quick run.
  local budget=$((4096 * 1024)) used=0 n=0 times=() limit=${HUSK_BENCH_DENSITY_MAX:-1000} why="the 4 GiB budget"
  while :; do
    [ "$n" -ge "$limit" ] && { why="HUSK_BENCH_DENSITY_MAX=$limit"; break; }
    local t; t=$(now)
    husk --root "$ROOT" run -d -b "$work/den" "d$n" </dev/null >/dev/null 2>"$work/err" || { why="creation $((n + 1)) failed: $(tail -n1 "$work/err")"; break; }
    times+=("$(ms_since "$t")")
    n=$((n + 1))
    used=0
    for mon in $(husk --root "$ROOT" list -f json | jq '.[].pid'); do
      for p in "$mon" $(pgrep -P "$mon"); do used=$((used + $(pss_kib "$p"))); done
    done
    [ "$used" -ge "$budget" ] && break
  done
  echo "containers running: $n (stopped by $why), host memory in use by them: $((used / 1024)) MiB (PSS)"
  row "time to create+start one more container" ms "${times[@]}"
  [ ${#times[@]} -ge 2 ] && echo "first: ${times[0]} ms, last: ${times[-1]} ms"
  # Where each container's memory is, with all of them running.
  local mo=() en=() da=() gu=() to=()
  for mon in $(husk --root "$ROOT" list -f json | jq '.[].pid'); do
    local g o guest=0 m e=0 d=0
    read -r g o <<<"$(pss_split "$mon")"; m=$o; guest=$g
    for c in $(pgrep -P "$mon"); do
      read -r g o <<<"$(pss_split "$c")"; guest=$((guest + g))
      case "$(cat "/proc/$c/comm")" in qemu-system*) e=$((e + o)) ;; *) d=$((d + o)) ;; esac
    done
    mo+=("$m"); en+=("$e"); da+=("$d"); gu+=("$guest"); to+=("$((m + e + d + guest))")
  done
  if [ ${#to[@]} -gt 0 ]; then
    row "per container: monitor (PSS)" KiB "${mo[@]}"
    row "per container: engine without guest RAM (PSS)" KiB "${en[@]}"
    row "per container: device daemons without guest RAM (PSS)" KiB "${da[@]}"
    row "per container: guest RAM touched (PSS of the memfd)" KiB "${gu[@]}"
    row "per container: total" KiB "${to[@]}"
    echo "containers per GiB of host memory: $(awk -v n="$n" -v u="$used" 'BEGIN { printf "%.1f", n * 1048576 / u }')"
  fi
  for id in $(husk --root "$ROOT" list -q); do husk --root "$ROOT" delete -f "$id" >/dev/null 2>&1; done
}

# net_measure LABEL: throughput both ways and connect latency between netns
# B and the container's servers at 10.254.9.2 (whatever runs them). Every
# transfer's byte count is checked: the receiver reports it.
net_measure() {
  local b="nsenter --net=/var/run/netns/hbB$$" t got up=() down=() lat=()
  for _ in $(seq 100); do [ "$($b busybox nc -w 2 10.254.9.2 5002 </dev/null 2>/dev/null)" = x ] && break; sleep 0.2; done
  for i in $(seq "$N"); do
    t=$(now); got=$(head -c 67108864 /dev/zero | $b busybox nc 10.254.9.2 5001)
    [ "$got" = 67108864 ] && up+=("$(( 64000 / $(ms_since "$t") ))") || up+=("short:$got")
    t=$(now); got=$($b busybox nc 10.254.9.2 5003 </dev/null | wc -c)
    [ "$got" = 67108864 ] && down+=("$(( 64000 / $(ms_since "$t") ))") || down+=("short:$got")
  done
  for i in $(seq $((N * 4))); do
    t=$(now)
    [ "$($b busybox nc 10.254.9.2 5002 </dev/null)" = x ] || { lat+=(fail); continue; }
    lat+=("$(ms_since "$t")")
  done
  row "$1: TCP B->container 64 MiB (busybox nc)" MiB/s "${up[@]}"
  row "$1: TCP container->B 64 MiB (busybox nc)" MiB/s "${down[@]}"
  row "$1: TCP connect + 1-byte answer, $((N * 4)) connects" ms "${lat[@]}"
}

net() {
  header "network: netns B <-> the container's netns A over a veth (MTU 1500)"
  local a=hbA$$ bb=hbB$$
  ip netns add "$a" && ip netns add "$bb" || { echo "cannot create network namespaces"; return; }
  ip link add hbva netns "$a" type veth peer name hbvb netns "$bb"
  ip -n "$a" addr add 10.254.9.2/24 dev hbva; ip -n "$a" link set hbva up; ip -n "$a" link set lo up
  ip -n "$bb" addr add 10.254.9.1/24 dev hbvb; ip -n "$bb" link set hbvb up; ip -n "$bb" link set lo up
  bundle net sh -c 'nc -ll -p 5001 -e sh -c "wc -c" & nc -ll -p 5003 -e head -c 67108864 /dev/zero & exec nc -ll -p 5002 -e echo x'
  jq --arg p "/var/run/netns/$a" '(.linux.namespaces[] | select(.type == "network")) += {path: $p}' \
    "$work/net/config.json" > "$work/net/c.json" && mv "$work/net/c.json" "$work/net/config.json"
  if husk --root "$ROOT" run -d -b "$work/net" net </dev/null >/dev/null 2>"$work/err"; then
    net_measure "husk, tap + tc mirred into virtio-net"
    husk --root "$ROOT" delete -f net
  else
    echo "husk run failed: $(tail -n1 "$work/err")"
  fi
  if runc --root "$work/runc" run -d -b "$work/net" net </dev/null >/dev/null 2>"$work/err"; then
    net_measure "runc $(runc --version | head -1 | cut -d' ' -f3) (no VM)"
    runc --root "$work/runc" delete -f net
  else
    echo "runc cannot run a container on this host: $(tail -n1 "$work/err")"
  fi
  ip netns del "$a"; ip netns del "$bb"
}

for s in $sections; do "$s"; done
exit 0
