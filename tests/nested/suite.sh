#!/usr/bin/env bash
# The builtin KVM engine end to end, through the nested tier (run.sh): one
# L1 boot runs the runtime's end-to-end test programs, the monitor's
# container tests and the containerd shim test with HUSK_ENGINE=builtin.
# Ends with "nested: N passed, N failed, N skipped"; exits non-zero when a
# test failed or the tier could not run.
#
# Env: HUSK_NESTED_TIMEOUT (seconds for the whole L1, default 1800),
# HUSK_NESTED_PROGRAM_TIMEOUT (seconds per test program, default 900).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/scripts/lib.sh"
cd "$root"

# The test programs cargo built for the runtime's and the monitor's
# end-to-end tests (built by the workspace's cargo test before this runs).
# (--workspace: the same features, so the same programs, as the suite's.)
tests=(
  --workspace --test cli_e2e --test network_e2e --test readonly_e2e --test oom_e2e
  --test reliability_e2e --test isolation_e2e --test check_cli --test container
)
mapfile -t bins < <(cargo test --release --no-run --message-format=json "${tests[@]}" 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .profile.test == true) | .executable // empty')
[ ${#bins[@]} -eq 8 ] || die "expected 8 test programs, cargo gave ${#bins[@]}: ${bins[*]}"

out=$(mktemp /tmp/husk-nested.XXXXXX.log)
"$here/run.sh" --cpus 1 --timeout "${HUSK_NESTED_TIMEOUT:-1800}" -- \
  "$here/in-l1.sh" "${bins[@]}" -- shim-ctr 2>&1 | tee "$out" \
  | grep --line-buffered -E '^(test |SKIP|     Running |ok   |FAIL |skip |shell: |l1: |run.sh: |thread .* panicked|failures:)'
rc=${PIPESTATUS[0]}
if grep -q '^SKIP' "$out" && [ "$rc" -eq 125 ]; then
  echo "nested: 0 passed, 0 failed, 1 skipped ($(grep -m1 '^SKIP' "$out"))"
  exit 0
fi
# libtest counts a test that printed SKIP and returned as passed; the
# shell runner counts its skips itself.
read -r passed failed skipped < <(awk '/^test result:/ { p += $4; f += $6 }
  /^SKIP/ { p -= 1; s += 1 }
  /^shell: / { p += $2; f += $4; s += $6 } END { print p + 0, f + 0, s + 0 }' "$out")
echo "nested: $passed passed, $failed failed, $skipped skipped (full output: $out)"
[ "$rc" -eq 0 ] || die "the nested tier failed (exit $rc)"
