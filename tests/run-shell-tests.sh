#!/usr/bin/env bash
# Runs every tests/shell/*.sh, or the ones named (run-shell-tests.sh NAME...);
# exit 77 means skipped (with its reason printed).
# Ends with the plain "N passed, N failed, N skipped" line.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pass=0 fail=0 skip=0
if [ $# -gt 0 ]; then
  set -- "${@/#/$here/shell/}"; set -- "${@/%/.sh}"
else
  set -- "$here"/shell/*.sh
fi
for t in "$@"; do
  name=$(basename "$t" .sh)
  out=$(bash "$t" 2>&1); rc=$?
  case $rc in
    0) pass=$((pass+1)); echo "ok   $name" ;;
    77) skip=$((skip+1)); echo "skip $name: $(tail -n1 <<<"$out")" ;;
    *) fail=$((fail+1)); echo "FAIL $name (exit $rc)"
       # The test's own verdict lines first: a daemon's log tail follows them.
       grep -E '^(ok|FAIL|SKIP)' <<<"$out" | tail -5 | sed 's/^/    /'
       sed 's/^/    /' <<<"$out" | tail -30 ;;
  esac
done
echo "shell: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
