#!/usr/bin/env bash
# Benchmark, not a test: in the nested tier's L1 (run.sh), husk's builtin
# KVM engine next to QEMU with KVM on the same guest, same run. The
# absolute figures are nested emulation (the L1's CPU is TCG-emulated
# AMD-V); the ratio column is what carries over to real hardware.
#
#   tests/nested/bench.sh [-n N] [--density]     (default N=3)
#
# -n 0 skips the engine table. --density adds the density run (idle 128 MiB builtin guests created one
# after another until their PSS reaches 4 GiB or the time cap,
# HUSK_NESTED_DENSITY_CAP_S, default 1800 s); the L1 then gets 6 GiB of RAM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
N=3 density= mem=4096
while [ $# -gt 0 ]; do
  case $1 in
    -n) N=$2; shift 2 ;;
    --density) density=density mem=6144; shift ;;
    *) echo "usage: $0 [-n N] [--density]" >&2; exit 2 ;;
  esac
done
cd "$here/../.."
exec "$here/run.sh" --cpus 1 --mem "$mem" --timeout 3600 -- "$here/bench-in-l1.sh" "$N" $density
