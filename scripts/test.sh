#!/usr/bin/env bash
# The whole test suite, as root on a Debian 12 machine: builds and installs
# what the tests need (scripts/setup.sh --no-run, cached), checks fmt and
# clippy, then runs the Rust tests of every crate (unit, host-root, KVM and
# end-to-end tiers; a test whose host lacks something prints why it skips),
# the shell tests and the nested tier (the builtin engine end to end in an
# AMD-V L1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
jobs=${HUSK_JOBS:-$(nproc)}

"$root/scripts/setup.sh" --no-run
# What only the tests use: containerd for the shim tests, podman as a real
# runc-style client, Python's venv for
# the CRI test client (grpcio from PyPI), CNI plugins for the network test.
apt_need containerd podman python3 python3-venv containernetworking-plugins iproute2 util-linux

cd "$root"
# What the repository declares, enforced: formatting, and clippy with
# warnings as errors (the workspace's lints, undocumented unsafe among them).
log "cargo fmt --check; cargo clippy -D warnings"
cargo fmt --all -- --check || die "cargo fmt: run 'cargo fmt' and commit"
cargo clippy -q -j"$jobs" --workspace --all-targets -- -D warnings \
  || die "cargo clippy found warnings"

log "cargo test (workspace)"
# Release, to reuse what setup.sh built. One test thread: the end-to-end
# tests each boot a VM, and two cores cannot run several TCG guests at once
# without timeouts.
# --nocapture so that each test that lacks something on this host and
# returns early is seen by its "SKIP..." line and counted as skipped, not
# passed. The whole output goes to a log; the console gets the test lines.
rust_log=$(mktemp /tmp/husk-cargo-test.XXXXXX)
rust=0
cargo test --release --no-fail-fast -j"$jobs" --workspace -- --test-threads=1 --nocapture \
  >"$rust_log" 2>&1 || rust=$?
grep -E '^(test |SKIP|     Running |error|thread .* panicked|failures:)' "$rust_log" || true
read -r passed failed < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$rust_log")
skipped=$(grep -c '^SKIP' "$rust_log" || true)
echo "rust: $((passed - skipped)) passed, $failed failed, $skipped skipped (full output: $rust_log)"

log "shell tests"
shell=0
shell_log=$(mktemp /tmp/husk-shell-tests.XXXXXX)
"$root/tests/run-shell-tests.sh" 2>&1 | tee "$shell_log" || shell=$?

# The builtin KVM engine end to end: the runtime's and the monitor's
# end-to-end test programs and the shim test again, inside an L1 VM whose
# emulated AMD-V CPU gives hardware-KVM semantics (tests/nested/).
log "nested tier (builtin engine)"
nested=0
"$root/tests/nested/suite.sh" || nested=$?
# A CI log is often cut in the middle: what failed is said again last.
if [ "$rust" -ne 0 ] || [ "$shell" -ne 0 ]; then
  log "what failed (repeated from above)"
  sed -n '/^failures:$/,/^test result:/p' "$rust_log" | grep -E '^    [a-z0-9_:]+$' | sort -u || true
  awk '/^FAIL /{p=1} /^(ok|skip|shell:) /{p=0} p' "$shell_log" | tail -60
fi
[ "$rust" -eq 0 ] && [ "$shell" -eq 0 ] && [ "$nested" -eq 0 ] \
  || die "failed: cargo test exit $rust, shell tests exit $shell, nested tier exit $nested"
