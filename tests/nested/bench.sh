#!/usr/bin/env bash
# Benchmark, not a test: in the nested tier's L1 (run.sh), husk's builtin
# KVM engine next to QEMU with KVM on the same guest, same run. The
# absolute figures are nested emulation (the L1's CPU is TCG-emulated
# AMD-V); the ratio column is what carries over to real hardware.
#
#   tests/nested/bench.sh [-n N]     (default N=3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
N=3
if [ "${1:-}" = -n ]; then N=$2; shift 2; fi
cd "$here/../.."
exec "$here/run.sh" --cpus 1 --timeout 3600 -- "$here/bench-in-l1.sh" "$N"
