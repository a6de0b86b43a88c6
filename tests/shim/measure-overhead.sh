#!/usr/bin/env bash
# Measures the host memory of an idle husk pod (pause + two sleeping
# containers, from the CRI test) for RuntimeClass overhead.podFixed: per
# process RssAnon / RssShmem / Pss of the shim, husk-vmm, qemu and the device
# daemons (Pss splits the shared guest RAM memfd fairly between qemu and the
# daemons that map it), and the guest's own /proc/meminfo. Not a test: prints
# numbers. Needs what tests/shell/shim-cri.sh needs (the pod is on a CNI
# bridge in a network namespace of its own, as there: a VM pod cannot use
# the host's network).
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
shim_cni_preflight
venv=${HUSK_CRI_VENV:-/var/cache/husk-cri-venv}
"$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null || shim_skip "run tests/shell/shim-cri.sh first (venv)"
tmp=$(mktemp -d)
cleanup() { touch "$tmp/go"; shim_cleanup; containerd_stop; shim_cni_cleanup; rm -rf "$tmp"; }
trap cleanup EXIT
shim_cri_start "$tmp" "husk-measure-host.$$" husk-measure hkbr2 10.254.9.0/24 || exit 1
mkdir -p "$tmp/logs"
CRI_PAUSE_FOR_MEASURE=$tmp/go "$venv/bin/python" "$here/shim/cri/cri_test.py" "$CTR_ADDR" "$IMAGE" "$tmp/logs" "$tmp" >"$tmp/out" 2>&1 &
client=$!
for _ in $(seq 600); do grep -q measure-now "$tmp/out" && break; sleep 0.2; done
grep -q measure-now "$tmp/out" || { cat "$tmp/out"; exit 1; }
sleep 3  # let the pod settle
grep guest-meminfo "$tmp/out"
kib() { awk -v k="$2:" '$1==k{print $2}' "$1"; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pids=$( (pgrep -f "containerd-shim-husk-v2.*-address $CTR_ADDR"; pgrep -f "$HUSK_SHIM_ROOT") | sort -un)
declare -A t0; for p in $pids; do t0[$p]=$(ticks "$p"); done
sleep 5
tot_pss=0; tot_anon=0; tot_cpu=0
printf '%-24s %12s %12s %12s %10s\n' process RssAnon RssShmem Pss "idle CPU"
for p in $pids; do
  name="$(cat /proc/$p/comm)[$p]"
  anon=$(kib /proc/$p/status RssAnon); shm=$(kib /proc/$p/status RssShmem); pss=$(kib /proc/$p/smaps_rollup Pss)
  cpu=$(( ($(ticks "$p") - ${t0[$p]}) * 1000 / $(getconf CLK_TCK) / 5 ))
  printf '%-24s %8s KiB %8s KiB %8s KiB %7s m\n' "$name" "$anon" "$shm" "$pss" "$cpu"
  tot_pss=$((tot_pss + pss)); tot_anon=$((tot_anon + anon)); tot_cpu=$((tot_cpu + cpu))
done
printf '%-24s %8s KiB %12s %8s KiB %7s m\n' total "$tot_anon" "" "$tot_pss" "$tot_cpu"
