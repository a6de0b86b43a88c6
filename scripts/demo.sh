#!/usr/bin/env bash
# The smoke test at the end of setup: `husk run` of a busybox bundle, in its
# own microVM, printing what the container sees of its kernel and itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
bundle=$(mktemp -d /tmp/husk-demo.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
rmdir "$bundle"
"$root/tests/make-bundle.sh" "$bundle" sh -c \
  'echo "hello from a husk container: kernel $(uname -r) on $(uname -m), hostname $(hostname), pid $$"' >/dev/null
log "husk run --bundle $bundle demo-$$"
start=$(date +%s.%N)
status=0
husk run --bundle "$bundle" "demo-$$" || status=$?
end=$(date +%s.%N)
log "container exited with status $status, host kernel $(uname -r), $(echo "$end - $start" | bc) s from run to exit"
