#!/usr/bin/env bash
# Runs inside the nested tier's L1 (see run.sh): the given test programs,
# then the given shell tests, all on husk's builtin KVM engine. Each test
# program prints libtest's lines; the shell tests print run-shell-tests.sh's.
#
#   in-l1.sh TEST_PROGRAM... [-- SHELL_TEST_NAME...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export HUSK_ENGINE=builtin
# The L1 has one vCPU (see run.sh); the operator's maximum lets a guest
# have two anyway, so that SMP in the builtin engine is tested.
export HUSK_MAX_VCPUS=2
grep -qw svm /proc/cpuinfo || { echo "SKIP: no svm flag in the L1"; exit 1; }
[ -c /dev/kvm ] || { echo "SKIP: no /dev/kvm in the L1"; exit 1; }
# The runtime's own concurrency (ten containers at once) is the host's
# test: ten nested guests at once take longer to boot on the L1's emulated
# CPUs than the boot timeout allows, and say nothing more about the engine.
skip=(--skip ten_concurrent_cycles_leak_nothing)
rc=0
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  echo "     Running $1 (engine builtin)"
  # A hung test (a builtin `husk run` that never returns has been seen
  # once in a while) fails its program, with what the L1 then runs and the
  # monitors' logs, instead of holding up the whole tier.
  timeout -k 10 "${HUSK_NESTED_PROGRAM_TIMEOUT:-900}" "$1" --test-threads=1 --nocapture "${skip[@]}"
  case $? in
    0) ;;
    124|137)
      rc=1
      echo "test result: FAILED. 0 passed; 1 failed; (TIMEOUT: $1 ran past ${HUSK_NESTED_PROGRAM_TIMEOUT:-900} s)"
      ps -eo pid,ppid,stat,etime,args | grep -E 'husk|qemu|virtiofsd|vhost' | grep -v grep
      for f in /tmp/hk*/r/*/husk-vmm.log; do [ -f "$f" ] && { echo "== $f"; tail -n 40 "$f"; }; done
      for f in /tmp/hk*/r/*/console.log; do [ -f "$f" ] && { echo "== $f"; tail -c 3000 "$f"; echo; }; done
      ;;
    *) rc=1 ;;
  esac
  shift
done
[ "${1:-}" = -- ] && shift
if [ $# -gt 0 ]; then
  "$here/../run-shell-tests.sh" "$@" || rc=1
fi
exit $rc
