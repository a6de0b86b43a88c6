#!/usr/bin/env bash
# Runs inside the nested tier's L1 (see run.sh): the given test programs,
# then the given shell tests, all on husk's builtin KVM engine. Each test
# program prints libtest's lines; the shell tests print run-shell-tests.sh's.
#
#   in-l1.sh TEST_PROGRAM... [-- SHELL_TEST_NAME...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export HUSK_ENGINE=builtin
grep -qw svm /proc/cpuinfo || { echo "SKIP: no svm flag in the L1"; exit 1; }
[ -c /dev/kvm ] || { echo "SKIP: no /dev/kvm in the L1"; exit 1; }
# The runtime's own concurrency (ten containers at once) is the host's
# test: ten nested guests at once take longer to boot on the L1's emulated
# CPUs than the boot timeout allows, and say nothing more about the engine.
skip=(--skip ten_concurrent_cycles_leak_nothing)
rc=0
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  echo "     Running $1 (engine builtin)"
  "$1" --test-threads=1 --nocapture "${skip[@]}" || rc=1
  shift
done
[ "${1:-}" = -- ] && shift
if [ $# -gt 0 ]; then
  "$here/../run-shell-tests.sh" "$@" || rc=1
fi
exit $rc
