#!/usr/bin/env bash
# containerd + ctr through containerd-shim-husk-v2 (runtime io.containerd.husk.v2):
# output, stdin, exit codes, exec with and without a tty, ps, metrics, kill,
# delete, and nothing left behind.
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
tmp=$(mktemp -d)
trap 'shim_cleanup; containerd_stop; rm -rf "$tmp"' EXIT
containerd_start || exit 1
shim_import_image "$tmp"
R=(--runtime io.containerd.husk.v2)

out=$(c run --rm "${R[@]}" "$IMAGE" t-echo echo hello-from-husk 2>&1); rc=$?
expect_eq "run output" "$out" "hello-from-husk"
expect_eq "run exit" "$rc" 0

out=$(c run --rm "${R[@]}" "$IMAGE" t-exit sh -c 'echo to-err >&2; exit 3' 2>"$tmp/err"); rc=$?
expect_eq "exit code" "$rc" 3
expect_eq "stderr" "$(cat "$tmp/err")" "to-err"

out=$(echo piped-in | c run --rm -i "${R[@]}" "$IMAGE" t-stdin sh -c 'cat; echo done'); rc=$?
expect_eq "stdin" "$out" "piped-in
done"

out=$(script -qec "ctr --address $CTR_ADDR run --rm -t ${R[*]} $IMAGE t-tty sh -c 'tty; exit 5'" /dev/null </dev/null | tr -d '\r'); rc=$?
expect_eq "run -t exit" "$rc" 5
grep -q '^/dev/' <<<"$out" && echo "ok: run -t has a tty" || fail "run -t: no tty: $out"

c run -d "${R[@]}" "$IMAGE" t-bg sleep 1000 >/dev/null || fail "run -d"
expect_eq "task status" "$(c task ls | awk '$1=="t-bg"{print $3}')" RUNNING
out=$(c task exec --exec-id e1 t-bg sh -c 'echo exec-out; echo exec-err >&2; exit 4' 2>"$tmp/err"); rc=$?
expect_eq "exec output" "$out" "exec-out"
expect_eq "exec stderr" "$(cat "$tmp/err")" "exec-err"
expect_eq "exec exit" "$rc" 4
out=$(script -qec "ctr --address $CTR_ADDR task exec -t --exec-id e2 t-bg sh -c 'tty; stty size; exit 6'" /dev/null </dev/null | tr -d '\r'); rc=$?
expect_eq "exec -t exit" "$rc" 6
grep -q '^/dev/pts/' <<<"$out" && echo "ok: exec -t has a tty" || fail "exec -t: no tty: $out"
n=$(c task ps t-bg | tail -n +2 | wc -l)
[ "$n" -ge 1 ] && echo "ok: task ps lists $n process(es)" || fail "task ps: $(c task ps t-bg)"
c task metrics t-bg >"$tmp/metrics" 2>&1 || fail "task metrics: $(cat "$tmp/metrics")"
grep -qi "memory" "$tmp/metrics" && echo "ok: task metrics" || fail "metrics: $(cat "$tmp/metrics")"
c task kill -s SIGTERM t-bg || fail "task kill"
for _ in $(seq 100); do
  st=$(c task ls | awk '$1=="t-bg"{print $3}'); [ "$st" = STOPPED ] && break; sleep 0.2
done
expect_eq "status after kill" "$st" STOPPED
c task delete t-bg >/dev/null || fail "task delete"
c container delete t-bg || fail "container delete"

# A task that is killed while created (never started).
c container create "${R[@]}" "$IMAGE" t-created sleep 100 >/dev/null || fail "container create"
c task start -d t-created >/dev/null || fail "task start -d"
c task kill -s SIGKILL t-created
for _ in $(seq 100); do
  st=$(c task ls | awk '$1=="t-created"{print $3}'); [ "$st" = STOPPED ] && break; sleep 0.2
done
expect_eq "SIGKILL stops" "$st" STOPPED
c task delete t-created >/dev/null; c container delete t-created

for _ in $(seq 50); do [ -z "$(shim_leftovers)" ] && break; sleep 0.2; done
left=$(shim_leftovers)
[ -z "$left" ] || fail "left behind: $left"
echo "ok: nothing left behind"
